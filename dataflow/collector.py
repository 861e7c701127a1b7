"""Sending a step's outputs: record batches and single records, retries, the error topic.

Kafka Streams' `RecordCollector`. A step hands its outputs here; the collector sends them
through `producer_for(task)` (the shared producer, or in exactly-once mode the task's
transactional producer), retries what fails, routes what cannot be delivered to the pipeline's
error topic, and releases offsets when the broker acknowledges:

* every delivery owns one hold on each contributor's offset, taken before it starts (`hold_all`)
  and handed on through retries and error routing, released only by the broker's ack (`acked`);
* a record batch of the stateless path holds each input partition's offsets once for the whole
  fetch (`FetchSend`), released once every batch sent from it is acknowledged; a batch that
  fails is retried record by record;
* an output the broker refuses as too large is sent again alone, and to the error topic if it
  is still refused (`RetryKind.ALONE`).

Both paths rewrite headers the same way (`headers.Rewrite`); the step owns the loop and calls
in, this module imports neither the step nor its state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from dataflow import headers as hdr
from dataflow.context import StepContext
from dataflow.errors import StepFailed
from dataflow.stages import Headers, Ref
from dataflow.windows import Entry, Output

if TYPE_CHECKING:
    from dataflow.tracing import StepTrace

#: Attempts to send one output before the step is reported failed.
SEND_ATTEMPTS = 5

#: A record sent in a record batch of the stateless path: its converted value (without the
#: sink's framing), its input partition and the input record.
BatchItem = tuple[bytes, TopicPartition, ConsumerRecord[Any, Any]]


def partition_for(key: bytes | None, partitions: int) -> int:
    """The output partition from the key's numeric prefix, clamped (spec 4.12); else 0."""
    if not key or partitions <= 1:
        return 0
    head = key.split(b".", 1)[0]
    if not head.isdigit():
        return 0
    return min(int(head), partitions - 1)


class RetryKind(Enum):
    """How an output is sent again."""

    AGAIN = "again"  #: a failed send, sent again as before
    ALONE = "alone"  #: refused as too large in a record batch: sent in a batch of its own


@dataclass(frozen=True, slots=True)
class Retry:
    """An output waiting to be sent again (it keeps its contributors' holds).

    Attributes:
        topic: where it goes.
        output: the output.
        extra: headers added to the output's rewritten ones (the error topic's reason).
        attempt: which attempt the next send is (`AGAIN`; 0 for `ALONE`).
        reason: why the last attempt failed.
        kind: how it is sent again.
    """

    topic: str
    output: Output[Ref]
    extra: Headers
    attempt: int
    reason: str
    kind: RetryKind = RetryKind.AGAIN


class Collector:
    """Sends one step's outputs (module docstring).

    Args:
        context: what the collector shares with its step (producers, holds, counters).
        sink: the step's output topic.
        error_topic: the pipeline's error topic.
        rewrite: the pipeline version's header rewrite.
        ensure_topic: creates a topic on demand (the default error topic).
        on_released: takes the state removals deferred by a record whose last delivery was
            acknowledged (their tombstones may now be written).
        trace: makes the spans of traced records, or None.
    """

    def __init__(
        self,
        context: StepContext,
        *,
        sink: str,
        error_topic: str,
        rewrite: hdr.Rewrite,
        ensure_topic: Callable[[str], Awaitable[None]],
        on_released: Callable[[list[Entry[Ref]]], None],
        trace: StepTrace | None = None,
    ) -> None:
        self.sink = sink
        self.error_topic = error_topic
        self.rewrite = rewrite
        self.producer = context.producer
        self.producer_for = context.producer_for
        self.tracker = context.tracker
        self.stats = context.stats
        self.log = context.log
        self.generation = context.generation
        self.fail = context.fail
        self.ensure_topic = ensure_topic
        self.on_released = on_released
        self.exactly_once = context.exactly_once
        self.trace = trace
        self.sink_partitions = 1
        self.frame = b""  # the sink's Confluent framing, prepended to its values
        self.retries: list[Retry] = []

    # -- holds ------------------------------------------------------------------------------

    def current(self, ref: Ref) -> bool:
        """True unless `ref` was consumed before its partition was revoked (restored: True)."""
        return ref.generation == self.generation() or ref.restored

    def hold_all(self, refs: Iterable[Ref]) -> None:
        """A delivery carrying `refs` starts: each holds its offset until it is acknowledged."""
        generation = self.generation()
        for ref in refs:
            ref.pending += 1
            if ref.generation == generation and not ref.restored:  # else: no hold to take
                self.tracker.hold(ref.tp, ref.offset)

    def acked(self, refs: Iterable[Ref]) -> None:
        """The delivery carrying `refs` was acknowledged."""
        generation = self.generation()
        for ref in refs:
            if ref.generation == generation and not ref.restored:  # revoked: holds forgotten
                self.tracker.release(ref.tp, ref.offset)
            ref.pending -= 1
            if ref.pending <= 0 and ref.deferred:
                self.on_released(ref.deferred)
                ref.deferred = None

    # -- single records ---------------------------------------------------------------------

    def record_parts(self, topic: str, output: Output[Ref], extra: Headers) -> tuple[int, Headers]:
        """The partition and headers of `output` sent to `topic`."""
        headers = self.rewrite.apply(output.origin.headers)
        headers.extend(extra)
        partition = 0
        if topic == self.sink:
            partition = partition_for(output.key, self.sink_partitions)
        return partition, headers

    async def deliver(self, topic: str, output: Output[Ref], extra: Headers, attempt: int) -> None:
        """Send `output` to `topic` (its contributors are held by the caller)."""
        partition, headers = self.record_parts(topic, output, extra)
        producer = await self.producer_for(output.origin.tp.partition)
        value = output.value
        if self.frame and topic == self.sink:
            value = self.frame + value
        span = None
        if self.trace is not None and attempt == 1:
            span = self.trace.output(output, headers, topic, topic == self.error_topic, extra)
        try:
            future = await producer.send(
                topic,
                value,
                key=output.key,
                partition=partition,
                headers=headers,
                timestamp_ms=_timestamp(output),
            )
        except MessageSizeTooLargeError as exc:
            if topic == self.error_topic:
                raise StepFailed(f"cannot deliver to {topic}: {exc}") from exc
            reason = f"output of {len(output.value)} bytes to {topic} is too large: {exc}"
            await self.send_error(output.origin, reason, output.contributors)
            return
        finally:
            if span is not None:
                span.end()
        self.stats.records_out += 1
        future.add_done_callback(partial(self._on_ack, topic, output, extra, attempt))

    def _on_ack(
        self,
        topic: str,
        output: Output[Ref],
        extra: Headers,
        attempt: int,
        future: asyncio.Future[Any],
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            exc = None if future.cancelled() else future.exception()
            reason = "cancelled" if exc is None else repr(exc)
            if not self.current(output.origin):
                return  # its partition was revoked: the next owner replays the record
            if self.exactly_once:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                self.fail(StepFailed(f"transaction failed: send to {topic}: {reason}"))
                return
            if isinstance(exc, MessageSizeTooLargeError) and topic != self.error_topic:
                # The broker refused the record batch: retry this record alone.
                why = f"output of {len(output.value)} bytes refused by {topic}: {exc}"
                self.retries.append(Retry(topic, output, extra, 0, why, RetryKind.ALONE))
            elif attempt >= SEND_ATTEMPTS:
                self.fail(StepFailed(f"cannot deliver to {topic}: {reason}"))
            else:
                self.stats.send_failures += 1
                self.log.warning("send to {} failed (attempt {}): {}", topic, attempt, reason)
                self.retries.append(Retry(topic, output, extra, attempt + 1, reason))
            return  # the holds stay with the retry: nothing past it is committed
        self.stats.acked += 1
        self.stats.latency_seconds.observe(time.perf_counter() - output.origin.received)
        self.acked(output.contributors)

    async def resend(self) -> None:
        """Send again what failed (one pause per round, growing with the attempts)."""
        retries, self.retries = self.retries, []
        if not retries:
            return
        await asyncio.sleep(0.1 * max(retry.attempt for retry in retries))
        for retry in retries:
            if not self.current(retry.output.origin):
                continue
            if retry.kind is RetryKind.ALONE:
                await self._send_alone(retry.topic, retry.output, retry.extra, retry.reason)
            else:
                await self.deliver(retry.topic, retry.output, retry.extra, retry.attempt)

    async def _send_alone(self, topic: str, output: Output[Ref], extra: Headers, why: str) -> None:
        """Send one output in a batch of its own; to the error topic if it is still refused.

        The broker refuses a whole record batch that is too large, so a record is refused for
        good only when it is refused alone.
        """
        partition, headers = self.record_parts(topic, output, extra)
        try:
            await self.producer.flush()
            await self.producer.send_and_wait(
                topic,
                self.frame + output.value if self.frame and topic == self.sink else output.value,
                key=output.key,
                partition=partition,
                headers=headers,
                timestamp_ms=_timestamp(output),
            )
        except MessageSizeTooLargeError:
            await self.send_error(output.origin, why, output.contributors)
            return
        except KafkaError as exc:
            self.log.warning("send to {} failed: {}", topic, exc)
            await self.deliver(topic, output, extra, attempt=2)
            return
        self.stats.acked += 1
        self.acked(output.contributors)

    # -- the error topic --------------------------------------------------------------------

    async def send_error(self, ref: Ref, reason: str, contributors: tuple[Ref, ...]) -> None:
        """Send `reason` to the error topic; the caller holds the contributors' offsets."""
        self.stats.errors += 1
        self.stats.last_error = reason
        rid = hdr.value_of(ref.headers, hdr.REQUEST_ID)
        self.log.bind(request_id=rid.decode(errors="replace") if rid else "?").warning(
            "to error topic {}: {}", self.error_topic, reason
        )
        await self.ensure_topic(self.error_topic)
        output = Output(ref.key, reason.encode(), ref.timestamp, ref, contributors)
        extra = ((hdr.PIPELINE_ERRORS, reason.encode()),)
        await self.deliver(self.error_topic, output, extra, attempt=1)

    async def reject(self, ref: Ref, exc: Exception) -> None:
        """A record that cannot be converted goes to the error topic (holding its offset)."""
        self.hold_all((ref,))
        await self.send_error(
            ref, f"{ref.tp.topic}[{ref.tp.partition}]@{ref.offset}: {exc}", (ref,)
        )

    # -- record batches ---------------------------------------------------------------------

    def fetch(self, generation: int, received: float) -> FetchSend:
        """The sends of one fetched batch of the stateless path."""
        return FetchSend(self, FetchHold(self, generation), received)

    async def send_built(
        self,
        producer: AIOKafkaProducer,
        builder: Any,
        partition: int,
        items: list[BatchItem],
        hold: FetchHold,
        received: float,
    ) -> None:
        """Send one record batch to the sink; its fetch hold waits for the ack."""
        if not items:
            return
        hold.pending += 1
        self.stats.records_out += len(items)
        future = await producer.send_batch(builder, self.sink, partition=partition)
        future.add_done_callback(partial(self._on_batch_ack, items, hold, received))

    def _on_batch_ack(
        self, items: list[BatchItem], hold: FetchHold, received: float, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            if self.exactly_once:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self.fail(StepFailed(f"transaction failed: send to {self.sink}: {reason}"))
            elif hold.generation == self.generation():
                # Each record is retried on its own (and refused ones go to the error topic);
                # it holds its own offset from now, so the fetch hold can end.
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self.stats.send_failures += 1
                self.log.warning("batch of {} to {} failed: {}", len(items), self.sink, reason)
                for value, tp, record in items:
                    ref = Ref(tp, record.offset, record.key, record.headers, record.timestamp,
                              received, hold.generation)  # fmt: skip
                    output = Output(record.key, value, record.timestamp, ref, (ref,))
                    self.hold_all((ref,))
                    self.retries.append(Retry(self.sink, output, (), 2, reason))
        else:
            self.stats.acked += len(items)
            self.stats.latency_seconds.observe_many(time.perf_counter() - received, len(items))
        hold.done()


class FetchHold:
    """One hold per partition of a fetched batch, released once every record batch sent from
    it is acknowledged (or handed to per-record retries)."""

    __slots__ = ("collector", "generation", "pending", "sealed_", "tps")

    def __init__(self, collector: Collector, generation: int) -> None:
        self.collector = collector
        self.generation = generation
        self.tps: list[tuple[TopicPartition, int]] = []
        self.pending = 0
        self.sealed_ = False

    def sealed(self) -> None:
        """Every record batch of the fetch was sent."""
        self.sealed_ = True
        self._maybe_release()

    def done(self) -> None:
        """One record batch was acknowledged."""
        self.pending -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        collector = self.collector
        if self.sealed_ and self.pending == 0 and self.generation == collector.generation():
            for tp, offset in self.tps:
                collector.tracker.release(tp, offset)


class FetchSend:
    """The record batches of one fetched batch: per producer (exactly-once: one per task), one
    open batch per sink partition; the fetch's hold on its input partitions."""

    __slots__ = ("_by_task", "collector", "hold", "received")

    def __init__(self, collector: Collector, hold: FetchHold, received: float) -> None:
        self.collector = collector
        self.hold = hold
        self.received = received
        self._by_task: dict[int, SinkBatches] = {}

    def hold_from(self, tp: TopicPartition, offset: int) -> None:
        """The fetch holds `tp` from `offset` (the caller holds it in the tracker)."""
        self.hold.tps.append((tp, offset))

    def batches(self, task: int, producer: AIOKafkaProducer) -> SinkBatches:
        """The open batches of `task` (made with `producer` the first time)."""
        batches = self._by_task.get(task)
        if batches is None:
            batches = SinkBatches(self.collector, producer, self.hold, self.received)
            self._by_task[task] = batches
        return batches

    async def seal(self) -> None:
        """Send every open batch; the hold ends when all are acknowledged."""
        send = self.collector.send_built
        for batches in self._by_task.values():
            for partition, (builder, items) in batches.open.items():
                await send(batches.producer, builder, partition, items, self.hold, self.received)
        self._by_task.clear()
        self.hold.sealed()


class SinkBatches:
    """One producer's open record batches, one per sink partition (no reference back to its
    `FetchSend`: a cycle would keep a whole fetch's records alive until the cyclic GC runs)."""

    __slots__ = ("_create", "collector", "hold", "open", "producer", "received")

    def __init__(
        self, collector: Collector, producer: AIOKafkaProducer, hold: FetchHold, received: float
    ) -> None:
        self.collector = collector
        self.producer = producer
        self.hold = hold
        self.received = received
        self._create = producer.create_batch
        self.open: dict[int, tuple[Any, list[BatchItem]]] = {}

    def add(
        self,
        partition: int,
        key: bytes | None,
        value: bytes,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
        item: BatchItem,
    ) -> bool:
        """Append a record to `partition`'s open batch; False (not appended) when it is full."""
        current = self.open.get(partition)
        if current is None:
            current = self.open[partition] = (self._create(), [])
        if current[0].append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            return False
        current[1].append(item)
        return True

    async def add_to_next(
        self,
        partition: int,
        key: bytes | None,
        value: bytes,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
        item: BatchItem,
    ) -> None:
        """`partition`'s open batch is full: send it, and open the next with this record."""
        builder, items = self.open[partition]
        await self.collector.send_built(
            self.producer, builder, partition, items, self.hold, self.received
        )
        current = self.open[partition] = (self._create(), [])
        current[0].append(key=key, value=value, timestamp=timestamp, headers=headers)
        current[1].append(item)


def _timestamp(output: Output[Ref]) -> int | None:
    """An output carries its input's timestamp (a join's or batch's: the latest part's)."""
    return output.timestamp_ms if output.timestamp_ms >= 0 else None
