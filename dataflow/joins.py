"""A windowed n-ary join on the record key, as a pure state machine on stream time.

The contract it keeps (tokens, releases, state entries, the window clock) is `dataflow.windows`'.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Generic, TypeVar

from dataflow.windows import (
    JOIN_TYPES,
    Entry,
    EntryKind,
    JoinType,
    Output,
    Result,
    Window,
    check_window,
    late_reason,
    span_ok,
)

__all__ = ["ANY_WINDOW_MS", "Joiner"]

T = TypeVar("T")

ANY_WINDOW_MS = 1
"""The window of an `any` join, whatever the step's: the reference's `JoinWindows.of(1 ms)`."""


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
      listed in `Result.stored` or `Result.removed` (no changelog), and are not counted `late`
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
        if join_type not in JOIN_TYPES:
            raise ValueError(f"join_type must be one of {sorted(JOIN_TYPES)}, got {join_type!r}")
        check_window(window_ms)
        self._n = n_sources
        self._type = join_type
        self._merge = merge
        window = ANY_WINDOW_MS if join_type == "any" else window_ms
        grace = 0 if join_type == "any" else grace_ms
        self._window: Window[T] = Window(window, grace)
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
    ) -> Result[T]:
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
        step: Result[T],
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
        return late_reason("join", timestamp_ms, now_ms, self._window)

    def _drop_near(self, record: Entry[T]) -> None:
        name = (record.key, record.source, record.timestamp_ms)
        bucket = self._near[name]
        bucket.remove(record)
        if not bucket:
            del self._near[name]

    def load(self, entry: Entry[T], wall_ms: int | None = None) -> None:
        """Put back a restored entry (from a changelog), without matching it.

        Args:
            entry: A `"j"` entry as listed in some `Result.stored`.
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

    def _match(self, record: Entry[T], sides: list[list[Entry[T]]], step: Result[T]) -> None:
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
            if span_ok((r.timestamp_ms for r in combo), w):
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

    def expire(self, now_ms: int, wall_ms: int | None = None) -> Result[T]:
        """Close every window that ended at or before `now_ms` (or, if given, `wall_ms`).

        Outer joins emit the records still unmatched; every expired record is released.

        Args:
            now_ms: The window clock.
            wall_ms: The wall clock, when windows may also close on it (sources caught up).

        Returns:
            Outputs to send and tokens released.
        """
        step: Result[T] = Result()
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

    def _partial(self, record: Entry[T], sides: list[list[Entry[T]]], step: Result[T]) -> Output[T]:
        w = self._window.window_ms
        group = [record]
        for index, side in enumerate(sides):
            if index == record.source:
                continue
            for other in side:
                if not other.matched and span_ok(
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
