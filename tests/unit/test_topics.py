"""Topic naming and reference resolution (spec 3.1)."""

from __future__ import annotations

import pytest

from dataflow.topics import (
    DEFAULT_NAMER,
    ExternalRef,
    StepRef,
    TopicError,
    TopicNamer,
    TopicRef,
    check_name,
    check_topic,
    errors_topic,
    model_topic,
    parse_external_reference,
    parse_step_reference,
    pipeline_topic,
)

MESH = TopicNamer("seldon-mesh")


def test_names_with_defaults() -> None:
    assert DEFAULT_NAMER.model("m", "inputs") == "seldon.default.model.m.inputs"
    assert DEFAULT_NAMER.pipeline("p", "outputs") == "seldon.default.pipeline.p.outputs"
    assert DEFAULT_NAMER.errors() == "seldon.default.errors.errors"
    assert TopicNamer("", "") == TopicNamer("default", "seldon")


def test_module_functions() -> None:
    assert model_topic("ns", "tfsimple1", "outputs") == "seldon.ns.model.tfsimple1.outputs"
    assert pipeline_topic("ns", "p", "inputs", prefix="x") == "x.ns.pipeline.p.inputs"
    assert errors_topic("seldon-mesh") == "seldon.seldon-mesh.errors.errors"


def test_bad_prefix_refused() -> None:
    with pytest.raises(TopicError, match="prefix"):
        TopicNamer("default", "bad prefix")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("tfsimple1", StepRef("tfsimple1", "outputs")),
        ("tfsimple1.inputs", StepRef("tfsimple1", "inputs")),
        ("tfsimple1.outputs.OUTPUT0", StepRef("tfsimple1", "outputs", "OUTPUT0")),
        ("p", StepRef("p", "inputs")),  # bare pipeline name means its inputs
        ("p.inputs.INPUT", StepRef("p", "inputs", "INPUT")),
    ],
)
def test_parse_step_reference(reference: str, expected: StepRef) -> None:
    assert parse_step_reference(reference, "p") == expected


@pytest.mark.parametrize(
    "reference", ["a.middle", "a.outputs.t.extra", "", "a..t", "a.outputs.", ".outputs"]
)
def test_bad_step_reference(reference: str) -> None:
    with pytest.raises(TopicError, match="bad reference"):
        parse_step_reference(reference, "p")


def test_resolve_step_model_and_own_pipeline() -> None:
    assert MESH.resolve_step("tfsimple1", "tfsimples") == TopicRef(
        "tfsimples", "seldon.seldon-mesh.model.tfsimple1.outputs"
    )
    assert MESH.resolve_step("tfsimple1.outputs.OUTPUT0", "tfsimples") == TopicRef(
        "tfsimples", "seldon.seldon-mesh.model.tfsimple1.outputs", "OUTPUT0"
    )
    assert MESH.resolve_step("tfsimples", "tfsimples") == TopicRef(
        "tfsimples", "seldon.seldon-mesh.pipeline.tfsimples.inputs"
    )
    assert MESH.resolve_step("tfsimples.inputs.INPUT", "tfsimples") == TopicRef(
        "tfsimples", "seldon.seldon-mesh.pipeline.tfsimples.inputs", "INPUT"
    )


@pytest.mark.parametrize(
    ("reference", "parsed", "resolved"),
    [
        (
            "other",
            ExternalRef("other", None, "outputs"),
            TopicRef("other", "seldon.default.pipeline.other.outputs"),
        ),
        (
            "other.inputs",
            ExternalRef("other", None, "inputs"),
            TopicRef("other", "seldon.default.pipeline.other.inputs"),
        ),
        (
            "other.outputs.t",
            ExternalRef("other", None, "outputs", "t"),
            TopicRef("other", "seldon.default.pipeline.other.outputs", "t"),
        ),
        (
            "other.step.m",
            ExternalRef("other", "m", "outputs"),
            TopicRef("other", "seldon.default.model.m.outputs"),
        ),
        (
            "other.step.m.inputs",
            ExternalRef("other", "m", "inputs"),
            TopicRef("other", "seldon.default.model.m.inputs"),
        ),
        (
            "other.step.m.outputs.t",
            ExternalRef("other", "m", "outputs", "t"),
            TopicRef("other", "seldon.default.model.m.outputs", "t"),
        ),
    ],
)
def test_external_references(reference: str, parsed: ExternalRef, resolved: TopicRef) -> None:
    assert parse_external_reference(reference) == parsed
    # the header filter is the referenced pipeline, not the one that reads
    assert DEFAULT_NAMER.resolve_external(reference) == resolved


@pytest.mark.parametrize(
    "reference", ["other.sideways", "other.step", "other.step.m.middle", "other.outputs.t.x"]
)
def test_bad_external_reference(reference: str) -> None:
    with pytest.raises(TopicError):
        parse_external_reference(reference)


def test_step_tensor_keys() -> None:
    assert (
        MESH.step_tensor_key("tfsimple1.outputs.OUTPUT0", "tfsimples")
        == "seldon.seldon-mesh.model.tfsimple1.outputs.OUTPUT0"
    )
    assert (
        MESH.step_tensor_key("tfsimples.inputs.INPUT", "tfsimples")
        == "seldon.seldon-mesh.pipeline.tfsimples.inputs.INPUT"
    )
    with pytest.raises(TopicError, match="tensorMap key"):
        MESH.step_tensor_key("tfsimple1.outputs", "tfsimples")


def test_external_tensor_keys() -> None:
    assert DEFAULT_NAMER.external_tensor_key("p.outputs.t") == (
        "p",
        "seldon.default.pipeline.p.outputs.t",
    )
    assert DEFAULT_NAMER.external_tensor_key("p.step.m.outputs.t") == (
        "p",
        "seldon.default.model.m.outputs.t",
    )
    with pytest.raises(TopicError, match="tensorMap key"):
        DEFAULT_NAMER.external_tensor_key("p.step.m.outputs")


def test_name_and_topic_checks() -> None:
    assert check_name("some-model_1") == "some-model_1"
    for bad in ("", "a.b", "a b", "a/b"):
        with pytest.raises(TopicError):
            check_name(bad)
    assert check_topic("seldon.some-namespace.some-model-1.outputs")
    for bad in ("", ".", "..", "a b", "x" * 250):
        with pytest.raises(TopicError):
            check_topic(bad)
