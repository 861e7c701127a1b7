"""dataflow.commits against stand-ins: offsets committed at the tracker's low-water marks,
transactions committed with the positions after the state's changelog writes."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from loguru import logger

from dataflow import commits
from dataflow.commits import Committer
from dataflow.errors import StepFailed
from dataflow.offsets import OffsetTracker
from dataflow.transactions import Transactions
from tests.unit.fakes import FakeConsumer
from tests.unit.test_transactions import FakeProducer as TxnProducer

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


def committer(
    consumer: FakeConsumer,
    tracker: OffsetTracker[TopicPartition],
    positions: dict[TopicPartition, int] | None = None,
    txn: Transactions | None = None,
    failure: StepFailed | None = None,
    writes: list[str] | None = None,
) -> Committer:
    pending = writes if writes is not None else []

    async def flush() -> None:
        pending.clear()

    return Committer(
        consumer,  # type: ignore[arg-type]
        tracker,
        positions or {},
        txn,
        logger,
        lambda: failure,
        flush,
    )


async def test_offsets_past_what_is_held_are_committed_for_assigned_partitions_only() -> None:
    consumer = FakeConsumer({A0})
    tracker: OffsetTracker[TopicPartition] = OffsetTracker()
    tracker.hold(A0, 3)
    tracker.skip(A0, 5)
    tracker.hold(A1, 0)
    tracker.release(A1, 0)
    c = committer(consumer, tracker)
    await c.commit(force=True)
    assert consumer.commits == [], "a0 is held from 3, a1 is not assigned"
    tracker.release(A0, 3)
    await c.commit(force=True)
    assert consumer.commits == [{A0: 6}]
    tracker.hold(A0, 6)
    tracker.release(A0, 6)
    await c.commit(force=False)
    assert consumer.commits == [{A0: 6}], "not again within the commit interval"
    await c.commit(force=True)
    assert consumer.commits == [{A0: 6}, {A0: 7}]


async def test_a_transaction_commits_the_positions_after_the_state_writes() -> None:
    log: list[tuple[Any, ...]] = []
    txn = Transactions(lambda tid: TxnProducer(tid, log), "g", 0.1)  # type: ignore[arg-type,return-value]
    await txn.assign({0})
    log.clear()
    writes = ["entry", "tombstone"]
    c = committer(FakeConsumer({A0}), OffsetTracker(), {A0: 4, A1: 9}, txn, writes=writes)
    await c.commit(force=True)
    assert writes == [], "written in the transaction"
    assert log == [("offsets", "g-0", {A0: 4}, "g"), ("commit", "g-0")]


async def test_a_failed_step_aborts_its_transaction() -> None:
    log: list[tuple[Any, ...]] = []
    txn = Transactions(lambda tid: TxnProducer(tid, log), "g", 0.1)  # type: ignore[arg-type,return-value]
    await txn.assign({0})
    log.clear()
    failed = StepFailed("send failed")
    c = committer(FakeConsumer({A0}), OffsetTracker(), {A0: 4}, txn, failure=failed)
    with pytest.raises(StepFailed, match="send failed"):
        await c.commit(force=True)
    assert log == [("abort", "g-0")]


async def test_the_state_is_flushed_before_a_commit() -> None:
    consumer = FakeConsumer({A0})
    writes = ["entry"]
    c = committer(consumer, OffsetTracker(), writes=writes)
    await c.commit(force=False)
    assert writes == []


async def test_at_least_once_the_state_is_flushed_at_most_every_flush_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commits, "COMMIT_INTERVAL", 0.0)
    monkeypatch.setattr(commits, "STATE_FLUSH_INTERVAL", 3600.0)
    tracker: OffsetTracker[TopicPartition] = OffsetTracker()
    consumer = FakeConsumer({A0})
    writes = ["entry"]
    c = committer(consumer, tracker, writes=writes)
    await c.commit(force=False)
    assert writes == [], "the first commit flushes"
    writes.append("next")
    tracker.hold(A0, 0)
    tracker.release(A0, 0)
    await c.commit(force=False)
    assert writes == ["next"], "not flushed again within the flush interval"
    assert consumer.commits == [{A0: 1}], "but what is released is committed"
    await c.commit(force=True)
    assert writes == [], "a forced commit (drain, revocation) always flushes"
