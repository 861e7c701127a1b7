"""The generated betterproto code: wire vectors, round trips, gRPC paths, regeneration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.const import Cardinality

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    ChainerBase,
    ChainerStub,
    PipelineStepUpdate,
    PipelineStepUpdatePipelineJoinType,
    PipelineSubscriptionRequest,
    PipelineTensorMapping,
    PipelineTopic,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
    PipelineUpdateStatusResponse,
)

REPO = Path(__file__).resolve().parents[2]

# Spec 5.1: the 2022 demo producer's record for d = 0 (77 bytes).
DEMO_RECORD_HEX = (
    "0a0a6d6f64656c2e746573741201311a04343331322a1a0a0774656e736f72301205494e5433321a0201022a04"
    "120200002a1a0a0774656e736f72311205494e5433321a0201022a0412020000"
)


def test_demo_record_decodes_and_reencodes() -> None:
    data = bytes.fromhex(DEMO_RECORD_HEX)
    assert len(data) == 77
    assert int.from_bytes(data[:4], "big") == 168455535  # what `kcat -s value=i` shows
    response = ModelInferResponse().parse(data)
    tensor = ModelInferResponseInferOutputTensor
    expected = ModelInferResponse(
        model_name="model.test",
        model_version="1",
        id="4312",
        outputs=[
            tensor(
                name=f"tensor{i}",
                datatype="INT32",
                shape=[1, 2],
                contents=InferTensorContents(int_contents=[0, 0]),
            )
            for i in (0, 1)
        ],
    )
    assert response == expected
    assert bytes(response) == data
    assert bytes(expected) == data


def full_message() -> PipelineUpdateMessage:
    return PipelineUpdateMessage(
        op=PipelineUpdateMessagePipelineOperation.Create,
        pipeline="p",
        version=4,
        uid="cn0g5u3o4kl9hs0ocmdg",
        updates=[
            PipelineStepUpdate(
                sources=[
                    PipelineTopic(pipeline_name="p", topic_name="seldon.ns.model.a.outputs"),
                    PipelineTopic(
                        pipeline_name="q", topic_name="seldon.ns.model.b.outputs", tensor="t"
                    ),
                ],
                triggers=[PipelineTopic(pipeline_name="p", topic_name="seldon.ns.model.c.outputs")],
                sink=PipelineTopic(pipeline_name="p", topic_name="seldon.ns.model.d.inputs"),
                input_join_ty=PipelineStepUpdatePipelineJoinType.Outer,
                triggers_join_ty=PipelineStepUpdatePipelineJoinType.Any,
                pass_empty_responses=True,
                join_window_ms=0,
                tensor_map=[
                    PipelineTensorMapping(
                        pipeline_name="q",
                        topic_and_tensor="seldon.ns.model.b.outputs.t",
                        tensor_name="x",
                    )
                ],
                batch=Batch(size=3, window_ms=0, rolling=True),
            )
        ],
        pipeline_output_topic="seldon.ns.pipeline.p.outputs",
        pipeline_error_topic="seldon.ns.errors.errors",
        allow_cycles=True,
        max_step_revisits=9,
        timestamp=2**40,
        stream="engine-a",
    )


def test_update_message_with_every_field_round_trips() -> None:
    message = full_message()
    data = bytes(message)
    parsed = PipelineUpdateMessage().parse(data)
    assert parsed == message
    assert bytes(parsed) == data
    step = parsed.updates[0]
    # optional fields set to their zero value stay set on the wire
    assert step.join_window_ms == 0
    assert step.batch.window_ms == 0 and step.batch.size == 3
    assert step.sources[1].tensor == "t"
    assert step.sources[0].tensor is None
    assert bytes([0x38, 0x00]) in bytes(step)  # field 7 (joinWindowMs), varint 0


def test_unset_optionals_stay_unset() -> None:
    step = PipelineStepUpdate().parse(
        bytes(PipelineStepUpdate(sink=PipelineTopic(pipeline_name="p", topic_name="t")))
    )
    assert step.join_window_ms is None
    assert step.sink.tensor is None
    assert step.batch.size is None


def test_ack_message_round_trips() -> None:
    ack = PipelineUpdateStatusMessage(
        update=PipelineUpdateMessage(
            op=PipelineUpdateMessagePipelineOperation.Ready,
            pipeline="p",
            version=1,
            uid="u",
            timestamp=3,
            stream="engine-a",
        ),
        success=False,
        reason="pipeline data streams error: kafka streams state: ERROR",
    )
    assert PipelineUpdateStatusMessage().parse(bytes(ack)) == ack
    assert bytes(PipelineUpdateStatusResponse()) == b""


def test_grpc_paths() -> None:
    mapping = ChainerBase().__mapping__()
    subscribe = mapping["/seldon.mlops.chainer.Chainer/SubscribePipelineUpdates"]
    assert subscribe.cardinality is Cardinality.UNARY_STREAM
    assert subscribe.request_type is PipelineSubscriptionRequest
    assert subscribe.reply_type is PipelineUpdateMessage
    event = mapping["/seldon.mlops.chainer.Chainer/PipelineUpdateEvent"]
    assert event.cardinality is Cardinality.UNARY_UNARY
    assert event.request_type is PipelineUpdateStatusMessage
    assert event.reply_type is PipelineUpdateStatusResponse
    assert set(mapping) == {
        "/seldon.mlops.chainer.Chainer/SubscribePipelineUpdates",
        "/seldon.mlops.chainer.Chainer/PipelineUpdateEvent",
    }


async def test_stub_calls_the_same_paths() -> None:
    routes: list[str] = []

    class Channel:
        def request(self, route: str, *args: object, **kwargs: object) -> object:
            routes.append(route)
            raise RuntimeError("recorded")

    stub = ChainerStub(Channel())
    with pytest.raises(RuntimeError, match="recorded"):
        async for _ in stub.subscribe_pipeline_updates(PipelineSubscriptionRequest(name="x")):
            pass
    with pytest.raises(RuntimeError, match="recorded"):
        await stub.pipeline_update_event(PipelineUpdateStatusMessage())
    assert routes == [
        "/seldon.mlops.chainer.Chainer/SubscribePipelineUpdates",
        "/seldon.mlops.chainer.Chainer/PipelineUpdateEvent",
    ]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_regeneration_leaves_no_diff(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "protoc-gen-python_betterproto").exists():
        pytest.skip("betterproto protoc plugin not installed")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "gen-protos", tmp_path / "scripts" / "gen-protos")
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(tmp_path / "scripts" / "gen-protos")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = _tree(tmp_path / "dataflow" / "proto")
    committed = _tree(REPO / "dataflow" / "proto")
    assert sorted(generated) == sorted(committed)
    changed = [name for name in generated if generated[name] != committed[name]]
    assert changed == []
