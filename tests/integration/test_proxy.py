"""The proxy scheduler over real sockets: fake engines (grpclib clients) and the control API.

No broker is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel

from dataflow.proto.seldon.mlops.chainer import (
    ChainerStub,
    PipelineStepUpdatePipelineJoinType,
    PipelineSubscriptionRequest,
    PipelineTopic,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)
from dataflow.proxy import ProxyServer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "compose" / "pipelines" / "some-pipeline.yaml"
CHAIN = REPO / "compose" / "pipelines" / "samples" / "chain.yaml"
TEXTS = {path: path.read_text() for path in (DEMO, CHAIN)}
Op = PipelineUpdateMessagePipelineOperation
TIMEOUT = 10.0


class FakeEngine:
    """A dataflow engine replica as the proxy sees it: one subscription, acks on demand."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.channel = Channel("127.0.0.1", port)
        self.stub = ChainerStub(self.channel)
        self.messages: asyncio.Queue[PipelineUpdateMessage] = asyncio.Queue()
        self.task = asyncio.create_task(self._subscribe(), name=f"fake-engine:{name}")

    async def _subscribe(self) -> None:
        request = PipelineSubscriptionRequest(name=self.name)
        async for message in self.stub.subscribe_pipeline_updates(request):
            await self.messages.put(message)

    async def next(self) -> PipelineUpdateMessage:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)

    async def ack(
        self,
        message: PipelineUpdateMessage,
        success: bool = True,
        reason: str = "pipeline data streams: ready",
        **overrides: Any,
    ) -> None:
        update = PipelineUpdateMessage(
            op=message.op,
            pipeline=message.pipeline,
            version=message.version,
            uid=message.uid,
            timestamp=message.timestamp,
            stream=self.name,
        )
        for key, value in overrides.items():
            setattr(update, key, value)
        status = PipelineUpdateStatusMessage(update=update, success=success, reason=reason)
        await self.stub.pipeline_update_event(status)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.channel.close()


class Harness:
    """A proxy on free ports, an HTTP session, and the fake engines of one test."""

    def __init__(self, proxy: ProxyServer, http: aiohttp.ClientSession) -> None:
        self.proxy = proxy
        self.http = http
        self.url = f"http://127.0.0.1:{proxy.control_port}"
        self.engines: list[FakeEngine] = []

    async def engine(self, name: str) -> FakeEngine:
        engine = FakeEngine(self.proxy.port, name)
        self.engines.append(engine)
        await self.until(lambda: name in self.proxy.store.subscribers)
        return engine

    async def until(self, condition: Any) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not condition():  # noqa: ASYNC110 (polling another task's state)
                await asyncio.sleep(0.01)

    async def load(self, path: Path, status: int = 201) -> dict[str, Any]:
        async with self.http.post(
            f"{self.url}/pipelines", params={"source": path.name}, data=TEXTS[path]
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == status, body
            return body

    async def pipelines(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/pipelines") as response:
            assert response.status == 200
            result: list[dict[str, Any]] = await response.json()
            return result

    async def pipeline(self, name: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/pipelines/{name}") as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json()
            return result

    async def state(self, name: str, expected: str) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while (record := await self.pipeline(name))["state"] != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return record


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    proxy = ProxyServer(host="127.0.0.1", port=0, control_port=0)
    await proxy.start()
    async with aiohttp.ClientSession() as http:
        h = Harness(proxy, http)
        try:
            yield h
        finally:
            for engine in h.engines:
                await engine.close()
            await proxy.stop()


async def test_engine_gets_create_acks_and_pipeline_is_ready(harness: Harness) -> None:
    engine = await harness.engine("engine-a")
    body = await harness.load(DEMO)
    assert body["outcome"] == "created"
    assert body["pipeline"]["state"] == "Creating"
    message = await engine.next()
    assert message.op == Op.Create
    assert (message.pipeline, message.version, message.uid) == ("some-pipeline", 1, "1234")
    assert message.timestamp == body["pipeline"]["timestamp"] == 1
    assert [u.sink.topic_name for u in message.updates] == [
        "seldon.some-namespace.some-model-2.inputs",
        "seldon.some-namespace.some-model-4.inputs",
    ]
    assert message.updates[1].sources == [
        PipelineTopic(
            pipeline_name="some-pipeline",
            topic_name="seldon.some-namespace.some-model-3.outputs",
            tensor="tensor1",
        )
    ]
    assert message.updates[0].input_join_ty == PipelineStepUpdatePipelineJoinType.Inner

    await engine.ack(message)
    records = await harness.pipelines()
    assert len(records) == 1
    record = records[0]
    assert {k: record[k] for k in ("name", "version", "uid", "timestamp", "state", "reason")} == {
        "name": "some-pipeline",
        "version": 1,
        "uid": "1234",
        "timestamp": 1,
        "state": "Ready",
        "reason": "pipeline data streams: ready",
    }
    assert record["streams"] == {
        "engine-a": {
            "state": "Ready",
            "op": "Create",
            "success": True,
            "reason": "pipeline data streams: ready",
        }
    }

    # loading the same file again changes nothing and sends nothing
    assert (await harness.load(DEMO, status=200))["outcome"] == "unchanged"
    assert engine.messages.empty()


async def test_outdated_ack_is_ignored(harness: Harness) -> None:
    engine = await harness.engine("engine-a")
    await harness.load(CHAIN)
    message = await engine.next()
    await engine.ack(message, False, reason="stale", timestamp=message.timestamp - 1)
    await engine.ack(message, False, reason="not mine", stream="engine-x")
    record = await harness.pipeline("tfsimples")
    assert record["state"] == "Creating"
    assert record["outdated_acks"] == 2
    assert record["last_outdated"] == "stream 'engine-x' is not expected (expected: engine-a)"
    assert record["streams"]["engine-a"]["op"] is None
    await engine.ack(message)
    assert (await harness.pipeline("tfsimples"))["state"] == "Ready"


async def test_second_subscriber_and_unload(harness: Harness) -> None:
    a = await harness.engine("engine-a")
    await harness.load(DEMO)
    first = await a.next()
    await a.ack(first)
    await harness.state("some-pipeline", "Ready")

    b = await harness.engine("engine-b")
    for_b = await b.next()
    again = await a.next()  # a new iteration: every engine is asked again
    assert for_b.op == again.op == Op.Create
    assert for_b.uid == "1234" and for_b.timestamp == again.timestamp == first.timestamp + 1
    record = await harness.pipeline("some-pipeline")
    assert record["state"] == "Creating"
    assert set(record["streams"]) == {"engine-a", "engine-b"}
    await a.ack(again)
    await b.ack(for_b)
    await harness.state("some-pipeline", "Ready")

    async with harness.http.delete(f"{harness.url}/pipelines/some-pipeline") as response:
        assert response.status == 200
        body = await response.json()
    assert body["outcome"] == "terminating"
    assert body["pipeline"]["state"] == "Terminating"
    deletes = [await a.next(), await b.next()]
    for delete in deletes:
        assert delete.op == Op.Delete and delete.updates == [] and delete.uid == "1234"
        assert delete.timestamp == for_b.timestamp + 1
    await a.ack(deletes[0], reason="pipeline removed")
    assert (await harness.pipeline("some-pipeline"))["state"] == "Terminating"
    await b.ack(deletes[1], reason="pipeline removed")
    record = await harness.state("some-pipeline", "Terminated")
    assert record["reason"] == "pipeline removed"


async def test_stream_end_removes_the_subscriber(harness: Harness) -> None:
    a = await harness.engine("engine-a")
    b = await harness.engine("engine-b")
    await harness.load(DEMO)
    await a.next()
    await b.next()
    await b.close()
    await harness.until(lambda: harness.proxy.store.subscribers == ("engine-a",))
    async with harness.http.get(f"{harness.url}/subscribers") as response:
        assert await response.json() == {"subscribers": ["engine-a"]}
    resent = await a.next()  # the remaining engine is asked again, without engine-b
    assert set((await harness.pipeline("some-pipeline"))["streams"]) == {"engine-a"}
    await a.ack(resent)
    await harness.state("some-pipeline", "Ready")


async def test_control_api_errors(harness: Harness) -> None:
    bad = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\n"
    bad += "spec:\n  steps:\n  - name: a\n  - name: b\n    inputs: [foo]\n"
    async with harness.http.post(
        f"{harness.url}/pipelines", params={"source": "pipelines/x.yaml"}, data=bad
    ) as response:
        assert response.status == 400
        assert await response.json() == {
            "error": "pipelines/x.yaml: spec.steps[1].inputs[0]: unknown step 'foo'"
        }
    async with harness.http.delete(f"{harness.url}/pipelines/nope") as response:
        assert response.status == 404
        assert await response.json() == {"error": "unknown pipeline 'nope'"}
    async with harness.http.get(f"{harness.url}/pipelines/nope") as response:
        assert response.status == 404


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataflow.proxy",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_load_status_unload(harness: Harness) -> None:
    engine = await harness.engine("engine-a")
    url = ("--url", harness.url)
    code, out, _ = await run_cli("load", str(CHAIN), *url)
    assert code == 0
    assert out.startswith(f"{CHAIN}: created: tfsimples v1 (uid ")
    await engine.ack(await engine.next())
    code, out, _ = await run_cli("status", *url)
    assert code == 0
    assert re.fullmatch(
        r"tfsimples  v1  Ready  pipeline data streams: ready  \[acked: engine-a Ready\]\n", out
    )
    code, out, err = await run_cli("unload", "nope", *url)
    assert (code, out, err) == (1, "", "error: unknown pipeline 'nope'\n")
    code, out, _ = await run_cli("unload", "tfsimples", *url)
    assert code == 0 and out.startswith("terminating: tfsimples v1")
    bad = REPO / "compose" / "pipelines" / "missing.yaml"
    code, _, err = await run_cli("load", str(bad), *url)
    assert code == 1 and "no such file or folder" in err


async def test_cli_without_a_proxy_fails_cleanly() -> None:
    code, _, err = await run_cli("status", "--url", "http://127.0.0.1:9")
    assert code == 1 and err.startswith("error: cannot reach the proxy at http://127.0.0.1:9")


async def test_help_lists_options_with_env_names() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    text = " ".join(out.split())
    for flag, env, default in [
        ("--host", "SELDON_PROXY_HOST", "127.0.0.1"),
        ("--port", "SELDON_PROXY_PORT", "10101"),
        ("--control-port", "SELDON_PROXY_CONTROL_PORT", "10102"),
        ("--pipelines", "SELDON_PROXY_PIPELINES", "none"),
        ("--namespace", "SELDON_PROXY_NAMESPACE", "default"),
        ("--topic-prefix", "SELDON_PROXY_TOPIC_PREFIX", "seldon"),
        ("--log-level", "SELDON_PROXY_LOG_LEVEL", "INFO"),
        ("--state-dir", "SELDON_PROXY_STATE_DIR", ".proxy-state"),
        ("--token-path", "SELDON_PROXY_TOKEN_PATH", "none"),
        ("--tls-cert-path", "SELDON_PROXY_TLS_CERT_PATH", "none"),
        ("--tls-key-path", "SELDON_PROXY_TLS_KEY_PATH", "none"),
        ("--tls-client-ca-path", "SELDON_PROXY_TLS_CLIENT_CA_PATH", "none"),
    ]:
        assert flag in text
        assert f"[env {env}, default: {default}]" in text
    assert "SELDON_PROXY_URL" in text
    for command in ("load FILE", "unload NAME", "status"):
        assert command in text


async def test_serve_loads_the_demo_folder_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataflow.proxy",
        "--pipelines",
        "compose/pipelines",
        "--port",
        "0",
        "--control-port",
        "0",
        "--host",
        "127.0.0.1",
        "--state-dir",
        str(tmp_path / "state"),
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "SELDON_PROXY_LOG_LEVEL": "debug"},
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while "proxy scheduler: Chainer gRPC on" not in (line := await _line(process)):
                lines.append(line)
        found = re.search(r"control API on (http://\S+)", line)
        assert found is not None
        assert any("load created: some-pipeline v1 (uid 1234, ts 1)" in x for x in lines), lines
        async with aiohttp.ClientSession() as http, http.get(f"{found[1]}/pipelines") as response:
            names = [record["name"] for record in await response.json()]
        assert names == ["some-pipeline"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    raw = await process.stderr.readline()
    if not raw:
        raise AssertionError("the proxy exited early")
    return raw.decode()


async def test_serve_refuses_a_bad_pipeline_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: PipelineUpdate\nname: x\nsteps: []\n")
    code, _, err = await run_cli(
        "--pipelines",
        str(bad),
        "--port",
        "0",
        "--control-port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert code == 2
    assert f"{bad}: steps: a pipeline needs at least one step" in err


def test_the_harness_gives_a_taken_port_up_for_a_fresh_one(tmp_path: Path) -> None:
    # CI saw a proxy's port taken between free_port() and its bind (a 3-broker cluster's
    # connections were opening meanwhile): the harness starts it again on fresh ports.
    import socket

    from tests.integration.harness import Proxy

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = Proxy(tmp_path, port=port).start()
        try:
            assert proxy.port != port and proxy.status() == []
            assert "Address already in use" in (tmp_path / f"proxy-{port}.log").read_text()
        finally:
            proxy.stop()
