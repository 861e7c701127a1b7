"""The explicit pipeline form: every topic spelled out, as the original 2022 proxy sent them.

A file of this form is one `PipelineUpdateMessage` in YAML. It is told apart from a Seldon
resource by `kind: PipelineUpdate`::

    kind: PipelineUpdate
    name: some-pipeline          # pipeline name (header filter of every topic by default)
    version: 1                   # optional: pin the version (else the proxy numbers versions)
    uid: "1234"                  # optional: pin the uid (else a fresh 20-char id per version)
    outputTopic: seldon.ns.pipeline.some-pipeline.outputs   # optional: pipelineOutputTopic
    errorTopic: seldon.ns.errors.errors                     # optional: pipelineErrorTopic
    allowCycles: false           # optional
    maxStepRevisits: 0           # optional
    steps:
      - sources:                 # one or more; a plain string is {topic: <string>}
          - topic: seldon.some-namespace.some-model-3.outputs
            tensor: tensor1      # optional: one tensor of the message
            pipelineName: other  # optional: header filter, default the pipeline's name
        triggers: []             # optional, same shape as sources
        sink: seldon.some-namespace.some-model-4.inputs   # or {topic: ..., pipelineName: ...}
        inputJoinType: inner     # optional: inner | outer | any (absent: Unknown = inner)
        triggersJoinType: inner  # optional, as inputJoinType
        joinWindowMs: 1000       # optional (absent: engine default)
        tensorMap:               # optional renames
          - topicAndTensor: seldon.some-namespace.some-model-3.outputs.tensor1
            tensorName: input1
            pipelineName: other  # optional, default the pipeline's name
        batch: {size: 10, windowMs: 100, rolling: false}   # optional, all keys optional

Fields map one to one onto the message; nothing is added (no output or error step), so the
original demo's canned message is written exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineTensorMapping,
    PipelineTopic,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.specs.base import (
    JoinTypeName,
    PipelineSpec,
    SpecError,
    SpecModel,
    fail,
    join_type,
)
from dataflow.specs.limits import BatchSize, StepRevisits, WindowMs, find_cycle, topic_edges
from dataflow.topics import TopicError, check_name, check_topic

KIND = "PipelineUpdate"


class ExplicitTopic(SpecModel):
    """A source or trigger: `{topic, tensor?, pipelineName?}` or the topic as a string."""

    topic: str
    tensor: str | None = None
    pipeline_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"topic": data} if isinstance(data, str) else data


class ExplicitSink(SpecModel):
    """A sink: `{topic, pipelineName?}` or the topic as a string."""

    topic: str
    pipeline_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"topic": data} if isinstance(data, str) else data


class ExplicitTensorMapping(SpecModel):
    """A rename: tensor `<topic>.<tensor>` is renamed `tensorName`."""

    topic_and_tensor: str
    tensor_name: str
    pipeline_name: str | None = None


class ExplicitBatch(SpecModel):
    """`batch`, passed as is (within the bounds of `dataflow.specs.limits`)."""

    size: BatchSize | None = None
    window_ms: WindowMs | None = None
    rolling: bool = False


class ExplicitStep(SpecModel):
    """One `PipelineStepUpdate`."""

    sources: list[ExplicitTopic]
    sink: ExplicitSink
    triggers: list[ExplicitTopic] = Field(default_factory=list)
    input_join_type: JoinTypeName | None = None
    triggers_join_type: JoinTypeName | None = None
    join_window_ms: WindowMs | None = None
    tensor_map: list[ExplicitTensorMapping] = Field(default_factory=list)
    batch: ExplicitBatch | None = None


class ExplicitPipeline(SpecModel):
    """A `kind: PipelineUpdate` file."""

    kind: Literal["PipelineUpdate"]
    name: str
    version: Annotated[int, Field(ge=1, le=0xFFFFFFFF)] | None = None
    uid: str | None = None
    output_topic: str = ""
    error_topic: str = ""
    allow_cycles: bool = False
    max_step_revisits: StepRevisits = 0
    steps: list[ExplicitStep]


@dataclass(frozen=True, kw_only=True)
class ExplicitPipelineSpec(PipelineSpec):
    """A validated explicit pipeline.

    Attributes:
        pipeline: the parsed file.
    """

    pipeline: ExplicitPipeline

    def _topic(self, topic: ExplicitTopic) -> PipelineTopic:
        return PipelineTopic(
            pipeline_name=topic.pipeline_name or self.name,
            topic_name=topic.topic,
            tensor=topic.tensor,
        )

    def to_message(self, version: int, uid: str) -> PipelineUpdateMessage:
        """The Create message, field for field.

        Args:
            version: the pipeline version (the pinned one when the file pins it).
            uid: the uid of that version.
        """
        updates = []
        for step in self.pipeline.steps:
            update = PipelineStepUpdate(
                sources=[self._topic(t) for t in step.sources],
                triggers=[self._topic(t) for t in step.triggers],
                sink=PipelineTopic(
                    pipeline_name=step.sink.pipeline_name or self.name,
                    topic_name=step.sink.topic,
                ),
                input_join_ty=join_type(step.input_join_type),
                triggers_join_ty=join_type(step.triggers_join_type),
                join_window_ms=step.join_window_ms,
                tensor_map=[
                    PipelineTensorMapping(
                        pipeline_name=m.pipeline_name or self.name,
                        topic_and_tensor=m.topic_and_tensor,
                        tensor_name=m.tensor_name,
                    )
                    for m in step.tensor_map
                ],
            )
            if step.batch is not None:
                update.batch = Batch(
                    size=step.batch.size, window_ms=step.batch.window_ms, rolling=step.batch.rolling
                )
            updates.append(update)
        return PipelineUpdateMessage(
            op=PipelineUpdateMessagePipelineOperation.Create,
            pipeline=self.name,
            version=version,
            uid=uid,
            updates=updates,
            pipeline_output_topic=self.pipeline.output_topic,
            pipeline_error_topic=self.pipeline.error_topic,
            allow_cycles=self.pipeline.allow_cycles,
            max_step_revisits=self.pipeline.max_step_revisits,
        )


def _check(source: str, path: str, action: Any, *args: Any) -> None:
    try:
        action(*args)
    except TopicError as e:
        raise fail(source, path, str(e)) from None


def _check_pipeline_name(source: str, path: str, name: str | None) -> None:
    if name is not None:
        _check(source, path, check_name, name, "pipeline name")


def _check_text(source: str, path: str, value: str | None, what: str) -> None:
    if value is not None and not value:
        raise fail(source, path, f"empty {what}")


def _check_cycles(source: str, steps: list[ExplicitStep]) -> None:
    """Refuse a step that reads a topic it, or a step downstream of it, writes."""
    graph = [
        ([t.topic for t in [*step.sources, *step.triggers]], step.sink.topic) for step in steps
    ]
    cycle = find_cycle(topic_edges(graph))
    if cycle is None:
        return
    first = next(
        i for i, (reads, sink) in enumerate(graph) if cycle[0] in reads and sink == cycle[1]
    )
    raise fail(
        source,
        f"steps[{first}]",
        f"cycle {' -> '.join(cycle)}: a step reads a topic it or a later step writes "
        "(set allowCycles: true to allow it, bounded by maxStepRevisits)",
    )


def build_explicit_spec(source: str, pipeline: ExplicitPipeline) -> ExplicitPipelineSpec:
    """Check a parsed explicit file.

    Args:
        source: the file name, for errors.
        pipeline: the parsed file.

    Raises:
        SpecError: the first problem found.
    """
    _check_pipeline_name(source, "name", pipeline.name)
    if pipeline.uid is not None:
        _check(source, "uid", check_topic, pipeline.uid)
    for key, name in (("outputTopic", pipeline.output_topic), ("errorTopic", pipeline.error_topic)):
        if name:
            _check(source, key, check_topic, name)
    if not pipeline.steps:
        raise fail(source, "steps", "a pipeline needs at least one step")
    for i, step in enumerate(pipeline.steps):
        path = f"steps[{i}]"
        if not step.sources:
            raise fail(source, f"{path}.sources", "a step needs at least one source")
        for kind, topics in (("sources", step.sources), ("triggers", step.triggers)):
            for j, topic in enumerate(topics):
                where = f"{path}.{kind}[{j}]"
                _check(source, f"{where}.topic", check_topic, topic.topic)
                _check_text(source, f"{where}.tensor", topic.tensor, "tensor name")
                _check_pipeline_name(source, f"{where}.pipelineName", topic.pipeline_name)
        _check(source, f"{path}.sink.topic", check_topic, step.sink.topic)
        _check_pipeline_name(source, f"{path}.sink.pipelineName", step.sink.pipeline_name)
        for j, mapping in enumerate(step.tensor_map):
            where = f"{path}.tensorMap[{j}]"
            if "." not in mapping.topic_and_tensor.strip("."):
                raise fail(
                    source,
                    f"{where}.topicAndTensor",
                    f"expected '<topic>.<tensor>', got {mapping.topic_and_tensor!r}",
                )
            _check_text(source, f"{where}.tensorName", mapping.tensor_name, "tensor name")
            _check_pipeline_name(source, f"{where}.pipelineName", mapping.pipeline_name)
    if not pipeline.allow_cycles:
        _check_cycles(source, pipeline.steps)
    return ExplicitPipelineSpec(
        name=pipeline.name,
        source=source,
        version=pipeline.version,
        uid=pipeline.uid,
        pipeline=pipeline,
    )


__all__ = [
    "KIND",
    "ExplicitPipeline",
    "ExplicitPipelineSpec",
    "SpecError",
    "build_explicit_spec",
]
