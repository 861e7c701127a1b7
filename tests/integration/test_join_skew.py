"""Join partners written late (a broker failover, a slow model) still join within the grace.

The pairs carry the same record timestamp on both sides; the second side is written seconds
after the first, with other traffic moving stream time on meanwhile, or with no traffic at all
(the windows then close on the wall clock). A record later than window + grace goes to the
error topic with a reason.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from dataflow.proto.inference import ModelInferRequest
from tests.integration.harness import consume
from tests.integration.test_stateful_steps import Run, join_body, response

pytestmark = pytest.mark.kafka

WINDOW_MS = 1000
GRACE_MS = 5000
DELAY_S = 3.5  # the second side's write is this late: past the window, within the grace


async def _send(
    producer: AIOKafkaProducer, topic: str, pipeline: str, items: list[tuple[str, int]]
) -> None:
    for key, ts in items:
        await producer.send(
            topic,
            response(key, ("x", 1.0)),
            key=key.encode(),
            headers=[("pipeline", pipeline.encode())],
            timestamp_ms=ts,
        )
    await producer.flush()


@pytest.mark.parametrize("traffic", [True, False], ids=["with-traffic", "idle"])
async def test_partners_written_late_within_the_grace_all_join(
    tmp_path: Path, bootstrap: str, unique: str, traffic: bool
) -> None:
    run = Run(tmp_path, bootstrap, unique, "sk")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    errors = f"seldon.{run.ns}.errors.errors"
    body = join_body(run, "inner", WINDOW_MS).replace("steps:", f"errorTopic: {errors}\nsteps:")
    await run.start(body, a, b, join_grace_ms=str(GRACE_MS))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        await producer.start()
        t0 = int(time.time() * 1000)
        skewed = [(f"skew-{i}", t0 + i) for i in range(50)]
        await _send(producer, a, run.name, skewed)
        others: list[str] = []
        deadline = time.monotonic() + DELAY_S
        n = 0
        while time.monotonic() < deadline:
            if traffic:  # pairs on time, moving stream time on past the skewed pairs' windows
                now = int(time.time() * 1000)
                batch = [(f"on-time-{n + i}", now) for i in range(10)]
                await _send(producer, a, run.name, batch)
                await _send(producer, b, run.name, batch)
                others += [k for k, _ in batch]
                n += 10
            await asyncio.sleep(0.1)
        await _send(producer, b, run.name, skewed)
        # Beyond the grace: its partner's window and grace are long over.
        ancient = int(time.time() * 1000) - WINDOW_MS - GRACE_MS - 20_000
        await _send(producer, b, run.name, [("too-late", ancient)])
        expected = len(skewed) + len(others)
        out = await consume(bootstrap, c, expected, timeout=30, settle=2.0)
        err = await consume(bootstrap, errors, 1, timeout=15, settle=1.0)
    finally:
        await producer.stop()
        run.stop()
    joined = sorted(ModelInferRequest().parse(r.value).id for r in out)
    assert joined == sorted([k for k, _ in skewed] + others)
    assert [r.key for r in err] == [b"too-late"]
    reason = dict(err[0].headers)["seldon-pipeline-errors"].decode()
    assert reason.startswith("late for the join:"), reason
    assert f"grace period ({GRACE_MS} ms)" in reason
