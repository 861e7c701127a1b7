"""One step's loop: consume, filter, convert, send, commit.

A record's offset is committed only when the record is no longer held by the step (it was
filtered out, converted and sent, or left a join window or a batch) and every output it
contributed to was acknowledged by the broker. Records that cannot be converted go to the
pipeline's error topic with a reason; the step carries on.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from loguru import logger

from dataflow import changelog, membership, tracing
from dataflow import headers as hdr
from dataflow.cycles import RevisitGuard
from dataflow.joins import Entry, Output
from dataflow.kafka import read_latest
from dataflow.offsets import OffsetTracker
from dataflow.progress import Progress
from dataflow.stages import Headers, Ref, Result, StepStages
from dataflow.stats import StepStats
from dataflow.streamtime import StreamTime
from dataflow.topology import Source, StepSpec, Topology, Trigger
from dataflow.transactions import Transactions
from dataflow.wire import ChainType, WireError, convert

if TYPE_CHECKING:
    from dataflow.confluent import Registry
    from dataflow.tracing import Tracer

# Trigger records parse as responses whatever their topic (spec 4.7).
_TRIGGER_CHAIN = ChainType.OUTPUT_INPUT

#: Seconds between commits while records keep arriving.
COMMIT_INTERVAL = 0.2
#: Attempts to send one output before the step is reported failed.
SEND_ATTEMPTS = 5
#: Retry marker of an output the broker refused as too large (it goes to the error topic).
TOO_LARGE = -1
#: Longest a changelog restore may take before the step is reported failed.
RESTORE_TIMEOUT = 120.0
#: Records worked through between two yields to the event loop (a fetched batch holds up to
#: 2,000): the health server, the other steps and the acks' callbacks run in between.
SLICE_RECORDS = 256
#: Least a source may be read ahead of stream time while another lags (ms), so that pausing
#: and resuming does not happen at every batch when the window is tiny.
PACE_SLACK_MS = 1000
#: Longest a step waits for the end offsets of partitions that may lag (a broker failing over).
END_OFFSETS_TIMEOUT = 5.0
#: A caught-up source partition whose last fetch response is older than this counts as lagging
#: (aiokafka long-polls every partition with nothing buffered every 0.5 s).
UNHEARD_MS = 3000


@dataclass(frozen=True)
class StateOptions:
    """Where a stateful step keeps its state and how much it may hold.

    Attributes:
        changelog: the step's changelog topic.
        ensure_changelog: creates it (name, partitions) if missing.
        restore_consumer: makes a group-less consumer to read it back.
        max_records: most entries held before fetching is paused.
        max_bytes: most key and value bytes held before fetching is paused.
        grace_ms: how long join and trigger windows keep a record after they close, for a
            partner that arrives late (`SELDON_JOIN_GRACE_MS`).
    """

    changelog: str
    ensure_changelog: Callable[[str, int], Awaitable[None]]
    restore_consumer: Callable[[], AIOKafkaConsumer]
    max_records: int = 500_000
    max_bytes: int = 256 * 1024 * 1024
    grace_ms: int = 0


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
        state: where a stateful step (join, trigger gate, batch) keeps its state.
        transactions: exactly-once mode (`dataflow.transactions`): the step sends through its
            tasks' transactional producers, and commits its offsets in their transactions.
        tracer: makes the spans of traced records (`dataflow.tracing`); None: tracing is off.
        registry: the schema registry whose framing the step's sink values get
            (`dataflow.confluent`); None: values are written raw.
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
        state: StateOptions | None = None,
        transactions: Transactions | None = None,
        tracer: Tracer | None = None,
        registry: Registry | None = None,
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
        grace = state.grace_ms if state is not None else 0
        self.stages = StepStages(spec, topology.output_topic, guard, grace)
        if self.stages.stateful and state is None:
            raise ValueError("a stateful step needs StateOptions")
        self.state = state if self.stages.stateful else None
        self._txn = transactions
        self._timed = self.stages.timed
        # How far ahead of stream time a source may be read while another lags: the widest
        # window of the step's stages (an `any` join's is 1 ms), at least PACE_SLACK_MS.
        windows = [s.window_ms for s in (self.stages.joiner, self.stages.gate) if s is not None]
        self._slack_ms = max([PACE_SLACK_MS, *windows])
        # Stateless steps without a cycle guard take the batch-at-a-time path.
        self._fast = not self.stages.stateful and guard is None
        self._header_values = (topology.name.encode(), str(topology.version).encode())
        self._clock: StreamTime[TopicPartition] = StreamTime()
        # ident -> (input partition, bytes) of every entry held in state.
        self._entries: dict[bytes, tuple[int, int]] = {}
        self._owned: set[int] = set()  # input partition numbers whose state is loaded
        self._tombstones: list[Entry[Ref]] = []  # removals whose deliveries were acked
        self._paused: set[TopicPartition] = set()  # held back by pacing (not drained)
        self._readable: list[TopicPartition] = []  # what to drain while some are held back
        self._full = False
        self._caught_up = True  # every source partition read to its end (timed steps)
        self._progress = Progress()
        self._changelog_partitions = 1
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
        # -- tracing and the schema registry's framing (issue 24) --
        self._tracer = tracer
        self._trace = tracing.StepTrace(tracer, topology, spec, self.stages) if tracer else None
        self._registry = registry
        self._frame = b""  # the sink's Confluent framing (start()), prepended to its values

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the changelog of a stateful step, start the consumer, subscribe."""
        if self.state is not None:
            counts = [len(await self.producer.partitions_for(t) or ()) for t in self.spec.topics]
            self._changelog_partitions = max(1, *counts)
            await self.state.ensure_changelog(self.state.changelog, self._changelog_partitions)
        await self.consumer.start()
        self.consumer.subscribe(list(self.spec.topics), listener=_Listener(self))
        partitions = await self.producer.partitions_for(self.spec.sink)
        self._sink_partitions = max(1, len(partitions or ()))
        if self._registry is not None:
            self._frame = await _framing(self._registry, self.spec.sink, self.log)

    def stop_soon(self) -> None:
        """Ask the loop to finish: stop fetching, deliver what is in flight, commit."""
        self._stopping.set()

    async def run(self) -> None:
        """The step's loop until `stop_soon()`; raises StepFailed when delivery fails."""
        try:
            while not self._stopping.is_set():
                if self._failure is not None:
                    raise self._failure
                # One yield per round whatever happens below: getmany() with a zero timeout and
                # nothing buffered returns without yielding, and a round that sends nothing and
                # commits nothing would then never let the fetcher (or anything else) run.
                await asyncio.sleep(0)
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
                    if self._fast:
                        await self._process_batch(batch)
                    elif self._timed:
                        await self._process_in_time_order(batch)
                    else:
                        await self._process_records(batch)
                    await self._after_batch()
                    await self._commit(force=False)
            await self._drain()
        finally:
            await self._close()

    async def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Fetch a batch. During a rebalance getmany() waits for the new assignment whatever
        the timeout, so there a stop request is raced against it."""
        if self._paused and not self._readable:  # never so by pacing; be safe
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        fetch = self.consumer.getmany(*self._readable, timeout_ms=timeout_ms, max_records=2000)
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

    async def _process_batch(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        """A stateless step, a fetched batch at a time: filter and convert every record, build
        one record batch per sink partition (aiokafka `create_batch`/`send_batch`, no future
        per record), hold each partition's offsets once until every batch is acknowledged."""
        stats = self.stats
        sink_partitions = self._sink_partitions
        trace, frame = self._trace, self._frame
        pipeline, version = self._header_values
        replaced = hdr.REPLACED
        # Per producer (exactly-once: one per task), one open record batch (and what is in it)
        # per sink partition.
        producers: dict[int, tuple[AIOKafkaProducer, dict[int, tuple[Any, list[Any]]]]] = {}
        hold = _FetchHold(self, self._generation)
        t0 = time.perf_counter()
        received = time.perf_counter()
        fetched = 0
        for tp, records in batch.items():
            routing = self._routing.get(tp.topic)
            sources = routing.sources if routing is not None else []
            self.tracker.hold(tp, records[0].offset)
            self.tracker.skip(tp, records[-1].offset)
            hold.tps.append((tp, records[0].offset))
            self._positions[tp] = records[-1].offset + 1
            fetched += len(records)
            task = tp.partition if self._txn is not None else 0
            producer = await self._producer_for(task)
            if task not in producers:
                producers[task] = (producer, {})
            open_batches = producers[task][1]
            create = producer.create_batch
            for n, record in enumerate(records, 1):
                if not n % SLICE_RECORDS:
                    await asyncio.sleep(0)
                headers = record.headers
                matched = False
                for _index, source, wanted in sources:
                    if (hdr.PIPELINE, wanted) not in headers:
                        continue
                    matched = True
                    try:
                        value = convert(record.value, source.chain, source.tensors, source.renames)
                    except WireError as exc:
                        await self._reject(tp, record, exc)
                        continue
                    if value is None:
                        stats.empty += 1
                        self.log.debug(
                            "{}[{}]@{} converted to nothing: no output",
                            tp.topic, tp.partition, record.offset,
                        )  # fmt: skip
                        continue
                    kept = [(k, v) for k, v in headers if k not in replaced]
                    kept.append((hdr.PIPELINE, pipeline))
                    kept.append((hdr.PIPELINE_VERSION, version))
                    span = None if trace is None else trace.record(tp, record, kept, received)
                    out = frame + value if frame else value
                    key = record.key
                    partition = partition_for(key, sink_partitions) if sink_partitions > 1 else 0
                    current = open_batches.get(partition)
                    if current is None:
                        current = open_batches[partition] = (create(), [])
                    ts = record.timestamp if record.timestamp >= 0 else None
                    if current[0].append(key=key, value=out, timestamp=ts, headers=kept) is None:
                        await self._send_built(
                            producer, current[0], partition, current[1], hold, received
                        )
                        current = open_batches[partition] = (create(), [])
                        current[0].append(key=key, value=out, timestamp=ts, headers=kept)
                    current[1].append((value, tp, record))
                    if span is not None:
                        span.end()
                if not matched:
                    stats.filtered += 1
        stats.records_in += fetched
        if fetched:
            stats.convert_seconds.observe_many((time.perf_counter() - t0) / fetched, fetched)
        for producer, open_batches in producers.values():
            for partition, (builder, items) in open_batches.items():
                await self._send_built(producer, builder, partition, items, hold, received)
        hold.sealed()

    async def _send_built(
        self,
        producer: AIOKafkaProducer,
        builder: Any,
        partition: int,
        items: list[Any],
        hold: _FetchHold,
        received: float,
    ) -> None:
        if not items:
            return
        hold.pending += 1
        self.stats.records_out += len(items)
        future = await producer.send_batch(builder, self.spec.sink, partition=partition)
        future.add_done_callback(partial(self._on_batch_ack, items, hold, received))

    def _on_batch_ack(
        self, items: list[Any], hold: _FetchHold, received: float, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            if self._txn is not None:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self._failure = StepFailed(
                    f"transaction failed: send to {self.spec.sink}: {reason}"
                )
            elif hold.generation == self._generation:
                # Each record is retried on its own (and refused ones go to the error topic);
                # it holds its own offset from now, so the fetch hold can end.
                reason = "cancelled" if future.cancelled() else repr(future.exception())
                self.stats.send_failures += 1
                self.log.warning("batch of {} to {} failed: {}", len(items), self.spec.sink, reason)
                for value, tp, record in items:
                    ref = Ref(tp, record.offset, record.key, record.headers, record.timestamp,
                              received, hold.generation)  # fmt: skip
                    output = Output(record.key, value, record.timestamp, ref, (ref,))
                    self._hold_all((ref,))
                    self._retries.append((self.spec.sink, output, (), 2, reason))
        else:
            self.stats.acked += len(items)
            self.stats.latency_seconds.observe_many(time.perf_counter() - received, len(items))
        hold.done()

    async def _reject(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], exc: Exception
    ) -> None:
        """A record that cannot be converted goes to the error topic (holding its offset)."""
        ref = Ref(tp, record.offset, record.key, record.headers, record.timestamp,
                  time.perf_counter(), self._generation)  # fmt: skip
        self._hold_all((ref,))
        await self._send_error(
            ref, f"{record.topic}[{tp.partition}]@{record.offset}: {exc}", (ref,)
        )

    async def _process_records(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        """Records of a batch step (or a cycle-guarded chain), one at a time on the wall clock."""
        wall = _now_ms()
        n = 0
        for tp, records in batch.items():
            for record in records:
                n += 1
                if not n % SLICE_RECORDS:
                    await asyncio.sleep(0)
                    wall = _now_ms()
                await self._on_record(tp, record, wall, wall)
                self._positions[tp] = record.offset + 1

    async def _process_in_time_order(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        """Records of a join or gate, across partitions in timestamp order, on stream time.

        Which partitions lag is worked out once for the batch; per record only the record's
        partition is looked at (it stops lagging when it reaches its end offset), so a record
        costs the same whatever the number of partitions, the backlog or the state held."""
        await self._refresh_positions()
        for tp, records in batch.items():
            self._positions[tp] = records[0].offset
        ends = await self._checked_ends()
        clock = self._clock
        clock.lagging(self._lagging(ends))
        parts = [[(r.timestamp, tp, r) for r in records] for tp, records in batch.items()]
        merged = heapq.merge(*parts, key=lambda item: item[0])
        for n, (timestamp, tp, record) in enumerate(merged, 1):
            if not n % SLICE_RECORDS:
                await asyncio.sleep(0)
            position = record.offset + 1
            self._positions[tp] = position
            clock.observe(tp, timestamp)
            end = ends.get(tp)
            if end is not None and position >= end:
                clock.caught_up(tp)
            await self._on_record(tp, record, clock.now(), _now_ms())

    async def _after_batch(self) -> None:
        """Close windows and batches, send what left the state, pace the sources."""
        wall = _now_ms()
        stream: int | None = wall
        caught_up = True
        lagging: list[TopicPartition] = []
        if self._timed:
            await self._refresh_positions()
            lagging = self._lagging(await self._checked_ends())
            caught_up = not lagging
            stream = self._clock.now(lagging)
        self._caught_up = caught_up
        await self._send_all(self.stages.expire(stream, wall, caught_up), wall, None)
        await self._flush_tombstones()
        self._pace(lagging, stream, wall)

    def _ends(self) -> dict[TopicPartition, int | None]:
        ends: dict[TopicPartition, int | None] = {}
        for tp in self.consumer.assignment():
            lso = self.consumer.last_stable_offset(tp)
            ends[tp] = lso if lso is not None else self.consumer.highwater(tp)
        return ends

    async def _checked_ends(self) -> dict[TopicPartition, int | None]:
        """End offsets, asked of the broker again for partitions that look read to the end but
        whose time is behind the step's newest by more than the window: their end is known
        from a fetch that may have waited in the consumer's buffer while the other sources
        were read, so they may well lag (and must hold stream time back)."""
        ends = self._ends()
        newest = max((t for tp in ends if (t := self._clock.time_of(tp)) is not None), default=None)
        if newest is None:
            return ends
        suspects = []
        for tp, end in ends.items():
            position, t = self._positions.get(tp), self._clock.time_of(tp)
            if end is None or position is None or position < end:
                continue  # lagging anyway
            if t is None or newest - t > self._slack_ms:
                suspects.append(tp)
        if suspects:
            try:
                asked = self.consumer.end_offsets(suspects)
                ends.update(await asyncio.wait_for(asked, END_OFFSETS_TIMEOUT))
            except (KafkaError, TimeoutError) as exc:
                # Unknown ends hold stream time back (the safe side); the next batch asks again.
                self.log.debug("end offsets of {}: {!r}", suspects, exc)
                ends.update(dict.fromkeys(suspects))
        return ends

    def _lagging(self, ends: dict[TopicPartition, int | None]) -> list[TopicPartition]:
        """Partitions with records left to read (or not known yet), and partitions no fetch
        answered for `UNHEARD_MS`: their leader is down or moving, and records may be waiting
        to be written there (a producer retrying toward the new leader), so they must hold
        stream time back and keep windows from closing on the wall clock."""
        lagging = []
        now = _now_ms()
        for tp, end in ends.items():
            position = self._positions.get(tp)
            if end is None or position is None or position < end:
                lagging.append(tp)
                continue
            heard = self.consumer.last_poll_timestamp(tp)
            if heard is not None and now - heard > UNHEARD_MS:
                lagging.append(tp)
        return lagging

    async def _refresh_positions(self) -> None:
        """Positions of partitions fetched from but not yet seen with records."""
        for tp in self.consumer.assignment():
            if tp not in self._positions and self.consumer.highwater(tp) is not None:
                self._positions[tp] = await self.consumer.position(tp)

    def _pace(self, lagging: list[TopicPartition], stream: int | None, wall: int) -> None:
        """Pause sources read ahead of stream time, and all but the slowest when state is full."""
        if self.state is None:
            return
        self.stats.state_records = len(self._entries)
        full = (
            len(self._entries) >= self.state.max_records
            or self.stats.state_bytes >= self.state.max_bytes
        )
        if full and not self._full:
            self.stats.state_full += 1
            self.log.warning(
                "state full ({} records, {} bytes): fetching only what holds stream time back",
                len(self._entries),
                self.stats.state_bytes,
            )
        self._full = full
        if not self._timed:
            return
        wanted = self._clock.ahead(lagging, self._slack_ms)
        if full:
            wanted |= self._clock.ahead(lagging, 0)
        assigned = self.consumer.assignment()
        # Held back by not draining them (getmany() of the others), not by consumer.pause():
        # aiokafka drops what it has buffered for a partition when it is paused, so every
        # pause would throw a prefetched fetch away to be fetched again. Left undrained, a
        # partition keeps one fetch in the buffer and is not fetched further.
        self._paused = wanted & assigned
        self._readable = sorted(assigned - self._paused) if self._paused else []

    async def _drain(self) -> None:
        """Wait for in-flight sends, then commit what is safe."""
        try:
            await self.producer.flush()
            await asyncio.sleep(0)  # let the acks' callbacks run
            await self._resend()
            await self._flush_tombstones()
            await self.producer.flush()
            await asyncio.sleep(0)
            await self._commit(force=True)
        except (KafkaError, StepFailed) as exc:
            self.log.warning("final commit failed: {}", exc)

    async def _close(self) -> None:
        if self._txn is not None:
            await self._txn.close()  # aborts what is still open
        instance = self.consumer._group_instance_id
        group = self.consumer._group_id
        member = membership.member_of(self.consumer)
        try:
            await self.consumer.stop()
        except Exception as exc:
            self.log.warning("consumer stop: {}", exc)
        if instance and group and member is not None:
            # A static member leaves explicitly, so that the others take its partitions now.
            node, member_id = member
            try:
                code = await asyncio.wait_for(
                    membership.leave(self.producer.client, node, group, member_id, instance), 5
                )
                if code:
                    self.log.debug("leave group {}: error code {}", group, code)
            except (KafkaError, TimeoutError, OSError) as exc:
                self.log.debug("leave group {}: {}", group, exc)

    # -- records ----------------------------------------------------------------------------

    async def _on_record(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], stream: int | None, wall: int
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
        now = stream if stream is not None else -(2**62)
        try:
            if routing is not None:
                for index, source, wanted in routing.sources:
                    if hdr.names_pipeline(record.headers, wanted):
                        matched = True
                        await self._on_source(index, source, ref, record.value, now, wall)
                for index, trigger, wanted_t in routing.triggers:
                    if hdr.names_pipeline(record.headers, wanted_t):
                        matched = True
                        fired = convert(record.value, _TRIGGER_CHAIN, trigger.tensors) is not None
                        if fired:
                            name = changelog.trigger_ident(
                                index, tp.topic, tp.partition, record.offset
                            )
                            result = self.stages.add_trigger(index, ref, now, wall, name)
                            await self._send_all(result, wall, ref)
        except WireError as exc:
            self._hold_all((ref,))
            await self._send_error(
                ref, f"{record.topic}[{tp.partition}]@{record.offset}: {exc}", (ref,)
            )
        if not matched:
            self.stats.filtered += 1
        self.tracker.release(tp, record.offset)

    async def _on_source(
        self, index: int, source: Source, ref: Ref, value: bytes, now: int, wall: int
    ) -> None:
        t0 = time.perf_counter()
        converted = convert(value, source.chain, source.tensors, source.renames)
        self.stats.convert_seconds.observe(time.perf_counter() - t0)
        if converted is None:
            # No tensor left after selection, or an empty message: the reference drops these.
            self.stats.empty += 1
            self.log.debug(
                "{}[{}]@{} converted to nothing: no output",
                ref.tp.topic,
                ref.tp.partition,
                ref.offset,
            )
            return
        name = (
            changelog.source_ident(index, ref.tp.topic, ref.tp.partition, ref.offset)
            if self.state is not None
            else b""
        )
        await self._send_all(self.stages.add(index, ref, converted, now, wall, name), wall, ref)

    # -- sending ----------------------------------------------------------------------------

    async def _send_all(self, result: Result, now_ms: int, cause: Ref | None) -> None:
        """Send `result`'s outputs and mirror its state changes in the changelog.

        `cause` is the record being processed: its offset stays held until the changelog has
        every entry its processing wrote.
        """
        for output in result.outputs:
            self._hold_all(output.contributors)
            error = output.error or self.stages.revisit(output, now_ms)
            if error:
                await self._send_error(output.origin, error, output.contributors)
            else:
                await self._deliver(self.spec.sink, output, (), attempt=1)
        if self.state is None:
            return
        for entry in result.stored:
            await self._put(entry, cause)
        for entry in result.removed:
            self._remove(entry)
        if self.stages.batcher is not None and self._full:
            # A batch that cannot grow is sent now rather than holding fetching forever.
            await self._send_all(self.stages.flush_batch(now_ms, now_ms), now_ms, None)

    # Every delivery owns one hold on each contributor's offset, taken before it starts and
    # handed on through retries and error routing, released only by the broker's ack.

    def _current(self, ref: Ref) -> bool:
        """True unless `ref` was consumed before its partition was revoked (restored: True)."""
        return ref.generation == self._generation or ref.restored

    def _hold_all(self, refs: Iterable[Ref]) -> None:
        generation = self._generation
        for ref in refs:
            ref.pending += 1
            if ref.generation == generation:  # restored or revoked records need no hold
                self.tracker.hold(ref.tp, ref.offset)

    def _acked(self, refs: Iterable[Ref]) -> None:
        """The delivery carrying `refs` was acknowledged."""
        generation = self._generation
        for ref in refs:
            if ref.generation == generation:  # holds of revoked partitions were forgotten
                self.tracker.release(ref.tp, ref.offset)
            ref.pending -= 1
            if ref.pending <= 0 and ref.deferred:
                self._tombstones.extend(ref.deferred)
                ref.deferred = None

    # -- state ------------------------------------------------------------------------------

    async def _put(self, entry: Entry[Ref], cause: Ref | None) -> None:
        """Write `entry` to the changelog; `cause`'s offset is held until it is acknowledged."""
        assert self.state is not None
        token = entry.token
        value = changelog.encode(
            entry.kind,
            entry.source,
            token.key,
            entry.value,
            entry.timestamp_ms,
            entry.matched,
            token.headers,
            token.tp.topic,
            token.tp.partition,
            token.offset,
        )
        size = len(entry.value) + len(token.key or b"")
        old = self._entries.get(entry.ident)
        if old is not None:
            self.stats.state_bytes -= old[1]
        self._entries[entry.ident] = (token.tp.partition, size)
        self.stats.state_bytes += size
        held = cause is not None and cause.generation == self._generation
        if held:
            assert cause is not None
            self.tracker.hold(cause.tp, cause.offset)
        producer = await self._producer_for(token.tp.partition)
        future = await producer.send(
            self.state.changelog,
            value,
            key=entry.ident,
            partition=token.tp.partition % self._changelog_partitions,
        )
        future.add_done_callback(partial(self._on_put, cause if held else None))

    def _on_put(self, cause: Ref | None, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            exc = None if future.cancelled() else future.exception()
            if cause is not None and cause.generation != self._generation:
                return  # its partition was revoked: the next owner replays the record
            # The record's offset stays held: the pipeline is rebuilt from the changelog.
            self._failure = StepFailed(f"cannot write state to {self.state_topic}: {exc!r}")
            return
        if cause is not None and cause.generation == self._generation:
            self.tracker.release(cause.tp, cause.offset)

    @property
    def state_topic(self) -> str:
        """The changelog topic, or empty for a stateless step."""
        return self.state.changelog if self.state is not None else ""

    def _remove(self, entry: Entry[Ref]) -> None:
        """`entry` left the state: its tombstone follows the deliveries that carry its data."""
        old = self._entries.pop(entry.ident, None)
        if old is not None:
            self.stats.state_bytes -= old[1]
        token = entry.token
        if token.pending > 0:
            if token.deferred is None:
                token.deferred = []
            token.deferred.append(entry)
        else:
            self._tombstones.append(entry)

    async def _flush_tombstones(self) -> None:
        if self.state is None or not self._tombstones:
            return
        tombstones, self._tombstones = self._tombstones, []
        for entry in tombstones:
            if entry.ident in self._entries:
                continue  # written again since (the same record consumed again)
            partition = entry.token.tp.partition % self._changelog_partitions
            if self._txn is not None:  # in the transaction; a failure fails the step
                producer = await self._producer_for(entry.token.tp.partition)
                await producer.send(
                    self.state.changelog, None, key=entry.ident, partition=partition
                )
                continue
            try:
                await self.producer.send(
                    self.state.changelog, None, key=entry.ident, partition=partition
                )
            except KafkaError as exc:  # the entry comes back on restore and expires again
                self.log.warning("tombstone to {} failed: {}", self.state.changelog, exc)

    async def _restore(self, assigned: set[TopicPartition]) -> None:
        """Load the state of newly owned partitions from the changelog; drop the state of
        partitions owned no more (their next owner restores it)."""
        if self.state is None:
            return
        now_owned = {tp.partition for tp in assigned}
        gone = self._owned - now_owned
        if gone:
            self.stages.discard(lambda ref: ref.tp.partition in gone)
            for name, (partition, size) in list(self._entries.items()):
                if partition in gone:
                    del self._entries[name]
                    self.stats.state_bytes -= size
        new = now_owned - self._owned
        self._owned = now_owned
        if not new:
            return
        t0 = time.monotonic()
        latest = await asyncio.wait_for(self._read_changelog(new), RESTORE_TIMEOUT)
        wall = _now_ms()
        loaded = 0
        for n, (name, value) in enumerate(latest.items(), 1):
            if not n % SLICE_RECORDS:
                await asyncio.sleep(0)  # a big state loads in slices: the loop stays live
            if value is None:
                continue
            try:
                restored = changelog.decode(value)
            except ValueError as exc:
                self.log.warning("skipping changelog entry {!r}: {}", name, exc)
                continue
            if restored.partition not in new:
                continue
            tp = TopicPartition(restored.topic, restored.partition)
            ref = Ref(
                tp,
                restored.offset,
                restored.key,
                restored.headers,
                restored.timestamp_ms,
                time.perf_counter(),
                -1,
            )
            entry: Entry[Ref] = Entry(
                restored.kind,
                restored.index,
                restored.key or b"",
                restored.value,
                restored.timestamp_ms,
                ref,
                name,
                matched=restored.matched,
            )
            self.stages.load(entry, wall)
            size = len(restored.value) + len(restored.key or b"")
            self._entries[name] = (restored.partition, size)
            self.stats.state_bytes += size
            loaded += 1
        self.stats.restored += loaded
        self.stats.state_records = len(self._entries)
        self.log.info(
            "restored {} state entries of partitions {} from {} in {:.2f}s",
            loaded,
            sorted(new),
            self.state.changelog,
            time.monotonic() - t0,
        )

    async def _read_changelog(self, partitions: set[int]) -> dict[bytes, bytes | None]:
        """The latest value per key of the changelog partitions holding `partitions`."""
        assert self.state is not None
        tps = sorted(
            {
                TopicPartition(self.state.changelog, p % self._changelog_partitions)
                for p in partitions
            }
        )
        return await read_latest(self.state.restore_consumer(), tps)

    async def _producer_for(self, task: int) -> AIOKafkaProducer:
        """The shared producer; in exactly-once mode the task's, inside its open transaction."""
        if self._txn is None:
            return self.producer
        return await self._txn.producer(task)

    def _record_parts(self, topic: str, output: Output[Ref], extra: Headers) -> tuple[int, Headers]:
        headers = hdr.rewrite(output.origin.headers, self.topology.name, self.topology.version)
        headers.extend(extra)
        partition = 0
        if topic == self.spec.sink:
            partition = partition_for(output.key, self._sink_partitions)
        return partition, headers

    async def _deliver(self, topic: str, output: Output[Ref], extra: Headers, attempt: int) -> None:
        partition, headers = self._record_parts(topic, output, extra)
        producer = await self._producer_for(output.origin.tp.partition)
        value = output.value
        if self._frame and topic == self.spec.sink:
            value = self._frame + value
        span = None
        if self._trace is not None and attempt == 1:
            span = self._trace.output(output, headers, topic, topic == self.error_topic, extra)
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
            await self._send_error(output.origin, reason, output.contributors)
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
            if not self._current(output.origin):
                return  # its partition was revoked: the next owner replays the record
            if self._txn is not None:
                # Exactly-once: the transaction cannot commit; the step is rebuilt.
                self._failure = StepFailed(f"transaction failed: send to {topic}: {reason}")
                return
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
        self._acked(output.contributors)

    async def _resend(self) -> None:
        retries, self._retries = self._retries, []
        if not retries:
            return
        # One pause per round, growing with the attempts, not one per record.
        await asyncio.sleep(0.1 * max(attempt for _, _, _, attempt, _ in retries))
        for topic, output, extra, attempt, reason in retries:
            if not self._current(output.origin):
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
                topic,
                self._frame + output.value
                if self._frame and topic == self.spec.sink
                else output.value,
                key=output.key,
                partition=partition,
                headers=headers,
                timestamp_ms=_timestamp(output),
            )
        except MessageSizeTooLargeError:
            await self._send_error(output.origin, why, output.contributors)
            return
        except KafkaError as exc:
            self.log.warning("send to {} failed: {}", topic, exc)
            await self._deliver(topic, output, extra, attempt=2)
            return
        self.stats.acked += 1
        self._acked(output.contributors)

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
        if self._txn is not None:
            await self._commit_transactions(force)
            return
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

    async def _commit_transactions(self, force: bool) -> None:
        """Exactly-once: commit each task's transaction with its consumed positions.

        Everything sent is acknowledged first, so that the tombstones of entries whose outputs
        were delivered go into the same transaction as those outputs.
        """
        assert self._txn is not None
        if not force and not self._txn.due():
            return
        try:
            await self._txn.flush()
            await asyncio.sleep(0)  # the acks' callbacks run: deferred tombstones are released
            if self._failure is None and self._tombstones:
                await self._flush_tombstones()
                await self._txn.flush()
                await asyncio.sleep(0)
            if self._failure is not None:
                raise self._failure
            assigned = self.consumer.assignment()
            await self._txn.commit({tp: o for tp, o in self._positions.items() if tp in assigned})
        except Exception as exc:
            await self._txn.abort()
            if isinstance(exc, StepFailed):
                raise
            raise StepFailed(f"exactly-once: {exc}") from exc

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high watermark per assigned partition (known positions only)."""
        lag = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                lag[tp] = max(0, high - position)
        return lag

    def watch(self, now: float) -> None:
        """Notice a step that has records to read but takes none (called about once a second
        by the engine's watchdog, whatever the step's loop is doing): after 10 s it says why
        in `stats.waiting` and a WARNING, repeated at most once a minute."""
        lag = self.lag()
        warn = self._progress.check(now, self.stats.records_in, sum(lag.values()))
        if not self._progress.stuck:
            if self.stats.waiting:
                self.log.info("moving again after {:.0f}s", self.stats.stuck_seconds)
            self.stats.waiting = ""
            self.stats.stuck_seconds = 0.0
            return
        self.stats.waiting = self.why_waiting(lag)
        self.stats.stuck_seconds = self._progress.stuck_for(now)
        if warn:
            self.log.warning(
                "no progress for {:.0f}s with {} records to read: {}",
                self.stats.stuck_seconds,
                sum(lag.values()),
                self.stats.waiting,
            )

    def why_waiting(self, lag: dict[TopicPartition, int]) -> str:
        """What the step waits on, in words: assignment, retries, full state, paused
        partitions, the partition holding stream time back, partitions with nothing fetched."""
        behind = sorted(tp for tp, n in lag.items() if n > 0)
        reasons = []
        if self._stopping.is_set():
            reasons.append("stopping")
        if not self.assigned.is_set():
            reasons.append("waiting for its partitions (a rebalance)")
        if self._retries:
            reasons.append(f"retrying {len(self._retries)} sends")
        if self._full:
            reasons.append(
                f"state full ({len(self._entries)} records, {self.stats.state_bytes} bytes)"
            )
        paused = [tp for tp in behind if tp in self._paused]
        if paused:
            reasons.append(
                "paused, read ahead of stream time by more than the window: "
                + ", ".join(_tp_name(tp) for tp in paused)
            )
        holder = self._clock.holder() if self._timed and not self._caught_up else None
        if holder is not None:
            t = self._clock.time_of(holder)
            at = "not read yet" if t is None else f"at {t} ms"
            reasons.append(f"stream time held by {_tp_name(holder)} ({at})")
        unpaused = [tp for tp in behind if tp not in self._paused]
        if unpaused:
            reasons.append(
                "nothing fetched from "
                + ", ".join(f"{_tp_name(tp)} (lag {lag[tp]})" for tp in unpaused)
            )
        return "; ".join(reasons) or "nothing fetched"

    def _poll_timeout_ms(self) -> int:
        """Until the next window or batch closes on the wall clock (at most 100 ms). Join and
        gate windows close on the wall clock only once every source is caught up: while one
        lags, their wall deadlines are long past and must not make the poll return at once."""
        deadline = self.stages.next_deadline(self._caught_up)
        if deadline is None:
            return 100
        return max(0, min(100, deadline - _now_ms()))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Deliver and commit before partitions move to another member.

        Runs between two fetched batches (the batch lock): sends in flight (outputs and
        changelog writes) are flushed and their acks counted, then what is safe is committed.
        What the state holds stays in memory: it is in the changelog, so a partition that comes
        back keeps it and one that moves is restored by its next owner. Records still held by a
        retry are forgotten uncommitted, so the partition's next owner replays them.
        """
        async with self._batch_lock:
            try:
                await self.producer.flush()
                await asyncio.sleep(0)  # let the acks' callbacks run
                await self._flush_tombstones()
                await self._commit(force=True)
            except KafkaError as exc:
                self.log.warning("commit on revoke failed: {}", exc)
            except StepFailed as exc:  # exactly-once: aborted; the next owner replays
                self.log.warning("commit on revoke failed: {}", exc)
                self._failure = exc
            if self._txn is not None:  # the next owner's producers fence these anyway
                await self._txn.assign(self._txn.tasks - {tp.partition for tp in revoked})
            self._generation += 1
            for tp in revoked:
                self.tracker.forget(tp)
                self._positions.pop(tp, None)
            self._retries.clear()
            self._paused.clear()
            self._readable.clear()
            self.assigned.clear()
        self._on_rebalance()

    async def _log_start(self, assigned: set[TopicPartition]) -> None:
        """Say where each partition starts: its committed offset, or the reset policy.

        Exactly-once: the committed offsets are read again now that the previous owners are
        fenced (their last transactions committed or aborted), and the consumer seeks to them
        (or to the reset policy's end). A batch fetched before the seeks is dropped (the
        generation changes with them, with no await in between), and fetched again."""
        starts = []
        reset = getattr(self.consumer, "_auto_offset_reset", "reset")
        committed: dict[TopicPartition, int | None] = {}
        for tp in sorted(assigned):
            try:
                committed[tp] = await self.consumer.committed(tp)
            except KafkaError as exc:
                starts.append(f"{tp.topic}[{tp.partition}] (committed offset unknown: {exc})")
                if self._txn is not None:
                    self._failure = StepFailed(f"cannot read the committed offset of {tp}: {exc}")
                continue
            offset = committed[tp]
            where = (
                f"the {reset} offset (none committed)"
                if offset is None
                else f"committed offset {offset}"
            )
            starts.append(f"{tp.topic}[{tp.partition}] from {where}")
        if starts:
            self.log.info("reads {}", "; ".join(starts))
        if committed and self._entries and all(o is None for o in committed.values()):
            # State restored for these partitions, so offsets were committed: an answer of
            # "none" is the group coordinator failing over (seen after a leader kill), and
            # taking it would read the topics again from the reset policy. Rebuilt instead.
            self._failure = StepFailed(
                f"no committed offset readable for {len(committed)} partitions that have "
                f"{len(self._entries)} state entries: the group coordinator is moving"
            )
            return
        if self._txn is None or self._failure is not None:
            return
        missing = [tp for tp, offset in committed.items() if offset is None]
        ends: dict[TopicPartition, int] = {}
        if missing:
            ends = await (
                self.consumer.end_offsets(missing)
                if reset == "latest"
                else self.consumer.beginning_offsets(missing)
            )
        for tp, offset in committed.items():
            self.consumer.seek(tp, ends[tp] if offset is None else offset)
        self._generation += 1

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the state of new partitions, then mark the step ready."""
        self.log.debug("assigned {}", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        async with self._batch_lock:
            self._clock.assign(assigned)
            try:
                if self._txn is not None:  # fences the previous owners before reading state
                    await self._txn.assign({tp.partition for tp in assigned})
                await self._restore(assigned)
            except Exception as exc:  # the pipeline is rebuilt; nothing past it was committed
                self._failure = StepFailed(f"cannot restore state: {type(exc).__name__}: {exc}")
            await self._log_start(assigned)
        self.assigned.set()
        self._on_rebalance()


class _FetchHold:
    """One hold per partition of a fetched batch, released once every record batch sent from
    it is acknowledged (or handed to per-record retries)."""

    __slots__ = ("generation", "pending", "sealed_", "step", "tps")

    def __init__(self, step: Step, generation: int) -> None:
        self.step = step
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
        if self.sealed_ and self.pending == 0 and self.generation == self.step._generation:
            for tp, offset in self.tps:
                self.step.tracker.release(tp, offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, step: Step) -> None:
        self.step = step

    async def on_partitions_revoked(self, revoked: Any) -> None:
        with tracing.span(self.step._tracer, "dataflow.rebalance.revoked",
                          **tracing.rebalance_attributes(self.step, revoked)):  # fmt: skip
            await self.step.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        with tracing.span(self.step._tracer, "dataflow.rebalance.assigned",
                          **tracing.rebalance_attributes(self.step, assigned)):  # fmt: skip
            await self.step.on_assigned(set(assigned))


async def _framing(registry: Registry, topic: str, log: Any) -> bytes:
    """The framing of `topic`'s values; raw (empty) when the registry refuses (spec 4.12)."""
    from dataflow.confluent import RegistryError

    try:
        return await registry.prefix(topic)
    except RegistryError as exc:
        log.warning("values to {} written without framing: {}", topic, exc)
        return b""


def _tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _timestamp(output: Output[Ref]) -> int | None:
    """An output carries its input's timestamp (a join's or batch's: the latest part's)."""
    return output.timestamp_ms if output.timestamp_ms >= 0 else None
