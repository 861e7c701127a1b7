"""Real processes for integration tests: the proxy scheduler, engines, and Kafka helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from dataflow import kafka

REPO = Path(__file__).resolve().parents[2]


def sigint_default() -> None:
    """`preexec_fn` of a child that is to get Ctrl-C: a test run from a background job inherits
    SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_broker_port() -> int:
    """A free port whose next port is free too (a `scripts/kafka` broker's controller)."""
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    """A child process with its output captured to a file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.args, stdout=handle, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
            )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: Times a child is started on fresh ports when one it was given was taken meanwhile.
PORT_ATTEMPTS = 3


@dataclass
class Proxy:
    """The proxy scheduler as a child process, with its control API."""

    tmp: Path
    port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def start(self, *pipelines: Path) -> Proxy:
        """Start the proxy and wait for its control API. A port taken between `free_port()`
        and the proxy's bind (a client's outgoing connection may get it: CI saw a 3-broker
        cluster's) is given up for two fresh ones, at most PORT_ATTEMPTS times."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            args = [
                sys.executable,
                "-m",
                "dataflow.proxy",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
                # Its own durable state: same folder and port, same proxy across a restart.
                "--state-dir",
                str(self.tmp / f"proxy-{self.port}.state"),
            ]
            if pipelines:
                args += ["--pipelines", *map(str, pipelines)]
            self.process = Process("proxy", args, _env({}), self.tmp / f"proxy-{self.port}.log")
            self.process.start()
            if wait_until(self._up_or_gone, 20, "the proxy control API") == "up":
                return self
            self.process.stop()  # reaped: no zombie, no ResourceWarning later
            output = self.process.output()
            if "Address already in use" not in output or attempt == PORT_ATTEMPTS:
                raise AssertionError(f"the proxy exited at start:\n{output[-2000:]}")
            self.port, self.control_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _up_or_gone(self) -> str:
        if self._answers():
            return "up"
        assert self.process is not None and self.process.proc is not None
        return "gone" if self.process.proc.poll() is not None else ""

    def _answers(self) -> bool:
        try:
            self.status()
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def status(self) -> list[dict[str, Any]]:
        result = self._call("GET", "/pipelines")
        return result if isinstance(result, list) else result.get("pipelines", [])

    def pipeline(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.status() if p["name"] == name), None)

    def load(self, path: Path) -> Any:
        return self._call("POST", "/pipelines", path.read_bytes())

    def unload(self, name: str) -> Any:
        return self._call("DELETE", f"/pipelines/{name}")

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            p = self.pipeline(name)
            return p if p is not None and p["state"] == state else None

        try:
            return wait_until(check, timeout, f"pipeline {name} {state}")  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(
                f"pipeline {name} not {state}: {self.pipeline(name)}\n--- proxy log:\n"
                + (self.process.output()[-3000:] if self.process else "")
            ) from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def engine(
    tmp: Path, bootstrap: str, proxy: Proxy, name: str = "engine-a", **settings: str
) -> Process:
    """An engine child process subscribed to `proxy` as `name`."""
    env = {
        "SELDON_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SELDON_UPSTREAM_HOST": "127.0.0.1",
        "SELDON_UPSTREAM_PORT": str(proxy.port),
        "SELDON_DATAFLOW_REPLICA_ID": name,
        "SELDON_HEALTH_SERVER_PORT": settings.pop("health_server_port", "0"),
        "SELDON_LOG_LEVEL_APP": "DEBUG",
    }
    env.update({f"SELDON_{k.upper()}": v for k, v in settings.items()})
    process = Process(name, [sys.executable, "-m", "dataflow"], _env(env), tmp / f"{name}.log")
    return process.start()


# -- Kafka helpers -----------------------------------------------------------------------------


async def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await kafka.create_topics(admin, [kafka.NewTopic(n, partitions) for n in names], 30_000)
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
) -> int:
    """Send (key, value, headers) records and wait for every ack; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, count: int, timeout: float = 30, settle: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the beginning until `count` records (then `settle` s more) or timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for rs in batch.values():
                records.extend(rs)
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            batch = await consumer.getmany(timeout_ms=100)
            for rs in batch.values():
                records.extend(rs)
    finally:
        await consumer.stop()
    return records
