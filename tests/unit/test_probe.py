"""`dataflow.probe.answers`: the broker check of the scripts, against fake servers."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from dataflow.probe import answers
from tests.conftest import REPO


def serve_once(reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A server on a free port that reads one request and writes `reply(request)`."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            size = struct.unpack(">i", conn.recv(4))[0]
            request = conn.recv(size)
            conn.sendall(reply(request))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()


def kafka_reply(error: int, correlation: int | None = None) -> Callable[[bytes], bytes]:
    def reply(request: bytes) -> bytes:
        key, version, got = struct.unpack(">hhi", request[:8])
        assert (key, version) == (18, 0)  # ApiVersions v0
        body = struct.pack(">ihi", got if correlation is None else correlation, error, 0)
        return struct.pack(">i", len(body)) + body

    return reply


@pytest.fixture
def broker() -> Iterator[int]:
    yield from serve_once(kafka_reply(0))


@pytest.fixture
def old_broker() -> Iterator[int]:
    yield from serve_once(kafka_reply(35))  # UNSUPPORTED_VERSION: still a broker


@pytest.fixture
def http() -> Iterator[int]:
    yield from serve_once(lambda _: b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.fixture
def stranger() -> Iterator[int]:
    yield from serve_once(kafka_reply(0, correlation=999_999))


def test_a_broker_answers(broker: int) -> None:
    assert answers(f"127.0.0.1:{broker}")


def test_a_broker_without_v0_still_answers(old_broker: int) -> None:
    assert answers(f"localhost:{old_broker}")


def test_other_servers_and_closed_ports_do_not(http: int, stranger: int) -> None:
    assert not answers(f"127.0.0.1:{http}", timeout=1)
    assert not answers(f"127.0.0.1:{stranger}", timeout=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not answers(f"127.0.0.1:{closed}", timeout=1)


def test_the_second_server_of_a_list_is_tried(broker: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert answers(f"127.0.0.1:{closed},127.0.0.1:{broker}")


def test_the_check_runs_without_the_project_dependencies(broker: int) -> None:
    """scripts/kafka runs it with the system's python3 before any venv exists: `-I` (no
    site-packages, no PYTHONPATH) with only the repository on the path."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from dataflow.probe import main; "
        "sys.exit(main(sys.argv[2:]))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO), f"127.0.0.1:{broker}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
