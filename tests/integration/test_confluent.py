"""The Confluent wire format through an engine process (issue 24).

Against a real registry: Apicurio Registry's Confluent-compatible API (`scripts/registry build`
makes it from Maven Central; without it that test is skipped, saying so). A stand-in of the REST
API (the two calls the engine makes: `GET /subjects`, `POST /subjects/{subject}/versions`)
checks the credentials and the calls themselves; the framing is checked byte for byte against
spec 4.12.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dataflow.confluent import RESPONSE_SCHEMA, frame, unframe
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.integration.harness import Proxy, consume, create_topics, engine, free_port, produce
from tests.integration.registry import Apicurio, jar
from tests.integration.test_one_line_errors import clean_env, last_line


def response(rid: str) -> bytes:
    tensor = ModelInferResponseInferOutputTensor(
        name="t", datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[5])
    )
    return bytes(ModelInferResponse(model_name="a", id=rid, outputs=[tensor]))


def request(rid: str) -> bytes:
    tensor = ModelInferRequestInferInputTensor(
        name="t", datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[5])
    )
    return bytes(ModelInferRequest(id=rid, inputs=[tensor]))


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[tuple[Path, list[Any]]]:
    """A stand-in registry and a config directory naming it (with credentials)."""
    calls: list[Any] = []
    ids: dict[tuple[str, str], int] = {}

    async def subjects(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic dXNlcjpwYXNz":  # user:pass
            return web.json_response({"error_code": 40101}, status=401)
        return web.json_response([])

    async def register(request: web.Request) -> web.Response:
        body = await request.json()
        subject = request.match_info["subject"]
        schema_id = ids.setdefault((subject, body["schema"]), 40 + len(ids))
        calls.append((subject, body["schemaType"], body["schema"], schema_id))
        return web.json_response({"id": schema_id})

    app = web.Application()
    app.router.add_get("/subjects", subjects)
    app.router.add_post("/subjects/{subject}/versions", register)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = tmp_path / "registry"
    config.mkdir()
    (config / ".confluent-schema.yaml").write_text(
        "schemaRegistry:\n  client:\n"
        f"    URL: http://127.0.0.1:{port}\n    username: user\n    password: pass\n"
    )
    yield config, calls
    await runner.cleanup()


@pytest.mark.kafka
async def test_framed_records_go_through_a_chain_and_come_out_framed(
    tmp_path: Path, bootstrap: str, unique: str, registry: tuple[Path, list[Any]]
) -> None:
    config, calls = registry
    ns, name = f"sr{unique}", f"sr-{unique}"
    a, b, c = (f"seldon.{ns}.model.{m}" for m in "abc")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\nsteps:\n"
        f"  - sources: [{a}.outputs]\n    sink: {b}.inputs\n"
        f"  - sources: [{b}.inputs]\n    sink: {c}.inputs\n"
    )
    await create_topics(bootstrap, f"{a}.outputs")
    head = [("pipeline", name.encode())]
    await produce(
        bootstrap,
        f"{a}.outputs",
        [
            (b"framed", frame(7) + response("framed"), head),  # as a registry producer writes
            (b"raw", response("raw"), head),  # unframed: read as it is
        ],
    )
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy, kafka_schema_registry_config_path=str(config))
    try:
        to_b = await consume(bootstrap, f"{b}.inputs", 2, settle=0.5)
        to_c = await consume(bootstrap, f"{c}.inputs", 2, settle=0.5)
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0, eng.output()[-3000:]
    registered = {subject: (schema, i) for subject, kind, schema, i in calls if kind == "PROTOBUF"}
    assert set(registered) == {f"{b}.inputs-value", f"{c}.inputs-value"}
    assert all("message ModelInferRequest {" in s for s, _ in registered.values())
    id_b, id_c = (registered[f"{t}.inputs-value"][1] for t in (b, c))
    assert id_b != id_c
    for records, schema_id in ((to_b, id_b), (to_c, id_c)):
        assert sorted(r.key for r in records) == [b"framed", b"raw"]
        for r in records:
            assert r.value[:6] == frame(schema_id)  # magic 0, the registry's id, index [0]
            assert unframe(r.value) == request(r.key.decode())


@pytest.mark.kafka
async def test_records_framed_with_a_real_registry_come_out_framed_with_its_ids(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """Apicurio Registry: a producer registers its schema and frames with the id it got; the
    engine reads that, registers the outputs' schemas itself and frames with the registry's
    ids; an unframed record is read as it is and written framed."""
    path = jar()
    if path is None:
        pytest.skip("no schema registry: `scripts/registry build` (needs Maven) makes it")
    apicurio = Apicurio(tmp_path, path).start()
    try:
        ns, name = f"ap{unique}", f"ap-{unique}"
        a, b, c = (f"seldon.{ns}.model.{m}" for m in "abc")
        pipeline = tmp_path / f"{name}.yaml"
        pipeline.write_text(
            f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\nsteps:\n"
            f"  - sources: [{a}.outputs]\n    sink: {b}.inputs\n"
            f"  - sources: [{b}.inputs]\n    sink: {c}.inputs\n"
        )
        config = tmp_path / "registry"
        config.mkdir()
        (config / ".confluent-schema.yaml").write_text(
            f"schemaRegistry:\n  client:\n    URL: {apicurio.url}\n"
        )
        id_a = apicurio.register(f"{a}.outputs-value", RESPONSE_SCHEMA)
        await create_topics(bootstrap, f"{a}.outputs")
        head = [("pipeline", name.encode())]
        await produce(bootstrap, f"{a}.outputs", [
            (b"framed", frame(id_a) + response("framed"), head),
            (b"raw", response("raw"), head),
        ])  # fmt: skip
        proxy = Proxy(tmp_path).start(pipeline)
        eng = engine(tmp_path, bootstrap, proxy, kafka_schema_registry_config_path=str(config))
        try:
            to_b = await consume(bootstrap, f"{b}.inputs", 2, settle=0.5)
            to_c = await consume(bootstrap, f"{c}.inputs", 2, settle=0.5)
        finally:
            code = eng.stop()
            proxy.stop()
        assert code == 0, eng.output()[-3000:]
        subjects = set(apicurio.call("GET", "/subjects"))
        assert {f"{a}.outputs-value", f"{b}.inputs-value", f"{c}.inputs-value"} <= subjects
        ids = []
        for topic, records in ((f"{b}.inputs", to_b), (f"{c}.inputs", to_c)):
            latest = apicurio.latest(f"{topic}-value")
            assert latest.get("schemaType") == "PROTOBUF"
            assert "message ModelInferRequest {" in latest["schema"]
            ids.append(latest["id"])
            assert sorted(r.key for r in records) == [b"framed", b"raw"]
            for r in records:
                assert r.value[:6] == frame(latest["id"])  # magic 0, the registry's id, [0]
                assert unframe(r.value) == request(r.key.decode())
        # One id per schema, across subjects (as Confluent's registry gives them).
        assert ids[0] == ids[1] != id_a
    finally:
        apicurio.stop()


def test_an_unreachable_registry_stops_start_up_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "registry"
    config.mkdir()
    (config / ".confluent-schema.yaml").write_text(
        f"schemaRegistry:\n  client:\n    URL: http://127.0.0.1:{free_port()}\n"
    )
    result = _engine(tmp_path, f"--kafka-schema-registry-config-path={config}")
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("dataflow: schema registry http://127.0.0.1:") and "unreachable" in line


def test_a_missing_registry_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = _engine(tmp_path, f"--kafka-schema-registry-config-path={tmp_path}")
    assert result.returncode != 0
    assert ".confluent-schema.yaml" in last_line(result)


def test_a_bad_otel_value_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {**clean_env(), "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}
    result = _engine(tmp_path, env=env)
    assert result.returncode == 1
    assert last_line(result).startswith("dataflow: bad value 'sometimes' for OTEL_TRACES_SAMPLER")


def _engine(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataflow", "--health-server-port", "0",
         f"--kafka-bootstrap-servers=127.0.0.1:{free_port()}", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env or clean_env(), timeout=90,
        check=False,
    )  # fmt: skip
