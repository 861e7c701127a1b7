"""The Confluent wire format: unframing (spec 6.4's vectors), framing, the registry's file and
its REST calls (against a stand-in HTTP server: no schema registry runs here)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dataflow import confluent
from dataflow.confluent import Registry, RegistryConfig, RegistryError, frame, unframe
from dataflow.proto.inference import ModelInferResponse


def test_unframe_per_the_reference_tests() -> None:
    assert unframe(None) is None
    assert unframe(b"\x01\x02\x03") == b"\x01\x02\x03"
    assert unframe(bytes(range(1, 8))) == bytes(range(1, 8))
    body = b"\x08\x01\x12\x04test"
    assert unframe(b"\x00\x01\x02\x03\x04\x05" + body) == body
    assert unframe(b"\x00\x01\x02\x03\x04\x05\x08") == b"\x08"
    plain = bytes(ModelInferResponse(model_name="test-model", id="test-id"))
    assert unframe(plain) == plain
    assert unframe(b"\x00\x00\x00\x00\x01") == b"\x00\x00\x00\x00\x01"  # shorter than a frame


def test_frame_is_magic_id_and_first_message_index() -> None:
    assert frame(258) == b"\x00\x00\x00\x01\x02\x00"
    assert unframe(frame(7) + b"\x0a\x01m") == b"\x0a\x01m"


def test_schema_per_topic_suffix() -> None:
    assert confluent.schema_for("seldon.ns.model.m.inputs")[0] == "ModelInferRequest"  # type: ignore[index]
    assert confluent.schema_for("seldon.ns.pipeline.p.outputs")[0] == "ModelInferResponse"  # type: ignore[index]
    assert confluent.schema_for("seldon.ns.errors.errors") is None
    assert "package inferenceSchema;" in confluent.REQUEST_SCHEMA
    first = confluent.REQUEST_SCHEMA.split("message ", 2)[1]
    assert first.startswith("ModelInferRequest")  # the first message: index [0]


def test_config_file(tmp_path: Path) -> None:
    (tmp_path / ".confluent-schema.yaml").write_text(
        "schemaRegistry:\n  client:\n    URL: http://registry:8081/\n"
        "    username: test-user\n    password: test-pass\n"
    )
    config = confluent.load_config(str(tmp_path))
    assert config == RegistryConfig("http://registry:8081", "test-user", "test-pass")
    assert "test-pass" not in repr(config)
    assert base64.b64decode(config.auth.split()[1]) == b"test-user:test-pass"
    assert base64.b64decode(RegistryConfig("u", "", "p").auth.split()[1]) == b":p"
    assert RegistryConfig("u").auth == ""


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "cannot read"),
        ("schemaRegistry: [", "not valid YAML"),
        ("other: 1\n", "schemaRegistry.client is missing"),
        ("schemaRegistry:\n  client:\n    URL: ''\n", "Schema registry URL is required"),
        ("schemaRegistry:\n  client:\n    URL: registry:8081\n", "bad schema registry URL"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str | None, said: str) -> None:
    if text is not None:
        (tmp_path / ".confluent-schema.yaml").write_text(text)
    with pytest.raises(RegistryError) as error:
        confluent.load_config(str(tmp_path))
    assert said in str(error.value) and "\n" not in str(error.value)


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, list[Any]]]:
    """A stand-in for the registry's REST API: ids per (subject, schema), calls recorded."""
    calls: list[Any] = []
    ids: dict[tuple[str, str], int] = {}

    async def subjects(request: web.Request) -> web.Response:
        calls.append(("GET", request.path, request.headers.get("Authorization")))
        return web.json_response(sorted({s for s, _ in ids}))

    async def register(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append(("POST", request.path, dict(request.query), body["schemaType"]))
        key = (request.match_info["subject"], body["schema"])
        return web.json_response({"id": ids.setdefault(key, 100 + len(ids))})

    app = web.Application()
    app.router.add_get("/subjects", subjects)
    app.router.add_post("/subjects/{subject}/versions", register)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_registers_once_per_topic_and_frames(stand_in: tuple[str, list[Any]]) -> None:
    url, calls = stand_in
    registry = Registry(RegistryConfig(url, "u", "p"))
    await registry.start()
    try:
        first = await registry.prefix("seldon.ns.model.a.inputs")
        again = await registry.prefix("seldon.ns.model.a.inputs")
        out = await registry.prefix("seldon.ns.pipeline.p.outputs")
        assert await registry.prefix("seldon.ns.errors.errors") == b""
    finally:
        await registry.close()
    assert first == again == frame(100)
    assert out == frame(101)
    assert calls[0][0] == "GET" and calls[0][2] == "Basic " + base64.b64encode(b"u:p").decode()
    assert calls[1:] == [
        ("POST", "/subjects/seldon.ns.model.a.inputs-value/versions", {"normalize": "true"},
         "PROTOBUF"),
        ("POST", "/subjects/seldon.ns.pipeline.p.outputs-value/versions", {"normalize": "true"},
         "PROTOBUF"),
    ]  # fmt: skip


async def test_an_unreachable_registry_is_one_line() -> None:
    from tests.integration.harness import free_port

    registry = Registry(RegistryConfig(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(RegistryError) as error:
        await registry.start()
    assert "unreachable" in str(error.value) and "\n" not in str(error.value)
