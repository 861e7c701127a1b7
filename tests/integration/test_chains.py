"""Chains end to end: proxy, engine process, real topics (issue 4 acceptance)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.integration.harness import Proxy, consume, create_topics, engine, produce

pytestmark = pytest.mark.kafka

P = [("pipeline", b"")]


def response(rid: str, d: int = 0) -> bytes:
    tensors = [
        ModelInferResponseInferOutputTensor(
            name=n,
            datatype="INT32",
            shape=[1, 2],
            contents=InferTensorContents(int_contents=[d, d]),
        )
        for n in ("tensor0", "tensor1")
    ]
    return bytes(
        ModelInferResponse(model_name="model.test", model_version="1", id=rid, outputs=tensors)
    )


def request_tensor(name: str, d: int) -> ModelInferRequestInferInputTensor:
    return ModelInferRequestInferInputTensor(
        name=name, datatype="INT32", shape=[1, 2], contents=InferTensorContents(int_contents=[d, d])
    )


def header(pipeline: str) -> list[tuple[str, bytes]]:
    return [("pipeline", pipeline.encode())]


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"kind: PipelineUpdate\nname: {name}\n" + body)
    return path


async def test_original_demo_scenario(tmp_path: Path, bootstrap: str, unique: str) -> None:
    ns, name = f"demo{unique}", "some-pipeline"
    m1, m2, m3, m4 = (f"seldon.{ns}.some-model-{i}" for i in range(1, 5))
    path = write(
        tmp_path,
        name,
        f"uid: demo{unique}\nversion: 1\nsteps:\n"
        f"  - sources: [{m1}.outputs]\n    sink: {m2}.inputs\n"
        f"  - sources: [{{topic: {m3}.outputs, tensor: tensor1}}]\n    sink: {m4}.inputs\n",
    )
    await create_topics(bootstrap, f"{m1}.outputs", f"{m3}.outputs")
    for topic in (f"{m1}.outputs", f"{m3}.outputs"):
        await produce(
            bootstrap,
            topic,
            [(None, response("4312", d), header(name + "-other")) for d in range(5)],
        )
        await produce(
            bootstrap, topic, [(None, response("4312", d), header(name)) for d in range(5)]
        )
    assert len(response("4312")) == 77

    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        to2 = await consume(bootstrap, f"{m2}.inputs", 5, settle=1.0)
        to4 = await consume(bootstrap, f"{m4}.inputs", 5, settle=1.0)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert [len(r.value) for r in to2] == [62] * 5
    assert [len(r.value) for r in to4] == [34] * 5
    for d, (r2, r4) in enumerate(zip(to2, to4, strict=True)):
        assert r2.value == bytes(
            ModelInferRequest(
                id="4312", inputs=[request_tensor("tensor0", d), request_tensor("tensor1", d)]
            )
        )
        assert r4.value == bytes(
            ModelInferRequest(id="4312", inputs=[request_tensor("tensor1", d)])
        )
        assert r2.key is None
        assert dict(r2.headers) == {"pipeline": name.encode(), "x-pipeline-version": b"1"}


async def test_two_step_chain_with_rename(tmp_path: Path, bootstrap: str, unique: str) -> None:
    ns, name = f"ren{unique}", f"ren-{unique}"
    a, b, c = (f"seldon.{ns}.model.{m}" for m in "abc")
    path = write(
        tmp_path,
        name,
        "steps:\n"
        f"  - sources: [{a}.outputs]\n    sink: {b}.inputs\n"
        f"  - sources: [{b}.inputs]\n    sink: {c}.inputs\n"
        f"    tensorMap:\n      - {{topicAndTensor: {b}.inputs.tensor0, tensorName: renamed0}}\n",
    )
    await create_topics(bootstrap, f"{a}.outputs")
    headers = [*header(name), ("x-request-id", b"r-1"), ("x-seldon-alibi-type", b"explainer")]
    await produce(bootstrap, f"{a}.outputs", [(b"0.ren.r-1", response("r-1", 7), headers)])
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        out = await consume(bootstrap, f"{c}.inputs", 1, settle=1.0)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert len(out) == 1
    expected = ModelInferRequest(
        id="r-1", inputs=[request_tensor("renamed0", 7), request_tensor("tensor1", 7)]
    )
    assert out[0].value == bytes(expected)
    assert out[0].key == b"0.ren.r-1"
    assert list(out[0].headers) == [
        ("x-request-id", b"r-1"),
        ("pipeline", name.encode()),
        ("x-pipeline-version", b"1"),
    ]


async def test_poison_pill_goes_to_error_topic(tmp_path: Path, bootstrap: str, unique: str) -> None:
    ns, name = f"pp{unique}", f"pp-{unique}"
    src, sink, errors = (
        f"seldon.{ns}.model.a.outputs",
        f"seldon.{ns}.model.b.inputs",
        f"seldon.{ns}.errors.errors",
    )
    path = write(
        tmp_path, name, f"errorTopic: {errors}\nsteps:\n  - sources: [{src}]\n    sink: {sink}\n"
    )
    await create_topics(bootstrap, src)
    bad_type = bytes(
        ModelInferResponse(
            id="bad-type",
            outputs=[ModelInferResponseInferOutputTensor(name="t", datatype="FLOAT", shape=[1])],
        )
    )
    await produce(
        bootstrap,
        src,
        [
            (b"k1", b"\x0a\xff\xff\xff", header(name)),  # truncated protobuf
            (b"k2", bad_type, header(name)),  # unknown datatype
            (b"k3", response("good"), header(name)),
        ],
    )
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        good = await consume(bootstrap, sink, 1, settle=1.0)
        bad = await consume(bootstrap, errors, 2, settle=0.5)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert [ModelInferRequest().parse(r.value).id for r in good] == ["good"]
    assert [r.key for r in bad] == [b"k1", b"k2"]
    reasons = [dict(r.headers)["seldon-pipeline-errors"].decode() for r in bad]
    assert "malformed" in reasons[0] and "FLOAT" in reasons[1], reasons
    assert all(dict(r.headers)["pipeline"] == name.encode() for r in bad)
    assert [r.value.decode() for r in bad] == reasons


async def test_output_refused_by_the_broker_goes_to_error_topic(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    ns, name = f"big{unique}", f"big-{unique}"
    src, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    errors = f"seldon.{ns}.errors.errors"
    path = write(
        tmp_path, name, f"errorTopic: {errors}\nsteps:\n  - sources: [{src}]\n    sink: {sink}\n"
    )
    await create_topics(bootstrap, src)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # the sink takes record batches of at most 400 bytes
        await admin.create_topics(
            [NewTopic(sink, 1, 1, topic_configs={"max.message.bytes": "400"})]
        )
    finally:
        await admin.close()
    big = bytes(
        ModelInferResponse(
            id="big",
            outputs=[
                ModelInferResponseInferOutputTensor(
                    name="t", datatype="FP32", shape=[1000],
                    contents=InferTensorContents(fp32_contents=[1.0] * 1000),
                )
            ],
        )
    )  # fmt: skip
    await produce(
        bootstrap,
        src,
        [(b"k-big", big, header(name)), (b"k-small", response("small"), header(name))],
    )
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        good = await consume(bootstrap, sink, 1, timeout=30, settle=0.5)
        bad = await consume(bootstrap, errors, 1, timeout=30, settle=0.5)
        state = proxy.pipeline(name)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0
    assert [r.key for r in good] == [b"k-small"]
    assert [r.key for r in bad] == [b"k-big"]
    assert "refused" in dict(bad[0].headers)["seldon-pipeline-errors"].decode()
    assert state is not None and state["state"] == "Ready"


async def test_two_replicas_share_partitions(tmp_path: Path, bootstrap: str, unique: str) -> None:
    ns, name = f"rp{unique}", f"rp-{unique}"
    src, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    path = write(tmp_path, name, f"steps:\n  - sources: [{src}]\n    sink: {sink}\n")
    await create_topics(bootstrap, src, sink, partitions=2)
    proxy = Proxy(tmp_path).start(path)
    engines = [engine(tmp_path, bootstrap, proxy, name=n) for n in ("engine-a", "engine-b")]
    try:
        # Both engines acked Create, whatever rebalances happened in between.
        for _ in range(300):
            p = proxy.pipeline(name) or {}
            streams = p.get("streams", {})
            if p.get("state") == "Ready" and all(
                streams.get(n, {}).get("success") for n in ("engine-a", "engine-b")
            ):
                break
            await asyncio.sleep(0.2)
        records = [
            (f"{i % 2}.{name}.{i}".encode(), response(str(i)), header(name)) for i in range(400)
        ]
        await produce(bootstrap, src, records)
        out = await consume(bootstrap, sink, 400, timeout=60)
    finally:
        codes = [e.stop() for e in engines]
        proxy.stop()
    assert codes == [0, 0]
    assert {ModelInferRequest().parse(r.value).id for r in out} == {str(i) for i in range(400)}
    # The key's numeric prefix picks the output partition (spec 4.12).
    assert all(r.partition == int(r.key.split(b".")[0]) for r in out)
    logs = engines[0].output() + engines[1].output()
    assert "assigned ['" in engines[0].output() and "assigned ['" in engines[1].output(), logs[
        -2000:
    ]


async def test_sigterm_mid_stream_loses_nothing(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    ns, name = f"st{unique}", f"st-{unique}"
    src, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    path = write(tmp_path, name, f"steps:\n  - sources: [{src}]\n    sink: {sink}\n")
    await create_topics(bootstrap, src)
    total = 3000
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        first = total // 2
        await produce(
            bootstrap, src, [(None, response(str(i)), header(name)) for i in range(first)]
        )
        await consume(bootstrap, sink, 100, timeout=60)
        producing = asyncio.create_task(
            produce(
                bootstrap,
                src,
                [(None, response(str(i)), header(name)) for i in range(first, total)],
            )
        )
        eng.signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await asyncio.to_thread(eng.wait, 30)
        stopped_in = time.monotonic() - t0
        await producing
        assert code == 0, eng.output()[-3000:]
        assert stopped_in < 20
        eng = engine(tmp_path, bootstrap, proxy, name="engine-a")
        out = await consume(bootstrap, sink, total, timeout=90)
    finally:
        eng.stop()
        proxy.stop()
    ids = {ModelInferRequest().parse(r.value).id for r in out}
    assert len(out) >= total
    assert ids == {str(i) for i in range(total)}


async def _both_ready(proxy: Proxy, name: str, engines: tuple[str, ...]) -> None:
    for _ in range(300):
        p = proxy.pipeline(name) or {}
        streams = p.get("streams", {})
        if p.get("state") == "Ready" and all(streams.get(n, {}).get("success") for n in engines):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"pipeline {name} not Ready on {engines}: {proxy.pipeline(name)}")


async def test_static_members_leave_on_sigterm_and_rejoin_after_kill(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """With a 60 s session timeout, partitions move at once when a replica stops gracefully
    (it leaves its groups), and a replica killed with -9 takes its own back when it restarts
    (static membership), neither waiting for the session to expire."""
    ns, name = f"sm{unique}", f"sm-{unique}"
    src, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    path = write(tmp_path, name, f"steps:\n  - sources: [{src}]\n    sink: {sink}\n")
    await create_topics(bootstrap, src, sink, partitions=2)
    proxy = Proxy(tmp_path).start(path)
    slow = {"kafka_session_timeout_ms": "60000", "kafka_rebalance_timeout_ms": "60000"}
    a = engine(tmp_path, bootstrap, proxy, name="engine-a", **slow)
    b = engine(tmp_path, bootstrap, proxy, name="engine-b", **slow)
    try:
        await _both_ready(proxy, name, ("engine-a", "engine-b"))

        def batch(tag: str) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
            return [
                (f"{i % 2}.{tag}.{i}".encode(), response(f"{tag}{i}"), header(name))
                for i in range(100)
            ]

        assert b.stop() == 0  # leaves: engine-a gets both partitions now
        await produce(bootstrap, src, batch("after-stop-"))
        first = await consume(bootstrap, sink, 100, timeout=30)
        a.signal(signal.SIGKILL)
        a.wait(10)
        a = engine(tmp_path, bootstrap, proxy, name="engine-a", **slow)
        await produce(bootstrap, src, batch("after-kill-"))
        second = await consume(bootstrap, sink, 200, timeout=30)
    finally:
        for e in (a, b):
            e.stop()
        proxy.stop()
    assert len(first) == 100, "partitions of the stopped replica were not taken over"
    ids = {ModelInferRequest().parse(r.value).id for r in second}
    assert {f"after-kill-{i}" for i in range(100)} <= ids, "the killed replica did not rejoin"
