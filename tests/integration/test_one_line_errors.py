"""Start-up and Ctrl-C failures end with one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dataflow.infer import topic_names
from tests.integration.harness import REPO, consume, free_port, sigint_default


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELDON_")}
    return {**env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


def engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataflow", "--health-server-port", "0", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=90,
        check=False,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_busy_health_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = engine(
            tmp_path,
            f"--health-server-port={port}",
            f"--kafka-bootstrap-servers=127.0.0.1:{free_port()}",
        )
    assert result.returncode == 1
    assert last_line(result).startswith(
        f"dataflow: cannot start the health server on 0.0.0.0:{port}"
    )


@pytest.mark.parametrize(
    "flag",
    ["--kafka-sasl-password-path", "--kafka-tls-client-ca-path", "--kafka-tls-client-cert-path"],
)
def test_a_missing_file_is_named(tmp_path: Path, flag: str) -> None:
    missing = tmp_path / "missing.pem"
    result = engine(tmp_path, "--kafka-security-protocol=SASL_SSL", flag, str(missing))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dataflow: cannot read '{missing}' ({flag}): No such file or directory"
    ]


@pytest.mark.parametrize("servers", ["127.0.0.1:abc", "a:9092,b:", "127.0.0.1:70000"])
def test_a_bad_port_in_the_bootstrap_list_is_refused_by_the_settings(
    tmp_path: Path, servers: str
) -> None:
    result = engine(tmp_path, f"--kafka-bootstrap-servers={servers}")
    assert result.returncode == 2
    assert last_line(result).startswith(f"dataflow: bad value '{servers}' for --kafka-bootstrap")


@pytest.fixture
def plaintext_listener() -> Iterator[int]:
    """A listener that closes every connection, as a plaintext broker does on a TLS hello."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.recv(1024)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join()
    server.close()


def test_ssl_against_a_plaintext_listener_gives_a_reason(
    tmp_path: Path, plaintext_listener: int
) -> None:
    result = engine(
        tmp_path,
        "--kafka-security-protocol=SSL",
        f"--kafka-bootstrap-servers=127.0.0.1:{plaintext_listener}",
    )
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("dataflow: cannot connect to Kafka at")
    assert not line.rstrip().endswith(":") and "TLS handshake" in line, line


def interrupt(
    args: list[str], after: str | float | Callable[[], object]
) -> subprocess.CompletedProcess[str]:
    """Run a tool, send SIGINT once stdout shows `after` (or after that many seconds, or once
    the call `after()` returns)."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=clean_env(),
        preexec_fn=sigint_default,
    )
    assert proc.stdout is not None
    if isinstance(after, str):
        line = proc.stdout.readline()
        assert after in line, line
    elif callable(after):
        after()
    else:
        time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize(
    "tool", [["scripts/infer.py", "p"], ["scripts/model.py", "--name", "m"]], ids=["infer", "model"]
)
def test_ctrl_c_of_a_tool_with_the_broker_down(tool: list[str]) -> None:
    result = interrupt([*tool, "--bootstrap-servers", f"127.0.0.1:{free_port()}"], 4.0)
    assert result.returncode in (1, 130)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.kafka
def test_ctrl_c_of_infer_waiting_for_an_answer(bootstrap: str, unique: str) -> None:
    inputs, _ = topic_names("seldon", "default", f"p{unique}")

    def request_sent() -> None:  # infer waits for the answer once its request is on the topic
        assert asyncio.run(consume(bootstrap, inputs, 1, timeout=120)), "no request sent"

    args = ["scripts/infer.py", f"p{unique}", "--bootstrap-servers", bootstrap]
    result = interrupt(args, request_sent)
    assert (result.returncode, result.stderr.strip()) == (130, "infer.py: interrupted")


@pytest.mark.kafka
def test_ctrl_c_of_a_ready_model(bootstrap: str, unique: str) -> None:
    args = ["scripts/model.py", "--name", f"m{unique}", "--bootstrap-servers", bootstrap]
    result = interrupt(args, "ready")
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
