"""A `PipelineUpdateMessage` turned into frozen step descriptions (spec 4.1, 4.3).

Pure: no I/O. The step runner reads these to know what to consume, filter, convert and where to
send. Steps are sorted as the reference sorts them (by sink, then sources) so that every replica
derives the same step indexes and consumer group ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, Literal, TypeVar

from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdate,
    PipelineStepUpdatePipelineJoinType,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.wire import ChainType, chain_type

JoinType = Literal["inner", "outer", "any"]

_JOIN_TYPES: dict[int, JoinType] = {
    PipelineStepUpdatePipelineJoinType.Unknown: "inner",
    PipelineStepUpdatePipelineJoinType.Inner: "inner",
    PipelineStepUpdatePipelineJoinType.Outer: "outer",
    PipelineStepUpdatePipelineJoinType.Any: "any",
}


class TopologyError(ValueError):
    """A pipeline that cannot be built; str() is the reason sent back to the scheduler."""


@dataclass(frozen=True)
class Source:
    """One source topic of a step, as read by the step.

    Attributes:
        topic: the Kafka topic.
        pipeline: the value the record's `pipeline` header must have.
        tensors: tensors to keep by original name; None keeps all.
        renames: original tensor name -> new name.
        chain: how a record of this topic is converted toward the sink.
    """

    topic: str
    pipeline: str
    tensors: frozenset[str] | None
    renames: Mapping[str, str]
    chain: ChainType


@dataclass(frozen=True)
class Trigger:
    """A trigger topic of a step: gates data, its own tensors never reach the sink."""

    topic: str
    pipeline: str
    tensors: frozenset[str] | None


@dataclass(frozen=True)
class StepSpec:
    """One step of a pipeline, ready to run."""

    index: int
    sources: tuple[Source, ...]
    triggers: tuple[Trigger, ...]
    sink: str
    join: JoinType
    triggers_join: JoinType
    window_ms: int
    batch_size: int | None = None
    batch_window_ms: int | None = None

    @property
    def is_join(self) -> bool:
        """True when the step joins two or more sources."""
        return len(self.sources) > 1

    @property
    def is_stateful(self) -> bool:
        """True when the step keeps state: a join, a trigger gate, or a batch of requests."""
        batched = self.sink_is_request and bool(self.batch_size or self.batch_window_ms)
        return self.is_join or bool(self.triggers) or batched

    @property
    def sink_is_request(self) -> bool:
        """True when the sink carries requests (`...inputs`)."""
        return self.sink.rsplit(".", 1)[-1] == "inputs"

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the step consumes, sources first, deduplicated in order."""
        seen = dict.fromkeys([s.topic for s in self.sources] + [t.topic for t in self.triggers])
        return tuple(seen)

    @property
    def label(self) -> str:
        """A short human name for logs and metrics: `<sources> -> <sink>`."""
        return f"{','.join(s.topic for s in self.sources)} -> {self.sink}"


@dataclass(frozen=True)
class Topology:
    """A pipeline version: its identity and its steps."""

    name: str
    version: int
    uid: str
    steps: tuple[StepSpec, ...]
    output_topic: str = ""
    error_topic: str = ""
    allow_cycles: bool = False
    max_step_revisits: int = 0
    timestamp: int = field(default=0, compare=False)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic of every step (sources, triggers, sinks), deduplicated, sorted."""
        names: set[str] = set()
        for step in self.steps:
            names.update(step.topics)
            names.add(step.sink)
        for extra in (self.output_topic, self.error_topic):
            if extra:
                names.add(extra)
        return tuple(sorted(names))


_S = TypeVar("_S", Source, Trigger)


@dataclass(frozen=True, slots=True)
class Feed(Generic[_S]):
    """A source or trigger that records of some topic may feed.

    Attributes:
        index: its index in the step's sources (or triggers).
        spec: the source (or trigger).
        pipeline: the `pipeline` header value a record must carry to feed it.
    """

    index: int
    spec: _S
    pipeline: bytes


@dataclass
class Routes:
    """What a record of one topic feeds."""

    sources: list[Feed[Source]] = field(default_factory=list)
    triggers: list[Feed[Trigger]] = field(default_factory=list)


def routes_of(spec: StepSpec) -> dict[str, Routes]:
    """What the records of each of a step's topics feed."""
    routes: dict[str, Routes] = {}
    for i, source in enumerate(spec.sources):
        fed = Feed(i, source, source.pipeline.encode())
        routes.setdefault(source.topic, Routes()).sources.append(fed)
    for i, trigger in enumerate(spec.triggers):
        gate = Feed(i, trigger, trigger.pipeline.encode())
        routes.setdefault(trigger.topic, Routes()).triggers.append(gate)
    return routes


def group_id(base: str, uid: str, step_index: int) -> str:
    """The consumer group of one step of one pipeline version.

    `<base>-<H>-s<index>` where H is the uid if it has at most 16 characters, else the hex MD5
    of the uid (spec 3.2). One group per step (not per pipeline as the reference) so that a
    join's sources are assigned together by the range assignor and replicas share the work.
    """
    digest = uid if len(uid) <= 16 else hashlib.md5(uid.encode()).hexdigest()
    return f"{base}-{digest}-s{step_index}"


def _renames(step: PipelineStepUpdate, topic: str, pipeline: str) -> Mapping[str, str]:
    prefix = topic + "."
    found = {
        m.topic_and_tensor[len(prefix) :]: m.tensor_name
        for m in step.tensor_map
        if m.pipeline_name == pipeline and m.topic_and_tensor.startswith(prefix)
    }
    return MappingProxyType(found)


def _grouped(topics: Sequence[PipelineTopic]) -> dict[tuple[str, str], set[str]]:
    groups: dict[tuple[str, str], set[str]] = {}
    for t in topics:
        tensors = groups.setdefault((t.topic_name, t.pipeline_name), set())
        if t.tensor:
            tensors.add(t.tensor)
    return groups


def step_for(update: PipelineStepUpdate, index: int, default_window_ms: int) -> StepSpec | None:
    """Describe one step; None when it has no sources (spec 6.1 vector 1).

    Sources are grouped by (topic, pipeline); a tensor reference to a topic overrides a plain
    reference to the same topic (spec 6.1 vector 7).

    Raises:
        TopologyError: a step without sink, or a join over a pass-through source.
    """
    if not update.sources:
        return None
    sink = update.sink.topic_name if update.sink else ""
    if not sink:
        raise TopologyError("a step has no sink topic")
    sources = tuple(
        Source(
            topic=topic,
            pipeline=pipeline,
            tensors=frozenset(tensors) or None,
            renames=_renames(update, topic, pipeline),
            chain=chain_type(topic, sink),
        )
        for (topic, pipeline), tensors in _grouped(update.sources).items()
    )
    if len(sources) > 1 and any(s.chain is ChainType.PASSTHROUGH for s in sources):
        raise TopologyError(f"can't join custom data: step to {sink} joins a pass-through topic")
    triggers = tuple(
        Trigger(topic=topic, pipeline=pipeline, tensors=frozenset(tensors) or None)
        for (topic, pipeline), tensors in _grouped(update.triggers).items()
    )
    batch = update.batch
    size = batch.size if batch and batch.size else None
    batch_window = batch.window_ms if batch and batch.window_ms else None
    return StepSpec(
        index=index,
        sources=sources,
        triggers=triggers,
        sink=sink,
        join=_JOIN_TYPES.get(update.input_join_ty, "inner"),
        triggers_join=_JOIN_TYPES.get(update.triggers_join_ty, "inner"),
        window_ms=update.join_window_ms or default_window_ms,
        batch_size=size,
        batch_window_ms=batch_window,
    )


def _sort_key(update: PipelineStepUpdate) -> tuple[str, str]:
    sink = update.sink.topic_name if update.sink else ""
    return sink, ",".join(s.topic_name for s in update.sources)


def topology_from(message: PipelineUpdateMessage, default_window_ms: int) -> Topology:
    """Build a pipeline's topology from a Create message.

    Raises:
        TopologyError: the message cannot be run (no steps, a step without sources or sink).
    """
    if not message.pipeline:
        raise TopologyError("the update names no pipeline")
    if not message.updates:
        raise TopologyError("the pipeline has no steps")
    ordered = sorted(message.updates, key=_sort_key)
    steps = []
    for index, update in enumerate(ordered):
        step = step_for(update, index, default_window_ms)
        if step is None:
            raise TopologyError("failed to create all pipeline steps: a step has no sources")
        steps.append(step)
    return Topology(
        name=message.pipeline,
        version=message.version,
        uid=message.uid,
        steps=tuple(steps),
        output_topic=message.pipeline_output_topic,
        error_topic=message.pipeline_error_topic,
        allow_cycles=message.allow_cycles,
        max_step_revisits=message.max_step_revisits,
        timestamp=message.timestamp,
    )


def check_state_bounds(topology: Topology, max_records: int) -> None:
    """Refuse a step whose batch cannot fit in a step's state bound.

    Raises:
        TopologyError: one line naming the step and the setting.
    """
    for spec in topology.steps:
        if spec.batch_size and spec.batch_size > max_records:
            raise TopologyError(
                f"step to {spec.sink}: batch size {spec.batch_size} exceeds "
                f"SELDON_STATE_MAX_RECORDS ({max_records})"
            )
