"""dataflow.pacing against a stand-in consumer: lagging partitions, held-back sources, the
fetch of the others, time-ordered picking across partitions, lag, start positions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from loguru import logger

from dataflow.pacing import PACE_SLACK_MS, UNHEARD_MS, Pacing
from tests.unit.fakes import FakeConsumer, record

A0 = TopicPartition("seldon.ns.model.a.outputs", 0)
B0 = TopicPartition("seldon.ns.model.b.outputs", 0)


def pacing(consumer: FakeConsumer, windows: list[int] | None = None) -> Pacing:
    return Pacing(consumer, windows or [], logger)  # type: ignore[arg-type]


def test_the_slack_is_the_widest_window_at_least_the_floor() -> None:
    assert pacing(FakeConsumer()).slack_ms == PACE_SLACK_MS
    assert pacing(FakeConsumer(), [10, 5_000]).slack_ms == 5_000


def test_a_partition_lags_with_records_left_or_no_fetch_answer_for_a_while() -> None:
    now = time.time_ns() // 1_000_000
    consumer = FakeConsumer(
        {A0, B0}, highwaters={A0: 10, B0: 4}, stable={A0: 8}, heard={B0: now - UNHEARD_MS - 500}
    )
    p = pacing(consumer)
    ends = p.ends()
    assert ends == {A0: 8, B0: 4}, "the last stable offset first"
    p.positions.update({A0: 8, B0: 4})
    assert p.lagging(ends) == [B0], "b is read to its end but unheard of"
    p.positions[A0] = 7
    assert sorted(p.lagging(ends)) == [A0, B0]
    assert p.lag() == {A0: 3, B0: 0}


async def test_ends_are_asked_again_for_a_partition_far_behind_the_newest() -> None:
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 5, B0: 5})
    p = pacing(consumer)
    p.clock.assign([A0, B0])
    p.clock.observe(A0, 10_000)
    p.clock.observe(B0, 1_000)
    p.positions.update({A0: 5, B0: 5})
    asked: list[list[TopicPartition]] = []

    async def end_offsets(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        asked.append(tps)
        return dict.fromkeys(tps, 9)  # what the broker says now

    consumer.end_offsets = end_offsets  # type: ignore[method-assign]
    ends = await p.checked_ends()
    assert asked == [[B0]] and ends == {A0: 5, B0: 9}

    async def fails(tps: Any) -> Any:
        raise KafkaTimeoutError()

    consumer.end_offsets = fails  # type: ignore[method-assign]
    assert (await p.checked_ends())[B0] is None, "unknown: held back on the safe side"


async def test_sources_read_ahead_of_stream_time_are_held_back_and_the_others_fetched() -> None:
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 100, B0: 100})
    p = pacing(consumer)
    p.clock.assign([A0, B0])
    p.clock.observe(A0, 10_000)
    p.clock.observe(B0, 1_000)
    p.pace([A0, B0], full=False)
    assert p.paused == {A0} and p.readable == [B0]
    await p.fetch(0, _set(), asyncio.Event())
    assert consumer.fetched_from == [(B0,)]
    why = p.waiting([A0, B0], {A0: 5, B0: 7})
    assert why[0].startswith("paused, read ahead of stream time") and A0.topic in why[0]
    p.revoked({A0})
    assert p.paused == set() and p.readable == []


async def test_records_are_handed_on_in_timestamp_order_across_partitions() -> None:
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 2, B0: 2})
    p = pacing(consumer)
    p.clock.assign([A0, B0])
    batch = {
        A0: [record(A0, 0, b"a0", timestamp=10), record(A0, 1, b"a1", timestamp=30)],
        B0: [record(B0, 0, b"b0", timestamp=20), record(B0, 1, b"b1", timestamp=40)],
    }
    ends = await p.begin(batch)
    seen = [(r.value, stream) for _, r, stream in p.ordered(batch, ends)]
    assert [v for v, _ in seen] == [b"a0", b"b0", b"a1", b"b1"]
    assert seen[0][1] is None, "b not read yet: no stream time"
    assert seen[-1][1] == 40, "both read to their ends"
    assert p.positions == {A0: 2, B0: 2}


async def test_start_positions_are_read_logged_and_sought() -> None:
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 9}, committed_offsets={A0: 4})
    p = pacing(consumer)
    committed, unreadable = await p.read_committed({A0, B0}, exactly_once=True)
    assert committed == {A0: 4, B0: None} and unreadable == ""
    await p.seek_to(committed)
    assert consumer.seeks == [(A0, 4), (B0, 0)], "earliest where none is committed"

    async def fails(tp: TopicPartition) -> int:
        raise KafkaTimeoutError()

    consumer.committed = fails  # type: ignore[method-assign]
    committed, unreadable = await p.read_committed({A0}, exactly_once=True)
    assert committed == {} and unreadable.startswith("cannot read the committed offset of")


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def test_ties_go_in_partition_order_and_a_partition_out_of_time_order_keeps_its_own() -> None:
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 3, B0: 3})
    p = pacing(consumer)
    p.clock.assign([A0, B0])
    in_order = {
        A0: [record(A0, i, b"a%d" % i, timestamp=t) for i, t in enumerate((10, 20, 20))],
        B0: [record(B0, i, b"b%d" % i, timestamp=t) for i, t in enumerate((10, 20, 30))],
    }
    seen = [r.value for _, r, _ in p.ordered(in_order, await p.begin(in_order))]
    assert seen == [b"a0", b"b0", b"a1", b"a2", b"b1", b"b2"], "ties: a's first, as listed"
    backwards = {  # a's producer clock went back: a's records still go in offset order
        A0: [record(A0, i, b"a%d" % i, timestamp=t) for i, t in enumerate((50, 15, 60))],
        B0: [record(B0, i, b"b%d" % i, timestamp=t) for i, t in enumerate((10, 20, 30))],
    }
    p = pacing(consumer)
    p.clock.assign([A0, B0])
    seen = [r.value for _, r, _ in p.ordered(backwards, await p.begin(backwards))]
    assert [v for v in seen if v[:1] == b"a"] == [b"a0", b"a1", b"a2"]
    assert seen == [b"b0", b"b1", b"b2", b"a0", b"a1", b"a2"]
