"""Step classification and topology building: the reference's vectors (spec 6.1, 6.8)."""

from __future__ import annotations

import pytest

from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineStepUpdatePipelineJoinType,
    PipelineTensorMapping,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.topology import (
    TopologyError,
    check_state_bounds,
    group_id,
    step_for,
    topology_from,
)
from dataflow.wire import ChainType

SINK = "seldon.namespace.sinkModel.inputs"
P = "some-pipeline"


def out(model: str) -> str:
    return f"seldon.namespace.model.{model}.outputs"


def topic(name: str, tensor: str | None = None, pipeline: str = P) -> PipelineTopic:
    return PipelineTopic(pipeline_name=pipeline, topic_name=name, tensor=tensor)


def update(*sources: PipelineTopic, **kwargs: object) -> PipelineStepUpdate:
    return PipelineStepUpdate(
        sources=list(sources),
        sink=topic(SINK),
        input_join_ty=PipelineStepUpdatePipelineJoinType.Inner,
        triggers_join_ty=PipelineStepUpdatePipelineJoinType.Inner,
        **kwargs,  # type: ignore[arg-type]
    )


def tensors_by_topic(step_update: PipelineStepUpdate) -> dict[str, frozenset[str] | None]:
    step = step_for(step_update, 0, 1000)
    assert step is not None
    return {s.topic: s.tensors for s in step.sources}


def test_no_sources_is_no_step() -> None:
    assert step_for(update(), 0, 1000) is None


def test_plain_topic_is_a_chainer_of_all_tensors() -> None:
    step = step_for(update(topic(out("model11"))), 0, 1000)
    assert step is not None and not step.is_join
    assert [(s.topic, s.tensors) for s in step.sources] == [(out("model11"), None)]
    assert step.sources[0].chain is ChainType.OUTPUT_INPUT
    assert step.window_ms == 1000


def test_tensor_reference_selects_tensors() -> None:
    assert tensors_by_topic(update(topic(out("model1"), "tensorA"))) == {
        out("model1"): frozenset({"tensorA"})
    }
    assert tensors_by_topic(
        update(topic(out("model1"), "tensorA"), topic(out("model1"), "tensorB"))
    ) == {out("model1"): frozenset({"tensorA", "tensorB"})}


def test_two_topics_are_a_join() -> None:
    step = step_for(update(topic(out("modelA")), topic(out("modelB"))), 0, 1000)
    assert step is not None and step.is_join
    assert [(s.topic, s.tensors) for s in step.sources] == [
        (out("modelA"), None),
        (out("modelB"), None),
    ]


def test_join_with_tensors_per_topic() -> None:
    assert tensors_by_topic(
        update(topic(out("modelA"), "tensor1"), topic(out("modelB"), "tensor2"))
    ) == {out("modelA"): frozenset({"tensor1"}), out("modelB"): frozenset({"tensor2"})}


def test_tensor_reference_overrides_plain_topic() -> None:
    step = step_for(update(topic(out("modelA"), "tensorA"), topic(out("modelA"))), 0, 1000)
    assert step is not None and not step.is_join
    assert [(s.topic, s.tensors) for s in step.sources] == [(out("modelA"), frozenset({"tensorA"}))]


def test_renames_are_taken_per_source_topic_and_pipeline() -> None:
    step = step_for(
        update(
            topic(out("m1")),
            tensor_map=[
                PipelineTensorMapping(P, out("m1") + ".OUTPUT0", "INPUT0"),
                PipelineTensorMapping("other", out("m1") + ".OUTPUT1", "X"),
                PipelineTensorMapping(P, out("m2") + ".OUTPUT1", "Y"),
            ],
        ),
        0,
        1000,
    )
    assert step is not None
    assert dict(step.sources[0].renames) == {"OUTPUT0": "INPUT0"}


def test_window_batch_and_join_types() -> None:
    u = update(
        topic(out("a")),
        topic(out("b")),
        join_window_ms=250,
        batch=Batch(size=3, window_ms=200),
    )
    u.input_join_ty = PipelineStepUpdatePipelineJoinType.Outer
    u.triggers_join_ty = PipelineStepUpdatePipelineJoinType.Any
    step = step_for(u, 0, 60000)
    assert step is not None
    assert (step.window_ms, step.batch_size, step.batch_window_ms) == (250, 3, 200)
    assert (step.join, step.triggers_join) == ("outer", "any")
    zero = update(topic(out("a")), join_window_ms=0)
    assert step_for(zero, 0, 60000).window_ms == 60000  # type: ignore[union-attr]


def test_join_of_pass_through_source_is_refused() -> None:
    u = PipelineStepUpdate(
        sources=[topic("seldon.ns.errors.errors"), topic(out("a"))],
        sink=topic("seldon.ns.pipeline.p.outputs"),
    )
    with pytest.raises(TopologyError, match="can't join"):
        step_for(u, 0, 1000)


def test_topology_sorts_steps_and_collects_topics() -> None:
    message = PipelineUpdateMessage(
        pipeline=P,
        version=3,
        uid="1234",
        updates=[
            PipelineStepUpdate(sources=[topic(out("b"))], sink=topic("seldon.ns.model.c.inputs")),
            PipelineStepUpdate(sources=[topic(out("a"))], sink=topic("seldon.ns.model.b.inputs")),
        ],
        pipeline_error_topic="seldon.ns.errors.errors",
    )
    topology = topology_from(message, 60000)
    assert [s.sink for s in topology.steps] == [
        "seldon.ns.model.b.inputs",
        "seldon.ns.model.c.inputs",
    ]
    assert [s.index for s in topology.steps] == [0, 1]
    assert topology.topics == tuple(
        sorted(
            [
                out("a"),
                out("b"),
                "seldon.ns.model.b.inputs",
                "seldon.ns.model.c.inputs",
                "seldon.ns.errors.errors",
            ]
        )
    )


def test_topology_refuses_empty_pipelines_and_sourceless_steps() -> None:
    with pytest.raises(TopologyError, match="no steps"):
        topology_from(PipelineUpdateMessage(pipeline=P, uid="u"), 1000)
    with pytest.raises(TopologyError, match="failed to create all pipeline steps"):
        topology_from(
            PipelineUpdateMessage(
                pipeline=P, uid="u", updates=[PipelineStepUpdate(sink=topic(SINK))]
            ),
            1000,
        )


def test_group_ids_hash_long_uids() -> None:
    assert group_id("seldon-dataflow", "1234", 0) == "seldon-dataflow-1234-s0"
    long = group_id("ns-seldon-dataflow", "c9r2l3ohkd4s73e5gkf0", 2)
    assert long.startswith("ns-seldon-dataflow-") and long.endswith("-s2")
    assert len(long.split("-")[-2]) == 32


def test_a_batch_larger_than_the_state_bound_is_refused() -> None:
    message = PipelineUpdateMessage(
        pipeline=P,
        uid="u",
        updates=[update(topic(out("a")), batch=Batch(size=4294967295))],
    )
    topology = topology_from(message, 60000)
    check_state_bounds(topology, 4294967295)
    with pytest.raises(TopologyError) as refused:
        check_state_bounds(topology, 500_000)
    assert str(refused.value) == (
        f"step to {SINK}: batch size 4294967295 exceeds SELDON_STATE_MAX_RECORDS (500000)"
    )


def test_stateful_steps_are_joins_gates_and_request_batches() -> None:
    join = step_for(update(topic(out("a")), topic(out("b"))), 0, 1000)
    gate = step_for(update(topic(out("a")), triggers=[topic(out("t"))]), 0, 1000)
    batch = step_for(update(topic(out("a")), batch=Batch(size=3)), 0, 1000)
    chain = step_for(update(topic(out("a"))), 0, 1000)
    assert [s.is_stateful if s else None for s in (join, gate, batch, chain)] == [
        True,
        True,
        True,
        False,
    ]
