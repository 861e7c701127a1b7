"""What sits between a step's filter and its producer: join, batch, trigger gate, cycle guard.

`StepStages` composes the pure state machines of `joins`, `batches` and `cycles` in the
reference's order (spec 4.4, 4.5): a join of the sources (or the record itself), then a batch
(single-source steps into `...inputs` only), then the trigger gate. Pure: no I/O, the clock is
passed in.

Token contract (see `joins`): every `Ref` handed to a stage was held once by the step and comes
back exactly once in some `released` list. An output handed from one stage to the next holds its
contributors (through `hold`) until the next stage releases them; a final output's contributors
are held by the step until the broker acknowledges it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from dataflow.batches import Batcher
from dataflow.cycles import RevisitGuard
from dataflow.joins import Joiner, Output, Step, TriggerGate
from dataflow.topology import StepSpec, Topology
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
    generation: int = 0  # the step's partition generation when consumed


Result = Step[Ref]


class StepStages:
    """The stages of one step.

    Args:
        spec: the step.
        output_topic: the pipeline's outputs topic (the cycle guard clears a request there).
        guard: the pipeline's shared revisit guard, or None when cycles are not allowed.
        hold: holds a record's offset (the step's offset tracker) for outputs passed between
            stages.
    """

    def __init__(
        self,
        spec: StepSpec,
        output_topic: str,
        guard: RevisitGuard | None,
        hold: Callable[[Ref], None],
    ) -> None:
        self.spec = spec
        self.guard = guard
        self._hold = hold
        self._to_outputs = spec.sink == output_topic
        request = spec.sink_is_request
        self.joiner: Joiner[Ref] | None = None
        self.batcher: Batcher[Ref] | None = None
        self.gate: TriggerGate[Ref] | None = None
        if spec.is_join:
            self.joiner = Joiner(
                len(spec.sources),
                spec.join,
                spec.window_ms,
                partial(merge_join, request=request),
                window_from="arrival",
            )
        elif request and (spec.batch_size or spec.batch_window_ms):
            self.batcher = Batcher(spec.batch_size, spec.batch_window_ms, merge_batch, batch_rows)
        if spec.triggers:
            self.gate = TriggerGate(
                len(spec.triggers), spec.triggers_join, spec.window_ms, window_from="arrival"
            )

    @property
    def stateful(self) -> bool:
        """True when some stage may hold records (the step then holds each one it hands in)."""
        return self.joiner is not None or self.batcher is not None or self.gate is not None

    @staticmethod
    def guard_for(topology: Topology) -> RevisitGuard | None:
        """The pipeline's shared revisit guard, when cycles are allowed."""
        return RevisitGuard(topology.max_step_revisits) if topology.allow_cycles else None

    def add(self, index: int, ref: Ref, value: bytes, now_ms: int) -> Result:
        """A converted record of source `index` (held once by the step if `stateful`)."""
        if self.joiner is not None:
            step = self.joiner.add(index, ref.key, value, ref.timestamp, ref, now_ms)
        elif self.batcher is not None:
            step = self.batcher.add(ref.key, value, ref.timestamp, ref, now_ms)
        else:
            output = Output(ref.key, value, ref.timestamp, ref, (ref,))
            if self.gate is None:
                return Step([output], [])
            step = Step([output], [ref])
        return self._through_gate(step, now_ms)

    def add_trigger(self, index: int, ref: Ref, now_ms: int) -> Result:
        """A record of trigger `index` that carries the trigger's tensors (held by the step)."""
        if self.gate is None:
            return Step([], [ref])
        return self.gate.add_trigger(index, ref.key, ref.timestamp, ref, now_ms)

    def expire(self, now_ms: int) -> Result:
        """Emit and release what left its window or batch by `now_ms`."""
        step: Result = Step()
        for stage in (self.joiner, self.batcher):
            if stage is not None:
                step.extend(self._through_gate(stage.expire(now_ms), now_ms))
        if self.gate is not None:
            step.extend(self.gate.expire(now_ms))
        if self.guard is not None:
            self.guard.expire(now_ms)
        return step

    def _through_gate(self, step: Result, now_ms: int) -> Result:
        if self.gate is None or not step.outputs:
            return step
        gated: Result = Step([], list(step.released))
        for output in step.outputs:
            if output.error:  # a failed merge goes straight to the error topic
                gated.outputs.append(output)
                continue
            for ref in output.contributors:
                self._hold(ref)
            gated.extend(self.gate.add_output(output, now_ms))
        return gated

    def next_deadline(self) -> int | None:
        """Wall-clock ms of the next expiry, or None."""
        deadlines = [
            d
            for d in (
                stage.next_deadline()
                for stage in (self.joiner, self.batcher, self.gate)
                if stage is not None
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def revisit(self, output: Output[Ref], now_ms: int) -> str | None:
        """The cycle guard's error text for `output`, or None to send it."""
        if self.guard is None or output.key is None:
            return None
        key = output.key.decode(errors="replace")
        return self.guard.visit(key, self.spec.sink, self._to_outputs, now_ms)

    def reset(self) -> None:
        """Forget everything held (partitions were revoked: their records will be replayed)."""
        for stage in (self.joiner, self.batcher, self.gate):
            if stage is not None:
                stage.discard(lambda _: True)
