"""Traces in a real Jaeger: traced requests through a 3-step chain and a join (issue 24).

The test plays the gateway and the models: it exports their spans itself (OTLP to the same
Jaeger) and writes their records with those spans' `traceparent`; the engine process exports its
own spans. Jaeger is the binary of `scripts/jaeger build`; without it the test is skipped.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import tracing
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.integration.harness import (
    Process,
    Proxy,
    _env,
    consume,
    create_topics,
    free_port,
    produce,
    wait_until,
)
from tests.integration.jaeger import Jaeger, attributes, binary

pytestmark = pytest.mark.kafka

ERROR = 2  # OTLP status code


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    path = binary()
    if path is None:
        pytest.skip("no Jaeger binary: `scripts/jaeger build` (needs Go) makes it")
    server = Jaeger(tmp_path_factory.mktemp("jaeger"), path).start()
    yield server
    server.stop()


def response(rid: str) -> bytes:
    tensors = [
        ModelInferResponseInferOutputTensor(
            name=n, datatype="INT32", shape=[1, 1], contents=InferTensorContents(int_contents=[1])
        )
        for n in ("tensor0", "tensor1")
    ]
    return bytes(ModelInferResponse(model_name="a", id=rid, outputs=tensors))


def request(rid: str) -> bytes:
    tensor = ModelInferRequestInferInputTensor(
        name="extra", datatype="INT32", shape=[1, 1], contents=InferTensorContents(int_contents=[2])
    )
    return bytes(ModelInferRequest(model_name="x", id=rid, inputs=[tensor]))


def hexed(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def test_traced_requests_through_a_chain_and_a_join(
    tmp_path: Path, bootstrap: str, unique: str, jaeger: Jaeger
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    ns, name = f"tr{unique}", f"tr-{unique}"
    a, b, c, d, x, j = (f"seldon.{ns}.model.{m}" for m in "abcdxj")
    pipeline = tmp_path / f"{name}.yaml"
    pipeline.write_text(
        f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\nsteps:\n"
        f"  - sources: [{a}.outputs]\n    sink: {b}.inputs\n"
        f"  - sources: [{b}.inputs]\n    sink: {c}.inputs\n"
        f"  - sources: [{c}.inputs]\n    sink: {d}.inputs\n"
        f"  - sources: [{d}.inputs, {x}.inputs]\n    sink: {j}.inputs\n"
        f"    inputJoinType: inner\n    joinWindowMs: 10000\n"
    )
    await create_topics(bootstrap, f"{a}.outputs", f"{x}.inputs")
    service = f"dataflow-{unique}"
    proxy = Proxy(tmp_path).start(pipeline)
    env = {
        "SELDON_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SELDON_UPSTREAM_HOST": "127.0.0.1",
        "SELDON_UPSTREAM_PORT": str(proxy.port),
        "SELDON_DATAFLOW_REPLICA_ID": "engine-traced",
        "SELDON_HEALTH_SERVER_PORT": "0",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    engine = Process("engine", [sys.executable, "-m", "dataflow"], _env(env), tmp_path / "e.log")
    engine.start()

    # The gateway and the models: their spans go to the same Jaeger.
    provider = TracerProvider(resource=Resource.create({"service.name": f"gateway-{unique}"}))
    exporter = OTLPSpanExporter(endpoint=jaeger.otlp_endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = provider.get_tracer("test")

    def context_of(span: Any) -> tuple[str, bytes]:
        ctx = span.get_span_context()
        return ("traceparent", tracing.traceparent(ctx.trace_id, ctx.span_id))

    untraced = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00"
    try:
        proxy.wait_state(name, "Ready", timeout=60)
        with gateway.start_as_current_span("gateway") as root:
            with gateway.start_as_current_span("model-a") as model_a:
                model_a_ctx = context_of(model_a)
            with gateway.start_as_current_span("model-a-bad") as bad:
                bad_ctx = context_of(bad)
            head = [("pipeline", name.encode()), ("x-request-id", b"r1")]
            await produce(
                bootstrap,
                f"{a}.outputs",
                [
                    (b"0.p.r1", response("r1"), [*head, model_a_ctx]),
                    (b"0.p.r2", b"\xff\xff not protobuf", [*head, bad_ctx]),
                    (b"0.p.r3", response("r3"), [*head, ("traceparent", untraced)]),
                    (b"0.p.r4", response("r4"), head),
                ],
            )
            chained = await consume(bootstrap, f"{d}.inputs", 3, settle=0.5)
            await asyncio.sleep(1.0)  # the chain's output waits in the join window
            with gateway.start_as_current_span("model-x") as model_x:
                model_x_ctx = context_of(model_x)
            await produce(
                bootstrap, f"{x}.inputs", [(b"0.p.r1", request("r1"), [*head, model_x_ctx])]
            )
            joined = await consume(bootstrap, f"{j}.inputs", 1, settle=0.5)
        provider.shutdown()
        trace_id = hexed(root.get_span_context().trace_id, 32)

        def whole_trace() -> list[dict[str, Any]] | None:
            found = jaeger.spans(trace_id)
            names = {s["name"] for s in found}
            return found if len(found) >= 9 and f"{name}.j" in names else None

        spans = wait_until(whole_trace, 30, "the whole trace in Jaeger", interval=0.5)
        engine_ops = wait_until(
            lambda: (ops := jaeger.operations(service)) >= {
                "dataflow.engine.start", "dataflow.pipeline.create", "dataflow.rebalance.assigned"
            } and ops, 30, "the engine's own spans",
        )  # fmt: skip
    finally:
        code = engine.stop()
        proxy.stop()
    assert code == 0, engine.output()[-3000:]
    assert engine_ops

    # Records without a sampled context pass through untouched and make no span.
    by_id = {r.key: r for r in chained}
    assert set(by_id) == {b"0.p.r1", b"0.p.r3", b"0.p.r4"}
    assert dict(by_id[b"0.p.r3"].headers)["traceparent"] == untraced
    assert "traceparent" not in dict(by_id[b"0.p.r4"].headers)

    spans_by_id = {s["spanId"]: s for s in spans}
    ok = [s for s in spans if s.get("status", {}).get("code") != ERROR]
    named = {s["name"]: s for s in ok}
    assert len(named) == len(ok) == 8  # gateway, 3 models, 3 steps, the join: one span each
    assert {s["service"] for s in spans} == {service, f"gateway-{unique}"}
    step_b, step_c, step_d, join = (named[f"{name}.{m}"] for m in "bcdj")
    # The chain: each step a child of the one before, and its output carries its context.
    assert step_b["parentSpanId"] == named["model-a"]["spanId"]
    assert step_c["parentSpanId"] == step_b["spanId"]
    assert step_d["parentSpanId"] == step_c["spanId"]
    out = dict(by_id[b"0.p.r1"].headers)["traceparent"]
    assert out == f"00-{trace_id}-{step_d['spanId']}-01".encode()
    assert attributes(step_b)["seldon.pipeline"] == name
    assert attributes(step_b)["messaging.destination.name"] == f"{b}.inputs"
    # The join: child of the part that completed it, linked to both, with their waits.
    assert join["parentSpanId"] == named["model-x"]["spanId"]
    links = {link["spanId"]: attributes(link) for link in join["links"]}
    assert set(links) == {step_d["spanId"], named["model-x"]["spanId"]}
    assert links[step_d["spanId"]]["dataflow.wait_ms"] >= 900
    assert links[named["model-x"]["spanId"]]["dataflow.wait_ms"] < 900
    assert attributes(join)["dataflow.stage"] == "join"
    assert int(join["endTimeUnixNano"]) - int(join["startTimeUnixNano"]) >= 900_000_000
    [result] = joined
    assert dict(result.headers)["traceparent"] == f"00-{trace_id}-{join['spanId']}-01".encode()
    # The malformed record: an error span under its model's span.
    [error] = [s for s in spans if s.get("status", {}).get("code") == ERROR]
    assert error["name"] == f"{name}.b"
    assert spans_by_id[error["parentSpanId"]]["name"] == "model-a-bad"
    assert "malformed protobuf" in error["status"]["message"]


def test_a_stuck_collector_does_not_hold_the_shutdown(tmp_path: Path, bootstrap: str) -> None:
    """Spans that cannot be exported are dropped after the bound; the engine exits on SIGTERM.

    The collector is a socket that accepts connections and never answers: every export waits
    for its 10 s deadline."""
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)
    env = {
        "SELDON_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SELDON_UPSTREAM_HOST": "127.0.0.1",
        "SELDON_UPSTREAM_PORT": str(free_port()),  # no scheduler: the engine just waits
        "SELDON_HEALTH_SERVER_PORT": "0",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stuck.getsockname()[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    engine = Process("engine", [sys.executable, "-m", "dataflow"], _env(env), tmp_path / "e.log")
    engine.start()
    try:
        wait_until(lambda: "started: kafka" in engine.output(), 60, "the engine's start")
        time.sleep(1)  # the start-up span's export is waiting for the collector
        t0 = time.monotonic()
        engine.signal(signal.SIGTERM)
        code = engine.wait(30)
        took = time.monotonic() - t0
    finally:
        engine.stop()
        stuck.close()
    assert code == 0, engine.output()[-2000:]
    assert took < 9, f"took {took:.1f}s"
    assert "tracing on: otlp (grpc)" in engine.output()
