"""`--num-cores 2`: one engine of two worker processes, one subscriber to the scheduler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.topology import group_id
from tests.integration.harness import Proxy, create_topics, engine, free_port, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4


def response(rid: int) -> bytes:
    tensor = ModelInferResponseInferOutputTensor(
        name="t", datatype="INT64", shape=[1], contents=InferTensorContents(int64_contents=[rid])
    )
    return bytes(ModelInferResponse(model_name="a", id=str(rid), outputs=[tensor]))


async def produce(bootstrap: str, topic: str, pipeline: str, ids: range) -> None:
    """Id n to partition n mod 4, keyed `<n mod 4>.w-<n>` (so its output goes there too)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                response(n),
                key=f"{n % PARTITIONS}.w-{n}".encode(),
                partition=n % PARTITIONS,
                headers=[("pipeline", pipeline.encode())],
            )
            for n in ids
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_ids(
    bootstrap: str, topic: str, until: set[int], timeout: float = 20
) -> Counter[tuple[int, int]]:
    """(id, partition) of every output from the start, until every id of `until` was seen."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: Counter[tuple[int, int]] = Counter()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    seen[(int(ModelInferRequest().parse(r.value).id), r.partition)] += 1
            if until <= {n for n, _ in seen}:
                break
        # A little longer, so that a duplicate would show.
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for r in records:
                seen[(int(ModelInferRequest().parse(r.value).id), r.partition)] += 1
    finally:
        await consumer.stop()
    return seen


async def assignments(bootstrap: str, group: str) -> dict[str, list[int]]:
    """Partitions per member client id of a consumer group."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
        out: dict[str, list[int]] = {}
        for member in described.to_object()["groups"][0]["members"]:
            decoded = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
            out[member["client_id"]] = sorted(p for _, ps in decoded.assignment for p in ps)
        return out
    finally:
        await admin.close()


def children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def two(pids: set[int]) -> set[int] | None:
    return pids if len(pids) == 2 else None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


async def test_two_workers_share_the_partitions_under_one_subscriber(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    ns, name, uid = f"wk{unique}", f"wk-{unique}", f"wk{unique}"
    source, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    await create_topics(bootstrap, source, sink, partitions=PARTITIONS)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {uid}\n"
        f"steps:\n  - sources: [{source}]\n    sink: {sink}\n"
    )
    first = range(0, 400)
    await produce(bootstrap, source, name, first)

    proxy = Proxy(tmp_path).start(spec)
    health = free_port()
    eng = engine(
        tmp_path, bootstrap, proxy, "engine-a", num_cores="2", health_server_port=str(health)
    )
    assert eng.proc is not None
    supervisor = eng.proc.pid
    base = f"http://127.0.0.1:{health}"
    try:
        # One subscriber, one stream, one successful ack.
        record = proxy.wait_state(name, "Ready", 30)
        assert list(record["streams"]) == ["engine-a"]
        assert record["streams"]["engine-a"]["success"] is True
        assert proxy._call("GET", "/subscribers") == {"subscribers": ["engine-a"]}
        workers = wait_until(lambda: two(children(supervisor)), 10, "two workers")

        # Every record of the 4 partitions comes out once, on its partition.
        seen = await read_ids(bootstrap, sink, set(first))
        assert set(seen) == {(n, n % PARTITIONS) for n in first}
        assert set(seen.values()) == {1}

        # Both workers own partitions of the step's group, between them all 4.
        owned = await assignments(bootstrap, group_id("seldon-dataflow", uid, 0))
        assert sorted(owned) == ["dataflow-engine-a-w0", "dataflow-engine-a-w1"]
        assert all(owned.values()), owned
        assert sorted(p for ps in owned.values() for p in ps) == list(range(PARTITIONS))

        # The supervisor answers the probes for both, and merges their metrics.
        wait_until(lambda: get(base + "/ready")[0] == 200, 15, "/ready 200")
        ready = json.loads(get(base + "/ready")[1])["checks"]
        assert set(ready) == {"grpc-chainer", "worker-0", "worker-1"}
        metrics = get(base + "/metrics")[1]
        assert "dataflow_workers_running 2.0" in metrics
        for w in ("0", "1"):
            assert f'dataflow_pipelines{{worker="{w}"}} 1.0' in metrics

        # A worker killed with SIGKILL is restarted, and records keep flowing.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in (two(children(supervisor)) or {victim}), 10, "a new worker"
        )
        second = range(400, 800)
        await produce(bootstrap, source, name, second)
        seen = await read_ids(bootstrap, sink, set(second), timeout=30)
        assert set(second) <= {n for n, _ in seen}  # at least once: a kill may replay
        assert "exited with code -9; restarting in 0.5s" in eng.output()
        record = proxy.wait_state(name, "Ready", 15)
        assert list(record["streams"]) == ["engine-a"]

        # SIGTERM drains both workers; the supervisor exits 0 and leaves none behind.
        workers = children(supervisor)
        eng.signal(signal.SIGTERM)
        assert eng.wait(30) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        eng.stop()
        proxy.stop()
