"""Seldon `Pipeline` resources (`mlops.seldon.io/v1alpha1`) and their translation.

The translation is the scheduler's `createPipelineCreationMessage` (spec 3.1):

1. one update per model step: sources = the resolved `inputs` (or the pipeline's inputs topic
   when there are none), triggers, sink = `<model>.inputs`, join types, `joinWindowMs` only when
   set, tensorMap, batch (size and windowMs; `rolling` is not forwarded);
2. when `spec.input` is present, an input step: the external inputs and triggers into this
   pipeline's inputs topic;
3. when `spec.output` is present, an output step: the output steps (or the pipeline's inputs
   topic) into the pipeline's outputs topic, with `joinWindowMs` always set (0 = engine default);
4. always an error step: the errors topic into the pipeline's outputs topic, Inner.

Every topic's header filter (`pipelineName`) is this pipeline, except external inputs, which
filter on the pipeline they name. Unset join types are `inner`, as the CRD defaults them.
Steps are sent in the order of the file (the scheduler's order is random; engines sort).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineStepUpdatePipelineJoinType,
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
from dataflow.specs.limits import (
    BatchSize,
    StepRevisits,
    WindowMs,
    find_cycle,
    shorten,
    topic_edges,
    topic_too_long,
)
from dataflow.topics import (
    INPUTS,
    MODEL_SEGMENT,
    OUTPUTS,
    SEPARATOR,
    StepRef,
    TopicError,
    TopicNamer,
    TopicRef,
    check_name,
    parse_external_reference,
    parse_step_reference,
)

API_VERSION = "mlops.seldon.io/v1alpha1"
KIND = "Pipeline"


class SeldonBatch(SpecModel):
    """`spec.steps[].batch`."""

    size: BatchSize | None = None
    window_ms: WindowMs | None = None
    rolling: bool = False


class SeldonStep(SpecModel):
    """`spec.steps[]`: one model step."""

    name: str
    inputs: list[str] = Field(default_factory=list)
    triggers: list[str] = Field(default_factory=list)
    tensor_map: dict[str, str] = Field(default_factory=dict)
    inputs_join_type: JoinTypeName = "inner"
    triggers_join_type: JoinTypeName = "inner"
    join_window_ms: WindowMs | None = None
    batch: SeldonBatch | None = None


class SeldonInput(SpecModel):
    """`spec.input`: data taken from other pipelines into this pipeline's inputs topic."""

    external_inputs: list[str] = Field(default_factory=list)
    external_triggers: list[str] = Field(default_factory=list)
    tensor_map: dict[str, str] = Field(default_factory=dict)
    join_type: JoinTypeName = "inner"
    triggers_join_type: JoinTypeName = "inner"
    join_window_ms: WindowMs | None = None


class SeldonOutput(SpecModel):
    """`spec.output`: the steps whose outputs form the pipeline's output.

    The CRD calls the join type `stepsJoin`; `joinType` is accepted as another name for it.
    """

    steps: list[str] = Field(default_factory=list)
    steps_join: JoinTypeName | None = None
    join_type: JoinTypeName | None = None
    join_window_ms: WindowMs = 0
    tensor_map: dict[str, str] = Field(default_factory=dict)


class SeldonDataflow(SpecModel):
    """`spec.dataflow`."""

    clean_topics_on_delete: bool = False


class SeldonSpecBody(SpecModel):
    """`spec` of a Pipeline resource."""

    steps: list[SeldonStep]
    input: SeldonInput | None = None
    output: SeldonOutput | None = None
    dataflow: SeldonDataflow | None = None
    allow_cycles: bool = False
    max_step_revisits: StepRevisits = 0


class SeldonMetadata(SpecModel):
    """`metadata`: name and namespace are used; labels and annotations are accepted."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SeldonPipeline(SpecModel):
    """A Seldon Core 2 `Pipeline` resource."""

    api_version: Literal["mlops.seldon.io/v1alpha1"]
    kind: Literal["Pipeline"]
    metadata: SeldonMetadata
    spec: SeldonSpecBody


def _tensor_map(pipeline_name: str, entries: list[tuple[str, str]]) -> list[PipelineTensorMapping]:
    return [
        PipelineTensorMapping(pipeline_name=pipeline_name, topic_and_tensor=key, tensor_name=new)
        for key, new in entries
    ]


def _topic(ref: TopicRef) -> PipelineTopic:
    return PipelineTopic(pipeline_name=ref.pipeline_name, topic_name=ref.topic, tensor=ref.tensor)


@dataclass(frozen=True, kw_only=True)
class SeldonPipelineSpec(PipelineSpec):
    """A validated Seldon `Pipeline` resource and the topic names of its namespace.

    Attributes:
        resource: the parsed resource.
        namer: topic names of the pipeline's namespace (`metadata.namespace` or the default).
    """

    resource: SeldonPipeline
    namer: TopicNamer

    @property
    def clean_topics_on_delete(self) -> bool:
        """`spec.dataflow.cleanTopicsOnDelete`."""
        dataflow = self.resource.spec.dataflow
        return dataflow is not None and dataflow.clean_topics_on_delete

    def to_message(self, version: int, uid: str) -> PipelineUpdateMessage:
        """The scheduler's Create message for this pipeline (see the module docstring).

        Args:
            version: the pipeline version.
            uid: the uid of that version.
        """
        spec = self.resource.spec
        namer, name = self.namer, self.name
        inputs_topic = PipelineTopic(pipeline_name=name, topic_name=namer.pipeline(name, INPUTS))
        outputs_topic = PipelineTopic(pipeline_name=name, topic_name=namer.pipeline(name, OUTPUTS))
        updates: list[PipelineStepUpdate] = []
        for step in spec.steps:
            sources = [_topic(namer.resolve_step(r, name)) for r in step.inputs]
            update = PipelineStepUpdate(
                sources=sources or [inputs_topic],
                triggers=[_topic(namer.resolve_step(r, name)) for r in step.triggers],
                sink=PipelineTopic(pipeline_name=name, topic_name=namer.model(step.name, INPUTS)),
                input_join_ty=join_type(step.inputs_join_type),
                triggers_join_ty=join_type(step.triggers_join_type),
                join_window_ms=step.join_window_ms,
                tensor_map=_tensor_map(
                    name, [(namer.step_tensor_key(k, name), v) for k, v in step.tensor_map.items()]
                ),
            )
            if step.batch is not None:
                update.batch = Batch(size=step.batch.size, window_ms=step.batch.window_ms)
            updates.append(update)
        if spec.input is not None:
            updates.append(
                PipelineStepUpdate(
                    sources=[_topic(namer.resolve_external(r)) for r in spec.input.external_inputs],
                    triggers=[
                        _topic(namer.resolve_external(r)) for r in spec.input.external_triggers
                    ],
                    sink=inputs_topic,
                    input_join_ty=join_type(spec.input.join_type),
                    triggers_join_ty=join_type(spec.input.triggers_join_type),
                    join_window_ms=spec.input.join_window_ms,
                    tensor_map=[
                        PipelineTensorMapping(
                            pipeline_name=pipeline,
                            topic_and_tensor=key,
                            tensor_name=new,
                        )
                        for (pipeline, key), new in (
                            (namer.external_tensor_key(k), v)
                            for k, v in spec.input.tensor_map.items()
                        )
                    ],
                )
            )
        if spec.output is not None:
            out = spec.output
            sources = [_topic(namer.resolve_step(r, name)) for r in out.steps]
            updates.append(
                PipelineStepUpdate(
                    sources=sources or [inputs_topic],
                    sink=outputs_topic,
                    input_join_ty=join_type(out.steps_join or out.join_type or "inner"),
                    join_window_ms=out.join_window_ms,
                    tensor_map=_tensor_map(
                        name,
                        [(namer.step_tensor_key(k, name), v) for k, v in out.tensor_map.items()],
                    ),
                )
            )
        updates.append(
            PipelineStepUpdate(
                sources=[PipelineTopic(pipeline_name=name, topic_name=namer.errors())],
                sink=outputs_topic,
                input_join_ty=PipelineStepUpdatePipelineJoinType.Inner,
            )
        )
        return PipelineUpdateMessage(
            op=PipelineUpdateMessagePipelineOperation.Create,
            pipeline=name,
            version=version,
            uid=uid,
            updates=updates,
            pipeline_output_topic=namer.pipeline(name, OUTPUTS),
            pipeline_error_topic=namer.errors(),
            allow_cycles=spec.allow_cycles,
            max_step_revisits=spec.max_step_revisits,
        )

    def to_delete_message(
        self, version: int, uid: str, *, keep_topics: bool = True
    ) -> PipelineUpdateMessage:
        """Delete with no updates; with `cleanTopicsOnDelete` and not `keep_topics`, one update
        naming the pipeline's inputs (source) and outputs (sink) topics, as the scheduler does.
        """
        message = super().to_delete_message(version, uid, keep_topics=keep_topics)
        if not keep_topics and self.clean_topics_on_delete:
            name = self.name
            message.updates = [
                PipelineStepUpdate(
                    sources=[
                        PipelineTopic(
                            pipeline_name=name, topic_name=self.namer.pipeline(name, INPUTS)
                        )
                    ],
                    sink=PipelineTopic(
                        pipeline_name=name, topic_name=self.namer.pipeline(name, OUTPUTS)
                    ),
                )
            ]
        return message


class _Checker:
    """Semantic checks of a parsed resource; raises the first problem as a `SpecError`."""

    def __init__(self, source: str, resource: SeldonPipeline) -> None:
        self.source = source
        self.resource = resource
        self.name = resource.metadata.name
        self.steps: dict[str, int] = {}

    def error(self, path: str, reason: str) -> SpecError:
        return fail(self.source, path, reason)

    def run(self) -> None:
        spec = self.resource.spec
        self.check("metadata.name", check_name, self.name, "pipeline name")
        if not spec.steps:
            raise self.error("spec.steps", "a pipeline needs at least one step")
        for i, step in enumerate(spec.steps):
            path = f"spec.steps[{i}].name"
            self.check(path, check_name, step.name, "step name")
            if step.name == self.name:
                raise self.error(path, f"step name {step.name!r} is the pipeline's own name")
            if step.name in self.steps:
                first = self.steps[step.name]
                raise self.error(path, f"duplicate step {step.name!r} (also spec.steps[{first}])")
            self.steps[step.name] = i
        edges: dict[str, list[str]] = {}
        for i, step in enumerate(spec.steps):
            path = f"spec.steps[{i}]"
            inputs = [self.step_ref(r, f"{path}.inputs[{j}]") for j, r in enumerate(step.inputs)]
            input_steps = {ref.step for ref in inputs}
            upstream = list(input_steps)
            for j, trigger in enumerate(step.triggers):
                ref = self.step_ref(trigger, f"{path}.triggers[{j}]")
                if ref in inputs or trigger in input_steps:
                    raise self.error(
                        f"{path}.triggers[{j}]", f"{trigger!r} is also an input of the step"
                    )
                upstream.append(ref.step)
            edges[step.name] = [r for r in upstream if r != self.name]
            self.tensor_map(step.tensor_map, f"{path}.tensorMap")
        if spec.input is not None:
            for j, text in enumerate(spec.input.external_inputs):
                self.external_ref(text, f"spec.input.externalInputs[{j}]")
            for j, text in enumerate(spec.input.external_triggers):
                self.external_ref(text, f"spec.input.externalTriggers[{j}]")
            for key in spec.input.tensor_map:
                path = f"spec.input.tensorMap[{key!r}]"
                self.check(path, TopicNamer().external_tensor_key, key)
        if spec.output is not None:
            if spec.output.steps_join is not None and spec.output.join_type is not None:
                raise self.error("spec.output.joinType", "give stepsJoin or joinType, not both")
            for j, text in enumerate(spec.output.steps):
                self.step_ref(text, f"spec.output.steps[{j}]")
            self.tensor_map(spec.output.tensor_map, "spec.output.tensorMap")
        if not spec.allow_cycles:
            self.no_cycles(edges)

    def check(self, path: str, action: Callable[..., object], *args: object) -> None:
        try:
            action(*args)
        except TopicError as e:
            raise self.error(path, str(e)) from None

    def known(self, step: str, path: str) -> None:
        if step != self.name and step not in self.steps:
            raise self.error(path, f"unknown step {step!r}")

    def step_ref(self, reference: str, path: str) -> StepRef:
        try:
            ref = parse_step_reference(reference, self.name)
        except TopicError as e:
            raise self.error(path, str(e)) from None
        self.known(ref.step, path)
        return ref

    def tensor_map(self, mapping: dict[str, str], path: str) -> None:
        for key in mapping:
            key_path = f"{path}[{key!r}]"
            self.check(key_path, TopicNamer().step_tensor_key, key, self.name)
            self.known(key.split(".")[0], key_path)

    def external_ref(self, reference: str, path: str) -> None:
        try:
            ref = parse_external_reference(reference)
            check_name(ref.pipeline, "pipeline name")
            if ref.step is not None:
                check_name(ref.step, "step name")
        except TopicError as e:
            raise self.error(path, str(e)) from None

    def no_cycles(self, edges: dict[str, list[str]]) -> None:
        done: set[str] = set()

        def visit(step: str, trail: list[str]) -> None:
            if step in trail:
                cycle = " -> ".join([*trail[trail.index(step) :], step])
                raise self.error(
                    "spec.steps", f"cycle {cycle} (set spec.allowCycles: true to allow it)"
                )
            if step in done:
                return
            for upstream in edges.get(step, []):
                visit(upstream, [*trail, step])
            done.add(step)

        for step in edges:
            visit(step, [])


def _check_lengths(source: str, resource: SeldonPipeline, namer: TopicNamer) -> None:
    """Refuse a name whose topics Kafka cannot create (longer than 249 characters)."""
    name = resource.metadata.name

    def named(kind: str, value: str) -> str:
        return f"{kind} {shorten(value, 20)!r} ({len(value)} characters)"

    checks = [
        ("metadata.namespace", namer.errors(), named("namespace", namer.namespace)),
        ("metadata.name", namer.pipeline(name, OUTPUTS), named("pipeline name", name)),
    ]
    for i, step in enumerate(resource.spec.steps):
        checks.append(
            (
                f"spec.steps[{i}].name",
                namer.model(step.name, OUTPUTS),
                named("step name", step.name),
            )
        )
    if resource.spec.input is not None:
        for kind, references in (
            ("externalInputs", resource.spec.input.external_inputs),
            ("externalTriggers", resource.spec.input.external_triggers),
        ):
            for j, reference in enumerate(references):
                topic = namer.resolve_external(reference).topic
                checks.append((f"spec.input.{kind}[{j}]", topic, named("reference", reference)))
    for path, topic, what in checks:
        why = topic_too_long(topic, what)
        if why is not None:
            raise fail(source, path, why)


def _check_topic_cycles(source: str, spec: SeldonPipelineSpec) -> None:
    """Refuse a loop through the topics the steps read and write, models included (a step
    reading the pipeline's own outputs, say), which the step graph of `_Checker` cannot see."""
    message = spec.to_message(0, "")
    steps = [
        ([t.topic_name for t in [*u.sources, *u.triggers]], u.sink.topic_name)
        for u in message.updates
    ]
    base = f"{spec.namer.prefix}{SEPARATOR}{spec.namer.namespace}{SEPARATOR}"
    model = f"{base}{MODEL_SEGMENT}{SEPARATOR}"
    models = [
        (t, t.removesuffix(INPUTS) + OUTPUTS)
        for reads, sink in steps
        for t in [*reads, sink]
        if t.startswith(model) and t.endswith(SEPARATOR + INPUTS)
    ]
    cycle = find_cycle(topic_edges(steps, models))
    if cycle is not None:
        shown = " -> ".join(t.removeprefix(base) for t in cycle)
        raise fail(source, "spec.steps", f"cycle {shown} (set spec.allowCycles: true to allow it)")


def build_seldon_spec(
    source: str, resource: SeldonPipeline, *, default_namespace: str, prefix: str
) -> SeldonPipelineSpec:
    """Check a parsed resource and bind it to its namespace's topic names.

    Args:
        source: the file name, for errors.
        resource: the parsed resource.
        default_namespace: namespace when `metadata.namespace` is absent.
        prefix: the topic prefix.

    Raises:
        SpecError: the first problem found.
    """
    _Checker(source, resource).run()
    namespace = resource.metadata.namespace or default_namespace
    try:
        namer = TopicNamer(namespace, prefix)
    except TopicError as e:
        raise fail(source, "metadata.namespace", str(e)) from None
    _check_lengths(source, resource, namer)
    spec = SeldonPipelineSpec(
        name=resource.metadata.name, source=source, resource=resource, namer=namer
    )
    if not resource.spec.allow_cycles:
        _check_topic_cycles(source, spec)
    return spec
