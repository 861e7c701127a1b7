"""scripts/kafka_cluster.py without brokers: the nodes' configuration, the port layout, the
DescribeQuorum request and response on the wire (against a fake node), process states."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def kc() -> ModuleType:
    name = "dataflow_kafka_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "kafka_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_three_nodes_one_quorum_replication_3_min_isr_2(kc: ModuleType, tmp_path: Path) -> None:
    cluster = kc.KafkaCluster(tmp_path / "c", nodes=3, base_port=30000)
    assert cluster.layout.client_ports == [30000, 30001, 30002]
    assert cluster.layout.controller_ports == [30003, 30004, 30005]
    assert cluster.bootstrap == "127.0.0.1:30000,127.0.0.1:30001,127.0.0.1:30002"
    props = [_props(kc.server_properties(cluster.layout, n, tmp_path / f"d{n}")) for n in (1, 2, 3)]
    voters = "1@127.0.0.1:30003,2@127.0.0.1:30004,3@127.0.0.1:30005"
    for n, p in enumerate(props, start=1):
        assert p["node.id"] == str(n)
        assert p["process.roles"] == "broker,controller"
        assert p["controller.quorum.voters"] == voters
        assert (
            p["listeners"]
            == f"PLAINTEXT://127.0.0.1:{29999 + n},CONTROLLER://127.0.0.1:{30002 + n}"
        )
        assert p["log.dirs"] == str(tmp_path / f"d{n}")
    p = props[0]
    assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
    assert p["unclean.leader.election.enable"] == "false"
    assert p["offsets.topic.replication.factor"] == "3"
    assert p["transaction.state.log.replication.factor"] == "3"
    assert p["transaction.state.log.min.isr"] == "2"
    assert p["auto.create.topics.enable"] == "false"
    assert p["group.initial.rebalance.delay.ms"] == "0"
    assert p["delete.topic.enable"] == "true"
    # The message sizes of scripts/kafka's single node.
    single = (REPO / "scripts" / "kafka").read_text()
    for key in ("message.max.bytes", "replica.fetch.max.bytes", "socket.request.max.bytes"):
        assert f"{key}={p[key]}" in single


def test_the_layout_is_kept_for_later_commands(kc: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    cluster = kc.KafkaCluster(folder, nodes=3)  # free ports
    ports = cluster.layout.client_ports + cluster.layout.controller_ports
    assert len(set(ports)) == 6
    folder.mkdir()
    (folder / "cluster.json").write_text(
        '{"nodes": 3, "client_ports": [1, 2, 3], "controller_ports": [4, 5, 6], '
        '"cluster_id": "x", "heap": "384m", "extra": {}}'
    )
    again = kc.KafkaCluster(folder, nodes=5, base_port=40000)  # the saved layout wins
    assert again.layout.client_ports == [1, 2, 3] and again.layout.heap == "384m"
    assert [again.state(n) for n in again.nodes] == ["down"] * 3


def _fake_node(response: bytes) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            (size,) = struct.unpack(">i", conn.recv(4))
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            seen.append(data)
            (correlation,) = struct.unpack_from(">i", data, 4)
            body = struct.pack(">i", correlation) + response
            conn.sendall(struct.pack(">i", len(body)) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread, seen


def test_cluster_ids_never_start_with_a_dash(kc: ModuleType, tmp_path: Path) -> None:
    """StorageTool format -t -xyz... takes the id for an option (1 id in 64 did)."""
    cluster = kc.KafkaCluster(tmp_path / "c", nodes=1, base_port=30000)
    ids = {cluster._random_uuid() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_describe_quorum_names_the_active_controller(kc: ModuleType) -> None:
    topic = b"__cluster_metadata"
    response = (
        b"\x00"  # response header tags
        + struct.pack(">h", 0)  # error
        + b"\x02"  # one topic
        + bytes([len(topic) + 1])
        + topic
        + b"\x02"  # one partition
        + struct.pack(">ihiiq", 0, 0, 2, 7, 1234)  # index, error, leader, epoch, high watermark
        + b"\x01\x01\x00\x00"  # no voters, no observers, tags
    )
    server, thread, seen = _fake_node(response)
    try:
        assert kc.describe_quorum(server.getsockname()[1]) == (2, 7)
    finally:
        thread.join(5)
        server.close()
    api_key, version = struct.unpack_from(">hh", seen[0])
    assert (api_key, version) == (55, 0)
    assert topic in seen[0]


def test_describe_quorum_errors_are_raised(kc: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="error code 15"):
        kc.parse_describe_quorum(struct.pack(">i", 1) + b"\x00" + struct.pack(">h", 15))


def test_a_stopped_process_is_paused_and_a_dead_one_down(kc: ModuleType) -> None:
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert kc._proc_state(proc.pid) in ("S", "R")
        os.killpg(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while kc._proc_state(proc.pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kc._proc_state(proc.pid) in ("T", "t")
        os.killpg(proc.pid, signal.SIGCONT)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert kc._proc_state(proc.pid) == ""
