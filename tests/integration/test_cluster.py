"""The engine on a 3-node KRaft cluster (scripts/kafka_cluster.py): replication and probes.

With no replication setting, every topic the engine creates (sources, sinks, the error topic,
changelogs) takes the cluster's `default.replication.factor` (3), and the engine says so; with
one broker of three killed, `/ready` stays 200 and records still flow.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, consume, create_topics, engine, free_port, produce
from tests.integration.test_operations import get, wait_until
from tests.integration.test_stateful_steps import response

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from kafka_cluster import KafkaCluster

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    kafka = KafkaCluster.temporary(3, say=lambda text: None)
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.close()


def _body(ns: str, name: str) -> str:
    model = f"seldon.{ns}.model"
    return (
        f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\n"
        f"errorTopic: seldon.{ns}.errors.errors\n"
        "steps:\n"
        f"  - sources: [{model}.a.outputs, {model}.b.outputs]\n"
        f"    sink: {model}.c.inputs\n"
        "    inputJoinType: inner\n    joinWindowMs: 1000\n"
        f"  - sources: [{model}.c.outputs]\n"
        f"    sink: seldon.{ns}.pipeline.{name}.outputs\n"
    )


@pytest.mark.timeout(300)
async def test_topics_take_the_clusters_replication_and_ready_survives_a_broker_loss(
    cluster: KafkaCluster, tmp_path: Path, unique: str
) -> None:
    bootstrap = cluster.bootstrap
    ns, name = f"rf{unique}", f"rf-{unique}"
    model = f"seldon.{ns}.model"
    path = tmp_path / f"{name}.yaml"
    path.write_text(_body(ns, name))
    port = free_port()
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy, health_server_port=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        proxy.wait_state(name, "Ready", timeout=120)
        topics = await cluster.partitions()
        ours = {t: info for (t, _), info in topics.items() if unique in t}
        assert {f"{model}.a.outputs", f"{model}.c.inputs", f"{model}.c.outputs"} <= set(ours)
        assert any(t.endswith("-changelog") for t in ours), sorted(ours)
        assert {t: len(info["replicas"]) for t, info in ours.items()} == dict.fromkeys(ours, 3)
        line = "replication 3 (3 in sync), min.insync.replicas 2, 3 brokers"
        try:
            wait_until(lambda: line in eng.output(), 20, "the replication line")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the engine said:\n{eng.output()[-4000:]}") from None
        assert "losing one broker" not in eng.output()

        # One broker of three killed: the partitions move to the others, the engine goes on.
        victim = await cluster.leader(f"{model}.a.outputs", 0) or 1
        cluster.kill(victim)
        killed = time.monotonic()
        statuses = []
        while time.monotonic() - killed < 15:
            status, body = get(base + "/ready")
            statuses.append((round(time.monotonic() - killed, 1), status, body[:200]))
            await asyncio.sleep(0.5)
        assert all(s == 200 for _, s, _ in statuses), statuses
        live = cluster.live_bootstrap()
        value = response("r", ("x", 1.0))
        records = [(f"k{i}".encode(), value, [("pipeline", name.encode())]) for i in range(5)]
        await produce(live, f"{model}.a.outputs", records)
        await produce(live, f"{model}.b.outputs", records)
        out = await consume(live, f"{model}.c.inputs", 5, timeout=60)
        assert sorted(r.key for r in out) == sorted(k for k, _, _ in records)
        ready = json.loads(get(base + "/ready")[1])
        assert ready["checks"]["kafka"]["message"] == "kafka reachable", ready
    finally:
        eng.stop()
        proxy.stop()


async def test_a_producer_whose_leader_is_paused_stops_within_its_bound_and_leaks_nothing(
    cluster: KafkaCluster, unique: str
) -> None:
    from aiokafka import AIOKafkaProducer

    from dataflow.kafka import stop_producer

    topic = f"stop-{unique}"
    await create_topics(cluster.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"before")
        leader = await cluster.leader(topic, 0)
        assert leader is not None
    except BaseException:
        await producer.stop()
        raise
    before = asyncio.all_tasks()
    cluster.pause(leader)
    try:
        pending = await producer.send(topic, b"held by the paused leader")
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        assert await stop_producer(producer, 2.0) is False
        took = time.monotonic() - t0
        assert pending.done() and pending.exception() is not None
    finally:
        cluster.resume(leader)
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == {asyncio.current_task()} or not left, left
    assert not any(c.connected() for c in producer.client._conns.values()), "connections open"
    assert took < 10
