"""Defaults that expose nothing by accident: where the proxy and the health server listen,
one-line refusals of bad TLS files, and replica ids that two engines on one host do not share."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow.engine import Engine
from dataflow.health import HealthServer
from dataflow.settings import Settings
from tests.integration.harness import Process, free_port, wait_until


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    return {**env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_the_health_server_binds_the_configured_host(host: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, kafka_bootstrap_servers="127.0.0.1:1", health_server_host=host
    )
    engine = Engine(settings)
    health = HealthServer(engine, 0, settings.health_server_host)
    await health.start()
    try:
        [site] = health._runner.sites  # type: ignore[union-attr]
        sockets = site._server.sockets  # type: ignore[union-attr]
        assert {s.getsockname()[0] for s in sockets} == {host}
        reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
        writer.write(b"GET /live HTTP/1.0\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.0 200")
        writer.close()
    finally:
        await health.stop()
        await engine.producer.stop()


def test_the_proxy_listens_on_this_host_only_by_default(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    args = [sys.executable, "-m", "dataflow.proxy", "--port", "0", "--control-port", "0"]
    args += ["--state-dir", str(tmp_path / "state")]
    proxy = Process("proxy", args, clean_env(), log).start()
    try:
        line = wait_until(
            lambda: re.search(
                r"Chainer gRPC on (\S+):\d+ .*control API on http://(\S+):", proxy.output()
            ),
            20,
            "the proxy to start",
        )
        assert line.groups() == ("127.0.0.1", "127.0.0.1")
    finally:
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(20) == 0


def test_an_unusable_scheduler_ca_stops_the_engine_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataflow",
            "--health-server-port",
            "0",
            "--upstream-security-protocol",
            "SSL",
            "--upstream-tls-ca-path",
            str(tmp_path / "missing.pem"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"dataflow: cannot read '{tmp_path / 'missing.pem'}' (--upstream-tls-ca-path): "
        "No such file or directory"
    ]


@pytest.mark.kafka
def test_two_engines_on_one_host_get_their_own_subscriber_names(
    tmp_path: Path, bootstrap: str
) -> None:
    from tests.integration.harness import Proxy

    proxy = Proxy(tmp_path).start()
    engines = []
    for i in range(2):
        env = clean_env(
            SELDON_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            SELDON_UPSTREAM_HOST="127.0.0.1",
            SELDON_UPSTREAM_PORT=str(proxy.port),
            SELDON_HEALTH_SERVER_PORT=str(free_port()),
        )
        log = tmp_path / f"engine-{i}.log"
        engines.append(Process(f"engine-{i}", [sys.executable, "-m", "dataflow"], env, log))
        engines[-1].start()
    try:
        subscribers = wait_until(
            lambda: (s := proxy._call("GET", "/subscribers")["subscribers"]) and len(s) == 2 and s,
            30,
            "two subscribers",
        )
        import socket

        host = socket.gethostname()
        assert all(re.fullmatch(rf"{re.escape(host)}-[0-9a-f]{{6}}", s) for s in subscribers)
        assert len(set(subscribers)) == 2
    finally:
        codes = [e.stop() for e in engines]
        proxy.stop()
    assert codes == [0, 0]
