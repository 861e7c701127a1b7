"""Exactly-once bookkeeping of `dataflow.transactions` against a stand-in producer (pure logic:
which transactions begin and commit, with which offsets; the broker side is in the chaos tests)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from dataflow.transactions import TransactionError, Transactions, transactional_id


class FakeProducer:
    def __init__(self, tid: str, log: list[tuple[Any, ...]]) -> None:
        self.tid, self.log = tid, log

    async def start(self) -> None:
        self.log.append(("start", self.tid))

    async def stop(self) -> None:
        self.log.append(("stop", self.tid))

    async def begin_transaction(self) -> None:
        self.log.append(("begin", self.tid))

    async def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
        self.log.append(("offsets", self.tid, dict(offsets), group))

    async def commit_transaction(self) -> None:
        self.log.append(("commit", self.tid))

    async def abort_transaction(self) -> None:
        self.log.append(("abort", self.tid))

    async def flush(self) -> None:
        pass


def _txns(log: list[tuple[Any, ...]]) -> Transactions:
    return Transactions(lambda tid: FakeProducer(tid, log), "g-s0", 0.1)  # type: ignore[arg-type,return-value]


def test_transactional_ids_name_the_task() -> None:
    assert transactional_id("seldon-dataflow-u-s1", 3) == "seldon-dataflow-u-s1-3"


async def test_assign_starts_and_begins_then_commit_sends_each_tasks_offsets() -> None:
    log: list[tuple[Any, ...]] = []
    txns = _txns(log)
    await txns.assign({0, 1})
    assert log == [
        ("start", "g-s0-0"),
        ("begin", "g-s0-0"),
        ("start", "g-s0-1"),
        ("begin", "g-s0-1"),
    ]
    log.clear()
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    assert await txns.commit({a0: 10, a1: 5, b0: 7}) == 2
    assert log == [
        ("offsets", "g-s0-0", {a0: 10, b0: 7}, "g-s0"),
        ("commit", "g-s0-0"),
        ("offsets", "g-s0-1", {a1: 5}, "g-s0"),
        ("commit", "g-s0-1"),
    ]
    log.clear()
    # Nothing sent and no position moved: no transaction at all.
    assert await txns.commit({a0: 10, a1: 5, b0: 7}) == 0
    assert log == []
    # A moved position begins a transaction for its offsets alone.
    assert await txns.commit({a0: 12, a1: 5, b0: 7}) == 1
    assert log == [
        ("begin", "g-s0-0"),
        ("offsets", "g-s0-0", {a0: 12}, "g-s0"),
        ("commit", "g-s0-0"),
    ]


async def test_producer_of_an_unowned_task_is_refused_and_revoked_tasks_abort() -> None:
    log: list[tuple[Any, ...]] = []
    txns = _txns(log)
    await txns.assign({0, 1})
    with pytest.raises(TransactionError, match="task 2 is not owned"):
        await txns.producer(2)
    log.clear()
    await txns.assign({1})  # task 0 revoked with its transaction open
    assert log == [("abort", "g-s0-0"), ("stop", "g-s0-0")]
    assert txns.tasks == {1}
    log.clear()
    await txns.close()
    assert log == [("abort", "g-s0-1"), ("stop", "g-s0-1")]
