"""Pipeline specs -> PipelineUpdateMessage: both forms, every sample, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineStepUpdatePipelineJoinType,
    PipelineTensorMapping,
    PipelineTopic,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.specs import (
    ExplicitPipelineSpec,
    SeldonPipelineSpec,
    SpecError,
    load_spec,
    parse_spec,
    spec_files,
)

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "compose" / "pipelines"
SAMPLES = PIPELINES / "samples"

Inner = PipelineStepUpdatePipelineJoinType.Inner
Any_ = PipelineStepUpdatePipelineJoinType.Any
Unknown = PipelineStepUpdatePipelineJoinType.Unknown
Create = PipelineUpdateMessagePipelineOperation.Create

TFSIMPLES = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: tfsimples
  namespace: seldon-mesh
spec:
  steps:
    - name: tfsimple1
    - name: tfsimple2
      inputs:
      - tfsimple1
      tensorMap:
        tfsimple1.outputs.OUTPUT0: INPUT0
        tfsimple1.outputs.OUTPUT1: INPUT1
  output:
    steps:
    - tfsimple2
"""


def topic(pipeline: str, name: str, tensor: str | None = None) -> PipelineTopic:
    return PipelineTopic(pipeline_name=pipeline, topic_name=name, tensor=tensor)


def mapping(pipeline: str, key: str, new: str) -> PipelineTensorMapping:
    return PipelineTensorMapping(pipeline_name=pipeline, topic_and_tensor=key, tensor_name=new)


def tfsimples_message(ns: str, version: int, uid: str) -> PipelineUpdateMessage:
    """Spec 3.1's worked example, written out by hand."""
    p, pre = "tfsimples", f"seldon.{ns}."
    return PipelineUpdateMessage(
        op=Create,
        pipeline=p,
        version=version,
        uid=uid,
        updates=[
            PipelineStepUpdate(
                sources=[topic(p, pre + "pipeline.tfsimples.inputs")],
                sink=topic(p, pre + "model.tfsimple1.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "model.tfsimple1.outputs")],
                sink=topic(p, pre + "model.tfsimple2.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
                tensor_map=[
                    mapping(p, pre + "model.tfsimple1.outputs.OUTPUT0", "INPUT0"),
                    mapping(p, pre + "model.tfsimple1.outputs.OUTPUT1", "INPUT1"),
                ],
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "model.tfsimple2.outputs")],
                sink=topic(p, pre + "pipeline.tfsimples.outputs"),
                input_join_ty=Inner,
                join_window_ms=0,
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "errors.errors")],
                sink=topic(p, pre + "pipeline.tfsimples.outputs"),
                input_join_ty=Inner,
            ),
        ],
        pipeline_output_topic=pre + "pipeline.tfsimples.outputs",
        pipeline_error_topic=pre + "errors.errors",
    )


def test_worked_example_tfsimples_in_seldon_mesh() -> None:
    spec = parse_spec(TFSIMPLES, "tfsimples.yaml")
    assert isinstance(spec, SeldonPipelineSpec)
    assert (spec.name, spec.version, spec.uid) == ("tfsimples", None, None)
    message = spec.to_message(3, "cn0g5u3o4kl9hs0ocmdg")
    assert message == tfsimples_message("seldon-mesh", 3, "cn0g5u3o4kl9hs0ocmdg")
    # the output step always carries joinWindowMs, even 0; the model steps do not
    assert bytes(message.updates[2]).endswith(bytes([0x38, 0x00]))
    assert message.updates[0].join_window_ms is None
    # every PipelineTopic filters on the pipeline's own name
    for update in message.updates:
        assert {t.pipeline_name for t in [*update.sources, update.sink]} == {"tfsimples"}


def test_namespace_from_default_when_metadata_has_none() -> None:
    text = TFSIMPLES.replace("  namespace: seldon-mesh\n", "")
    spec = parse_spec(text, "x.yaml", default_namespace="seldon-mesh")
    assert spec.to_message(1, "u") == tfsimples_message("seldon-mesh", 1, "u")
    assert parse_spec(text, "x.yaml").to_message(1, "u") == tfsimples_message("default", 1, "u")
    # metadata.namespace wins over the default
    assert parse_spec(TFSIMPLES, "x.yaml", default_namespace="other").to_message(
        1, "u"
    ) == tfsimples_message("seldon-mesh", 1, "u")


def test_topic_prefix() -> None:
    message = parse_spec(TFSIMPLES, "x.yaml", prefix="acme").to_message(1, "u")
    assert message.pipeline_error_topic == "acme.seldon-mesh.errors.errors"
    assert message.updates[1].sources[0].topic_name == "acme.seldon-mesh.model.tfsimple1.outputs"


def test_sample_chain() -> None:
    spec = load_spec(SAMPLES / "chain.yaml")
    assert spec.source == str(SAMPLES / "chain.yaml")
    assert spec.to_message(1, "u") == tfsimples_message("default", 1, "u")


def test_sample_join() -> None:
    p, pre = "join", "seldon.default."
    message = load_spec(SAMPLES / "join.yaml").to_message(2, "uid-2")
    assert message == PipelineUpdateMessage(
        op=Create,
        pipeline=p,
        version=2,
        uid="uid-2",
        updates=[
            PipelineStepUpdate(
                sources=[topic(p, pre + "pipeline.join.inputs")],
                sink=topic(p, pre + "model.tfsimple1.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "pipeline.join.inputs")],
                sink=topic(p, pre + "model.tfsimple2.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
            ),
            PipelineStepUpdate(
                sources=[
                    topic(p, pre + "model.tfsimple1.outputs", "OUTPUT0"),
                    topic(p, pre + "model.tfsimple2.outputs", "OUTPUT1"),
                ],
                sink=topic(p, pre + "model.tfsimple3.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
                join_window_ms=1000,
                tensor_map=[
                    mapping(p, pre + "model.tfsimple1.outputs.OUTPUT0", "INPUT0"),
                    mapping(p, pre + "model.tfsimple2.outputs.OUTPUT1", "INPUT1"),
                ],
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "model.tfsimple3.outputs")],
                sink=topic(p, pre + "pipeline.join.outputs"),
                input_join_ty=Inner,
                join_window_ms=0,
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "errors.errors")],
                sink=topic(p, pre + "pipeline.join.outputs"),
                input_join_ty=Inner,
            ),
        ],
        pipeline_output_topic=pre + "pipeline.join.outputs",
        pipeline_error_topic=pre + "errors.errors",
    )


def test_sample_trigger() -> None:
    p, pre = "trigger-joins", "seldon.default."
    inputs = pre + "pipeline.trigger-joins.inputs"
    message = load_spec(SAMPLES / "trigger.yaml").to_message(1, "u")
    assert message == PipelineUpdateMessage(
        op=Create,
        pipeline=p,
        version=1,
        uid="u",
        updates=[
            PipelineStepUpdate(
                sources=[topic(p, inputs, "INPUT")],
                triggers=[topic(p, inputs, "ok1"), topic(p, inputs, "ok2")],
                sink=topic(p, pre + "model.mul10.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Any_,
            ),
            PipelineStepUpdate(
                sources=[topic(p, inputs, "INPUT")],
                triggers=[topic(p, inputs, "ok3")],
                sink=topic(p, pre + "model.add10.inputs"),
                input_join_ty=Inner,
                triggers_join_ty=Inner,
            ),
            PipelineStepUpdate(
                sources=[
                    topic(p, pre + "model.mul10.outputs"),
                    topic(p, pre + "model.add10.outputs"),
                ],
                sink=topic(p, pre + "pipeline.trigger-joins.outputs"),
                input_join_ty=Any_,
                join_window_ms=0,
            ),
            PipelineStepUpdate(
                sources=[topic(p, pre + "errors.errors")],
                sink=topic(p, pre + "pipeline.trigger-joins.outputs"),
                input_join_ty=Inner,
            ),
        ],
        pipeline_output_topic=pre + "pipeline.trigger-joins.outputs",
        pipeline_error_topic=pre + "errors.errors",
    )


def test_demo_explicit_file_is_the_canned_message() -> None:
    spec = load_spec(PIPELINES / "some-pipeline.yaml")
    assert isinstance(spec, ExplicitPipelineSpec)
    assert (spec.name, spec.version, spec.uid) == ("some-pipeline", 1, "1234")
    p = "some-pipeline"
    assert spec.to_message(1, "1234") == PipelineUpdateMessage(
        op=Create,
        pipeline=p,
        version=1,
        uid="1234",
        updates=[
            PipelineStepUpdate(
                sources=[topic(p, "seldon.some-namespace.some-model-1.outputs")],
                sink=topic(p, "seldon.some-namespace.some-model-2.inputs"),
                input_join_ty=Inner,
            ),
            PipelineStepUpdate(
                sources=[topic(p, "seldon.some-namespace.some-model-3.outputs", "tensor1")],
                sink=topic(p, "seldon.some-namespace.some-model-4.inputs"),
                input_join_ty=Inner,
            ),
        ],
    )
    message = spec.to_message(1, "1234")
    assert message.pipeline_output_topic == "" and message.pipeline_error_topic == ""
    assert message.timestamp == 0 and message.updates[0].triggers_join_ty == Unknown


def test_demo_folder_holds_only_the_demo_pipeline() -> None:
    assert spec_files([PIPELINES]) == [PIPELINES / "some-pipeline.yaml"]
    assert [p.name for p in spec_files([SAMPLES])] == ["chain.yaml", "join.yaml", "trigger.yaml"]


EXPLICIT_FULL = """\
kind: PipelineUpdate
name: full
version: 7
uid: abc
outputTopic: out.topic
errorTopic: err.topic
allowCycles: true
maxStepRevisits: 5
steps:
  - sources:
      - a.outputs
      - {topic: b.outputs, tensor: t, pipelineName: other}
    triggers: [c.outputs]
    sink: {topic: d.inputs, pipelineName: sinkp}
    inputJoinType: outer
    triggersJoinType: any
    joinWindowMs: 250
    tensorMap:
      - {topicAndTensor: b.outputs.t, tensorName: u, pipelineName: other}
      - {topicAndTensor: a.outputs.x, tensorName: y}
    batch: {size: 10, windowMs: 100, rolling: true}
"""


def test_explicit_form_every_field() -> None:
    spec = parse_spec(EXPLICIT_FULL, "full.yaml")
    assert (spec.version, spec.uid) == (7, "abc")
    assert spec.to_message(7, "abc") == PipelineUpdateMessage(
        op=Create,
        pipeline="full",
        version=7,
        uid="abc",
        updates=[
            PipelineStepUpdate(
                sources=[topic("full", "a.outputs"), topic("other", "b.outputs", "t")],
                triggers=[topic("full", "c.outputs")],
                sink=topic("sinkp", "d.inputs"),
                input_join_ty=PipelineStepUpdatePipelineJoinType.Outer,
                triggers_join_ty=Any_,
                join_window_ms=250,
                tensor_map=[
                    mapping("other", "b.outputs.t", "u"),
                    mapping("full", "a.outputs.x", "y"),
                ],
                batch=Batch(size=10, window_ms=100, rolling=True),
            )
        ],
        pipeline_output_topic="out.topic",
        pipeline_error_topic="err.topic",
        allow_cycles=True,
        max_step_revisits=5,
    )


SELDON_FULL = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: full
  labels: {team: a}
spec:
  allowCycles: true
  maxStepRevisits: 3
  dataflow: {cleanTopicsOnDelete: true}
  input:
    externalInputs: [up.outputs.t1, up2.step.m.outputs]
    externalTriggers: [up3]
    tensorMap:
      up.outputs.t1: a
      up2.step.m.outputs.t2: b
    joinType: outer
    triggersJoinType: any
    joinWindowMs: 50
  steps:
    - name: s1
      batch: {size: 4, windowMs: 10, rolling: true}
      joinWindowMs: 0
    - name: s2
      inputs: [s1.outputs.o, s2]
      inputsJoinType: any
  output:
    steps: [s2.outputs.o2]
    joinType: outer
    joinWindowMs: 30
    tensorMap: {s2.outputs.o2: final}
"""


def test_seldon_input_output_batch_and_flags() -> None:
    spec = parse_spec(SELDON_FULL, "full.yaml")
    message = spec.to_message(1, "u")
    pre = "seldon.default."
    assert message.allow_cycles is True and message.max_step_revisits == 3
    s1, s2, inp, out, err = message.updates
    # batch: size and windowMs are forwarded, rolling is not (scheduler behaviour)
    assert s1.batch == Batch(size=4, window_ms=10)
    assert s1.join_window_ms == 0
    assert s2.sources == [
        topic("full", pre + "model.s1.outputs", "o"),
        topic("full", pre + "model.s2.outputs"),
    ]
    assert s2.input_join_ty == Any_
    assert inp == PipelineStepUpdate(
        sources=[
            topic("up", pre + "pipeline.up.outputs", "t1"),
            topic("up2", pre + "model.m.outputs"),
        ],
        triggers=[topic("up3", pre + "pipeline.up3.outputs")],
        sink=topic("full", pre + "pipeline.full.inputs"),
        input_join_ty=PipelineStepUpdatePipelineJoinType.Outer,
        triggers_join_ty=Any_,
        join_window_ms=50,
        tensor_map=[
            mapping("up", pre + "pipeline.up.outputs.t1", "a"),
            mapping("up2", pre + "model.m.outputs.t2", "b"),
        ],
    )
    assert out == PipelineStepUpdate(
        sources=[topic("full", pre + "model.s2.outputs", "o2")],
        sink=topic("full", pre + "pipeline.full.outputs"),
        input_join_ty=PipelineStepUpdatePipelineJoinType.Outer,
        join_window_ms=30,
        tensor_map=[mapping("full", pre + "model.s2.outputs.o2", "final")],
    )
    assert err.sources == [topic("full", pre + "errors.errors")]
    # a user unload deletes the pipeline topics; a rebalance or version change keeps them
    assert spec.clean_topics_on_delete
    delete = spec.to_delete_message(1, "u", keep_topics=False)
    assert delete.op == PipelineUpdateMessagePipelineOperation.Delete
    assert delete.updates == [
        PipelineStepUpdate(
            sources=[topic("full", pre + "pipeline.full.inputs")],
            sink=topic("full", pre + "pipeline.full.outputs"),
        )
    ]
    assert spec.to_delete_message(1, "u").updates == []


def test_output_without_steps_reads_the_pipeline_inputs() -> None:
    text = TFSIMPLES.replace("    steps:\n    - tfsimple2\n", "    joinWindowMs: 5\n")
    out = parse_spec(text, "x.yaml").to_message(1, "u").updates[2]
    assert out.sources == [topic("tfsimples", "seldon.seldon-mesh.pipeline.tfsimples.inputs")]
    assert out.join_window_ms == 5


def test_no_output_means_no_output_step() -> None:
    text = TFSIMPLES.replace("  output:\n    steps:\n    - tfsimple2\n", "")
    updates = parse_spec(text, "x.yaml").to_message(1, "u").updates
    assert [u.sink.topic_name.split(".", 2)[2] for u in updates] == [
        "model.tfsimple1.inputs",
        "model.tfsimple2.inputs",
        "pipeline.tfsimples.outputs",  # the error step
    ]


def test_fingerprint_follows_content_not_layout() -> None:
    a = parse_spec(TFSIMPLES, "a.yaml")
    b = parse_spec(TFSIMPLES.replace("      - tfsimple1", "      - tfsimple1.outputs"), "b.yaml")
    c = parse_spec(TFSIMPLES.replace("INPUT1", "INPUT9"), "c.yaml")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def seldon(steps: str, extra: str = "") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: p\n"
        f"spec:\n  steps:\n{steps}{extra}"
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            seldon("  - name: a\n    bogus: 1\n"),
            "pipelines/x.yaml: spec.steps[0].bogus: unknown key",
        ),
        (
            seldon("  - name: a\n  - name: b\n    inputs: [a, foo]\n"),
            "pipelines/x.yaml: spec.steps[1].inputs[1]: unknown step 'foo'",
        ),
        (
            seldon("  - name: a\n    joinWindowMs: soon\n"),
            "pipelines/x.yaml: spec.steps[0].joinWindowMs: expected an integer, got 'soon'",
        ),
        (
            seldon("  - name: a\n    inputsJoinType: left\n"),
            "pipelines/x.yaml: spec.steps[0].inputsJoinType: "
            "bad join type 'left': expected inner, outer or any",
        ),
        (
            seldon("  - name: a\n", "  output:\n    steps: [a]\n    stepsJoin: Inner\n"),
            "pipelines/x.yaml: spec.output.stepsJoin: "
            "bad join type 'Inner': expected inner, outer or any",
        ),
        (
            seldon("  - name: a\n    inputs: a.outputs\n"),
            "pipelines/x.yaml: spec.steps[0].inputs: expected a list, got 'a.outputs'",
        ),
        (
            seldon("  - name: a\n  - name: b\n    triggers: [zz.outputs.t]\n"),
            "pipelines/x.yaml: spec.steps[1].triggers[0]: unknown step 'zz'",
        ),
        (
            seldon("  - name: a\n", "  output:\n    steps: [nope]\n"),
            "pipelines/x.yaml: spec.output.steps[0]: unknown step 'nope'",
        ),
        (
            seldon("  - name: a\n    tensorMap: {b.outputs.x: y}\n"),
            "pipelines/x.yaml: spec.steps[0].tensorMap['b.outputs.x']: unknown step 'b'",
        ),
        (
            seldon("  - name: a\n  - name: a\n"),
            "pipelines/x.yaml: spec.steps[1].name: duplicate step 'a' (also spec.steps[0])",
        ),
        (
            seldon("  - name: p\n"),
            "pipelines/x.yaml: spec.steps[0].name: step name 'p' is the pipeline's own name",
        ),
        (
            seldon("  - name: a\n    inputs: [b]\n  - name: b\n    inputs: [a]\n"),
            "pipelines/x.yaml: spec.steps: "
            "cycle a -> b -> a (set spec.allowCycles: true to allow it)",
        ),
        (
            seldon("  - name: a\n  - name: b\n    inputs: [a.outputs.t]\n    triggers: [a]\n"),
            "pipelines/x.yaml: spec.steps[1].triggers[0]: 'a' is also an input of the step",
        ),
        (
            seldon("  - name: a\n", "  input:\n    externalInputs: [other.sideways]\n"),
            "pipelines/x.yaml: spec.input.externalInputs[0]: bad reference 'other.sideways': "
            "'sideways' is not inputs|outputs ('<pipeline>[.inputs|.outputs][.<tensor>]' or "
            "'<pipeline>.step.<step>[.inputs|.outputs][.<tensor>]')",
        ),
        (
            seldon("  - name: a\n", "  output:\n    stepsJoin: any\n    joinType: any\n"),
            "pipelines/x.yaml: spec.output.joinType: give stepsJoin or joinType, not both",
        ),
        (seldon("    []\n"), "pipelines/x.yaml: spec.steps: a pipeline needs at least one step"),
        (
            seldon("  - name: a.b\n"),
            "pipelines/x.yaml: spec.steps[0].name: bad step name 'a.b': "
            "use letters, digits, '_' and '-' only ('.' separates parts)",
        ),
        (
            "apiVersion: mlops.seldon.io/v1\nkind: Pipeline\nmetadata: {name: p}\n"
            "spec: {steps: [{name: a}]}\n",
            "pipelines/x.yaml: apiVersion: got 'mlops.seldon.io/v1', "
            "expected 'mlops.seldon.io/v1alpha1'",
        ),
        (
            "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\n",
            "pipelines/x.yaml: spec: missing required key",
        ),
        (
            "kind: Pipline\nname: x\n",
            "pipelines/x.yaml: kind: unknown kind 'Pipline': "
            "expected Pipeline (apiVersion mlops.seldon.io/v1alpha1) or PipelineUpdate",
        ),
        (
            "name: x\n",
            "pipelines/x.yaml: kind: missing required key (expected Pipeline "
            "(apiVersion mlops.seldon.io/v1alpha1) or PipelineUpdate)",
        ),
        ("", "pipelines/x.yaml: empty file: expected one pipeline spec"),
        ("- a\n", "pipelines/x.yaml: expected a mapping (Pipeline or PipelineUpdate)"),
        (
            "kind: PipelineUpdate\n---\nkind: PipelineUpdate\n",
            "pipelines/x.yaml: 2 YAML documents: expected one pipeline spec",
        ),
        (
            "kind: PipelineUpdate\nname: x\nname: y\n",
            "pipelines/x.yaml: line 3, column 1: duplicate key 'name'",
        ),
        (
            "kind: [\n",
            "pipelines/x.yaml: line 2, column 1: "
            "expected the node content, but found '<stream end>'",
        ),
        (
            "kind: PipelineUpdate\nname: x\nsteps:\n- sources: [a.outputs]\n",
            "pipelines/x.yaml: steps[0].sink: missing required key",
        ),
        (
            "kind: PipelineUpdate\nname: x\nuid: 1234\nsteps: [{sources: [a], sink: b}]\n",
            'pipelines/x.yaml: uid: expected a string, got 1234 (quote it: "1234")',
        ),
        (
            "kind: PipelineUpdate\nname: x\nsteps: [{sources: [], sink: b}]\n",
            "pipelines/x.yaml: steps[0].sources: a step needs at least one source",
        ),
        (
            "kind: PipelineUpdate\nname: x\nsteps: [{sources: [{topic: 'a b'}], sink: b}]\n",
            "pipelines/x.yaml: steps[0].sources[0].topic: "
            "bad topic name 'a b': use letters, digits, '.', '_' and '-' only",
        ),
        (
            "kind: PipelineUpdate\nname: x\n"
            "steps: [{sources: [a], sink: b, inputJoinType: Inner}]\n",
            "pipelines/x.yaml: steps[0].inputJoinType: "
            "bad join type 'Inner': expected inner, outer or any",
        ),
        (
            "kind: PipelineUpdate\nname: x\nversion: 0\nsteps: [{sources: [a], sink: b}]\n",
            "pipelines/x.yaml: version: input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_bad_specs_give_one_line(text: str, error: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "pipelines/x.yaml")
    assert str(info.value) == error
    assert "\n" not in str(info.value)


def test_cycles_allowed_when_asked() -> None:
    text = seldon(
        "  - name: a\n    inputs: [p, b]\n    inputsJoinType: any\n  - name: b\n    inputs: [a]\n",
        "  allowCycles: true\n  maxStepRevisits: 10\n",
    )
    message = parse_spec(text, "x.yaml").to_message(1, "u")
    assert message.allow_cycles and message.max_step_revisits == 10


def test_null_keys_count_as_absent() -> None:
    text = seldon("  - name: a\n    inputs:\n    batch:\n", "  output:\n")
    updates = parse_spec(text, "x.yaml").to_message(1, "u").updates
    assert updates[0].sources[0].topic_name == "seldon.default.pipeline.p.inputs"


def test_load_spec_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SpecError, match=r"missing\.yaml: cannot read: No such file"):
        load_spec(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text(seldon("  - name: a\n    inputs: [ghost]\n"))
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(info.value) == f"{bad}: spec.steps[0].inputs[0]: unknown step 'ghost'"
    with pytest.raises(SpecError, match="no such file or folder"):
        spec_files([missing])
