"""A stand-in producer and consumer for the step's parts (no broker, no network).

The producer records what is sent (by `send` and by record batches alike) as `Sent` rows and
acknowledges each send on the next loop iteration, or fails it as told; the consumer answers
from dictionaries and hands out the batches queued on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord, TopicPartition

from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.topology import Topology, topology_from

NS = "seldon.ns"
ERRORS = f"{NS}.errors.errors"


class Sent(NamedTuple):
    """One record the producer was given."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    timestamp: int | None
    headers: tuple[tuple[str, bytes], ...]


class FakeBatch:
    """An aiokafka record batch builder that holds `room` records."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes | None, bytes, int | None, list[tuple[str, bytes]]]] = []

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
    ) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value, timestamp, list(headers)))
        return object()


@dataclass
class FakeProducer:
    """Records sends; acks them (or fails those to a topic in `failing`)."""

    partitions: dict[str, int] = field(default_factory=dict)
    batch_room: int = 1000
    sent: list[Sent] = field(default_factory=list)
    batches: list[tuple[str, int, int]] = field(default_factory=list)  # topic, partition, size
    failing: dict[str, BaseException] = field(default_factory=dict)  # topic -> ack error
    refusing: dict[str, BaseException] = field(default_factory=dict)  # topic -> send() error
    held: list[asyncio.Future[Any]] = field(default_factory=list)  # acks not given yet
    hold_acks: bool = False
    flushes: int = 0
    client: Any = None

    def _future(self, topic: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold_acks:
            self.held.append(future)
        elif topic in self.failing:
            future.set_exception(self.failing[topic])
        else:
            future.set_result(None)
        return future

    def ack_all(self) -> None:
        """Give the acks held back."""
        for future in self.held:
            future.set_result(None)
        self.held.clear()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        if topic in self.refusing:
            raise self.refusing[topic]
        self.sent.append(Sent(topic, partition, key, value, timestamp_ms, tuple(headers or ())))
        return self._future(topic)

    async def send_and_wait(self, topic: str, value: bytes | None = None, **kw: Any) -> None:
        await (await self.send(topic, value, **kw))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_room)

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, len(batch.records)))
        for key, value, timestamp, headers in batch.records:
            self.sent.append(Sent(topic, partition, key, value, timestamp, tuple(headers)))
        return self._future(topic)

    async def flush(self) -> None:
        self.flushes += 1

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions.get(topic, 1)))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass
class FakeConsumer:
    """Answers positions, watermarks and committed offsets from its dictionaries."""

    assigned: set[TopicPartition] = field(default_factory=set)
    highwaters: dict[TopicPartition, int] = field(default_factory=dict)
    stable: dict[TopicPartition, int] = field(default_factory=dict)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    committed_offsets: dict[TopicPartition, int | None] = field(default_factory=dict)
    heard: dict[TopicPartition, int] = field(default_factory=dict)  # last fetch answer (ms)
    queued: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]] = field(default_factory=list)
    fetched_from: list[tuple[TopicPartition, ...]] = field(default_factory=list)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    _group_instance_id: str | None = None
    _group_id: str | None = "g"
    _coordinator: Any = None
    _auto_offset_reset: str = "earliest"

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable.get(tp)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.heard.get(tp, time.time_ns() // 1_000_000)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.highwaters.get(tp, 0) for tp in tps}

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        self.fetched_from.append(tps)
        return self.queued.pop(0) if self.queued else {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass


def record(
    tp: TopicPartition,
    offset: int,
    value: bytes,
    key: bytes | None = b"0.k",
    timestamp: int = 1_000,
    headers: Sequence[tuple[str, bytes]] = (("pipeline", b"p"),),
) -> ConsumerRecord[Any, Any]:
    """A consumed record of `tp`."""
    return ConsumerRecord(
        tp.topic, tp.partition, offset, timestamp, 0, key, value, None, 0, len(value),
        tuple(headers),
    )  # fmt: skip


def topology(sources: Sequence[str], sink: str, triggers: Sequence[str] = ()) -> Topology:
    """Pipeline `p` version 1 of one step reading `sources` (model names) into `sink`'s inputs."""

    def topic(model: str) -> PipelineTopic:
        return PipelineTopic(pipeline_name="p", topic_name=f"{NS}.model.{model}.outputs")

    message = PipelineUpdateMessage(
        pipeline="p",
        version=1,
        uid="u1",
        updates=[
            PipelineStepUpdate(
                sources=[topic(m) for m in sources],
                triggers=[topic(m) for m in triggers],
                sink=PipelineTopic(pipeline_name="p", topic_name=f"{NS}.model.{sink}.inputs"),
            )
        ],
        pipeline_error_topic=ERRORS,
    )
    return topology_from(message, 1000)


async def settle() -> None:
    """Let the acks' callbacks run."""
    for _ in range(3):
        await asyncio.sleep(0)
