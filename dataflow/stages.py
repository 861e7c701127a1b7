"""What sits between a step's filter and its producer: join, batch, trigger gate, cycle guard.

`StepStages` composes the pure state machines of `joins`, `gates`, `batches` and `cycles` in the
reference's order (spec 4.4, 4.5): a join of the sources (or the record itself), then a batch
(single-source steps into `...inputs` only; one open batch per input partition), then the
trigger gate. Pure: no I/O, the clock is passed in.

State contract (see `windows`): what a stage keeps is an `Entry`, listed in `stored` when it
enters (or changes) and in `removed` when it leaves. The step writes those to the changelog
(`dataflow.changelog`), holding the offset of the record being processed until the writes are
acknowledged; so no stage holds an offset, and `released` only says a token left the stages.
A final output's contributors are held by the step until the broker acknowledges it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from dataflow.batches import PartitionBatcher
from dataflow.cycles import RevisitGuard
from dataflow.gates import TriggerGate
from dataflow.joins import Joiner
from dataflow.topology import StepSpec, Topology
from dataflow.windows import Entry, EntryKind, Output
from dataflow.windows import Result as Changes
from dataflow.wire import batch_rows, merge_batch, merge_join

Headers = tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class Ref:
    """A consumed record as the step tracks it: where it came from, its key and headers."""

    tp: Any
    offset: int
    key: bytes | None
    headers: Headers
    timestamp: int
    received: float = 0.0  # perf_counter() when consumed, for the latency histogram
    generation: int = 0  # the step's partition generation when consumed (not if restored)
    #: read back from the changelog: its offset is long committed, it holds none
    restored: bool = False
    pending: int = 0  # deliveries in flight that carry this record's data
    deferred: list[Entry[Ref]] | None = None  # state removals waiting for those deliveries

    def holds_offset(self, generation: int) -> bool:
        """True when the record's offset is held in the step's current `generation`: it was
        consumed since its partition was last assigned (not restored, not revoked since)."""
        return self.generation == generation and not self.restored


Result = Changes[Ref]


class StepStages:
    """The stages of one step.

    Joins and gates run on stream time (`now_ms` below: `dataflow.streamtime`), batches on the
    wall clock. Every record a stage keeps is listed in `Result.stored` (and `removed` when it
    leaves): the step mirrors it in the changelog, so no stage holds an offset.

    Args:
        spec: the step.
        output_topic: the pipeline's outputs topic (the cycle guard clears a request there).
        guard: the pipeline's shared revisit guard, or None when cycles are not allowed.
        grace_ms: how long join and gate windows keep a record past their close for a late
            partner (`joins`).
    """

    def __init__(
        self,
        spec: StepSpec,
        output_topic: str,
        guard: RevisitGuard | None,
        grace_ms: int = 0,
    ) -> None:
        self.spec = spec
        self.guard = guard
        self._to_outputs = spec.sink == output_topic
        request = spec.sink_is_request
        self.joiner: Joiner[Ref] | None = None
        self.batcher: PartitionBatcher[Ref] | None = None
        self.gate: TriggerGate[Ref] | None = None
        if spec.is_join:
            self.joiner = Joiner(
                len(spec.sources),
                spec.join,
                spec.window_ms,
                partial(merge_join, request=request),
                grace_ms=grace_ms,
            )
        elif request and (spec.batch_size or spec.batch_window_ms):
            # One batch per input partition, as the reference's batch store per stream task.
            self.batcher = PartitionBatcher(
                spec.batch_size, spec.batch_window_ms, merge_batch, batch_rows, partition=_tp_of
            )
        if spec.triggers:
            self.gate = TriggerGate(
                len(spec.triggers),
                spec.triggers_join,
                spec.window_ms,
                grace_ms=grace_ms,
            )

    @property
    def stateful(self) -> bool:
        """True when some stage may hold records (the step then keeps a changelog)."""
        return self.joiner is not None or self.batcher is not None or self.gate is not None

    @property
    def timed(self) -> bool:
        """True when some stage runs on stream time (a join or a trigger gate)."""
        return self.joiner is not None or self.gate is not None

    @staticmethod
    def guard_for(topology: Topology) -> RevisitGuard | None:
        """The pipeline's shared revisit guard, when cycles are allowed."""
        return RevisitGuard(topology.max_step_revisits) if topology.allow_cycles else None

    def add(
        self,
        index: int,
        ref: Ref,
        value: bytes,
        now_ms: int,
        wall_ms: int,
        ident: bytes,
        into: Result | None = None,
    ) -> Result:
        """A converted record of source `index` (`now_ms`: stream time; `ident`: its entry);
        what it causes is added to `into` when given (and returned)."""
        if self.joiner is not None and self.gate is None:
            return self.joiner.add(
                index, ref.key, value, ref.timestamp, ref, now_ms, wall_ms=wall_ms, ident=ident,
                into=into,
            )  # fmt: skip
        if self.gate is not None and self.joiner is None and self.batcher is None:
            # A source record straight into the gate: what `_through_gate` does with it
            # (under the same entry name), without the output in between.
            name = _gate_name(ident, 0, ref)
            return self.gate.add_data(
                ref.key, value, ref.timestamp, ref, now_ms, wall_ms=wall_ms, ident=name, into=into
            )
        step = self._add(index, ref, value, now_ms, wall_ms, ident)
        if into is None:
            return step
        into.extend(step)
        return into

    def _add(
        self, index: int, ref: Ref, value: bytes, now_ms: int, wall_ms: int, ident: bytes
    ) -> Result:
        if self.joiner is not None:
            step = self.joiner.add(
                index, ref.key, value, ref.timestamp, ref, now_ms, wall_ms=wall_ms, ident=ident
            )
        elif self.batcher is not None:
            step = self.batcher.add(ref.key, value, ref.timestamp, ref, wall_ms, ident=ident)
        else:  # a cycle-guarded chain step: no stage holds the record (a gate-only step
            # goes straight to its gate in `add`)
            return Changes([Output(ref.key, value, ref.timestamp, ref, (ref,))], [])
        return self._through_gate(step, now_ms, wall_ms, ident)

    def add_trigger(
        self,
        index: int,
        ref: Ref,
        now_ms: int,
        wall_ms: int,
        ident: bytes,
        into: Result | None = None,
    ) -> Result:
        """A record of trigger `index` that carries the trigger's tensors (added to `into`
        when given)."""
        if self.gate is None:
            if into is None:
                return Changes([], [ref])
            into.released.append(ref)
            return into
        return self.gate.add_trigger(
            index, ref.key, ref.timestamp, ref, now_ms, wall_ms=wall_ms, ident=ident, into=into
        )

    def expire(self, now_ms: int | None, wall_ms: int, caught_up: bool) -> Result:
        """Emit and release what left its window or batch.

        Args:
            now_ms: stream time (None while unknown: no window closes on it).
            wall_ms: the wall clock (batches; windows too when `caught_up`).
            caught_up: every source partition of the step is read to its end.
        """
        step: Result = Changes()
        stream = now_ms if now_ms is not None else -(2**62)
        wall = wall_ms if caught_up else None
        if self.joiner is not None:
            step.extend(self._through_gate(self.joiner.expire(stream, wall), stream, wall_ms))
        if self.batcher is not None:
            step.extend(self._through_gate(self.batcher.expire(wall_ms), stream, wall_ms))
        if self.gate is not None:
            step.extend(self.gate.expire(stream, wall))
        if self.guard is not None:
            self.guard.expire(wall_ms)
        return step

    def flush_batch(self, now_ms: int, wall_ms: int) -> Result:
        """Emit the open batch early (the step's state is full)."""
        if self.batcher is None:
            return Changes()
        return self._through_gate(self.batcher.full(), now_ms, wall_ms)

    def _through_gate(self, step: Result, now_ms: int, wall_ms: int, ident: bytes = b"") -> Result:
        if self.gate is None or not step.outputs:
            return step
        gated: Result = Changes([], list(step.released), list(step.stored), list(step.removed))
        for n, output in enumerate(step.outputs):
            if output.error:  # a failed merge goes straight to the error topic
                gated.outputs.append(output)
                continue
            name = _gate_name(ident, n, output.origin)
            gated.extend(self.gate.add_output(output, now_ms, wall_ms=wall_ms, ident=name))
        return gated

    def load(self, entry: Entry[Ref], wall_ms: int) -> None:
        """Put back an entry restored from the changelog."""
        if entry.kind == EntryKind.JOIN and self.joiner is not None:
            self.joiner.load(entry, wall_ms)
        elif entry.kind in (EntryKind.TRIGGER, EntryKind.GATE_DATA) and self.gate is not None:
            self.gate.load(entry, wall_ms)
        elif entry.kind == EntryKind.BATCH and self.batcher is not None:
            self.batcher.load(entry, entry.token.key, wall_ms)

    def next_deadline(self, caught_up: bool = True) -> int | None:
        """Wall-clock ms of the next expiry: batch windows; join and gate windows only when
        `caught_up` (while a source lags, they close on stream time, never on the wall clock,
        so their wall deadlines say nothing about when to wake up)."""
        deadlines = [
            self.batcher.next_deadline() if self.batcher is not None else None,
            self.joiner.next_wall_deadline() if self.joiner is not None and caught_up else None,
            self.gate.next_wall_deadline() if self.gate is not None and caught_up else None,
        ]
        found = [d for d in deadlines if d is not None]
        return min(found) if found else None

    def held(self) -> int:
        """Records held by the stages."""
        return sum(stage.held() for stage in (self.joiner, self.batcher, self.gate) if stage)

    def late(self) -> int:
        """Records that arrived behind stream time by more than the window."""
        return sum(stage.late for stage in (self.joiner, self.gate) if stage is not None)

    def revisit(self, output: Output[Ref], now_ms: int) -> str | None:
        """The cycle guard's error text for `output`, or None to send it."""
        if self.guard is None or output.key is None:
            return None
        key = output.key.decode(errors="replace")
        return self.guard.visit(key, self.spec.sink, self._to_outputs, now_ms)

    def discard(self, predicate: Callable[[Ref], bool]) -> None:
        """Forget what is held for records matching `predicate` (their partitions moved on)."""
        for stage in (self.joiner, self.batcher, self.gate):
            if stage is not None:
                stage.discard(predicate)


def _tp_of(ref: Ref) -> Any:
    return ref.tp


def _gate_name(ident: bytes, n: int, origin: Ref) -> bytes:
    """The entry name of the `n`th output of the record named `ident` as it waits at the gate
    (`origin`: the record whose headers the output takes)."""
    tp = origin.tp
    return b"%s/%d/%s/%d/%d" % (ident or b"d", n, tp.topic.encode(), tp.partition, origin.offset)
