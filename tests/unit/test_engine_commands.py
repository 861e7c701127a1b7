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
