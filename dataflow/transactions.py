"""Exactly-once mode of one step: a transactional producer per task, committed on an interval.

A task is an input partition number: partition p of every source topic of the step. The range
assignor gives partition p of all of a step's topics to the same member when they have as many
partitions, so a task moves between engines as a whole, like a Kafka Streams task. Each task
has its own transactional producer with the transactional id `<step consumer group>-<p>`:

* what processing a task's records writes goes through its producer, inside its open
  transaction: outputs to the sink, records to the error topic, changelog entries and
  tombstones of the step's state;
* on commit (every `interval_s`, before partitions are revoked, on shutdown) the task's
  consumed positions are added to the transaction (`send_offsets_to_transaction`) and the
  transaction is committed: outputs, state and offsets become visible together, or not at all;
* fencing: a new owner of a task starts the producer of the same transactional id, which bumps
  its epoch, so the previous owner (dead, or alive but no longer in the group) can no longer
  commit, and its open transaction is aborted. This is the older fencing model (Kafka Streams'
  `exactly_once` before KIP-447): aiokafka sends `TxnOffsetCommit` without the consumer's
  generation and member id, so the group cannot fence a zombie; a transactional id per task can.

Any failure of a transaction (fenced, a failed send, a failed commit) is fatal to the step: it
aborts what is open and the pipeline is rebuilt from the committed offsets and the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaProducer, TopicPartition
from loguru import logger

from dataflow.kafka import stop_producer


class TransactionError(RuntimeError):
    """A transaction of the step could not be used or committed; str() says why."""


def transactional_id(group_id: str, task: int) -> str:
    """The transactional id of task `task` (an input partition number) of a step."""
    return f"{group_id}-{task}"


class Transactions:
    """The transactional producers of one step's tasks, and its commit clock.

    Args:
        make_producer: builds a (not yet started) transactional producer for a transactional id.
        group_id: the step's consumer group: the offsets' group and the ids' prefix.
        interval_s: the commit interval.
    """

    def __init__(
        self,
        make_producer: Callable[[str], AIOKafkaProducer],
        group_id: str,
        interval_s: float,
    ) -> None:
        self._make = make_producer
        self.group_id = group_id
        self.interval_s = interval_s
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._open: set[int] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self.commits = 0  # transactions committed
        self.log = logger.bind(group=group_id)

    @property
    def tasks(self) -> set[int]:
        """The tasks owned now."""
        return set(self._producers)

    async def assign(self, tasks: set[int]) -> None:
        """Own exactly `tasks`: stop the producers of tasks owned no more, and start those of new
        tasks. A new producer's first transaction is begun here, which waits for its producer id:
        by then the previous owner is fenced and its open transaction aborted."""
        for task in sorted(set(self._producers) - tasks):
            await self._stop(task)
        for task in sorted(tasks - set(self._producers)):
            producer = self._make(transactional_id(self.group_id, task))
            self._producers[task] = producer
            try:
                await producer.start()
                await producer.begin_transaction()
            except Exception as exc:
                raise TransactionError(
                    f"cannot start the transactional producer "
                    f"{transactional_id(self.group_id, task)}: {type(exc).__name__}: {exc}"
                ) from exc
            self._open.add(task)
            for tp in [tp for tp in self._committed if tp.partition == task]:
                del self._committed[tp]

    async def producer(self, task: int) -> AIOKafkaProducer:
        """The producer of `task`, inside an open transaction."""
        producer = self._producers.get(task)
        if producer is None:
            raise TransactionError(f"task {task} is not owned (no transactional producer)")
        if task not in self._open:
            await producer.begin_transaction()
            self._open.add(task)
        return producer

    def due(self) -> bool:
        """True when the commit interval has passed since the last commit."""
        return time.monotonic() - self._last_commit >= self.interval_s

    async def flush(self) -> None:
        """Wait until everything sent in the open transactions is acknowledged."""
        for task in sorted(self._open):
            await self._producers[task].flush()

    async def commit(self, positions: Mapping[TopicPartition, int]) -> int:
        """Add the positions of each task's partitions to its transaction and commit it (every
        open one, and each task whose positions moved). The caller flushed first. Returns the
        number of transactions committed."""
        self._last_commit = time.monotonic()
        committed = 0
        for task in sorted(self._producers):
            offsets = {
                tp: offset
                for tp, offset in positions.items()
                if tp.partition == task and self._committed.get(tp) != offset
            }
            if not offsets and task not in self._open:
                continue
            producer = await self.producer(task)
            try:
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.group_id)
                await producer.commit_transaction()
            except Exception as exc:
                raise TransactionError(
                    f"commit of {transactional_id(self.group_id, task)} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._open.discard(task)
            self._committed.update(offsets)
            self.log.debug(
                "committed {} with {}",
                transactional_id(self.group_id, task),
                {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items()},
            )
            committed += 1
        self.commits += committed
        return committed

    async def abort(self) -> None:
        """Abort every open transaction (best effort: a fenced producer cannot)."""
        for task in sorted(self._open):
            producer = self._producers[task]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.abort_transaction(), 5)
        self._open.clear()

    async def close(self) -> None:
        """Abort what is open and stop every producer."""
        await self.abort()
        for task in sorted(self._producers):
            await self._stop(task)

    async def _stop(self, task: int) -> None:
        producer = self._producers.pop(task)
        if task in self._open:
            self._open.discard(task)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.abort_transaction(), 5)
        if not await stop_producer(producer, 5):
            name = transactional_id(self.group_id, task)
            self.log.debug("stopping {} took over 5 s: forced", name)
