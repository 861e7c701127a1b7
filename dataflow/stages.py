"""What sits between a step's filter and its producer: join, trigger gate, batch, cycle guard.

A `StepStages` takes converted records and returns outputs to send plus the records it no
longer holds. Pure: no I/O, the clock is passed in. The step holds a record's offset once for
every stage entry and releases it when a stage reports it released, so nothing held in a
window or a batch is committed before it is sent on or expires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataflow.topology import StepSpec, Topology

Headers = tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class Ref:
    """A consumed record as the step tracks it: where it came from, its key and headers."""

    tp: Any
    offset: int
    key: bytes | None
    headers: Headers
    timestamp: int


@dataclass(frozen=True, slots=True)
class Output:
    """A value to send: key and headers from `origin`, committed with `contributors`."""

    key: bytes | None
    value: bytes
    origin: Ref
    contributors: tuple[Ref, ...]
    extra_headers: tuple[tuple[str, bytes], ...] = ()


Result = tuple[list[Output], list[Ref]]


class StepStages:
    """The stages of one step, composed in the reference's order: join, triggers, batch."""

    def __init__(
        self, spec: StepSpec, guard: Any | None, hold: Callable[[Ref], None] | None = None
    ):
        self.spec = spec
        self.guard = guard
        self._hold = hold

    @staticmethod
    def guard_for(topology: Topology) -> Any | None:
        """The pipeline's shared cycle guard, when cycles are allowed."""
        return None

    @classmethod
    def for_step(cls, topology: Topology, spec: StepSpec, guard: Any | None) -> StepStages:
        """The stages `spec` needs."""
        return cls(spec, guard)

    def add(self, index: int, ref: Ref, value: bytes, now_ms: int) -> Result:
        """A converted record of source `index`."""
        return [Output(ref.key, value, ref, (ref,))], []

    def add_trigger(self, index: int, ref: Ref, value: bytes, now_ms: int) -> Result:
        """A record of trigger `index` that carries the trigger's tensors."""
        return [], []

    def expire(self, now_ms: int) -> Result:
        """Emit and release what left its window by `now_ms`."""
        return [], []

    def next_deadline(self) -> int | None:
        """Wall-clock ms of the next expiry, or None."""
        return None

    def revisit(self, output: Output, sink: str) -> str | None:
        """The cycle guard's error text for `output`, or None to send it."""
        return None

    def reset(self) -> None:
        """Forget everything held (partitions were revoked: their records will be replayed)."""
