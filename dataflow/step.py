"""One step's loop: consume, filter, convert, send, commit.

A record's offset is committed only when the record is no longer held by the step (it was
filtered out, converted and sent, or left a join window or a batch) and every output it
contributed to was acknowledged by the broker. Records that cannot be converted go to the
pipeline's error topic with a reason; the step carries on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from loguru import logger

from dataflow import headers as hdr
from dataflow.cycles import RevisitGuard
from dataflow.joins import Output
from dataflow.offsets import OffsetTracker
from dataflow.stages import Headers, Ref, Result, StepStages
from dataflow.stats import StepStats
from dataflow.topology import Source, StepSpec, Topology, Trigger
from dataflow.wire import ChainType, WireError, convert

# Trigger records parse as responses whatever their topic (spec 4.7).
_TRIGGER_CHAIN = ChainType.OUTPUT_INPUT

#: Seconds between commits while records keep arriving.
COMMIT_INTERVAL = 0.2
#: Attempts to send one output before the step is reported failed.
SEND_ATTEMPTS = 5
#: Retry marker of an output the broker refused as too large (it goes to the error topic).
TOO_LARGE = -1


def partition_for(key: bytes | None, partitions: int) -> int:
    """The output partition from the key's numeric prefix, clamped (spec 4.12); else 0."""
    if not key or partitions <= 1:
        return 0
    head = key.split(b".", 1)[0]
    if not head.isdigit():
        return 0
    return min(int(head), partitions - 1)


@dataclass
class _Routing:
    """What a record of one topic feeds: (index, spec, encoded pipeline header value)."""

    sources: list[tuple[int, Source, bytes]] = field(default_factory=list)
    triggers: list[tuple[int, Trigger, bytes]] = field(default_factory=list)


class StepFailed(Exception):
    """A step can no longer deliver (the producer keeps failing); str() is the reason."""


class Step:
    """A running step: owns its consumer; sends through the pipeline's shared producer.

    Args:
        topology: the pipeline the step belongs to.
        spec: the step.
        consumer: a started-later consumer in the step's group (not yet subscribed).
        producer: the engine's shared producer.
        error_topic: where records that cannot be converted go.
        ensure_topic: creates a topic on demand (the default error topic).
        guard: the pipeline's shared revisit guard, when cycles are allowed.
        on_rebalance: called when the step loses or gets its partitions.
    """

    def __init__(
        self,
        topology: Topology,
        spec: StepSpec,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        error_topic: str,
        ensure_topic: Callable[[str], Awaitable[None]],
        guard: RevisitGuard | None = None,
        on_rebalance: Callable[[], None] | None = None,
    ) -> None:
        self.topology = topology
        self.spec = spec
        self.consumer = consumer
        self.producer = producer
        self.error_topic = error_topic
        self.ensure_topic = ensure_topic
        self.stats = StepStats()
        self._on_rebalance = on_rebalance or (lambda: None)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.stages = StepStages(spec, topology.output_topic, guard, self._hold)
        self.assigned = asyncio.Event()
        self.log = logger.bind(pipeline=topology.name, step=spec.index)
        self._routing: dict[str, _Routing] = {}
        for i, source in enumerate(spec.sources):
            entry = (i, source, source.pipeline.encode())
            self._routing.setdefault(source.topic, _Routing()).sources.append(entry)
        for i, trigger in enumerate(spec.triggers):
            entry_t = (i, trigger, trigger.pipeline.encode())
            self._routing.setdefault(trigger.topic, _Routing()).triggers.append(entry_t)
        self._positions: dict[TopicPartition, int] = {}
        self._sink_partitions = 1
        self._stopping = asyncio.Event()
        self._failure: StepFailed | None = None
        self._retries: list[tuple[str, Output[Ref], Headers, int, str]] = []
        self._last_commit = 0.0
        # Bumped when partitions are revoked: outputs of older records no longer count.
        self._generation = 0
        # Held while a fetched batch is processed and while partitions are revoked, never
        # around getmany() (the rebalance it waits for runs the revoke handler).
        self._batch_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the consumer and subscribe to the step's topics."""
        await self.consumer.start()
        self.consumer.subscribe(list(self.spec.topics), listener=_Listener(self))
        partitions = await self.producer.partitions_for(self.spec.sink)
        self._sink_partitions = max(1, len(partitions or ()))

    def stop_soon(self) -> None:
        """Ask the loop to finish: stop fetching, deliver what is in flight, commit."""
        self._stopping.set()

    async def run(self) -> None:
        """The step's loop until `stop_soon()`; raises StepFailed when delivery fails."""
        try:
            while not self._stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                await self._resend()
                timeout_ms = self._poll_timeout_ms()
                batch = await self._poll(timeout_ms)
                generation = self._generation  # no await since getmany() returned
                # Partitions are revoked only between batches (on_revoked takes the lock).
                async with self._batch_lock:
                    if self._generation != generation:
                        # Revoked before this batch was processed: a new assignment starts
                        # again from the committed offsets, so the batch is fetched again.
                        continue
                    now_ms = _now_ms()
                    for tp, records in batch.items():
                        for record in records:
                            await self._on_record(tp, record, now_ms)
                        self._positions[tp] = records[-1].offset + 1
                    await self._send_all(self.stages.expire(_now_ms()), _now_ms())
                    await self._commit(force=False)
            await self._drain()
        finally:
            await self._close()

    async def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Fetch a batch. During a rebalance getmany() waits for the new assignment whatever
        the timeout, so there a stop request is raced against it."""
        fetch = self.consumer.getmany(timeout_ms=timeout_ms, max_records=2000)
        if self.assigned.is_set():
            result: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await fetch
            return result
        getter: asyncio.Future[Any] = asyncio.ensure_future(fetch)
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
        if getter.cancelled():
            return {}
        fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = getter.result()
        return fetched

    async def _drain(self) -> None:
        """Wait for in-flight sends, then commit what is safe."""
        try:
            await self.producer.flush()
            await self._resend()
            await self._commit(force=True)
        except KafkaError as exc:
            self.log.warning("final commit failed: {}", exc)

    async def _close(self) -> None:
        try:
            await self.consumer.stop()
        except Exception as exc:
            self.log.warning("consumer stop: {}", exc)

    # -- records ----------------------------------------------------------------------------

    async def _on_record(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], now: int
    ) -> None:
        self.stats.records_in += 1
        ref = Ref(
            tp,
            record.offset,
            record.key,
            record.headers,
            record.timestamp,
            time.perf_counter(),
            self._generation,
        )
        self.tracker.hold(tp, record.offset)
        routing = self._routing.get(record.topic)
        matched = False
        try:
            if routing is not None:
                for index, source, wanted in routing.sources:
                    if hdr.names_pipeline(record.headers, wanted):
                        matched = True
                        await self._on_source(index, source, ref, record.value, now)
                for index, trigger, wanted_t in routing.triggers:
                    if hdr.names_pipeline(record.headers, wanted_t):
                        matched = True
                        fired = convert(record.value, _TRIGGER_CHAIN, trigger.tensors) is not None
                        if fired:
                            self._hold(ref)
                            await self._send_all(self.stages.add_trigger(index, ref, now), now)
        except WireError as exc:
            self._hold_all((ref,))
            await self._send_error(
                ref, f"{record.topic}[{tp.partition}]@{record.offset}: {exc}", (ref,)
            )
        if not matched:
            self.stats.filtered += 1
        self.tracker.release(tp, record.offset)

    async def _on_source(
        self, index: int, source: Source, ref: Ref, value: bytes, now: int
    ) -> None:
        t0 = time.perf_counter()
        converted = convert(value, source.chain, source.tensors, source.renames)
        self.stats.convert_seconds.observe(time.perf_counter() - t0)
        if converted is None:
            return
        if self.stages.stateful:
            self._hold(ref)
        await self._send_all(self.stages.add(index, ref, converted, now), now)

    def _hold(self, ref: Ref) -> None:
        self.tracker.hold(ref.tp, ref.offset)

    # -- sending ----------------------------------------------------------------------------

    async def _send_all(self, result: Result, now_ms: int) -> None:
        for output in result.outputs:
            self._hold_all(output.contributors)
            error = output.error or self.stages.revisit(output, now_ms)
            if error:
                await self._send_error(output.origin, error, output.contributors)
            else:
                await self._deliver(self.spec.sink, output, (), attempt=1)
        self._release_all(result.released)

    # Every delivery owns one hold on each contributor's offset, taken before it starts and
    # handed on through retries and error routing, released only by the broker's ack.

    def _hold_all(self, refs: Iterable[Ref]) -> None:
        for ref in refs:
            self.tracker.hold(ref.tp, ref.offset)

    def _release_all(self, refs: Iterable[Ref]) -> None:
        generation = self._generation
        for ref in refs:
            if ref.generation == generation:  # holds of revoked partitions were forgotten
                self.tracker.release(ref.tp, ref.offset)

    def _record_parts(self, topic: str, output: Output[Ref], extra: Headers) -> tuple[int, Headers]:
        headers = hdr.rewrite(output.origin.headers, self.topology.name, self.topology.version)
        headers.extend(extra)
        partition = 0
        if topic == self.spec.sink:
            partition = partition_for(output.key, self._sink_partitions)
        return partition, headers

    async def _deliver(self, topic: str, output: Output[Ref], extra: Headers, attempt: int) -> None:
        partition, headers = self._record_parts(topic, output, extra)
        try:
            future = await self.producer.send(
                topic, output.value, key=output.key, partition=partition, headers=headers
            )
        except MessageSizeTooLargeError as exc:
            if topic == self.error_topic:
                raise StepFailed(f"cannot deliver to {topic}: {exc}") from exc
            reason = f"output of {len(output.value)} bytes to {topic} is too large: {exc}"
            await self._send_error(output.origin, reason, output.contributors)
            return
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
            if output.origin.generation != self._generation:
                return  # its partition was revoked: the next owner replays the record
            if isinstance(exc, MessageSizeTooLargeError) and topic != self.error_topic:
                # The broker refused the record batch: retry this record alone.
                why = f"output of {len(output.value)} bytes refused by {topic}: {exc}"
                self._retries.append((topic, output, extra, TOO_LARGE, why))
            elif attempt >= SEND_ATTEMPTS:
                self._failure = StepFailed(f"cannot deliver to {topic}: {reason}")
            else:
                self.stats.send_failures += 1
                self.log.warning("send to {} failed (attempt {}): {}", topic, attempt, reason)
                self._retries.append((topic, output, extra, attempt + 1, reason))
            return  # the holds stay with the retry: nothing past it is committed
        self.stats.acked += 1
        self.stats.latency_seconds.observe(time.perf_counter() - output.origin.received)
        self._release_all(output.contributors)

    async def _resend(self) -> None:
        retries, self._retries = self._retries, []
        if not retries:
            return
        # One pause per round, growing with the attempts, not one per record.
        await asyncio.sleep(0.1 * max(attempt for _, _, _, attempt, _ in retries))
        for topic, output, extra, attempt, reason in retries:
            if output.origin.generation != self._generation:
                continue
            if attempt == TOO_LARGE:
                await self._send_alone(topic, output, extra, reason)
            else:
                await self._deliver(topic, output, extra, attempt)

    async def _send_alone(self, topic: str, output: Output[Ref], extra: Headers, why: str) -> None:
        """Send one output in a batch of its own; to the error topic if it is still refused.

        The broker refuses a whole record batch that is too large, so a record is refused for
        good only when it is refused alone.
        """
        partition, headers = self._record_parts(topic, output, extra)
        try:
            await self.producer.flush()
            await self.producer.send_and_wait(
                topic, output.value, key=output.key, partition=partition, headers=headers
            )
        except MessageSizeTooLargeError:
            await self._send_error(output.origin, why, output.contributors)
            return
        except KafkaError as exc:
            self.log.warning("send to {} failed: {}", topic, exc)
            await self._deliver(topic, output, extra, attempt=2)
            return
        self.stats.acked += 1
        self._release_all(output.contributors)

    async def _send_error(self, ref: Ref, reason: str, contributors: tuple[Ref, ...]) -> None:
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
        await self._deliver(self.error_topic, output, extra, attempt=1)

    # -- commits ----------------------------------------------------------------------------

    async def _commit(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL:
            return
        self._last_commit = now
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

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high watermark per assigned partition (known positions only)."""
        lag = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                lag[tp] = max(0, high - position)
        return lag

    def _poll_timeout_ms(self) -> int:
        deadline = self.stages.next_deadline()
        if deadline is None:
            return 100
        return max(0, min(100, deadline - _now_ms()))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Deliver and commit before partitions move to another member.

        Runs between two fetched batches (the batch lock): sends in flight are flushed and their
        acks counted, then what is safe is committed. Records still held (in a window, a batch,
        or a retry) are forgotten uncommitted, so the partition's next owner replays them.
        """
        async with self._batch_lock:
            try:
                await self.producer.flush()
                await asyncio.sleep(0)  # let the acks' callbacks run
                await self._commit(force=True)
            except KafkaError as exc:
                self.log.warning("commit on revoke failed: {}", exc)
            self._generation += 1
            for tp in revoked:
                self.tracker.forget(tp)
                self._positions.pop(tp, None)
            self._retries.clear()
            self.stages.reset()
            self.assigned.clear()
        self._on_rebalance()

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Mark the step ready once it owns partitions."""
        self.log.debug("assigned {}", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.assigned.set()
        self._on_rebalance()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, step: Step) -> None:
        self.step = step

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.step.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.step.on_assigned(set(assigned))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
