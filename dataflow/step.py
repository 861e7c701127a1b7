"""One step's loop: consume, filter, convert, send, commit.

A record's offset is committed only when the record is no longer held by the step (it was
filtered out, converted and sent, or left a join window or a batch) and every output it
contributed to was acknowledged by the broker. Records that cannot be converted go to the
pipeline's error topic with a reason; the step carries on.

The step is Kafka Streams' `StreamTask`: it owns the loop, the routing of records to sources
and triggers, the two entry paths (both a fetched batch at a time: a stateless step straight
from filter to record batches; a stateful or cycle-guarded step through its stages in slices,
in timestamp order for joins and gates), the one flush-and-commit procedure, and the rebalance
handlers. Its parts:

* `dataflow.collector`: record batches, retries, the error topic, holds released on ack;
* `dataflow.state`: what a stateful step holds, its changelog write cache, restore;
* `dataflow.pacing`: positions, end offsets, lag, stream time, held-back sources;
* `dataflow.processor`: one record of a stateful step through routing, conversion and stages;
* `dataflow.stages`: the pure join, batch, gate and cycle guard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from loguru import logger

from dataflow import headers as hdr
from dataflow import membership, tracing
from dataflow.collector import Collector, partition_for
from dataflow.commits import Committer
from dataflow.confluent import framing
from dataflow.context import StepContext
from dataflow.cycles import RevisitGuard
from dataflow.errors import StepFailed
from dataflow.offsets import BatchHold, OffsetTracker
from dataflow.pacing import SLICE_RECORDS, Batch, Pacing, now_ms
from dataflow.processor import RecordProcessor, converted_to_nothing
from dataflow.progress import Progress
from dataflow.stages import Ref, Result, StepStages
from dataflow.state import StateOptions, StepState
from dataflow.stats import StepStats
from dataflow.topology import StepSpec, Topology, routes_of
from dataflow.transactions import Transactions
from dataflow.windows import Result as Changes
from dataflow.wire import WireError, convert

if TYPE_CHECKING:
    from dataflow.confluent import Registry
    from dataflow.tracing import Tracer

__all__ = ["StateOptions", "Step", "StepFailed", "partition_for"]

#: Stream time before every source of a join or gate has been read: no window closes on it.
NO_STREAM_TIME = -(2**62)


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
        self.stats = StepStats()
        self._on_rebalance = on_rebalance or (lambda: None)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        grace = state.grace_ms if state is not None else 0
        self.stages = StepStages(spec, topology.output_topic, guard, grace)
        if self.stages.stateful and state is None:
            raise ValueError("a stateful step needs StateOptions")
        self._txn = transactions
        self._timed = self.stages.timed
        # Stateless steps without a cycle guard take the batch-at-a-time path.
        self._fast = not self.stages.stateful and guard is None
        self.assigned = asyncio.Event()
        self.log = logger.bind(pipeline=topology.name, step=spec.index)
        self._routing = routes_of(spec)
        self._progress = Progress()
        self._stopping = asyncio.Event()
        self._failure: StepFailed | None = None
        # Bumped when partitions are revoked: outputs of older records no longer count.
        self._generation = 0
        # Held while a fetched batch is processed and while partitions are revoked, never
        # around getmany() (the rebalance it waits for runs the revoke handler).
        self._batch_lock = asyncio.Lock()
        # -- tracing and the schema registry's framing (issue 24) --
        self._tracer = tracer
        self._trace = tracing.StepTrace(tracer, topology, spec, self.stages) if tracer else None
        self._registry = registry
        # -- the parts --
        # How far ahead of stream time a source may be read while another lags: the widest
        # window of the step's stages (an `any` join's is 1 ms), at least PACE_SLACK_MS.
        windows = [s.window_ms for s in (self.stages.joiner, self.stages.gate) if s is not None]
        self.pacing = Pacing(consumer, windows, self.log)
        context = StepContext(
            producer,
            self._producer_for,
            transactions is not None,
            self.tracker,
            self.stats,
            self.log,
            self._current_generation,
            self._fail,
        )
        self.state = (
            StepState(context, state, self.stages) if state and self.stages.stateful else None
        )
        self.processor = RecordProcessor(
            self._routing,
            self.stages,
            self.state is not None,
            self.stats,
            self.log,
            self._current_generation,
        )
        self.collector = Collector(
            context,
            sink=spec.sink,
            error_topic=error_topic,
            rewrite=hdr.Rewrite(topology.name, topology.version),
            ensure_topic=ensure_topic,
            on_released=self.state.released if self.state is not None else _nothing_deferred,
            trace=self._trace,
        )
        self.committer = Committer(
            consumer,
            self.tracker,
            self.pacing.positions,
            transactions,
            self.log,
            lambda: self._failure,
            self.state.flush if self.state is not None else None,
        )

    def _current_generation(self) -> int:
        return self._generation

    def _fail(self, failure: StepFailed) -> None:
        """The step can no longer deliver: the loop raises `failure`."""
        self._failure = failure

    async def _producer_for(self, task: int) -> AIOKafkaProducer:
        """The shared producer; in exactly-once mode the task's, inside its open transaction."""
        if self._txn is None:
            return self.producer
        return await self._txn.producer(task)

    @property
    def state_topic(self) -> str:
        """The changelog topic, or empty for a stateless step."""
        return self.state.topic if self.state is not None else ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the changelog of a stateful step, start the consumer, subscribe."""
        if self.state is not None:
            await self.state.start(self.spec.topics)
        await self.consumer.start()
        self.consumer.subscribe(list(self.spec.topics), listener=_Listener(self))
        partitions = await self.producer.partitions_for(self.spec.sink)
        self.collector.sink_partitions = max(1, len(partitions or ()))
        if self._registry is not None:
            self.collector.frame = await framing(self._registry, self.spec.sink, self.log)

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
                await self.collector.resend()
                timeout_ms = self._poll_timeout_ms()
                batch = await self.pacing.fetch(timeout_ms, self.assigned, self._stopping)
                generation = self._generation  # no await since getmany() returned
                # Partitions are revoked only between batches (on_revoked takes the lock).
                async with self._batch_lock:
                    if self._generation != generation:
                        # Revoked before this batch was processed: a new assignment starts
                        # again from the committed offsets, so the batch is fetched again.
                        continue
                    if self._fast:
                        await self._process_batch(batch)
                    else:
                        await self._process_stateful(batch)
                    await self._after_batch()
                    await self.committer.commit(force=False)
            await self._drain()
        finally:
            await self._close()

    def _poll_timeout_ms(self) -> int:
        """Until the next window or batch closes on the wall clock (at most 100 ms). Join and
        gate windows close on the wall clock only once every source is caught up: while one
        lags, their wall deadlines are long past and must not make the poll return at once."""
        deadline = self.stages.next_deadline(self.pacing.caught_up)
        if deadline is None:
            return 100
        return max(0, min(100, deadline - now_ms()))

    # -- the batch path (stateless) ---------------------------------------------------------

    async def _process_batch(self, batch: Batch) -> None:
        """A stateless step, a fetched batch at a time: filter and convert every record, build
        one record batch per sink partition (aiokafka `create_batch`/`send_batch`, no future
        per record), hold each partition's offsets once until every batch is acknowledged."""
        stats = self.stats
        collector = self.collector
        sink_partitions = collector.sink_partitions
        trace, frame, rewrite = self._trace, collector.frame, collector.rewrite.apply
        positions = self.pacing.positions
        pipeline_header = hdr.PIPELINE
        t0 = time.perf_counter()
        received = time.perf_counter()
        hold = BatchHold(self.tracker, self._current_generation)
        sends = collector.fetch_sends(hold, received)
        fetched = sent = 0
        for tp, records in batch.items():
            routing = self._routing.get(tp.topic)
            sources = routing.sources if routing is not None else []
            hold.hold_from(tp, records[0].offset)
            self.tracker.skip(tp, records[-1].offset)
            positions[tp] = records[-1].offset + 1
            fetched += len(records)
            out = await sends.get(tp.partition)
            for n, record in enumerate(records, 1):
                if not n % SLICE_RECORDS:
                    await asyncio.sleep(0)
                headers = record.headers
                matched = False
                for feed in sources:
                    # The source filter (`headers.names_pipeline`), inline on this path.
                    if (pipeline_header, feed.pipeline) not in headers:
                        continue
                    matched = True
                    source = feed.spec
                    try:
                        value = convert(record.value, source.chain, source.tensors, source.renames)
                    except WireError as exc:
                        ref = Ref(tp, record.offset, record.key, record.headers, record.timestamp,
                                  time.perf_counter(), self._generation)  # fmt: skip
                        await collector.reject(ref, exc)
                        continue
                    if value is None:
                        converted_to_nothing(stats, self.log, tp, record.offset)
                        continue
                    kept = rewrite(headers)
                    span = None if trace is None else trace.record(tp, record, kept, received)
                    out_value = frame + value if frame else value
                    key = record.key
                    partition = partition_for(key, sink_partitions) if sink_partitions > 1 else 0
                    ts = record.timestamp if record.timestamp >= 0 else None
                    item = (value, tp, record)
                    if not out.add(partition, key, out_value, ts, kept, item):
                        await out.add_to_next(partition, key, out_value, ts, kept, item)
                    sent += 1
                    if span is not None:
                        span.end()
                if not matched:
                    stats.filtered += 1
        stats.records_in += fetched
        stats.records_out += sent
        if fetched:
            stats.convert_seconds.observe_many((time.perf_counter() - t0) / fetched, fetched)
        await sends.seal()
        hold.sealed()

    # -- the stateful path (joins, gates, batches; cycle-guarded chains) --------------------

    async def _process_stateful(self, batch: Batch) -> None:
        """A stateful (or cycle-guarded) step, a fetched batch at a time: its records go through
        the stages in slices of `SLICE_RECORDS` (joins and gates: across partitions in
        timestamp order, on stream time); each slice's outputs go out as record batches per
        sink partition, counted in the hold below; its state changes wait for the state's next
        flush (`StepState.flush`). Each partition is held
        from the batch's first offset in one hold per state flush (`StepState.hold`) until
        every output sent and every state change written since the previous flush is
        acknowledged; a step with no state holds it until the batch's outputs are."""
        if not batch:
            return
        stats, state = self.stats, self.state
        if state is not None:
            hold = state.hold()
        else:
            hold = BatchHold(self.tracker, self._current_generation)
        for tp, records in batch.items():
            hold.hold_from(tp, records[0].offset)
            self.tracker.skip(tp, records[-1].offset)
        if self._timed:
            ordered = self.pacing.ordered(batch, await self.pacing.begin(batch))
        else:
            ordered = self.pacing.in_fetch_order(batch)
        t0 = time.perf_counter()
        n = 0
        take = self.processor.take
        while True:
            wall = now_ms()
            # Joins and gates before every source has been read: no stream time yet. Batches
            # and cycle guards run on the wall clock.
            unknown = NO_STREAM_TIME if self._timed else wall
            result: Result = Changes()
            taken = take(islice(ordered, SLICE_RECORDS), unknown, wall, time.perf_counter(), result)
            n += taken
            if taken < SLICE_RECORDS:
                break
            await self._emit(result, wall, hold)
            await asyncio.sleep(0)
        await self._emit(result, wall, hold)
        if state is None:
            hold.sealed()
        stats.records_in += n
        if n:
            stats.convert_seconds.observe_many((time.perf_counter() - t0) / n, n)

    async def _emit(
        self, result: Result, wall: int, hold: BatchHold[TopicPartition] | None = None
    ) -> None:
        """Send `result`'s outputs (record batches to the sink; errors one by one to the error
        topic), then hand its state changes to the state (written at its next flush). With
        `hold` (that of the records that caused them), the outputs count in it; else (windows
        and batches closed by the clock) each output holds its contributors' offsets."""
        collector = self.collector
        if result.outputs:
            guard = self.stages.guard
            good = []
            for output in result.outputs:
                error = output.error or (guard is not None and self.stages.revisit(output, wall))
                if error:
                    collector.hold_all(output.contributors)
                    await collector.send_error(output.origin, error, output.contributors)
                else:
                    good.append(output)
            if good:
                sends = collector.outputs(hold)
                await collector.send_outputs(sends, good, counted=hold is not None)
                await sends.seal()
        state = self.state
        if state is None:
            return
        state.put(result.stored)
        state.remove(result.removed)
        if self.stages.batcher is not None and state.full:
            # A batch that cannot grow is sent now rather than holding fetching forever.
            await self._emit(self.stages.flush_batch(wall, wall), wall, hold)

    async def _after_batch(self) -> None:
        """Close windows and batches, send what left the state, pace the sources."""
        stream: int | None = None
        lagging: list[TopicPartition] = []
        if self._timed:
            stream, lagging = await self.pacing.settle()
        wall = now_ms()  # after settle(), which may wait on the broker for end offsets
        if not self._timed:
            stream = wall
        caught_up = not lagging
        self.pacing.caught_up = caught_up
        await self._emit(self.stages.expire(stream, wall, caught_up), wall)
        if self.state is not None:
            full = self.state.check_full()
            if self._timed:
                self.pacing.pace(lagging, full)

    # -- commits ----------------------------------------------------------------------------

    async def _flush_and_commit(self, *, resend: bool) -> None:
        """The one flush-then-commit procedure (the final drain, a revocation): deliver what
        is in flight and let the acks' callbacks run (they release holds and deferred
        tombstones); with `resend`, send the pending retries; flush the state's changelog
        writes and deliver them too; commit (`dataflow.commits`: exactly-once, each task's
        transaction)."""
        await self.producer.flush()
        await asyncio.sleep(0)  # let the acks' callbacks run
        if resend:
            await self.collector.resend()
        if self.state is not None:
            await self.state.flush()
        await self.producer.flush()
        await asyncio.sleep(0)
        await self.committer.commit(force=True)

    async def _drain(self) -> None:
        """Wait for in-flight sends, then commit what is safe."""
        try:
            await self._flush_and_commit(resend=True)
        except (KafkaError, StepFailed) as exc:
            self.log.warning("final commit failed: {}", exc)

    async def _close(self) -> None:
        if self._txn is not None:
            await self._txn.close()  # aborts what is still open
        await membership.stop_member(self.consumer, self.producer.client, self.log)

    # -- watching ---------------------------------------------------------------------------

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high watermark per assigned partition (known positions only)."""
        return self.pacing.lag()

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
        if self.collector.retries:
            reasons.append(f"retrying {len(self.collector.retries)} sends")
        if self.state is not None and self.state.full:
            reasons.append(
                f"state full ({len(self.state.entries)} records, {self.stats.state_bytes} bytes)"
            )
        reasons.extend(self.pacing.waiting(behind, lag))
        return "; ".join(reasons) or "nothing fetched"

    # -- rebalances -------------------------------------------------------------------------

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
                await self._flush_and_commit(resend=False)
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
            self.pacing.revoked(revoked)
            self.collector.retries.clear()
            self.assigned.clear()
        self._on_rebalance()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the state of new partitions, then mark the step ready."""
        self.log.debug("assigned {}", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        async with self._batch_lock:
            self.pacing.clock.assign(assigned)
            try:
                if self._txn is not None:  # fences the previous owners before reading state
                    await self._txn.assign({tp.partition for tp in assigned})
                if self.state is not None:
                    await self.state.restore(assigned, now_ms)
            except Exception as exc:  # the pipeline is rebuilt; nothing past it was committed
                self._failure = StepFailed(f"cannot restore state: {type(exc).__name__}: {exc}")
            await self._log_start(assigned)
        self.assigned.set()
        self._on_rebalance()

    async def _log_start(self, assigned: set[TopicPartition]) -> None:
        """Say where each partition starts: its committed offset, or the reset policy.

        Exactly-once: the committed offsets are read again now that the previous owners are
        fenced (their last transactions committed or aborted), and the consumer seeks to them
        (or to the reset policy's end). A batch fetched before the seeks is dropped (the
        generation changes with them, with no await in between), and fetched again."""
        exactly_once = self._txn is not None
        committed, unreadable = await self.pacing.read_committed(assigned, exactly_once)
        if unreadable:
            self._failure = StepFailed(unreadable)
        entries = len(self.state.entries) if self.state is not None else 0
        if committed and entries and all(o is None for o in committed.values()):
            # State restored for these partitions, so offsets were committed: an answer of
            # "none" is the group coordinator failing over (seen after a leader kill), and
            # taking it would read the topics again from the reset policy. Rebuilt instead.
            self._failure = StepFailed(
                f"no committed offset readable for {len(committed)} partitions that have "
                f"{entries} state entries: the group coordinator is moving"
            )
            return
        if not exactly_once or self._failure is not None:
            return
        await self.pacing.seek_to(committed)
        self._generation += 1


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


def _nothing_deferred(entries: list[Any]) -> None:
    """A stateless step defers no tombstones."""
