"""The local broker behaves as a real Kafka: groups, manual commits, transactions, status."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from tests.conftest import REPO
from tests.integration.harness import free_broker_port

pytestmark = pytest.mark.kafka


async def _create(admin: Any, *names: str) -> None:
    response = await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    assert all(code == 0 for _, code, _ in response.topic_errors), response.topic_errors


async def test_thousand_records_round_trip_with_manual_commits(
    bootstrap: str, admin: Any, unique: str
) -> None:
    topic = f"test-broker-{unique}"
    await _create(admin, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(
                topic,
                value=f"value-{i}".encode(),
                key=f"key-{i}".encode(),
                headers=[("pipeline", b"p"), ("seq", str(i).encode())],
            )
            for i in range(1000)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    group = f"group-{unique}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: list[Any] = []
    try:
        while len(seen) < 1000:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records within 5 s"
            for tp, records in batch.items():
                seen.extend(records)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()

    assert [r.value for r in seen] == [f"value-{i}".encode() for i in range(1000)]
    assert [r.key for r in seen] == [f"key-{i}".encode() for i in range(1000)]
    assert [r.offset for r in seen] == list(range(1000))
    assert all(
        list(r.headers) == [("pipeline", b"p"), ("seq", str(i).encode())]
        for i, r in enumerate(seen)
    )

    checker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await checker.start()
    try:
        assert await checker.committed(TopicPartition(topic, 0)) == 1000
    finally:
        await checker.stop()


async def test_transaction_is_seen_exactly_by_read_committed(
    bootstrap: str, admin: Any, unique: str
) -> None:
    topic = f"test-txn-{unique}"
    await _create(admin, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{unique}")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(5):
                await producer.send(topic, f"committed-{i}".encode())
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"marker")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while b"marker" not in values:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records within 5 s"
            values.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    assert values == [f"committed-{i}".encode() for i in range(5)] + [b"marker"]


def test_kafka_status_tells_running_from_stopped(tmp_path: Any) -> None:
    """A second broker of the script, in its own folder and port: stopped, running (this
    checkout), another broker's port, a busy port refused in one line, stop after the folder
    was deleted, stopped."""
    script = str(REPO / "scripts" / "kafka")
    port = str(free_broker_port())
    env = dict(os.environ, KAFKA_DIR=str(tmp_path / "a"), KAFKA_PORT=port, KAFKA_HEAP="256m")
    other = dict(env, KAFKA_DIR=str(tmp_path / "b"))

    def run(command: str, e: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, command], capture_output=True, text=True, env=e, timeout=90)

    before = run("status")
    assert (before.returncode, "stopped" in before.stdout) == (3, True), before.stdout
    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        running = run("status")
        assert running.returncode == 0, running.stdout + running.stderr
        assert "running (this checkout" in running.stdout
        elsewhere = run("status", other)
        assert elsewhere.returncode == 4, elsewhere.stdout
        assert "another broker answers on the port" in elsewhere.stdout.replace(
            f"127.0.0.1:{port}", "the port"
        )
        busy = run("start", other)
        assert busy.returncode == 1 and busy.stdout == "", busy.stdout
        assert busy.stderr.strip().splitlines() == [
            f"kafka: error: port {port} on 127.0.0.1 is already in use "
            "(another broker? scripts/kafka status; or set KAFKA_PORT)"
        ]
        shutil.rmtree(tmp_path / "a")
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0 and "stopping pid" in stopped.stdout, stopped.stdout
    after = run("status")
    assert (after.returncode, "stopped" in after.stdout) == (3, True), after.stdout
