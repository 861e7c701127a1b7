"""Committing what a step has safely done: its consumer offsets, or its tasks' transactions.

At-least-once, the offsets committed are the offset tracker's low-water marks (nothing held
at or past them), at most every `COMMIT_INTERVAL` unless forced; a stateful step's changelog
writes go out at most every `STATE_FLUSH_INTERVAL` (Kafka Streams' record cache, flushed on its
commit), so a state entry that comes and goes within that second is never written nor
tombstoned: the offsets of the records processed since the last flush stay held until the next
one is acknowledged, and a crash replays at most about that much more. Exactly-once, each task's
transaction commits with the step's consumed positions once everything sent in it is
acknowledged, and the state's changelog writes (with the tombstones those acks released) go
into the same transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from dataflow.errors import StepFailed
from dataflow.offsets import OffsetTracker
from dataflow.transactions import Transactions

#: Seconds between commits while records keep arriving.
COMMIT_INTERVAL = 0.2
#: Seconds between a stateful step's changelog flushes, at-least-once (module docstring).
STATE_FLUSH_INTERVAL = 1.0


class Committer:
    """Commits one step's progress (module docstring).

    Args:
        consumer: the step's consumer.
        tracker: the step's offset tracker (at-least-once).
        positions: the step's consumed positions (exactly-once).
        transactions: the step's tasks' transactions, or None (at-least-once).
        log: the step's logger.
        failure: the step's failure so far, or None.
        flush_state: writes a stateful step's pending changelog writes (`StepState.flush`):
            exactly-once before each commit, at-least-once before a commit at most every
            `STATE_FLUSH_INTERVAL` (and before every forced one); None for a stateless step.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        tracker: OffsetTracker[TopicPartition],
        positions: dict[TopicPartition, int],
        transactions: Transactions | None,
        log: Any,
        failure: Callable[[], StepFailed | None],
        flush_state: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.tracker = tracker
        self.positions = positions
        self.transactions = transactions
        self.log = log
        self.failure = failure
        self.flush_state = flush_state
        self._last = 0.0
        self._flushed = 0.0

    async def commit(self, force: bool) -> None:
        """Commit what is safe (`force`: whatever the time since the last commit).

        Raises:
            StepFailed: exactly-once: the transaction could not commit (it was aborted).
        """
        if self.transactions is not None:
            await self._commit_transactions(self.transactions, force)
            return
        now = time.monotonic()
        if not force and now - self._last < COMMIT_INTERVAL:
            return
        self._last = now
        if self.flush_state is not None and (force or now - self._flushed >= STATE_FLUSH_INTERVAL):
            # The state's writes since the last flush go out now; the offsets they hold are
            # committed by a later commit, once acknowledged.
            self._flushed = now
            await self.flush_state()
        offsets = self.tracker.committable()
        if not offsets:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance is under way: the revoke handler commits, or the records replay.
            self.log.warning("commit failed, will retry: {}", exc)
            return
        self.tracker.mark_committed(offsets)

    async def _commit_transactions(self, txn: Transactions, force: bool) -> None:
        """Exactly-once: commit each task's transaction with its consumed positions.

        Everything sent is acknowledged first, so that the tombstones of entries whose outputs
        were delivered go into the same transaction as those outputs, with the state's other
        writes since the last commit.
        """
        if not force and not txn.due():
            return
        try:
            await txn.flush()
            await asyncio.sleep(0)  # the acks' callbacks run: deferred tombstones are released
            if self.failure() is None and self.flush_state is not None:
                await self.flush_state()
                await txn.flush()
                await asyncio.sleep(0)
            failure = self.failure()
            if failure is not None:
                raise failure
            assigned = self.consumer.assignment()
            await txn.commit({tp: o for tp, o in self.positions.items() if tp in assigned})
        except Exception as exc:
            await txn.abort()
            if isinstance(exc, StepFailed):
                raise
            raise StepFailed(f"exactly-once: {exc}") from exc
