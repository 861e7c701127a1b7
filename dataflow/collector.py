"""Sending a step's outputs: record batches and single records, retries, the error topic.

Kafka Streams' `RecordCollector`. A step hands its outputs here; the collector sends them
through `producer_for(task)` (the shared producer, or in exactly-once mode the task's
transactional producer), retries what fails, routes what cannot be delivered to the pipeline's
error topic, and releases offsets when the broker acknowledges:

* every delivery owns one hold on each contributor's offset, taken before it starts (`hold_all`)
  and handed on through retries and error routing, released only by the broker's ack (`acked`);
* record batches (`RecordBatches`, per producer `TaskBatches`) carry the outputs of both paths
  and the state's changelog writes; they count in a `BatchHold` that holds each input
  partition once (a stateless fetch's, or a stateful step's hold per state flush), released
  once every batch counted in it is acknowledged; a batch that fails is retried record by
  record, each record then holding its own offset;
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
from dataflow.offsets import BatchHold
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

    def uncount(self, refs: Iterable[Ref]) -> None:
        """A counted delivery carrying `refs` (`send_outputs`) was acknowledged."""
        for ref in refs:
            ref.pending -= 1
            if ref.pending <= 0 and ref.deferred:
                self.on_released(ref.deferred)
                ref.deferred = None

    def hold_offsets(self, refs: Iterable[Ref]) -> None:
        """A counted delivery carrying `refs` failed: from now on each holds its own offset
        until it is retried and acknowledged (`acked`)."""
        generation = self.generation()
        for ref in refs:
            if ref.generation == generation and not ref.restored:
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
        failure = asyncio.CancelledError() if future.cancelled() else future.exception()
        self._settle(topic, output, extra, attempt, failure)

    def _settle(
        self,
        topic: str,
        output: Output[Ref],
        extra: Headers,
        attempt: int,
        failure: BaseException | None,
    ) -> None:
        """The send of `output` to `topic` was acknowledged, or failed with `failure`."""
        if failure is not None:
            reason = _reason(failure)
            if not self.current(output.origin):
                return  # its partition was revoked: the next owner replays the record
            if self.exactly_once:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                self.fail(StepFailed(f"transaction failed: send to {topic}: {reason}"))
                return
            if isinstance(failure, MessageSizeTooLargeError) and topic != self.error_topic:
                # The broker refused the record batch: retry this record alone.
                why = f"output of {len(output.value)} bytes refused by {topic}: {failure}"
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

    def fetch_done(
        self,
        hold: BatchHold[TopicPartition],
        received: float,
        items: list[BatchItem],
        failure: BaseException | None,
    ) -> None:
        """A record batch of the stateless path was acknowledged (or failed): a failed one is
        retried record by record, each holding its own offset; then the fetch's hold counts it."""
        if failure is not None:
            reason = _reason(failure)
            if self.exactly_once:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                self.fail(StepFailed(f"transaction failed: send to {self.sink}: {reason}"))
            elif hold.generation == self.generation():
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

    def fetch_sends(self, hold: BatchHold[TopicPartition], received: float) -> TaskBatches:
        """Record batches for the outputs of one fetched batch of the stateless path."""
        on_done = partial(self.fetch_done, hold, received)
        return TaskBatches(
            self.producer_for, self.sink, on_done, hold, exactly_once=self.exactly_once
        )

    def outputs(self, hold: BatchHold[TopicPartition] | None) -> TaskBatches:
        """Record batches for a stateful step's outputs (`send_outputs`). With `hold` (that of
        the records they came from, released once they are acknowledged), their contributors
        are only counted; else each holds its offset (`hold_all`)."""
        return TaskBatches(
            self.producer_for,
            self.sink,
            partial(self.outputs_done, hold),
            hold,
            exactly_once=self.exactly_once,
        )

    async def send_outputs(
        self, sends: TaskBatches, outputs: list[Output[Ref]], counted: bool
    ) -> None:
        """Append `outputs` to the sink's record batches in `sends`. When `counted` (the hold
        of the records they came from covers their offsets), each contributor counts the
        delivery in `pending` (its state removals wait for it), holding no offset of its own;
        else each holds its own offset (`hold_all`); until `outputs_done` hears of the batch's
        ack."""
        rewrite, frame, trace = self.rewrite.apply, self.frame, self.trace
        sink_partitions = self.sink_partitions
        self.stats.records_out += len(outputs)
        shared = None if sends.exactly_once else await sends.get(0)
        for output in outputs:
            if counted:
                for ref in output.contributors:
                    ref.pending += 1
            else:
                self.hold_all(output.contributors)
            origin = output.origin
            headers = rewrite(origin.headers)
            key = output.key
            partition = partition_for(key, sink_partitions) if sink_partitions > 1 else 0
            value = frame + output.value if frame else output.value
            if trace is not None:
                span = trace.output(output, headers, self.sink, False, ())
                if span is not None:
                    span.end()
            out = shared if shared is not None else await sends.get(origin.tp.partition)
            timestamp = output.timestamp_ms if output.timestamp_ms >= 0 else None
            if not out.add(partition, key, value, timestamp, headers, output):
                await out.add_to_next(partition, key, value, timestamp, headers, output)

    def outputs_done(
        self,
        hold: BatchHold[TopicPartition] | None,
        outputs: list[Output[Ref]],
        failure: BaseException | None,
    ) -> None:
        """A record batch of a stateful step's outputs was acknowledged, or failed: each output
        is then dealt with as a single record's failed send, its contributors holding their own
        offsets from now (so the hold the batch counted in can end)."""
        if failure is not None:
            for output in outputs:
                if hold is not None:
                    self.hold_offsets(output.contributors)
                self._settle(self.sink, output, (), 1, failure)
        else:
            stats = self.stats
            stats.acked += len(outputs)
            now = time.perf_counter()
            observe = stats.latency_seconds.observe
            done = self.acked if hold is None else self.uncount
            for output in outputs:
                observe(now - output.origin.received)
                done(output.contributors)
        if hold is not None:
            hold.done()


class RecordBatches:
    """One producer's open record batches to one topic, one per partition, each with the items
    its records stand for; a sent batch's ack hands its items to `on_done(items, failure)`
    (aiokafka `create_batch`/`send_batch`: no future per record). With a `hold`, each batch
    sent counts in its `pending` (`on_done` calls its `done()`)."""

    __slots__ = ("_create", "hold", "on_done", "open", "producer", "topic")

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        on_done: Callable[[list[Any], BaseException | None], None],
        hold: BatchHold[TopicPartition] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.on_done = on_done
        self.hold = hold
        self._create = producer.create_batch
        self.open: dict[int, tuple[Any, list[Any]]] = {}

    def add(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
        item: Any,
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
        value: bytes | None,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
        item: Any,
    ) -> None:
        """`partition`'s open batch is full: send it, and open the next with this record (an
        empty batch takes any record)."""
        builder, items = self.open.pop(partition)
        await self._send(partition, builder, items)
        self.add(partition, key, value, timestamp, headers, item)

    async def seal(self) -> None:
        """Send every open batch."""
        while self.open:
            partition, (builder, items) = self.open.popitem()
            await self._send(partition, builder, items)

    async def _send(self, partition: int, builder: Any, items: list[Any]) -> None:
        if not items:
            return
        if self.hold is not None:
            self.hold.pending += 1
        future = await self.producer.send_batch(builder, self.topic, partition=partition)
        future.add_done_callback(partial(_batch_done, self.on_done, items))


class TaskBatches:
    """A group's `RecordBatches` to one topic, per producer: the shared one, or in exactly-once
    mode the task's (`producer_for(task)`, the input partition's); each batch sent counts in the
    group's hold, if any."""

    __slots__ = ("_by_task", "exactly_once", "hold", "on_done", "producer_for", "topic")

    def __init__(
        self,
        producer_for: Callable[[int], Awaitable[AIOKafkaProducer]],
        topic: str,
        on_done: Callable[[list[Any], BaseException | None], None],
        hold: BatchHold[TopicPartition] | None = None,
        *,
        exactly_once: bool,
    ) -> None:
        self.producer_for = producer_for
        self.topic = topic
        self.on_done = on_done
        self.hold = hold
        self.exactly_once = exactly_once
        self._by_task: dict[int, RecordBatches] = {}

    async def get(self, task: int) -> RecordBatches:
        """The record batches of the input partition `task` (one for all but exactly-once)."""
        task = task if self.exactly_once else 0
        batches = self._by_task.get(task)
        if batches is None:
            producer = await self.producer_for(task)
            batches = RecordBatches(producer, self.topic, self.on_done, self.hold)
            self._by_task[task] = batches
        return batches

    async def seal(self) -> None:
        """Send every open batch (the caller seals the hold once nothing more is sent)."""
        for batches in self._by_task.values():
            await batches.seal()
        self._by_task.clear()


def _batch_done(
    on_done: Callable[[list[Any], BaseException | None], None],
    items: list[Any],
    future: asyncio.Future[Any],
) -> None:
    on_done(items, asyncio.CancelledError() if future.cancelled() else future.exception())


def _reason(failure: BaseException) -> str:
    return "cancelled" if isinstance(failure, asyncio.CancelledError) else repr(failure)


def _timestamp(output: Output[Ref]) -> int | None:
    """An output carries its input's timestamp (a join's or batch's: the latest part's)."""
    return output.timestamp_ms if output.timestamp_ms >= 0 else None
