"""The control plane secured: bearer token, TLS and mutual TLS, one live subscription per name,
acks bound to their engine, malformed messages refused. Over real sockets; only the engine
process test needs the broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from loguru import logger

from dataflow.chainer import (
    EVENT_PATH,
    INSTANCE_METADATA,
    SUBSCRIBE_PATH,
    StrictCodec,
    client_context,
    server_context,
)
from dataflow.engine import Engine
from dataflow.proto.seldon.mlops.chainer import (
    ChainerStub,
    PipelineSubscriptionRequest,
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
    PipelineUpdateStatusResponse,
)
from dataflow.proxy import ProxyServer
from dataflow.proxy.control import UNAUTHORIZED
from dataflow.settings import Settings
from dataflow.subscriber import Subscriber
from tests.integration.harness import REPO, engine
from tests.unit.test_chainer import demo_2022

Op = PipelineUpdateMessagePipelineOperation
TIMEOUT = 10.0
CHAIN = REPO / "compose" / "pipelines" / "samples" / "chain.yaml"


def make_certs(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a client certificate
    of another CA (`rogue`); PEM files in `folder`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=dataflow-test-{ca}")  # fmt: skip
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", "san.cnf")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[ProxyServer]:
    proxy = ProxyServer(host="127.0.0.1", port=0, control_port=0, **kwargs)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def until(condition: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (polling another task's state)
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def subscriber(port: int, name: str, **kwargs: Any) -> AsyncIterator[Subscriber]:
    sub = Subscriber("127.0.0.1", port, name, lambda m: None, **kwargs)
    task = asyncio.create_task(sub.run(), name=f"test-subscriber:{name}")
    try:
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sub.close()


class RawSubscription:
    """One SubscribePipelineUpdates stream opened by hand, with a given instance id."""

    def __init__(self, port: int, name: str, instance: str | None) -> None:
        self.channel = Channel("127.0.0.1", port, codec=StrictCodec())
        self.name, self.instance = name, instance
        self.messages: asyncio.Queue[PipelineUpdateMessage | BaseException] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        metadata = {INSTANCE_METADATA: self.instance} if self.instance else None
        try:
            async with self.channel.request(
                SUBSCRIBE_PATH,
                Cardinality.UNARY_STREAM,
                PipelineSubscriptionRequest,
                PipelineUpdateMessage,
                metadata=metadata,
            ) as stream:
                await stream.send_message(PipelineSubscriptionRequest(name=self.name), end=True)
                async for message in stream:
                    await self.messages.put(message)
            await self.messages.put(EOFError("stream ended"))
        except GRPCError as exc:
            await self.messages.put(exc)

    async def next(self) -> PipelineUpdateMessage | BaseException:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.channel.close()


# -- bearer token -----------------------------------------------------------------------------


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataflow.proxy",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, "NO_COLOR": "1", **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_control_api_needs_the_token_when_one_is_set(tmp_path: Path) -> None:
    async with running(token="s3cret-token") as proxy, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{proxy.control_port}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            for method, path in (("GET", "/pipelines"), ("DELETE", "/pipelines/x")):
                async with http.request(method, url + path, headers=headers) as response:
                    assert response.status == 401
                    assert await response.json() == {"error": UNAUTHORIZED}
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(url + "/pipelines", data=CHAIN.read_text()) as response:
                assert response.status == 401
        assert proxy.store.records() == []  # nothing was loaded
        async with http.get(url + "/health") as response:
            assert response.status == 200 and await response.json() == {"status": "UP"}
        good = {"Authorization": "Bearer s3cret-token"}
        async with http.get(url + "/pipelines", headers=good) as response:
            assert response.status == 200 and await response.json() == []

        # The CLI sends the token from the environment or from a file.
        code, out, err = await cli("load", str(CHAIN), "--url", url)
        assert (code, out) == (1, "") and err == f"error: {UNAUTHORIZED}\n"
        code, out, _ = await cli(
            "load", str(CHAIN), "--url", url, env={"SELDON_PROXY_TOKEN": "s3cret-token"}
        )
        assert code == 0 and "created: tfsimples v1" in out
        token_file = tmp_path / "token"
        token_file.write_text("s3cret-token\n")
        code, out, _ = await cli("status", "--url", url, "--token-path", str(token_file))
        assert code == 0 and out.startswith("tfsimples  v1  Creating")
        code, _, err = await cli("status", "--url", url, "--token-path", str(tmp_path / "nope"))
        assert code == 2 and err.startswith(f"error: token file {tmp_path / 'nope'}: ")


async def test_serve_refuses_a_bad_token_or_tls_file_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = ("--port", "0", "--control-port", "0", "--state-dir", str(tmp_path / "state"))
    code, _, err = await cli(*base, "--token-path", str(empty))
    assert code == 2 and f"token file {empty}: empty" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli(*base, "--tls-cert-path", str(tmp_path / "missing.crt"))
    assert code == 2 and "SELDON_PROXY_TLS_KEY_PATH together" in err
    code, _, err = await cli(*base, "--tls-cert-path", str(empty), "--tls-key-path", str(empty))
    assert code == 2 and "cannot use the TLS files" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = await cli(*base, env={"SELDON_PROXY_TOKEN": "a", "SELDON_PROXY_TOKEN_PATH": "b"})
    assert code == 2 and "give SELDON_PROXY_TOKEN or SELDON_PROXY_TOKEN_PATH, not both" in err


# -- TLS ----------------------------------------------------------------------------------------


async def test_plaintext_subscriber_cannot_subscribe_to_a_tls_proxy_and_a_tls_one_can(
    certs: Path,
) -> None:
    tls = server_context(certs / "server.crt", certs / "server.key")
    async with running(tls=tls) as proxy:
        async with subscriber(proxy.port, "plain"):
            await asyncio.sleep(1.0)
            assert proxy.store.subscribers == ()
        trusted = client_context(certs / "ca.pem")
        async with subscriber(proxy.port, "secure", tls=trusted):
            await until(lambda: proxy.store.subscribers == ("secure",))
        untrusted = client_context(certs / "rogue-ca.pem")  # the server's CA is not trusted
        async with subscriber(proxy.port, "doubtful", tls=untrusted):
            await asyncio.sleep(1.0)
            assert "doubtful" not in proxy.store.subscribers


async def test_mutual_tls_needs_a_client_certificate_of_the_ca(certs: Path) -> None:
    tls = server_context(certs / "server.crt", certs / "server.key", certs / "ca.pem")
    async with running(tls=tls) as proxy:
        ca = certs / "ca.pem"
        without = client_context(ca)
        rogue = client_context(ca, certs / "rogue.crt", certs / "rogue.key")
        for name, context in (("no-cert", without), ("rogue", rogue)):
            async with subscriber(proxy.port, name, tls=context):
                await asyncio.sleep(1.0)
                assert proxy.store.subscribers == (), name
        good = client_context(ca, certs / "client.crt", certs / "client.key")
        async with subscriber(proxy.port, "engine-a", tls=good) as sub:
            await until(lambda: proxy.store.subscribers == ("engine-a",))
            message = PipelineUpdateMessage(op=Op.Create, pipeline="p", uid="u", timestamp=1)
            assert await sub.ack(message, Op.Create, True, "ok")


@pytest.mark.kafka
async def test_a_plaintext_engine_cannot_subscribe_to_a_tls_proxy_and_a_tls_engine_can(
    tmp_path: Path, certs: Path, bootstrap: str
) -> None:
    tls = server_context(certs / "server.crt", certs / "server.key", certs / "ca.pem")
    async with running(tls=tls) as proxy:
        plain = engine(tmp_path, bootstrap, proxy, name="plain-engine")  # type: ignore[arg-type]
        secure = engine(
            tmp_path,
            bootstrap,
            proxy,  # type: ignore[arg-type]
            name="tls-engine",
            upstream_security_protocol="SSL",
            upstream_tls_ca_path=str(certs / "ca.pem"),
            upstream_tls_cert_path=str(certs / "client.crt"),
            upstream_tls_key_path=str(certs / "client.key"),
        )
        try:
            await until(lambda: proxy.store.subscribers == ("tls-engine",), 30)
            await until(lambda: "unreachable" in plain.output(), 30)  # it tried, and failed
            await asyncio.sleep(1.0)
            assert proxy.store.subscribers == ("tls-engine",)
        finally:
            codes = [plain.stop(), secure.stop()]
    assert codes == [0, 0], secure.output()[-2000:]


# -- one live subscription per name --------------------------------------------------------


async def test_a_second_engine_under_a_connected_name_is_refused() -> None:
    async with running() as proxy:
        first = RawSubscription(proxy.port, "engine-a", "instance-1")
        await until(lambda: proxy.store.subscribers == ("engine-a",))
        for instance in ("instance-2", None):
            other = RawSubscription(proxy.port, "engine-a", instance)
            refused = await other.next()
            assert isinstance(refused, GRPCError) and refused.status is Status.ALREADY_EXISTS
            assert "already connected from another engine" in str(refused.message)
            await other.close()
        assert first.messages.empty() and not first.task.done()  # the first one is untouched
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
        try:
            async with subscriber(proxy.port, "engine-a"):  # an engine says why it waits
                await until(
                    lambda: any(
                        "refused the subscription as engine-a: ALREADY_EXISTS" in line
                        for line in lines
                    )
                )
        finally:
            logger.remove(sink)
        assert proxy._subscriptions["engine-a"].instance == "instance-1"

        # The same engine process reconnecting (same instance id) replaces its old stream.
        again = RawSubscription(proxy.port, "engine-a", "instance-1")
        assert isinstance(await first.next(), EOFError)
        await until(lambda: proxy._subscriptions["engine-a"].instance == "instance-1")
        assert proxy.store.subscribers == ("engine-a",)
        await again.close()
        await first.close()
        await until(lambda: proxy.store.subscribers == ())
        nameless = RawSubscription(proxy.port, "", "x")
        refused = await nameless.next()
        assert isinstance(refused, GRPCError) and refused.status is Status.INVALID_ARGUMENT
        await nameless.close()


async def test_acks_for_a_connected_stream_come_from_its_engine() -> None:
    async with running() as proxy:
        proxy.load_paths([CHAIN])
        live = RawSubscription(proxy.port, "engine-a", "instance-1")
        create = await live.next()
        assert isinstance(create, PipelineUpdateMessage)
        channel = Channel("127.0.0.1", proxy.port)
        stub = ChainerStub(channel)
        update = PipelineUpdateMessage(
            op=Op.Create,
            pipeline=create.pipeline,
            version=create.version,
            uid=create.uid,
            timestamp=create.timestamp,
            stream="engine-a",
        )
        forged = PipelineUpdateStatusMessage(update=update, success=False, reason="forged")
        try:
            for metadata in ({INSTANCE_METADATA: "instance-2"}, None):
                with pytest.raises(GRPCError) as info:
                    await stub.pipeline_update_event(forged, metadata=metadata)
                assert info.value.status is Status.PERMISSION_DENIED
            record = proxy.store.get("tfsimples")
            assert record is not None and str(record.state) == "Creating"
            honest = PipelineUpdateStatusMessage(update=update, success=True, reason="ready")
            await stub.pipeline_update_event(honest, metadata={INSTANCE_METADATA: "instance-1"})
            assert str(record.state) == "Ready"
        finally:
            channel.close()
            await live.close()


# -- malformed messages ---------------------------------------------------------------------


def status_2022() -> bytes:
    """A PipelineUpdateStatusMessage holding the 2022 canned update (field 1, a message)."""
    update = demo_2022()
    return bytes([0x0A]) + _varint(len(update)) + update + bytes([0x10, 0x01])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_the_proxy_refuses_a_malformed_ack() -> None:
    async with running() as proxy:
        channel = Channel("127.0.0.1", proxy.port, codec=StrictCodec())
        try:
            with pytest.raises(GRPCError) as info:
                async with channel.request(
                    EVENT_PATH, Cardinality.UNARY_UNARY, bytes, PipelineUpdateStatusResponse
                ) as stream:
                    await stream.send_message(status_2022(), end=True)
                    await stream.recv_message()
        finally:
            channel.close()
    assert info.value.status is Status.INVALID_ARGUMENT
    assert info.value.message == (
        "malformed PipelineUpdateStatusMessage: update.updates[0].sink (field 3): "
        "wire type varint, expected length-delimited (message)"
    )


class FakeScheduler:
    """A Chainer server that streams raw bytes and records the acks."""

    def __init__(self, updates: list[bytes]) -> None:
        self.updates = updates
        self.acks: asyncio.Queue[PipelineUpdateStatusMessage] = asyncio.Queue()

    def __mapping__(self) -> dict[str, Handler]:
        return {
            SUBSCRIBE_PATH: Handler(
                self._subscribe, Cardinality.UNARY_STREAM, PipelineSubscriptionRequest, bytes
            ),
            EVENT_PATH: Handler(
                self._event,
                Cardinality.UNARY_UNARY,
                PipelineUpdateStatusMessage,
                PipelineUpdateStatusResponse,
            ),
        }

    async def _subscribe(self, stream: Stream[PipelineSubscriptionRequest, bytes]) -> None:
        await stream.recv_message()
        for update in self.updates:
            await stream.send_message(update)
        await asyncio.sleep(30)

    async def _event(
        self, stream: Stream[PipelineUpdateStatusMessage, PipelineUpdateStatusResponse]
    ) -> None:
        message = await stream.recv_message()
        assert message is not None
        await self.acks.put(message)
        await stream.send_message(PipelineUpdateStatusResponse())


async def test_the_engine_acks_a_2022_update_as_malformed() -> None:
    unknown_delete = PipelineUpdateMessage(op=Op.Delete, pipeline="q", uid="never", timestamp=2)
    scheduler = FakeScheduler([demo_2022(), bytes(unknown_delete)])
    server = Server([scheduler], codec=StrictCodec())
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers="127.0.0.1:1",
        upstream_host="127.0.0.1",
        upstream_port=port,
        dataflow_replica_id="engine-a",
    )
    eng = Engine(settings)
    task = asyncio.create_task(eng.subscriber.run())
    try:
        first = await asyncio.wait_for(scheduler.acks.get(), TIMEOUT)
        second = await asyncio.wait_for(scheduler.acks.get(), TIMEOUT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        eng.subscriber.close()
        await eng.producer.stop()
        server.close()
        await server.wait_closed()
    update = first.update
    assert (update.op, update.pipeline, update.version, update.uid, update.stream) == (
        Op.Create,
        "some-pipeline",
        1,
        "1234",
        "engine-a",
    )
    assert first.success is False
    assert first.reason == (
        "malformed PipelineUpdateMessage: updates[0].sink (field 3): wire type varint, "
        "expected length-delimited (message)"
    )
    assert eng.pipelines == {}
    # the stream goes on: the next (well-formed) update is handled
    assert (second.update.uid, second.update.op, second.success) == ("never", Op.Delete, True)
