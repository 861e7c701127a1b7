"""A pipeline version's steps as owned, named tasks: create, stop, status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from loguru import logger

from dataflow.changelog import changelog_topic
from dataflow.kafka import make_consumer, make_restore_consumer, make_transactional_producer
from dataflow.membership import instance_id
from dataflow.settings import Settings
from dataflow.stages import StepStages
from dataflow.step import StateOptions, Step, StepFailed
from dataflow.topology import Topology, group_id
from dataflow.transactions import Transactions

if TYPE_CHECKING:
    from dataflow.confluent import Registry
    from dataflow.tracing import Tracer

READY = "pipeline data streams: ready"


class Pipeline:
    """The running steps of one pipeline version.

    Args:
        topology: what to run.
        settings: engine settings (group ids, window defaults, client options).
        producer: the engine's shared producer.
        ensure_topic: creates a topic on demand (the default error topic).
        ensure_changelog: creates a step's changelog topic (name, partitions) if missing.
        on_failure: called once with the reason when a step can no longer deliver.
        on_status: called with False when a rebalance starts after creation, True when every
            step owns its partitions again.
        tracer: the engine's tracer (None: tracing off).
        registry: the schema registry (None: raw values).
    """

    def __init__(
        self,
        topology: Topology,
        settings: Settings,
        producer: AIOKafkaProducer,
        ensure_topic: Callable[[str], Awaitable[None]],
        on_failure: Callable[[Pipeline, str], None],
        on_status: Callable[[Pipeline, bool], None] | None = None,
        ensure_changelog: Callable[[str, int], Awaitable[None]] | None = None,
        tracer: Tracer | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.topology = topology
        self.settings = settings
        self.failed: str | None = None
        self._on_failure = on_failure
        self._on_status = on_status or (lambda p, ready: None)
        self._started = False
        self._rebalancing = False
        error_topic = topology.error_topic or settings.kafka_default_error_topic
        guard = StepStages.guard_for(topology)
        instance = instance_id(settings)
        self.steps = []
        for spec in topology.steps:
            group = group_id(settings.group_base(), topology.uid, spec.index)
            state = StateOptions(
                changelog=changelog_topic(group),
                ensure_changelog=ensure_changelog or _no_changelog,
                restore_consumer=lambda: make_restore_consumer(settings),
                max_records=settings.state_max_records,
                max_bytes=settings.state_max_bytes,
                grace_ms=settings.join_grace_ms,
            )
            transactions = None
            if settings.processing_guarantee == "exactly_once":
                transactions = Transactions(
                    lambda tid: make_transactional_producer(settings, tid),
                    group,
                    settings.transaction_interval_ms / 1000,
                )
            self.steps.append(
                Step(
                    topology,
                    spec,
                    make_consumer(settings, group, instance),
                    producer,
                    error_topic,
                    ensure_topic,
                    guard,
                    self._rebalanced,
                    state,
                    transactions,
                    tracer=tracer,
                    registry=registry,
                )
            )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def active(self) -> bool:
        """True while the steps run without failure."""
        return self.failed is None and bool(self._tasks) and not all(t.done() for t in self._tasks)

    @property
    def assigned(self) -> bool:
        """True when every step's consumer owns its partitions."""
        return all(step.assigned.is_set() for step in self.steps)

    async def start(self, timeout: float) -> None:
        """Start every step and wait until each consumer has joined its group.

        Raises:
            TimeoutError: a consumer did not get its partitions within `timeout` seconds.
        """
        for step in self.steps:
            await step.start()
        for step in self.steps:
            task = asyncio.create_task(
                step.run(),
                name=f"step:{self.topology.name}:{self.topology.version}:{step.spec.index}",
            )
            task.add_done_callback(self._step_done)
            self._tasks.append(task)
        # Tasks, not a gather: cancelled with the command that creates the pipeline (an engine
        # stopping meanwhile), a gather of the waits was left with an unretrieved exception.
        waits = [
            asyncio.create_task(step.assigned.wait(), name=f"assigned:{step.spec.index}")
            for step in self.steps
        ]
        try:
            _, pending = await asyncio.wait(waits, timeout=timeout)
        finally:
            for wait in waits:
                wait.cancel()
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(waits)} steps got no partitions in time")
        self._started = True

    def _rebalanced(self) -> None:
        """A step lost or got partitions: report Rebalance, then Ready once all own theirs."""
        if not self._started or self.failed is not None:
            return
        if not self.assigned and not self._rebalancing:
            self._rebalancing = True
            self._on_status(self, False)
        elif self.assigned and self._rebalancing:
            self._rebalancing = False
            self._on_status(self, True)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or self.failed is not None:
            return
        reason = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
        self.failed = f"pipeline data streams error: {reason}"
        logger.bind(pipeline=self.topology.name).error(
            "step {} failed: {}", task.get_name(), reason
        )
        self._on_failure(self, self.failed)

    async def stop(self, timeout: float) -> None:
        """Stop fetching, deliver and commit what is in flight, close the consumers.

        Steps that do not finish within `timeout` seconds are cancelled.
        """
        for step in self.steps:
            step.stop_soon()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                # A cancelled step still closes its consumer; bounded in case the broker is gone.
                await asyncio.wait(pending, timeout=5)
        else:
            for step in self.steps:
                await step.consumer.stop()
        self._tasks.clear()


def state_topics(topology: Topology, settings: Settings) -> list[str]:
    """The changelog topics of the pipeline's stateful steps (joins, trigger gates, batches)."""
    return [
        changelog_topic(group_id(settings.group_base(), topology.uid, spec.index))
        for spec in topology.steps
        if spec.is_stateful
    ]


async def _no_changelog(name: str, partitions: int) -> None:
    raise RuntimeError(f"no changelog topic creation configured for {name}")
