"""A windowed n-ary join on the record key, as a pure state machine on stream time.

The contract it keeps (tokens, releases, state entries, the window clock) is `dataflow.windows`'.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TypeVar

from dataflow.windows import (
    JOIN_TYPES,
    Entry,
    EntryKind,
    JoinType,
    Output,
    Result,
    Sides,
    Window,
    Windowed,
    check_window,
    drop_from_sides,
    late_reason,
    sides_of,
    span_ok,
)

__all__ = ["ANY_WINDOW_MS", "Joiner"]

T = TypeVar("T")

ANY_WINDOW_MS = 1
"""The window of an `any` join, whatever the step's: the reference's `JoinWindows.of(1 ms)`."""

_JOIN = EntryKind.JOIN  # an enum member costs a class attribute lookup per use


class Joiner(Windowed[T]):
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
        any_join = join_type == "any"
        window = ANY_WINDOW_MS if any_join else window_ms
        grace = 0 if any_join else grace_ms
        super().__init__(Window(window, grace))
        self._n = n_sources
        self._type = join_type
        self._outer = join_type == "outer"
        self._any = any_join
        self._merge = merge
        self._by_key: dict[bytes, Sides[T]] = {}
        #: `any` only: the records held, by (key, source, timestamp).
        self._near: dict[tuple[bytes, int, int], list[Entry[T]]] = {}

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
        into: Result[T] | None = None,
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
            into: A result to add to (a caller feeding many records gathers them in one),
                returned; else a new one.

        Returns:
            Outputs to send and tokens released.

        Raises:
            IndexError: If `source_index` is out of range.
        """
        n = self._n
        if not 0 <= source_index < n:
            raise IndexError(f"source_index {source_index} not in 0..{n - 1}")
        step = self._into(now_ms, into)
        if self._any:
            self._add_any(
                source_index, key, value, timestamp_ms, token, now_ms, wall_ms, ident, step
            )
            return step
        if key is None:
            if self._outer:
                step.outputs.append(Output(key, value, timestamp_ms, token, (token,)))
            step.released.append(token)
            return step
        window = self._window
        deadline = window.deadline(timestamp_ms)
        record = Entry(_JOIN, source_index, key, value, timestamp_ms, token, ident, deadline)
        sides = sides_of(self._by_key, key, n)
        if n == 2:
            other = sides[1 - source_index]
            if other:
                self._match_pair(record, other, step)
        else:
            self._match(record, sides, step)
        # Past its window, a record is kept only to wait for a partner (the grace period);
        # past the grace too, it only matches what is held.
        closed = deadline <= now_ms
        late = closed and window.beyond_grace(deadline, now_ms)
        kept = not closed or not (late or record.matched)
        side = sides[source_index]
        if ident and side:
            window.replace(side, ident, step, not kept)
        if kept:
            side.append(record)
            window.push(record, wall_ms)
            step.stored.append(record)
            return step
        if late:
            self.late += 1
        if not record.matched and self._outer:
            step.outputs.append(self._output([record], token))
        elif not record.matched:
            reason = self._late_reason(timestamp_ms, now_ms)
            step.outputs.append(Output(key, b"", timestamp_ms, token, (token,), reason))
        step.released.append(token)
        if not any(sides):
            del self._by_key[key]
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
        record = Entry(_JOIN, source_index, key, value, timestamp_ms, token, ident, deadline)
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
        side = sides_of(self._by_key, entry.key, self._n)[entry.source]
        for old in side:
            if entry.ident and old.ident == entry.ident:
                window.kill(old)
                side.remove(old)
                break
        side.append(entry)
        window.push(entry, wall_ms)

    def _match_pair(self, record: Entry[T], other: list[Entry[T]], step: Result[T]) -> None:
        """`_match` for two sources: one output per record of `other` within W of `record`."""
        w = self._window.window_ms
        low = record.timestamp_ms - w
        high = record.timestamp_ms + w
        outer = self._outer
        first = record.source == 0
        for r in other:
            if low <= r.timestamp_ms <= high:
                if outer and not r.matched:
                    step.stored.append(r)  # its flag changed: an outer join reads it
                r.matched = True
                record.matched = True
                if first:
                    step.outputs.append(self._pair(record, r, record.token))
                else:
                    step.outputs.append(self._pair(r, record, record.token))

    def _match(self, record: Entry[T], sides: Sides[T], step: Result[T]) -> None:
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
        outer = self._outer
        for combo in itertools.product(*choices):
            if span_ok([r.timestamp_ms for r in combo], w):
                for r in combo:
                    if outer and not r.matched and r is not record:
                        step.stored.append(r)  # its flag changed: an outer join reads it
                    r.matched = True
                step.outputs.append(self._output(combo, record.token))

    def _pair(self, left: Entry[T], right: Entry[T], origin: T) -> Output[T]:
        """`_output` for two records, in source order."""
        timestamp = (
            left.timestamp_ms if left.timestamp_ms >= right.timestamp_ms else right.timestamp_ms
        )
        tokens = (left.token, right.token)
        try:
            value = self._merge(left.value, right.value)
        except Exception as exc:  # the state is intact: report the pair, do not raise
            return Output(left.key, b"", timestamp, origin, tokens, f"cannot join: {exc}")
        return Output(left.key, value, timestamp, origin, tokens)

    def _output(
        self, records: Sequence[Entry[T]], origin: T, contributors: tuple[T, ...] | None = None
    ) -> Output[T]:
        if len(records) == 2 and contributors is None:
            return self._pair(records[0], records[1], origin)
        timestamp = max(r.timestamp_ms for r in records)
        tokens = tuple(r.token for r in records) if contributors is None else contributors
        merge = self._merge
        value = records[0].value
        try:
            for r in records[1:]:
                value = merge(value, r.value)
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
        step: Result[T] = Result([], [], [], [])
        window = self._window
        pop_due = window.pop_due
        outer = self._outer
        by_key = self._by_key
        while (record := pop_due(now_ms, wall_ms)) is not None:
            if self._any:  # released when it arrived, never in the changelog
                self._drop_near(record)
                continue
            sides = by_key[record.key]
            if not record.grace and not record.matched and window.grace_ms:
                # Its window closed with no partner: an outer join emits it alone now, and
                # either kind keeps it for the grace period, so a partner delayed (a broker
                # failover, a slow model) still joins it.
                if outer:
                    step.outputs.append(self._partial(record, sides, step))
                    step.stored.append(record)
                window.grace(record)
                continue
            sides[record.source].remove(record)
            if outer and not record.matched:
                step.outputs.append(self._partial(record, sides, step))
            step.released.append(record.token)
            step.removed.append(record)
            if not any(sides):
                del by_key[record.key]
        return step

    def _partial(self, record: Entry[T], sides: Sides[T], step: Result[T]) -> Output[T]:
        w = self._window.window_ms
        group = [record]
        low = high = record.timestamp_ms  # the group's span
        for index, side in enumerate(sides):
            if index == record.source:
                continue
            for other in side:
                t = other.timestamp_ms
                if not other.matched and max(high, t) - min(low, t) <= w:
                    group.append(other)
                    low, high = min(low, t), max(high, t)
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
                if self._any:  # released when it arrived
                    self._drop_near(record)
                    continue
                drop_from_sides(self._by_key, record)
                released.append(record.token)
        return released
