"""Scheduler commands per pipeline uid: one at a time, latest wins (spec 2.4)."""

from __future__ import annotations

import asyncio

from dataflow.engine import Engine
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.settings import Settings

Op = PipelineUpdateMessagePipelineOperation


def message(uid: str, op: Op, ts: int) -> PipelineUpdateMessage:
    return PipelineUpdateMessage(op=op, pipeline=f"p-{uid}", uid=uid, timestamp=ts)


async def test_latest_command_wins_and_uids_run_apart() -> None:
    engine = Engine(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    handled: list[tuple[str, str, int]] = []
    release = asyncio.Event()

    async def record(m: PipelineUpdateMessage) -> None:
        handled.append((m.uid, m.op.name, m.timestamp))
        await release.wait()

    engine._create = record  # type: ignore[method-assign]
    engine._delete = record  # type: ignore[method-assign]

    engine._on_update(message("a", Op.Create, 1))
    await asyncio.sleep(0)  # uid a's worker takes ts 1 and blocks
    engine._on_update(message("a", Op.Create, 2))
    engine._on_update(message("a", Op.Delete, 3))  # replaces the pending ts 2
    engine._on_update(message("b", Op.Create, 1))  # another uid is not held up by a
    engine._on_update(message("a", Op.Rebalance, 4))  # not a command: ignored
    await asyncio.sleep(0.01)
    assert handled == [("a", "Create", 1), ("b", "Create", 1)]
    release.set()
    await asyncio.sleep(0.01)
    assert handled == [("a", "Create", 1), ("b", "Create", 1), ("a", "Delete", 3)]
    assert engine._workers == {}
    await engine.producer.stop()  # never started: closes without a broker


async def test_acks_of_one_uid_arrive_in_order_and_a_failed_command_is_acked() -> None:
    engine = Engine(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    sent: list[tuple[str, bool, str]] = []

    async def ack(m: PipelineUpdateMessage, op: Op, success: bool, reason: str) -> bool:
        if op == Op.Rebalance:
            await asyncio.sleep(0.05)  # a slow first ack (a retry)
        sent.append((op.name, success, reason))
        return True

    async def broken(m: PipelineUpdateMessage) -> None:
        raise RuntimeError("boom")

    engine.subscriber.ack = ack  # type: ignore[method-assign]
    engine._create = broken  # type: ignore[method-assign]
    m = message("a", Op.Create, 1)
    engine._ack(m, Op.Rebalance, True, "pipeline data streams: rebalancing")
    engine._ack(m, Op.Ready, True, "pipeline data streams: ready")
    engine._on_update(message("b", Op.Create, 1))
    await asyncio.sleep(0.2)
    assert sent[-2:] == [
        ("Rebalance", True, "pipeline data streams: rebalancing"),
        ("Ready", True, "pipeline data streams: ready"),
    ]
    assert ("Create", False, "Pipeline create operation failed: boom") in sent
    assert engine._workers == {} and engine._ack_tails == {}
    await engine.producer.stop()


async def test_delete_of_an_unknown_uid_is_acked_as_success() -> None:
    engine = Engine(Settings(kafka_bootstrap_servers="127.0.0.1:1"))
    sent: list[tuple[str, str, bool, str, int, str]] = []

    async def ack(m: PipelineUpdateMessage, op: Op, success: bool, reason: str) -> bool:
        sent.append((m.uid, op.name, success, reason, m.timestamp, m.pipeline))
        return True

    engine.subscriber.ack = ack  # type: ignore[method-assign]
    engine._on_update(message("never-created", Op.Delete, 7))
    await asyncio.sleep(0.05)
    assert sent == [("never-created", "Delete", True, "pipeline removed", 7, "p-never-created")]
    await engine.producer.stop()
