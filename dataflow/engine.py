"""The engine: owns the shared producer, the subscriber and the pipelines; one shutdown path.

Scheduler commands are handled per pipeline uid one at a time, latest wins (spec 2.4): a newer
command for a uid replaces one that has not started yet. Different uids run concurrently, at most
`pipeline_ctlops_threads` at once.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest
from loguru import logger

from dataflow import tracing
from dataflow.changelog import CHANGELOG_CONFIG, changelog_topic
from dataflow.handover import Handover, plan
from dataflow.kafka import (
    delete_groups,
    ensure_topics,
    make_admin,
    make_offsets_client,
    make_producer,
    replication,
    stop_producer,
    topic_options,
)
from dataflow.pipeline import READY, Pipeline, state_topics
from dataflow.proto.seldon.mlops.chainer import PipelineUpdateMessage
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation as Op,
)
from dataflow.reachability import BrokerWatch, leaderless
from dataflow.settings import Settings
from dataflow.subscriber import Subscriber
from dataflow.topology import Topology, TopologyError, check_state_bounds, group_id, topology_from
from dataflow.watchdog import Watchdog

if TYPE_CHECKING:
    from dataflow.confluent import Registry
    from dataflow.tracing import Tracer

#: Seconds before a pipeline that failed at run time is rebuilt.
RESTART_DELAY = 5.0
#: Allocations (less deallocations) between two young garbage collections (CPython: 700).
GC_YOUNG_THRESHOLD = 10_000
#: Times the replication of a new pipeline's topics is asked before it is logged as unknown,
#: and the first wait between two asks (then twice, three times it).
REPLICATION_ATTEMPTS = 4
REPLICATION_RETRY_S = 0.5


class Engine:
    """The data-flow engine of one replica."""

    def __init__(
        self, settings: Settings, tracer: Tracer | None = None, registry: Registry | None = None
    ) -> None:
        self.settings = settings
        self.tracer = tracer  # dataflow.tracing; None: off
        self.registry = registry  # dataflow.confluent; None: raw values
        self.producer: AIOKafkaProducer = make_producer(settings)
        self.admin: AIOKafkaAdminClient = make_admin(settings)
        self.subscriber = Subscriber.from_settings(settings, self._on_update, self._on_malformed)
        self.pipelines: dict[str, Pipeline] = {}
        self.startup_done = asyncio.Event()
        self._latest: dict[str, PipelineUpdateMessage] = {}
        self._pending: dict[str, PipelineUpdateMessage] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._acks: set[asyncio.Task[bool]] = set()
        self._ctlops = asyncio.Semaphore(settings.pipeline_ctlops_threads)
        self._created_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._subscription: asyncio.Task[None] | None = None
        self._ack_tails: dict[str, asyncio.Task[bool]] = {}
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._stopping = False
        self.broker = BrokerWatch(self._probe_broker, settings.broker_ready_timeout_ms / 1000)
        self._broker_watch: asyncio.Task[None] | None = None
        self.watchdog = Watchdog(
            lambda: [step for pipeline in self.pipelines.values() for step in pipeline.steps]
        )
        self._watchdog: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka, then subscribe to the scheduler."""
        await self.producer.start()
        await self.admin.start()
        settle_garbage_collector()
        self._broker_watch = asyncio.create_task(self.broker.run(), name="broker-watch")
        self._subscription = asyncio.create_task(self.subscriber.run(), name="subscriber")
        self._watchdog = asyncio.create_task(self.watchdog.run(), name="watchdog")
        self.startup_done.set()
        logger.info(
            "engine {} started: kafka {}, scheduler {}:{}",
            self.settings.dataflow_replica_id,
            self.settings.kafka_bootstrap_servers,
            self.settings.upstream_host,
            self.settings.upstream_port,
        )

    async def stop(self) -> None:
        """The one shutdown path: stop taking commands, drain and stop pipelines, flush.

        No acks are sent for the pipelines stopped here: the scheduler is not told anything false.
        """
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        self._stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        for background in (self._subscription, self._broker_watch, self._watchdog):
            if background is not None:
                background.cancel()
                # Bounded: a client call deep in a probe can be slow to give up.
                await asyncio.wait({background}, timeout=2)
        for worker in list(self._workers.values()):
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        remaining = max(1.0, deadline - time.monotonic() - 2)
        await asyncio.gather(
            *(p.stop(remaining) for p in self.pipelines.values()), return_exceptions=True
        )
        self.pipelines.clear()
        for task in list(self._acks):
            task.cancel()
        if not await stop_producer(self.producer, max(0.5, deadline - time.monotonic())):
            logger.warning("producer did not stop in time: what it still held was failed")
        try:
            await self.admin.close()
        except Exception as exc:  # an admin client that never started
            logger.debug("admin close: {}", exc)
        self.subscriber.close()
        if self.registry is not None:
            await self.registry.close()
        logger.info("engine stopped")

    # -- commands ---------------------------------------------------------------------------

    def _on_update(self, message: PipelineUpdateMessage) -> None:
        uid = message.uid
        logger.info(
            "received {} {} v{} (uid {}, ts {})",
            message.op.name,
            message.pipeline,
            message.version,
            uid,
            message.timestamp,
        )
        if message.op not in (Op.Create, Op.Delete):
            logger.warning("ignoring operation {} for {}", message.op.name, message.pipeline)
            return
        if self._stopping:
            return
        self._pending[uid] = message  # latest wins
        if uid not in self._workers:
            self._workers[uid] = asyncio.create_task(self._work(uid), name=f"control:{uid}")

    def _on_malformed(self, message: PipelineUpdateMessage, reason: str) -> None:
        """An update that does not decode: acked as failed, never built (op as far as read)."""
        if not self._stopping:
            self._ack(message, Op.Delete if message.op == Op.Delete else Op.Create, False, reason)

    async def _work(self, uid: str) -> None:
        try:
            while uid in self._pending:
                message = self._pending.pop(uid)
                self._latest[uid] = message
                async with self._ctlops:
                    try:
                        if message.op == Op.Create:
                            await self._create(message)
                        else:
                            await self._delete(message)
                    except Exception as exc:
                        op = message.op.name.lower()
                        logger.opt(exception=exc).error("{} of {} failed", op, message.pipeline)
                        self._ack(
                            message, message.op, False, f"Pipeline {op} operation failed: {exc}"
                        )
        finally:
            self._workers.pop(uid, None)

    def _ack(self, message: PipelineUpdateMessage, op: Op, success: bool, reason: str) -> None:
        """Send an ack after the earlier acks of the same uid, so they arrive in order."""
        previous = self._ack_tails.get(message.uid)
        task = asyncio.create_task(
            self._ack_after(previous, message, op, success, reason), name=f"ack:{message.uid}"
        )
        self._ack_tails[message.uid] = task
        self._acks.add(task)
        task.add_done_callback(self._ack_done)

    async def _ack_after(
        self,
        previous: asyncio.Task[bool] | None,
        message: PipelineUpdateMessage,
        op: Op,
        success: bool,
        reason: str,
    ) -> bool:
        if previous is not None:
            await asyncio.wait([previous])
        return await self.subscriber.ack(message, op, success, reason)

    def _ack_done(self, task: asyncio.Task[bool]) -> None:
        self._acks.discard(task)
        uid = task.get_name().removeprefix("ack:")
        if self._ack_tails.get(uid) is task:
            del self._ack_tails[uid]

    async def _create(self, message: PipelineUpdateMessage) -> None:
        uid = message.uid
        existing = self.pipelines.get(uid)
        if existing is not None and existing.active:
            self._ack(message, Op.Create, True, READY)
            return
        if existing is not None:
            await existing.stop(self.settings.shutdown_timeout_seconds)
            del self.pipelines[uid]
        previous = self._previous_version(message.pipeline, uid)
        if previous is not None:
            # A version update: the scheduler deletes the old uid once the new one is Ready;
            # until then both consume and produce (README, Pipeline versions).
            logger.info(
                "pipeline {} v{} (uid {}) replaces v{} (uid {}); both process records until "
                "the old uid is deleted",
                message.pipeline,
                message.version,
                uid,
                previous.topology.version,
                previous.topology.uid,
            )
        try:
            topology = topology_from(message, self.settings.kafka_join_window_millis)
            check_state_bounds(topology, self.settings.state_max_records)
        except TopologyError as exc:
            self._ack(message, Op.Create, False, f"failed to create pipeline: {exc}")
            return
        try:
            # Always asked of the broker: a topic deleted since an earlier create comes back.
            await ensure_topics(self.admin, topology.topics, **topic_options(self.settings))
            self._created_topics.update(topology.topics)
        except Exception as exc:
            self._ack(message, Op.Create, False, f"kafka topic creation error: {exc}")
            self._create_again(message)
            return
        await self._log_replication(topology.name, list(topology.topics))
        if previous is not None and self.settings.version_handover == "offsets":
            try:
                handover = Handover(
                    lambda group: make_offsets_client(self.settings, group),
                    self.producer,
                    changelog_topic,
                    self.ensure_changelog,
                )
                await handover.run(plan(topology, previous.topology, self.settings.group_base()))
            except Exception as exc:  # the old version keeps running; the scheduler may retry
                reason = f"version handover failed: {type(exc).__name__}: {exc}"
                self._ack(message, Op.Create, False, reason)
                return
        pipeline = Pipeline(
            topology,
            self.settings,
            self.producer,
            self.ensure_topic,
            self._on_failure,
            self._on_status,
            self.ensure_changelog,
            self.tracer,
            self.registry,
        )
        self.pipelines[uid] = pipeline
        try:
            with tracing.span(self.tracer, "dataflow.pipeline.create", **_attributes(topology)):
                await pipeline.start(timeout=self.settings.topic_create_timeout_millis / 1000)
        except Exception as exc:
            await pipeline.stop(self.settings.shutdown_timeout_seconds)
            self.pipelines.pop(uid, None)
            reason = f"failed to start pipeline steps: {type(exc).__name__}: {exc}"
            self._ack(message, Op.Create, False, reason)
            self._create_again(message)
            return
        logger.info("pipeline {} v{} (uid {}) ready", topology.name, topology.version, uid)
        self._ack(message, Op.Create, True, READY)

    def _previous_version(self, name: str, uid: str) -> Pipeline | None:
        """The latest other version of pipeline `name` running here, if any."""
        others = [p for u, p in self.pipelines.items() if p.topology.name == name and u != uid]
        return max(others, key=lambda p: p.topology.version, default=None)

    async def _delete(self, message: PipelineUpdateMessage) -> None:
        pipeline = self.pipelines.get(message.uid)
        if pipeline is not None:
            # Stopped before it leaves the map: a shutdown meanwhile still owns its steps.
            await pipeline.stop(self.settings.shutdown_timeout_seconds)
            self.pipelines.pop(message.uid, None)
            replaced = self._previous_version(message.pipeline, message.uid) is not None
            if replaced and not message.updates and not self.settings.keep_previous_versions:
                await self._forget_version(pipeline)
        if message.updates:
            topics = sorted(
                {s.topic_name for u in message.updates for s in u.sources}
                | {u.sink.topic_name for u in message.updates if u.sink}
                | set(self._state_topics(message, pipeline))
            )
            try:
                await self.admin.delete_topics(topics)
                self._created_topics.difference_update(topics)
            except Exception as exc:
                self._ack(message, Op.Delete, False, f"kafka topic deletion error: {exc}")
                return
            # Its consumer groups go too (still in use by another replica: left for it).
            try:
                await delete_groups(self.admin, self._group_ids(message, pipeline))
            except Exception as exc:
                logger.warning("consumer groups of {} not deleted: {}", message.pipeline, exc)
        self._ack(message, Op.Delete, True, "pipeline removed")

    async def _forget_version(self, pipeline: Pipeline) -> None:
        """Delete the consumer groups and changelogs of a version replaced by a newer one (its
        topics stay: the newer version uses them). Groups another replica still uses stay, and
        so do the changelogs then: the last replica to let go deletes them."""
        topology = pipeline.topology
        base = self.settings.group_base()
        groups = [group_id(base, topology.uid, spec.index) for spec in topology.steps]
        try:
            codes = await delete_groups(self.admin, groups)
            if any(code not in (0, 69) for code in codes.values()):  # 69: no such group
                return
            changelogs = state_topics(topology, self.settings)
            if changelogs:
                await self.admin.delete_topics(changelogs)
        except Exception as exc:
            logger.warning(
                "groups and changelogs of {} v{} not deleted: {}",
                topology.name,
                topology.version,
                exc,
            )
            return
        logger.info(
            "deleted the {} consumer groups and {} changelogs of {} v{} (uid {})",
            len(groups),
            len(state_topics(topology, self.settings)),
            topology.name,
            topology.version,
            topology.uid,
        )

    def _on_failure(self, pipeline: Pipeline, reason: str) -> None:
        uid = pipeline.topology.uid
        latest = self._latest.get(uid)
        if latest is None or self.pipelines.get(uid) is not pipeline:
            return
        self._ack(latest, Op.Ready, False, reason)
        # Unlike the reference, a pipeline that failed at run time is rebuilt after a pause;
        # its uncommitted records replay. A newer command for the uid wins over the restart.
        logger.warning(
            "pipeline {} failed; restarting in {}s", pipeline.topology.name, RESTART_DELAY
        )
        self._create_later(uid, lambda latest: self.pipelines.get(uid) is pipeline)

    def _create_again(self, message: PipelineUpdateMessage) -> None:
        """A Create that failed on Kafka (a broker failing over, a coordinator moving) is tried
        again after `RESTART_DELAY`, as long as it is still the latest command for its uid:
        the scheduler sends it once, and the pipeline's records wait meanwhile."""
        uid = message.uid
        logger.warning(
            "pipeline {} v{} not created; trying again in {}s", message.pipeline,
            message.version, RESTART_DELAY,
        )  # fmt: skip
        self._create_later(uid, lambda latest: latest is message and uid not in self.pipelines)

    def _create_later(self, uid: str, wanted: Callable[[PipelineUpdateMessage], bool]) -> None:
        """The one timer of a uid: after `RESTART_DELAY`, its latest command goes to
        `_on_update` again if it is a Create, no other command for the uid is being carried
        out, and `wanted(latest)` still holds. A newer timer replaces an older one."""
        if (earlier := self._restarts.pop(uid, None)) is not None:
            earlier.cancel()

        def fire() -> None:
            self._restarts.pop(uid, None)
            latest = self._latest.get(uid)
            if self._stopping or uid in self._pending or latest is None:
                return
            if latest.op == Op.Create and wanted(latest):
                self._on_update(latest)

        self._restarts[uid] = asyncio.get_running_loop().call_later(RESTART_DELAY, fire)

    def _on_status(self, pipeline: Pipeline, ready: bool) -> None:
        latest = self._latest.get(pipeline.topology.uid)
        if latest is None or self.pipelines.get(pipeline.topology.uid) is not pipeline:
            return
        if ready:
            self._ack(latest, Op.Ready, True, READY)
        else:
            self._ack(latest, Op.Rebalance, True, "pipeline data streams: rebalancing")

    async def _probe_broker(self) -> None:
        """Every known broker asked at once for the metadata of the running pipelines' topics;
        the first answer decides (`dataflow.reachability`)."""
        client = self.producer.client
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        if not nodes:
            raise KafkaConnectionError("no broker known")
        topics = sorted({t for p in self.pipelines.values() for t in p.topology.topics})
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        asks = [
            asyncio.create_task(client.send(node, request), name=f"probe:{node}") for node in nodes
        ]
        failure: BaseException = KafkaConnectionError("no broker answered")
        try:
            for answer in asyncio.as_completed(asks):
                try:
                    response = await answer
                except Exception as exc:
                    failure = exc
                    continue
                missing = leaderless(response.topics)
                if missing:
                    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                    raise KafkaConnectionError(f"no leader for {', '.join(missing[:3])}{more}")
                return
            raise failure
        finally:
            for ask in asks:
                ask.cancel()

    # -- topics -----------------------------------------------------------------------------

    def _group_ids(self, message: PipelineUpdateMessage, pipeline: Pipeline | None) -> list[str]:
        """The consumer groups of a pipeline being deleted with its topics."""
        count = len(pipeline.topology.steps) if pipeline is not None else len(message.updates)
        base = self.settings.group_base()
        return [group_id(base, message.uid, index) for index in range(count)]

    def _state_topics(self, message: PipelineUpdateMessage, pipeline: Pipeline | None) -> list[str]:
        """The changelogs of a pipeline being deleted with its topics."""
        topology = pipeline.topology if pipeline is not None else None
        if topology is None:
            try:
                topology = topology_from(message, self.settings.kafka_join_window_millis)
            except TopologyError:
                return []
        return state_topics(topology, self.settings)

    async def _log_replication(self, pipeline: str, topics: list[str]) -> None:
        """One line on how the pipeline's topics are replicated; a warning when a broker loss
        would stop or lose them.

        Asked up to REPLICATION_ATTEMPTS times: a broker's metadata may lag the controller's
        just after a create, and the answer then is "unknown topic" rather than a figure; a
        new topic's followers may not have joined its in-sync replicas yet."""
        for attempt in range(1, REPLICATION_ATTEMPTS + 1):
            last = attempt == REPLICATION_ATTEMPTS
            try:
                found = await replication(self.admin, topics)
            except Exception as exc:  # informative only: never fails a pipeline
                if last:
                    logger.info("replication of {}'s topics unknown: {}", pipeline, exc)
                    return
            else:
                if found.in_sync == found.replicas or last:  # or replicas still joining the ISR
                    level, text = found.note()
                    logger.log(level, "topics of pipeline {}: {}", pipeline, text)
                    return
            await asyncio.sleep(REPLICATION_RETRY_S * attempt)

    async def ensure_changelog(self, topic: str, partitions: int) -> None:
        """Create a step's compacted changelog topic unless it exists."""
        async with self._topic_lock:
            options = topic_options(self.settings, partitions=partitions, configs=CHANGELOG_CONFIG)
            await ensure_topics(self.admin, [topic], **options)

    async def ensure_topic(self, topic: str) -> None:
        """Create `topic` (an error topic) unless this engine already made sure it exists."""
        if topic in self._created_topics:
            return
        async with self._topic_lock:
            if topic not in self._created_topics:
                await ensure_topics(self.admin, [topic], **topic_options(self.settings))
                self._created_topics.add(topic)


def _attributes(topology: Topology) -> dict[str, object]:
    """The attributes of a pipeline's creation span."""
    return {
        "seldon.pipeline": topology.name,
        "seldon.pipeline.version": topology.version,
        "seldon.pipeline.uid": topology.uid,
        "seldon.pipeline.steps": len(topology.steps),
    }


def settle_garbage_collector() -> None:
    """Keep full garbage collections short: they stop the event loop for as long as they scan.

    What the process holds once started (modules, settings, clients: ~70,000 objects) is frozen
    out of every later collection, and young collections run every 10,000 net allocations
    rather than 700, so that fewer short-lived records' objects (refs, futures, headers) live
    long enough to reach the oldest generation. Measured on a join catching up under three
    busy loops: full collections of about 1 s each without this.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
