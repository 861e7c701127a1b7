"""Exactly-once mode end to end: a fenced step aborts, is rebuilt, and nothing it had not
committed is visible to a read_committed reader (proxy, engine process, real topics)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.topology import group_id
from dataflow.transactions import transactional_id
from tests.integration.harness import Proxy, create_topics, engine, produce, wait_until

pytestmark = pytest.mark.kafka

RESPONSE = bytes(
    ModelInferResponse(
        id="r",
        outputs=[
            ModelInferResponseInferOutputTensor(
                name="x",
                datatype="FP32",
                shape=[1, 1],
                contents=InferTensorContents(fp32_contents=[1.0]),
            )
        ],
    )
)


async def read_committed(bootstrap: str, topic: str, count: int, settle: float) -> list[bytes]:
    """The keys on `topic` a read_committed reader sees: at least `count` (or 60 s), then
    until `settle` s pass without a record."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    keys: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        idle_since = time.monotonic()
        while (len(keys) < count and time.monotonic() < deadline) or (
            time.monotonic() - idle_since < settle
        ):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                keys.extend(r.key or b"" for r in records)
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return keys


async def test_a_fenced_step_is_rebuilt_and_its_open_transaction_never_shows(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    name, ns = f"eos-{unique}", f"eos{unique}"
    source, sink = f"seldon.{ns}.model.a.outputs", f"seldon.{ns}.model.b.inputs"
    await create_topics(bootstrap, source, sink)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\n"
        f"steps:\n  - sources: [{source}]\n    sink: {sink}\n"
    )
    proxy = Proxy(tmp_path).start(spec)
    prefix = f"t{unique}"
    eng = engine(
        tmp_path,
        bootstrap,
        proxy,
        processing_guarantee="exactly_once",
        kafka_consumer_prefix=prefix,
    )
    headers = [("pipeline", name.encode())]
    try:
        proxy.wait_state(name, "Ready", timeout=60)
        await produce(bootstrap, source, [(b"a%03d" % i, RESPONSE, headers) for i in range(100)])
        wait_until(lambda: "committed " in eng.output(), 30, "a first transaction")
        # A zombie: another producer of the step's task 0 fences the engine's, and leaves an
        # output of its own in an open transaction.
        zombie = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=transactional_id(group_id(f"{prefix}-seldon-dataflow", name, 0), 0),
        )
        await zombie.start()
        await zombie.begin_transaction()
        await zombie.send_and_wait(sink, RESPONSE, key=b"zombie", headers=headers)
        await produce(bootstrap, source, [(b"b%03d" % i, RESPONSE, headers) for i in range(100)])
        wait_until(lambda: "ProducerFenced" in eng.output(), 30, "the fenced step to fail")
        # The rebuilt step's producer fences the zombie in turn: its transaction is aborted.
        ready = f"pipeline {name} v1 (uid {name}) ready"
        wait_until(lambda: eng.output().count(ready) >= 2, 60, "the rebuilt pipeline")
        await produce(bootstrap, source, [(b"c%03d" % i, RESPONSE, headers) for i in range(100)])
        keys = await read_committed(bootstrap, sink, 300, settle=2.0)
        with contextlib.suppress(Exception):  # fenced by now
            await zombie.stop()
    finally:
        eng.stop()
        proxy.stop()
    expected = sorted(b"%s%03d" % (p, i) for p in (b"a", b"b", b"c") for i in range(100))
    assert sorted(keys) == expected, eng.output()[-3000:]
