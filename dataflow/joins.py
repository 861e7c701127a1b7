"""Windowed joins and trigger gates as pure, clock-injected state machines.

Records are opaque bytes; merging is injected. No I/O, no clock: every method that needs the time
takes `now_ms`, the step's stream time (see "Window clock" below), and optionally `wall_ms`, the
wall clock; the step calls `expire` after every batch and on a timer set from
`next_wall_deadline()`.

Token and release contract (at-least-once):

* Every record handed in carries an opaque `token` (the step tracks its offset and headers).
* Every call returns a `Step`: the `outputs` produced and the tokens `released` (no longer held).
* Each token handed in is released exactly once, eventually: with the output that consumed it,
  when its window closes, when it is late, or by `discard`.
* An `Output` names its `contributors` (every token whose data is in it) and its `origin` (the
  token whose key and headers it takes). Apply a `Step` by first holding every output's
  contributors, then releasing `released`: a token may appear in both in the same `Step`.
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
by the caller. Each `Step` lists the entries it `stored` (new, or changed: an outer join's
`matched` flag) and `removed` (left the state), so the caller can keep a changelog; `load`
puts a restored entry back without matching it again. `discard` (partitions revoked) lists
nothing: the state stays in the changelog for the partitions' next owner. The exception is an
`any` join: its records are held for 1 ms only, released at once and never listed (a restart
forgets them; see `Joiner`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import reduce
from typing import Generic, Literal, TypeVar

__all__ = [
    "ANY_WINDOW_MS",
    "Entry",
    "EntryKind",
    "JoinType",
    "Joiner",
    "Output",
    "Step",
    "TriggerGate",
]

T = TypeVar("T")

JoinType = Literal["inner", "outer", "any"]
"""How sources (or triggers) combine: all needed, emit partial sets at window close, or forward."""

_JOIN_TYPES: frozenset[str] = frozenset(("inner", "outer", "any"))
_DATA = -1  # source index of trigger-gate data records

ANY_WINDOW_MS = 1
"""The window of an `any` join, whatever the step's: the reference's `JoinWindows.of(1 ms)`."""


@dataclass(frozen=True, slots=True)
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
class Step(Generic[T]):
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

    def extend(self, other: Step[T]) -> None:
        """Append another step's outputs, releases and state changes to this one.

        Args:
            other: The step to append.
        """
        self.outputs.extend(other.outputs)
        self.released.extend(other.released)
        self.stored.extend(other.stored)
        self.removed.extend(other.removed)


def _check_window(window_ms: int) -> None:
    if window_ms <= 0:
        raise ValueError(f"window_ms must be > 0, got {window_ms}")


def _span_ok(timestamps: Iterable[int], window_ms: int) -> bool:
    values = list(timestamps)
    return max(values) - min(values) <= window_ms


def _late_reason(what: str, timestamp_ms: int, now_ms: int, window: _Window[T]) -> str:
    return (
        f"late for the {what}: {now_ms - timestamp_ms} ms behind stream time, past the window "
        f"({window.window_ms} ms) and the grace period ({window.grace_ms} ms), nothing to match"
    )


#: A window's heaps are rebuilt without their dead records once longer than this many times the
#: live records (plus a floor).
_COMPACT_FACTOR = 2
_COMPACT_FLOOR = 64


def _due(item: tuple[int, int, Entry[T]], wall: bool) -> bool:
    """True while the heap item is the record's current deadline on its clock (a record whose
    deadline moved, into its grace period, leaves a stale item behind)."""
    record = item[2]
    return record.alive and item[0] == (record.wall_deadline_ms if wall else record.deadline_ms)


def _alive(heap: list[tuple[int, int, Entry[T]]], wall: bool) -> list[tuple[int, int, Entry[T]]]:
    kept = [item for item in heap if _due(item, wall)]
    heapq.heapify(kept)
    return kept


class _Window(Generic[T]):
    """Deadline bookkeeping shared by the joiner and the gate.

    Two clocks: `deadline_ms` on the window's own clock (`now_ms`: the wall clock, or stream
    time), and, when the caller gives one, `wall_deadline_ms` on the wall clock (used only when
    `expire` is given `wall_ms`). `grace` moves both deadlines `grace_ms` later once, when a
    record's window closed but it is kept for a late partner.
    """

    def __init__(self, window_ms: int, grace_ms: int = 0) -> None:
        _check_window(window_ms)
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self._heap: list[tuple[int, int, Entry[T]]] = []
        self._wall: list[tuple[int, int, Entry[T]]] = []
        self._seq = itertools.count()
        self.count = 0

    def deadline(self, timestamp_ms: int) -> int:
        # Open while stream time <= timestamp + W: a partner W later still matches.
        return timestamp_ms + self.window_ms + 1

    def beyond_grace(self, deadline_ms: int, now_ms: int) -> bool:
        """True when a record whose window closes at `deadline_ms` arrives too late to be kept
        even for the grace period."""
        return deadline_ms + self.grace_ms <= now_ms

    def push(self, record: Entry[T], wall_ms: int | None = None) -> None:
        if wall_ms is not None:
            record.wall_deadline_ms = wall_ms + self.window_ms
        self._push(record)

    def grace(self, record: Entry[T]) -> None:
        """Keep a record whose window just closed (`pop_due`) for the grace period."""
        record.grace = True
        record.alive = True
        record.deadline_ms += self.grace_ms
        if record.wall_deadline_ms is not None:
            record.wall_deadline_ms += self.grace_ms
        self._push(record)

    def _push(self, record: Entry[T]) -> None:
        seq = next(self._seq)
        heapq.heappush(self._heap, (record.deadline_ms, seq, record))
        if record.wall_deadline_ms is not None:
            heapq.heappush(self._wall, (record.wall_deadline_ms, seq, record))
        self.count += 1
        # Records leave by one clock and stay in the other heap until they reach its top: while
        # a source lags, windows close on stream time only, and every closed record would stay
        # in the wall-clock heap. Dropping the dead ones once they outnumber the live keeps
        # both heaps (and the memory they hold) in proportion to what is held: O(1) amortised.
        limit = _COMPACT_FACTOR * self.count + _COMPACT_FLOOR
        if len(self._heap) > limit:
            self._heap = _alive(self._heap, False)
        if len(self._wall) > limit:
            self._wall = _alive(self._wall, True)

    def kill(self, record: Entry[T]) -> None:
        if record.alive:
            record.alive = False
            self.count -= 1

    def replace(self, side: list[Entry[T]], ident: bytes, step: Step[T], late: bool) -> None:
        """Drop the entry named `ident` from `side`: its record was consumed again (after a
        restart) and the new copy replaces it. A late copy is not kept, so then the old entry
        leaves the state too."""
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
        for heap, clock, wall in ((self._heap, now_ms, False), (self._wall, wall_ms, True)):
            if clock is None:
                continue
            while heap and heap[0][0] <= clock:
                item = heapq.heappop(heap)
                if _due(item, wall):
                    self.kill(item[2])
                    return item[2]
        return None

    def next_deadline(self) -> int | None:
        return self._next(self._heap, False)

    def next_wall_deadline(self) -> int | None:
        return self._next(self._wall, True)

    @staticmethod
    def _next(heap: list[tuple[int, int, Entry[T]]], wall: bool) -> int | None:
        while heap and not _due(heap[0], wall):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def live(self) -> list[Entry[T]]:
        return [item[2] for item in sorted(self._heap) if _due(item, False)]


class Joiner(Generic[T]):
    """A windowed n-ary join on the record key (spec 4.5, with the reference's weaknesses fixed).

    Values are always folded left to right in source order, `merge(merge(v1, v2), v3)`, whatever
    the arrival order. A set of records (one per source) matches when they share the key and their
    timestamps span at most `window_ms`.

    * `inner`: each arrival that completes one or more sets emits one output per new complete
      set (duplicates on a side give one output per combination, as Kafka Streams does). Records
      stay in the window, so later duplicates can still match them.
    * `outer`: complete sets are emitted as for inner. A record that is in no emitted output when
      its window closes (evaluated by `expire`, no further traffic needed) is emitted then,
      together with the other unmatched records of its key that fit one window (for more than two
      sources: the partial set present, first unmatched record per source, in source order).
    * `any` (the reference's outer join with `JoinWindows.of(1 ms)`; `window_ms` is ignored,
      the window is `ANY_WINDOW_MS`): every arrival is emitted at once. Alone, unless records
      of another source with the same key are held whose timestamps are within 1 ms of it
      (`|t1 - t2| <= 1`): then it is emitted joined with them instead (values folded in source
      order, as for inner), one output per combination of one near record from each other
      source that has any (so for two sources, one output per near record of the other
      source; for three, a record near records of both others goes out with all three, and a
      record near only one other source's records goes out with those two). So a pair 1 ms
      apart gives the first record alone, then the second joined. The records of a
      combination are each within 1 ms of the arrival, not necessarily of each other (as the
      reference's left fold, whose joined record takes the later timestamp). Records are held
      only for that 1 ms: on the window clock, and W = 1 ms of wall clock after arrival when
      `expire` is given `wall_ms`. They are released at once (so hold no offset), are never
      listed in `Step.stored` or `Step.removed` (no changelog), and are not counted `late`
      when behind stream time (they are still emitted, and joined with what is held; they are
      just not kept). A restart forgets them: a partner read after a restart goes out alone.
      Cost per arrival: three dict lookups per other source plus the near records found.

    A record with a `None` key can never match: inner releases it at once, outer emits it alone
    at once, any forwards it.

    Args:
        n_sources: Number of sources (>= 2), indexed 0..n-1 in join order.
        join_type: `"inner"`, `"outer"` or `"any"`.
        window_ms: The join window W (> 0).
        merge: Merges two values, left then right (e.g. `wire.merge_join` with `request` bound).

    Raises:
        ValueError: On an invalid argument.
    """

    def __init__(
        self,
        n_sources: int,
        join_type: JoinType,
        window_ms: int,
        merge: Callable[[bytes, bytes], bytes],
        *,
        grace_ms: int = 0,
    ) -> None:
        """Create an empty joiner (see the class docstring for the arguments)."""
        if n_sources < 2:
            raise ValueError(f"a join needs at least two sources, got {n_sources}")
        if join_type not in _JOIN_TYPES:
            raise ValueError(f"join_type must be one of {sorted(_JOIN_TYPES)}, got {join_type!r}")
        _check_window(window_ms)
        self._n = n_sources
        self._type = join_type
        self._merge = merge
        window = ANY_WINDOW_MS if join_type == "any" else window_ms
        grace = 0 if join_type == "any" else grace_ms
        self._window: _Window[T] = _Window(window, grace)
        self._by_key: dict[bytes, list[list[Entry[T]]]] = {}
        #: `any` only: the records held, by (key, source, timestamp).
        self._near: dict[tuple[bytes, int, int], list[Entry[T]]] = {}
        #: Records that arrived behind stream time by more than W + grace.
        self.late = 0

    @property
    def window_ms(self) -> int:
        """The join window W in milliseconds (`ANY_WINDOW_MS` for an `any` join)."""
        return self._window.window_ms

    def add(
        self,
        source_index: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        *,
        wall_ms: int | None = None,
        ident: bytes = b"",
    ) -> Step[T]:
        """Feed one record from source `source_index`.

        Windows that closed by `now_ms` are expired first, so the result may also carry outputs
        and releases of earlier records.

        Args:
            source_index: The record's source, 0-based in join order.
            key: The record key.
            value: The record value (opaque).
            timestamp_ms: The record timestamp.
            token: The record's token.
            now_ms: Stream time.
            wall_ms: The wall clock at arrival; the record's window also closes W after it
                when `expire` is given `wall_ms`.
            ident: The entry's name; an entry of the same name already held (the same record
                consumed again after a restart) is replaced, not joined with.

        Returns:
            Outputs to send and tokens released.

        Raises:
            IndexError: If `source_index` is out of range.
        """
        if not 0 <= source_index < self._n:
            raise IndexError(f"source_index {source_index} not in 0..{self._n - 1}")
        step = self.expire(now_ms)
        if self._type == "any":
            self._add_any(
                source_index, key, value, timestamp_ms, token, now_ms, wall_ms, ident, step
            )
            return step
        window = self._window
        deadline = window.deadline(timestamp_ms)
        closed = deadline <= now_ms
        if key is None:
            if self._type == "outer":
                step.outputs.append(Output(key, value, timestamp_ms, token, (token,)))
            step.released.append(token)
            return step
        record = Entry(
            EntryKind.JOIN, source_index, key, value, timestamp_ms, token, ident, deadline
        )
        sides = self._by_key.get(key)
        if sides is None:
            sides = [[] for _ in range(self._n)]
            self._by_key[key] = sides
        self._match(record, sides, step)
        # Past its window, a record is kept only to wait for a partner (the grace period);
        # past the grace too, it only matches what is held.
        late = closed and window.beyond_grace(deadline, now_ms)
        kept = not late and not (closed and record.matched)
        if ident:
            window.replace(sides[source_index], ident, step, not kept)
        if not kept:
            if late:
                self.late += 1
            if not record.matched and self._type == "outer":
                step.outputs.append(self._output([record], token))
            elif not record.matched:
                reason = self._late_reason(timestamp_ms, now_ms)
                step.outputs.append(Output(key, b"", timestamp_ms, token, (token,), reason))
            step.released.append(token)
            if not any(sides):
                del self._by_key[key]
            return step
        sides[source_index].append(record)
        window.push(record, wall_ms)
        step.stored.append(record)
        return step

    def _add_any(
        self,
        source_index: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        wall_ms: int | None,
        ident: bytes,
        step: Step[T],
    ) -> None:
        step.released.append(token)
        if key is None:
            step.outputs.append(Output(key, value, timestamp_ms, token, (token,)))
            return
        window = self._window
        deadline = window.deadline(timestamp_ms)
        record = Entry(
            EntryKind.JOIN, source_index, key, value, timestamp_ms, token, ident, deadline
        )
        if ident:  # the same record read again (a seek back): the new copy replaces the old
            bucket = self._near.get((key, source_index, timestamp_ms))
            for old in bucket or ():
                if old.ident == ident:
                    window.kill(old)
                    self._drop_near(old)
                    break
        w = window.window_ms
        groups: list[list[Entry[T]]] = []
        for index in range(self._n):
            if index == source_index:
                groups.append([record])
                continue
            near: list[Entry[T]] = []
            for t in range(timestamp_ms - w, timestamp_ms + w + 1):
                bucket = self._near.get((key, index, t))
                if bucket:
                    near += bucket
            if near:
                groups.append(near)
        if len(groups) == 1:
            step.outputs.append(Output(key, value, timestamp_ms, token, (token,)))
        else:
            for combo in itertools.product(*groups):
                step.outputs.append(self._output(combo, token, (token,)))
        if record.deadline_ms > now_ms:  # else behind the window clock: emitted, not kept
            self._near.setdefault((key, source_index, timestamp_ms), []).append(record)
            window.push(record, wall_ms)

    def _late_reason(self, timestamp_ms: int, now_ms: int) -> str:
        return _late_reason("join", timestamp_ms, now_ms, self._window)

    def _drop_near(self, record: Entry[T]) -> None:
        name = (record.key, record.source, record.timestamp_ms)
        bucket = self._near[name]
        bucket.remove(record)
        if not bucket:
            del self._near[name]

    def load(self, entry: Entry[T], wall_ms: int | None = None) -> None:
        """Put back a restored entry (from a changelog), without matching it.

        Args:
            entry: A `"j"` entry as listed in some `Step.stored`.
            wall_ms: The wall clock now (the entry's wall-clock window starts again).
        """
        window = self._window
        entry.alive = True
        entry.deadline_ms = window.deadline(entry.timestamp_ms)
        sides = self._by_key.get(entry.key)
        if sides is None:
            sides = [[] for _ in range(self._n)]
            self._by_key[entry.key] = sides
        for old in sides[entry.source]:
            if entry.ident and old.ident == entry.ident:
                window.kill(old)
                sides[entry.source].remove(old)
                break
        sides[entry.source].append(entry)
        window.push(entry, wall_ms)

    def _match(self, record: Entry[T], sides: list[list[Entry[T]]], step: Step[T]) -> None:
        w = self._window.window_ms
        choices: list[list[Entry[T]]] = []
        for index, side in enumerate(sides):
            if index == record.source:
                choices.append([record])
                continue
            near = [r for r in side if abs(r.timestamp_ms - record.timestamp_ms) <= w]
            if not near:
                return
            choices.append(near)
        outer = self._type == "outer"
        for combo in itertools.product(*choices):
            if _span_ok((r.timestamp_ms for r in combo), w):
                for r in combo:
                    if outer and not r.matched and r is not record:
                        step.stored.append(r)  # its flag changed: an outer join reads it
                    r.matched = True
                step.outputs.append(self._output(combo, record.token))

    def _output(
        self, records: Sequence[Entry[T]], origin: T, contributors: tuple[T, ...] | None = None
    ) -> Output[T]:
        timestamp = max(r.timestamp_ms for r in records)
        tokens = tuple(r.token for r in records) if contributors is None else contributors
        try:
            value = reduce(self._merge, (r.value for r in records[1:]), records[0].value)
        except Exception as exc:  # the state is intact: report the set, do not raise
            return Output(records[0].key, b"", timestamp, origin, tokens, f"cannot join: {exc}")
        return Output(records[0].key, value, timestamp, origin, tokens)

    def expire(self, now_ms: int, wall_ms: int | None = None) -> Step[T]:
        """Close every window that ended at or before `now_ms` (or, if given, `wall_ms`).

        Outer joins emit the records still unmatched; every expired record is released.

        Args:
            now_ms: The window clock.
            wall_ms: The wall clock, when windows may also close on it (sources caught up).

        Returns:
            Outputs to send and tokens released.
        """
        step: Step[T] = Step()
        window = self._window
        while (record := window.pop_due(now_ms, wall_ms)) is not None:
            if self._type == "any":  # released when it arrived, never in the changelog
                self._drop_near(record)
                continue
            sides = self._by_key[record.key]
            if not record.grace and not record.matched and window.grace_ms:
                # Its window closed with no partner: an outer join emits it alone now, and
                # either kind keeps it for the grace period, so a partner delayed (a broker
                # failover, a slow model) still joins it.
                if self._type == "outer":
                    step.outputs.append(self._partial(record, sides, step))
                    step.stored.append(record)
                window.grace(record)
                continue
            sides[record.source].remove(record)
            if self._type == "outer" and not record.matched:
                step.outputs.append(self._partial(record, sides, step))
            step.released.append(record.token)
            step.removed.append(record)
            if not any(sides):
                del self._by_key[record.key]
        return step

    def _partial(self, record: Entry[T], sides: list[list[Entry[T]]], step: Step[T]) -> Output[T]:
        w = self._window.window_ms
        group = [record]
        for index, side in enumerate(sides):
            if index == record.source:
                continue
            for other in side:
                if not other.matched and _span_ok(
                    itertools.chain((r.timestamp_ms for r in group), (other.timestamp_ms,)), w
                ):
                    group.append(other)
                    step.stored.append(other)
                    break
        group.sort(key=lambda r: r.source)
        for r in group:
            r.matched = True
        return self._output(group, record.token)

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop held records whose token satisfies `predicate`, with no output.

        For partitions that were revoked: their records will be consumed again elsewhere.

        Args:
            predicate: Selects the tokens to drop.

        Returns:
            The tokens released, in deadline order.
        """
        released: list[T] = []
        for record in self._window.live():
            if predicate(record.token):
                self._window.kill(record)
                if self._type == "any":  # released when it arrived
                    self._drop_near(record)
                    continue
                sides = self._by_key[record.key]
                sides[record.source].remove(record)
                if not any(sides):
                    del self._by_key[record.key]
                released.append(record.token)
        return released

    def held(self) -> int:
        """The number of records held in windows."""
        return self._window.count

    def next_deadline(self) -> int | None:
        """When the next held record's window closes on the window's clock, None if none held."""
        return self._window.next_deadline()

    def next_wall_deadline(self) -> int | None:
        """When the next held record's window closes on the wall clock (if given), or None."""
        return self._window.next_wall_deadline()


class TriggerGate(Generic[T]):
    """Lets data records through only with a matching trigger (spec 4.7).

    A trigger matches a data record with the same key whose timestamp is within `window_ms`.
    With `triggers_join_type` `"inner"` one trigger of every trigger source is needed (data and
    triggers spanning at most W); with `"outer"` or `"any"` a single trigger suffices. The output
    value is the data value; trigger payloads never reach it (and are not kept).

    Each data record passes at most once (the reference's final inner join could emit it once
    per matching trigger): at arrival if triggers are held, else when the completing trigger
    arrives. Data still waiting when its window closes is released with no output. Triggers stay
    for their whole window so later data can match them, and are released when it closes. Records
    with a `None` key never match and are released at once.

    The output's origin is always the data record; its contributors are the data's contributors
    followed by the tokens of the triggers that let it pass (so a trigger's offset is not
    committed before the data it let through was delivered).

    Args:
        n_triggers: Number of trigger sources (>= 1).
        triggers_join_type: How triggers combine: `"inner"`, `"outer"` or `"any"`.
        window_ms: The window W (> 0), the step's join window.

    Raises:
        ValueError: On an invalid argument.
    """

    def __init__(
        self,
        n_triggers: int,
        triggers_join_type: JoinType,
        window_ms: int,
        *,
        grace_ms: int = 0,
    ) -> None:
        """Create an empty gate (see the class docstring for the arguments)."""
        if n_triggers < 1:
            raise ValueError(f"a trigger gate needs at least one trigger, got {n_triggers}")
        if triggers_join_type not in _JOIN_TYPES:
            raise ValueError(
                f"triggers_join_type must be one of {sorted(_JOIN_TYPES)}, "
                f"got {triggers_join_type!r}"
            )
        self._n = n_triggers
        self._all_needed = triggers_join_type == "inner"
        self._window: _Window[T] = _Window(window_ms, grace_ms)
        self._triggers: dict[bytes, list[list[Entry[T]]]] = {}
        self._waiting: dict[bytes, list[Entry[T]]] = {}
        #: Records that arrived behind stream time by more than W + grace.
        self.late = 0

    @property
    def window_ms(self) -> int:
        """The window W in milliseconds."""
        return self._window.window_ms

    def add_data(
        self,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        *,
        contributors: Sequence[T] | None = None,
        wall_ms: int | None = None,
        ident: bytes = b"",
    ) -> Step[T]:
        """Feed one data record.

        Args:
            key: The record key.
            value: The record value, passed on unchanged.
            timestamp_ms: The record timestamp.
            token: The record's token; the origin of the output.
            now_ms: The window clock.
            contributors: The tokens this record stands for when it is the output of an earlier
                stage; the gate releases these instead of `token`. Defaults to `(token,)`.
            wall_ms: The wall clock at arrival (see `Joiner.add`).
            ident: The entry's name if it has to wait.

        Returns:
            Outputs to send and tokens released (windows that closed by `now_ms` included).
        """
        held = (token,) if contributors is None else tuple(contributors)
        step = self.expire(now_ms)
        window = self._window
        deadline = window.deadline(timestamp_ms)
        late = deadline <= now_ms
        if key is None:
            step.released.extend(held)
            return step
        record = Entry(
            EntryKind.GATE_DATA, _DATA, key, value, timestamp_ms, token, ident, deadline, None, held
        )
        triggers = self._find(record)
        if triggers is not None:
            self._pass(record, triggers, step)
            return step
        if late and window.beyond_grace(deadline, now_ms):
            self.late += 1
            reason = _late_reason("trigger", timestamp_ms, now_ms, window)
            step.outputs.append(Output(key, b"", timestamp_ms, token, held, reason))
            step.released.extend(held)
            return step
        self._waiting.setdefault(key, []).append(record)
        window.push(record, wall_ms)
        step.stored.append(record)
        return step

    def add_output(
        self, output: Output[T], now_ms: int, *, wall_ms: int | None = None, ident: bytes = b""
    ) -> Step[T]:
        """Feed an output of an earlier stage (joiner, batcher) as a data record.

        Args:
            output: The output; its origin becomes the token, its contributors are held.
            now_ms: The window clock.
            wall_ms: The wall clock at arrival (see `Joiner.add`).
            ident: The entry's name if it has to wait.

        Returns:
            Outputs to send and tokens released.
        """
        return self.add_data(
            output.key,
            output.value,
            output.timestamp_ms,
            output.origin,
            now_ms,
            contributors=output.contributors,
            wall_ms=wall_ms,
            ident=ident,
        )

    def add_trigger(
        self,
        trigger_index: int,
        key: bytes | None,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        *,
        wall_ms: int | None = None,
        ident: bytes = b"",
    ) -> Step[T]:
        """Feed one trigger record (its payload is not needed).

        Args:
            trigger_index: The trigger source, 0-based.
            key: The record key.
            timestamp_ms: The record timestamp.
            token: The record's token.
            now_ms: The window clock.
            wall_ms: The wall clock at arrival (see `Joiner.add`).
            ident: The entry's name.

        Returns:
            Outputs (data that this trigger lets through) and tokens released.

        Raises:
            IndexError: If `trigger_index` is out of range.
        """
        if not 0 <= trigger_index < self._n:
            raise IndexError(f"trigger_index {trigger_index} not in 0..{self._n - 1}")
        step = self.expire(now_ms)
        window = self._window
        deadline = window.deadline(timestamp_ms)
        late = deadline <= now_ms
        if key is None:
            step.released.append(token)
            return step
        trigger = Entry(
            EntryKind.TRIGGER, trigger_index, key, b"", timestamp_ms, token, ident, deadline
        )
        sides = self._triggers.get(key)
        if sides is None:
            sides = [[] for _ in range(self._n)]
            self._triggers[key] = sides
        late = late and window.beyond_grace(deadline, now_ms)
        if ident:
            window.replace(sides[trigger_index], ident, step, late)
        sides[trigger_index].append(trigger)
        passed = len(step.outputs)
        self._release_waiting(key, step)
        if late:
            self.late += 1
            sides[trigger_index].remove(trigger)
            if not any(sides):
                del self._triggers[key]
            if len(step.outputs) == passed:  # it let nothing through
                reason = _late_reason("data it triggers", timestamp_ms, now_ms, window)
                step.outputs.append(Output(key, b"", timestamp_ms, token, (token,), reason))
            step.released.append(token)
            return step
        window.push(trigger, wall_ms)
        step.stored.append(trigger)
        return step

    def _release_waiting(self, key: bytes, step: Step[T]) -> None:
        waiting = self._waiting.get(key)
        if not waiting:
            return
        still: list[Entry[T]] = []
        for data in waiting:
            triggers = self._find(data)
            if triggers is None:
                still.append(data)
            else:
                self._window.kill(data)
                self._pass(data, triggers, step)
                step.removed.append(data)
        if still:
            self._waiting[key] = still
        else:
            del self._waiting[key]

    def load(self, entry: Entry[T], wall_ms: int | None = None) -> None:
        """Put back a restored `"t"` or `"d"` entry (from a changelog), without matching it.

        Args:
            entry: The entry as listed in some `Step.stored`.
            wall_ms: The wall clock now (the entry's wall-clock window starts again).
        """
        window = self._window
        entry.alive = True
        entry.deadline_ms = window.deadline(entry.timestamp_ms)
        if entry.kind == EntryKind.GATE_DATA:
            if not entry.contributors:
                entry.contributors = (entry.token,)
            self._waiting.setdefault(entry.key, []).append(entry)
        else:
            sides = self._triggers.get(entry.key)
            if sides is None:
                sides = [[] for _ in range(self._n)]
                self._triggers[entry.key] = sides
            sides[entry.source].append(entry)
        window.push(entry, wall_ms)

    def _find(self, record: Entry[T]) -> list[Entry[T]] | None:
        sides = self._triggers.get(record.key)
        if sides is None:
            return None
        w = self._window.window_ms
        near = [
            [t for t in side if abs(t.timestamp_ms - record.timestamp_ms) <= w] for side in sides
        ]
        if not self._all_needed:
            for side in near:
                if side:
                    return [side[0]]
            return None
        if not all(near):
            return None
        for combo in itertools.product(*near):
            if _span_ok(
                itertools.chain((t.timestamp_ms for t in combo), (record.timestamp_ms,)), w
            ):
                return list(combo)
        return None

    @staticmethod
    def _pass(data: Entry[T], triggers: list[Entry[T]], step: Step[T]) -> None:
        step.outputs.append(
            Output(
                data.key,
                data.value,
                max(data.timestamp_ms, *(t.timestamp_ms for t in triggers)),
                data.token,
                data.contributors + tuple(t.token for t in triggers),
            )
        )
        step.released.extend(data.contributors)

    def expire(self, now_ms: int, wall_ms: int | None = None) -> Step[T]:
        """Close every window that ended at or before `now_ms` (or, if given, `wall_ms`).

        Waiting data and triggers are released with no output.

        Args:
            now_ms: The window clock.
            wall_ms: The wall clock, when windows may also close on it (sources caught up).

        Returns:
            Tokens released (never outputs).
        """
        step: Step[T] = Step()
        window = self._window
        while (record := window.pop_due(now_ms, wall_ms)) is not None:
            if not record.grace and window.grace_ms:
                window.grace(record)  # kept for a late trigger, or late data
                continue
            step.released.extend(self._remove(record))
            step.removed.append(record)
        return step

    def _remove(self, record: Entry[T]) -> tuple[T, ...]:
        if record.source == _DATA:
            waiting = self._waiting[record.key]
            waiting.remove(record)
            if not waiting:
                del self._waiting[record.key]
            return record.contributors
        sides = self._triggers[record.key]
        sides[record.source].remove(record)
        if not any(sides):
            del self._triggers[record.key]
        return (record.token,)

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop held records (waiting data, triggers) whose token satisfies `predicate`.

        Waiting data is dropped if its token or any of its contributors satisfies `predicate`;
        all of its contributors are then released.

        Args:
            predicate: Selects the tokens to drop.

        Returns:
            The tokens released.
        """
        released: list[T] = []
        for record in self._window.live():
            hit = predicate(record.token) or any(predicate(t) for t in record.contributors)
            if hit:
                self._window.kill(record)
                released.extend(self._remove(record))
        return released

    def held(self) -> int:
        """The number of records held: waiting data plus triggers."""
        return self._window.count

    def next_deadline(self) -> int | None:
        """When the next held record's window closes on the window's clock, None if none held."""
        return self._window.next_deadline()

    def next_wall_deadline(self) -> int | None:
        """When the next held record's window closes on the wall clock (if given), or None."""
        return self._window.next_wall_deadline()
