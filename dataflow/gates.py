"""A trigger gate: data records pass only with a matching trigger, a pure state machine.

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
    drop_from_sides,
    late_reason,
    sides_of,
    span_ok,
)

__all__ = ["TriggerGate"]

T = TypeVar("T")

_DATA = -1  # source index of trigger-gate data records
_TRIGGER = EntryKind.TRIGGER  # an enum member costs a class attribute lookup per use
_GATE_DATA = EntryKind.GATE_DATA


class TriggerGate(Windowed[T]):
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
        if triggers_join_type not in JOIN_TYPES:
            raise ValueError(
                f"triggers_join_type must be one of {sorted(JOIN_TYPES)}, "
                f"got {triggers_join_type!r}"
            )
        super().__init__(Window(window_ms, grace_ms))
        self._n = n_triggers
        self._all_needed = triggers_join_type == "inner"
        self._triggers: dict[bytes, Sides[T]] = {}
        self._waiting: dict[bytes, list[Entry[T]]] = {}

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
        into: Result[T] | None = None,
    ) -> Result[T]:
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
            into: A result to add to, returned (see `Joiner.add`).

        Returns:
            Outputs to send and tokens released (windows that closed by `now_ms` included).
        """
        held = (token,) if contributors is None else tuple(contributors)
        step = self._into(now_ms, into)
        if key is None:
            step.released.extend(held)
            return step
        window = self._window
        deadline = window.deadline(timestamp_ms)
        record = Entry(
            _GATE_DATA, _DATA, key, value, timestamp_ms, token, ident, deadline, None, held
        )
        triggers = self._find(record)
        if ident:
            # The same record consumed again (after a restart, its entry restored): the new
            # copy replaces the old, which leaves the state unless the new one waits in its
            # place.
            gone = triggers is not None or (
                deadline <= now_ms and window.beyond_grace(deadline, now_ms)
            )
            self._replace_waiting(key, ident, step, gone)
        if triggers is not None:
            self._pass(record, triggers, step)
            return step
        if deadline <= now_ms and window.beyond_grace(deadline, now_ms):
            self.late += 1
            reason = late_reason("trigger", timestamp_ms, now_ms, window)
            step.outputs.append(Output(key, b"", timestamp_ms, token, held, reason))
            step.released.extend(held)
            return step
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = [record]
        else:
            waiting.append(record)
        window.push(record, wall_ms)
        step.stored.append(record)
        return step

    def add_output(
        self, output: Output[T], now_ms: int, *, wall_ms: int | None = None, ident: bytes = b""
    ) -> Result[T]:
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
        into: Result[T] | None = None,
    ) -> Result[T]:
        """Feed one trigger record (its payload is not needed).

        Args:
            trigger_index: The trigger source, 0-based.
            key: The record key.
            timestamp_ms: The record timestamp.
            token: The record's token.
            now_ms: The window clock.
            wall_ms: The wall clock at arrival (see `Joiner.add`).
            ident: The entry's name.
            into: A result to add to, returned (see `Joiner.add`).

        Returns:
            Outputs (data that this trigger lets through) and tokens released.

        Raises:
            IndexError: If `trigger_index` is out of range.
        """
        if not 0 <= trigger_index < self._n:
            raise IndexError(f"trigger_index {trigger_index} not in 0..{self._n - 1}")
        step = self._into(now_ms, into)
        if key is None:
            step.released.append(token)
            return step
        window = self._window
        deadline = window.deadline(timestamp_ms)
        trigger = Entry(_TRIGGER, trigger_index, key, b"", timestamp_ms, token, ident, deadline)
        sides = sides_of(self._triggers, key, self._n)
        side = sides[trigger_index]
        late = deadline <= now_ms and window.beyond_grace(deadline, now_ms)
        if ident and side:
            window.replace(side, ident, step, late)
        side.append(trigger)
        passed = len(step.outputs)
        if key in self._waiting:
            self._release_waiting(key, step)
        if late:
            self.late += 1
            side.remove(trigger)
            if not any(sides):
                del self._triggers[key]
            if len(step.outputs) == passed:  # it let nothing through
                reason = late_reason("data it triggers", timestamp_ms, now_ms, window)
                step.outputs.append(Output(key, b"", timestamp_ms, token, (token,), reason))
            step.released.append(token)
            return step
        window.push(trigger, wall_ms)
        step.stored.append(trigger)
        return step

    def _release_waiting(self, key: bytes, step: Result[T]) -> None:
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
            entry: The entry as listed in some `Result.stored`.
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
            sides_of(self._triggers, entry.key, self._n)[entry.source].append(entry)
        window.push(entry, wall_ms)

    def _replace_waiting(self, key: bytes, ident: bytes, step: Result[T], gone: bool) -> None:
        waiting = self._waiting.get(key)
        if not waiting:
            return
        for old in waiting:
            if old.ident == ident:
                self._window.kill(old)
                waiting.remove(old)
                if not waiting:
                    del self._waiting[key]
                step.released.extend(old.contributors)
                if gone:
                    step.removed.append(old)
                return

    def _find(self, record: Entry[T]) -> list[Entry[T]] | None:
        sides = self._triggers.get(record.key)
        if sides is None:
            return None
        w = self._window.window_ms
        low = record.timestamp_ms - w
        high = record.timestamp_ms + w
        if self._n == 1 or not self._all_needed:
            # One trigger suffices: the first held within W, of the first source that has one.
            for side in sides:
                for t in side:
                    if low <= t.timestamp_ms <= high:
                        return [t]
            return None
        near = [[t for t in side if low <= t.timestamp_ms <= high] for side in sides]
        if not all(near):
            return None
        for combo in itertools.product(*near):
            if span_ok([record.timestamp_ms, *(t.timestamp_ms for t in combo)], w):
                return list(combo)
        return None

    @staticmethod
    def _pass(data: Entry[T], triggers: list[Entry[T]], step: Result[T]) -> None:
        if len(triggers) == 1:
            trigger = triggers[0]
            timestamp = max(data.timestamp_ms, trigger.timestamp_ms)
            tokens = (*data.contributors, trigger.token)
        else:
            timestamp = max(data.timestamp_ms, *(t.timestamp_ms for t in triggers))
            tokens = data.contributors + tuple(t.token for t in triggers)
        step.outputs.append(Output(data.key, data.value, timestamp, data.token, tokens))
        step.released.extend(data.contributors)

    def expire(self, now_ms: int, wall_ms: int | None = None) -> Result[T]:
        """Close every window that ended at or before `now_ms` (or, if given, `wall_ms`).

        Waiting data and triggers are released with no output.

        Args:
            now_ms: The window clock.
            wall_ms: The wall clock, when windows may also close on it (sources caught up).

        Returns:
            Tokens released (never outputs).
        """
        step: Result[T] = Result([], [], [], [])
        window = self._window
        pop_due = window.pop_due
        while (record := pop_due(now_ms, wall_ms)) is not None:
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
        drop_from_sides(self._triggers, record)
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
