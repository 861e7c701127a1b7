"""What joins, trigger gates and batches share: their outputs, held entries and windows.

Records are opaque bytes; merging is injected. No I/O, no clock: every method that needs the time
takes `now_ms`, the step's stream time (see "Window clock" below), and optionally `wall_ms`, the
wall clock; the step calls `expire` after every batch and on a timer set from
`next_wall_deadline()`.

Token and release contract (at-least-once):

* Every record handed in carries an opaque `token` (the step tracks its offset and headers).
* Every call returns a `Result`: the `outputs` produced and the tokens `released` (no longer held).
* Each token handed in is released exactly once, eventually: with the output that consumed it,
  when its window closes, when it is late, or by `discard`.
* An `Output` names its `contributors` (every token whose data is in it) and its `origin` (the
  token whose key and headers it takes). Apply a `Result` by first holding every output's
  contributors, then releasing `released`: a token may appear in both in the same `Result`.
* Commit an offset only when its token was released and every output it contributed to was
  acknowledged.

Chaining a `Joiner` (or a `Batcher`) into a `TriggerGate` in one step: hold each output's
contributors as for any pending output, then pass it on with `TriggerGate.add_output`. The gate
later lists each of those contributors exactly once in a `released` list, which ends that hold,
and its own outputs carry them as contributors again (plus the triggers' tokens).

Window clock: records match when their record timestamps are within `window_ms`
(`|t1 - t2| <= W`; for n-ary sets, max - min <= W). `now_ms` is the step's *stream time*, not
the wall clock (see `dataflow.streamtime`); a record's window closes when stream time passes
`timestamp_ms + W`, so a backlog joins as it did live, however long ago it was written. A record
already behind stream time by more than W is late: it still matches what is held (an outer join
emits it alone if nothing matches) but is not kept. When the caller passes `wall_ms` (every
source is caught up), windows also close W of wall clock after arrival, so an outer join's lone
record goes out with no further traffic.

Durable state: every record a joiner, gate or batcher keeps is an `Entry` with an `ident` chosen
by the caller. Each `Result` lists the entries it `stored` (new, or changed: an outer join's
`matched` flag) and `removed` (left the state), so the caller can keep a changelog; `load`
puts a restored entry back without matching it again. `discard` (partitions revoked) lists
nothing: the state stays in the changelog for the partitions' next owner. The exception is an
`any` join: its records are held for 1 ms only, released at once and never listed (a restart
forgets them; see `Joiner`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, Literal, TypeVar

__all__ = [
    "JOIN_TYPES",
    "Entry",
    "EntryKind",
    "JoinType",
    "Output",
    "Result",
    "Sides",
    "Window",
    "Windowed",
    "check_window",
    "drop_from_sides",
    "late_reason",
    "sides_of",
    "span_ok",
]

T = TypeVar("T")

JoinType = Literal["inner", "outer", "any"]
"""How sources (or triggers) combine: all needed, emit partial sets at window close, or forward."""

JOIN_TYPES: frozenset[str] = frozenset(("inner", "outer", "any"))


@dataclass(frozen=True, slots=True, init=False)
class Output(Generic[T]):
    """A record to send on.

    Attributes:
        key: The record key (all contributors share it).
        value: The merged value.
        timestamp_ms: The largest record timestamp among the contributors.
        origin: The token whose headers (and key) the output takes: the record that triggered the
            emission (for a trigger gate: always the data record).
        contributors: Every token whose data is in the output and that the stage still answers
            for, in source order. An `any` join's joined output lists only the arriving record:
            the records it joins were released when they went out alone.
        error: Why the contributors could not be merged (then `value` is empty and the output
            belongs on the error topic); empty for a good output.
    """

    key: bytes | None
    value: bytes
    timestamp_ms: int
    origin: T
    contributors: tuple[T, ...]
    error: str = ""

    def __init__(
        self,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        origin: T,
        contributors: tuple[T, ...],
        error: str = "",
    ) -> None:
        # The __init__ a frozen dataclass generates sets each field with object.__setattr__ (a
        # global lookup and a call each: about 0.9 µs per output); calling the slots' own
        # setters directly is about twice as fast, and assignment still raises afterwards.
        _set_key(self, key)
        _set_value(self, value)
        _set_timestamp_ms(self, timestamp_ms)
        _set_origin(self, origin)
        _set_contributors(self, contributors)
        _set_error(self, error)


_set_key, _set_value, _set_timestamp_ms, _set_origin, _set_contributors, _set_error = (
    getattr(Output, name).__set__
    for name in ("key", "value", "timestamp_ms", "origin", "contributors", "error")
)


class EntryKind(StrEnum):
    """What a state entry holds; the value is its one-letter code in the changelog."""

    JOIN = "j"  # a join source record
    TRIGGER = "t"  # a trigger record at a gate
    GATE_DATA = "d"  # data waiting at a trigger gate
    BATCH = "b"  # a batched request


@dataclass(eq=False, slots=True)
class Entry(Generic[T]):
    """A record kept in a state machine (a join window, a trigger gate, a batch).

    Attributes:
        kind: What the entry holds (`EntryKind`): a join source record, a trigger, data
            waiting at a gate, a batched request.
        source: The source or trigger index (-1 for gate data and batch items).
        key: The record key.
        value: The record value (empty for triggers).
        timestamp_ms: The record timestamp.
        token: The record's token (for gate data: the origin of the output it came from).
        ident: The caller's name for the entry (its changelog key).
        deadline_ms: When its window closes, on the window's clock.
        wall_deadline_ms: When its window closes on the wall clock once sources are caught up.
        contributors: Gate data: the tokens it stands for.
        matched: The record is in an emitted output (an outer join's: perhaps alone).
        alive: False once removed.
        grace: Its window closed; it is kept for the grace period, for a late partner.
    """

    kind: EntryKind
    source: int
    key: bytes
    value: bytes
    timestamp_ms: int
    token: T
    ident: bytes = b""
    deadline_ms: int = 0
    wall_deadline_ms: int | None = None
    contributors: tuple[T, ...] = ()
    matched: bool = False
    alive: bool = True
    grace: bool = False


@dataclass(slots=True)
class Result(Generic[T]):
    """What one call produced.

    Attributes:
        outputs: Records to send on, in order.
        released: Tokens the state machine no longer holds.
        stored: Entries that entered the state or changed (for a changelog).
        removed: Entries that left the state.
    """

    outputs: list[Output[T]] = field(default_factory=list)
    released: list[T] = field(default_factory=list)
    stored: list[Entry[T]] = field(default_factory=list, compare=False)
    removed: list[Entry[T]] = field(default_factory=list, compare=False)

    def extend(self, other: Result[T]) -> None:
        """Append another step's outputs, releases and state changes to this one.

        Args:
            other: The step to append.
        """
        self.outputs.extend(other.outputs)
        self.released.extend(other.released)
        self.stored.extend(other.stored)
        self.removed.extend(other.removed)


def check_window(window_ms: int) -> None:
    if window_ms <= 0:
        raise ValueError(f"window_ms must be > 0, got {window_ms}")


def span_ok(timestamps: Iterable[int], window_ms: int) -> bool:
    values = list(timestamps)
    return max(values) - min(values) <= window_ms


def late_reason(what: str, timestamp_ms: int, now_ms: int, window: Window[T]) -> str:
    """Why a record behind stream time past its window and the grace period is dropped."""
    return (
        f"late for the {what}: {now_ms - timestamp_ms} ms behind stream time, past the window "
        f"({window.window_ms} ms) and the grace period ({window.grace_ms} ms), nothing to match"
    )


Sides = list[list[Entry[T]]]
"""The records held for one key, one list per source (or trigger source), in arrival order."""


def sides_of(table: dict[bytes, Sides[T]], key: bytes, n: int) -> Sides[T]:
    """The sides held for `key` in `table`, added (`n` empty lists) if there were none."""
    sides = table.get(key)
    if sides is None:
        sides = table[key] = [[], []] if n == 2 else [[] for _ in range(n)]
    return sides


def drop_from_sides(table: dict[bytes, Sides[T]], record: Entry[T]) -> None:
    """Take `record` off its key's side in `table`; the key goes once none of its sides holds
    anything."""
    sides = table[record.key]
    sides[record.source].remove(record)
    if not any(sides):
        del table[record.key]


#: A clock's queue (its FIFO and heap together) is rebuilt without its stale items once longer
#: than this many times the live records (plus a floor).
_COMPACT_FACTOR = 2
_COMPACT_FLOOR = 64

_Item = tuple[int, int, Entry[T]]
"""A queued item: (deadline on its clock, push sequence number, record)."""


def _fresh(item: _Item[T], wall: bool) -> bool:
    """The item is not stale: its record is alive and its deadline on that clock is the item's."""
    record = item[2]
    return record.alive and item[0] == (record.wall_deadline_ms if wall else record.deadline_ms)


def _compact(
    fifo: deque[_Item[T]], heap: list[_Item[T]], wall: bool
) -> tuple[deque[_Item[T]], list[_Item[T]]]:
    """A clock's FIFO and heap without their stale items (see `Window`): still in order, a heap."""
    kept = [item for item in heap if _fresh(item, wall)]
    heapq.heapify(kept)
    return deque([item for item in fifo if _fresh(item, wall)]), kept


def _front(fifo: deque[_Item[T]], heap: list[_Item[T]], wall: bool) -> int | None:
    """The smallest deadline of a clock's fresh items, None if it has none; drops the stale
    items that were in front of it."""
    while fifo and not _fresh(fifo[0], wall):
        fifo.popleft()
    while heap and not _fresh(heap[0], wall):
        heapq.heappop(heap)
    if heap:
        return min(fifo[0][0], heap[0][0]) if fifo else heap[0][0]
    return fifo[0][0] if fifo else None


def _pop(fifo: deque[_Item[T]], heap: list[_Item[T]], limit: int) -> _Item[T] | None:
    """A clock's smallest item (by deadline, then push order) if its deadline is <= `limit`,
    taken off its FIFO or heap; None if there is none."""
    if heap:
        # (deadline, seq) decides; seq is unique, so the records are never compared.
        if fifo and fifo[0] < heap[0]:
            return fifo.popleft() if fifo[0][0] <= limit else None
        return heapq.heappop(heap) if heap[0][0] <= limit else None
    return fifo.popleft() if fifo and fifo[0][0] <= limit else None


def _take_due(
    fifo: deque[_Item[T]], heap: list[_Item[T]], limit: int, wall: bool
) -> Entry[T] | None:
    """A clock's next fresh record whose deadline is <= `limit`, taken off (stale items in
    front of it are dropped); None if there is none."""
    while True:
        if heap:
            item = _pop(fifo, heap, limit)
            if item is None:
                return None
        elif fifo and fifo[0][0] <= limit:  # `_pop`, inlined: the common case
            item = fifo.popleft()
        else:
            return None
        if _fresh(item, wall):
            return item[2]


class Window(Generic[T]):
    """Deadline bookkeeping shared by the joiner and the gate.

    Two clocks: `deadline_ms` on the window's own clock (`now_ms`: the wall clock, or stream
    time), and, when the caller gives one, `wall_deadline_ms` on the wall clock (used only when
    `expire` is given `wall_ms`). `grace` moves both deadlines `grace_ms` later once, when a
    record's window closed but it is kept for a late partner.

    Each clock queues items `(deadline, sequence number, record)` in two places: a FIFO (a
    deque) takes every item whose deadline is >= that of the FIFO's last item, so it stays
    sorted, O(1) to push and to pop; a heap takes the others. Deadlines come almost always in
    order (stream-time deadlines are `timestamp + W + 1` and records arrive in timestamp order;
    wall deadlines follow the wall clock), so the heap holds only stragglers and the records
    `grace` pushes again behind later deadlines (with `grace_ms` < W, most of them). Next out is
    the smaller of the two fronts by `(deadline, sequence number)`: records with the same
    deadline leave in the order they were pushed, wherever they are queued. An item is stale
    once its record is dead or its deadline on that clock moved (into the grace period): stale
    items are skipped when they reach the front, and dropped all at once when a clock's FIFO and
    heap together outnumber the live records.
    """

    def __init__(self, window_ms: int, grace_ms: int = 0) -> None:
        check_window(window_ms)
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        # The window's own clock: in-order items, then the rest.
        self._fifo: deque[_Item[T]] = deque()
        self._heap: list[_Item[T]] = []
        # The wall clock, likewise.
        self._wall_fifo: deque[_Item[T]] = deque()
        self._wall_heap: list[_Item[T]] = []
        self._seq = 0
        self.count = 0

    def deadline(self, timestamp_ms: int) -> int:
        # Open while stream time <= timestamp + W: a partner W later still matches.
        return timestamp_ms + self.window_ms + 1

    def beyond_grace(self, deadline_ms: int, now_ms: int) -> bool:
        """True when a record whose window closes at `deadline_ms` arrives too late to be kept
        even for the grace period."""
        return deadline_ms + self.grace_ms <= now_ms

    def due(self, now_ms: int) -> bool:
        """True when `pop_due(now_ms)` may find something (a stale item may be all it finds)."""
        fifo, heap = self._fifo, self._heap
        return bool((fifo and fifo[0][0] <= now_ms) or (heap and heap[0][0] <= now_ms))

    def push(self, record: Entry[T], wall_ms: int | None = None) -> None:
        """Hold `record` until its deadline (and, given `wall_ms`, W of wall clock after it)."""
        seq = self._seq
        self._seq = seq + 1
        deadline = record.deadline_ms
        fifo, heap = self._fifo, self._heap
        if fifo and deadline < fifo[-1][0]:
            heapq.heappush(heap, (deadline, seq, record))
        else:
            fifo.append((deadline, seq, record))
        wall: int | None
        if wall_ms is not None:
            record.wall_deadline_ms = wall = wall_ms + self.window_ms
        else:
            wall = record.wall_deadline_ms
        wall_fifo, wall_heap = self._wall_fifo, self._wall_heap
        if wall is not None:
            if wall_fifo and wall < wall_fifo[-1][0]:
                heapq.heappush(wall_heap, (wall, seq, record))
            else:
                wall_fifo.append((wall, seq, record))
        self.count = count = self.count + 1
        # Records leave by one clock and stay queued on the other until they reach its front:
        # while a source lags, windows close on stream time only, and every closed record would
        # stay in the wall clock's queue. Dropping the stale items once they outnumber the live
        # keeps both clocks' queues (and the memory they hold) in proportion to what is held:
        # O(1) amortised.
        limit = _COMPACT_FACTOR * count + _COMPACT_FLOOR
        if len(fifo) + len(heap) > limit:
            self._fifo, self._heap = _compact(fifo, heap, False)
        if len(wall_fifo) + len(wall_heap) > limit:
            self._wall_fifo, self._wall_heap = _compact(wall_fifo, wall_heap, True)

    def grace(self, record: Entry[T]) -> None:
        """Keep a record whose window just closed (`pop_due`) for the grace period."""
        record.grace = True
        record.alive = True
        record.deadline_ms += self.grace_ms
        if record.wall_deadline_ms is not None:
            record.wall_deadline_ms += self.grace_ms
        self.push(record)

    def kill(self, record: Entry[T]) -> None:
        if record.alive:
            record.alive = False
            self.count -= 1

    def replace(self, side: list[Entry[T]], ident: bytes, step: Result[T], late: bool) -> None:
        """Drop the entry named `ident` from `side`: its record was consumed again (after a
        restart) and the new copy replaces it. A late copy is not kept, so then the old entry
        leaves the state too.

        Costs a scan of `side`: the records of one key and source held in the window, which
        matching the record scans anyway (callers skip the call when `side` is empty)."""
        for old in side:
            if old.ident == ident:
                self.kill(old)
                side.remove(old)
                step.released.append(old.token)
                if late:
                    step.removed.append(old)
                return

    def pop_due(self, now_ms: int, wall_ms: int | None = None) -> Entry[T] | None:
        """The next live record whose window closed by `now_ms` (or `wall_ms`), marked dead."""
        record = _take_due(self._fifo, self._heap, now_ms, False)
        if record is None and wall_ms is not None:
            record = _take_due(self._wall_fifo, self._wall_heap, wall_ms, True)
        if record is not None:
            record.alive = False
            self.count -= 1
        return record

    def next_deadline(self) -> int | None:
        return _front(self._fifo, self._heap, False)

    def next_wall_deadline(self) -> int | None:
        return _front(self._wall_fifo, self._wall_heap, True)

    def live(self) -> list[Entry[T]]:
        return [item[2] for item in sorted([*self._fifo, *self._heap]) if _fresh(item, False)]


class Windowed(Generic[T]):
    """What a joiner and a trigger gate share: the `Window` of the records held, the count of
    late records, and the deadlines the step waits for.

    Attributes:
        late: Records that arrived behind stream time by more than W + grace.
    """

    def __init__(self, window: Window[T]) -> None:
        self._window = window
        self.late = 0

    @property
    def window_ms(self) -> int:
        """The window W in milliseconds (for an `any` join, `joins.ANY_WINDOW_MS`)."""
        return self._window.window_ms

    def expire(self, now_ms: int, wall_ms: int | None = None) -> Result[T]:
        """Close every window that ended at or before `now_ms` (or, if given, `wall_ms`)."""
        raise NotImplementedError

    def _start(self, now_ms: int) -> Result[T]:
        """The result of a call at `now_ms` so far: what `expire(now_ms)` gives, without the
        call when nothing is due (the common case: a record arriving within the window)."""
        window = self._window  # `Window.due`, inlined: this runs for every record
        fifo = window._fifo
        if (fifo and fifo[0][0] <= now_ms) or ((heap := window._heap) and heap[0][0] <= now_ms):
            return self.expire(now_ms)
        return Result([], [], [], [])

    def held(self) -> int:
        """The number of records held (a gate's: waiting data plus triggers)."""
        return self._window.count

    def next_deadline(self) -> int | None:
        """When the next held record's window closes on the window's clock, None if none held."""
        return self._window.next_deadline()

    def next_wall_deadline(self) -> int | None:
        """When the next held record's window closes on the wall clock (if given), or None."""
        return self._window.next_wall_deadline()

    def _into(self, now_ms: int, into: Result[T] | None) -> Result[T]:
        """`_start`, adding to `into` when given (a caller feeding many records gathers what
        they cause in one result)."""
        if into is None:
            return self._start(now_ms)
        if self._window.due(now_ms):
            into.extend(self.expire(now_ms))
        return into
