"""The engine's watchdog: the event loop's lag, a step's progress, a join step's poll timeout."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dataflow.progress import Progress
from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.step import StateOptions, Step
from dataflow.topology import topology_from
from dataflow.watchdog import LoopLag, Watchdog, _lag_cause


def test_loop_lag_keeps_the_maximum_of_the_last_minute() -> None:
    lag = LoopLag()
    lag.observe(0.0, 0.002)
    lag.observe(1.0, 0.5)
    lag.observe(2.0, 0.001)
    assert lag.recent_max() == 0.5 and lag.last == 0.001
    lag.observe(62.0, 0.003)  # the 0.5 s lag is more than a minute old
    assert lag.recent_max() == 0.003
    assert lag.histogram.count == 4


def test_progress_warns_after_10s_then_once_a_minute_and_resets_on_progress() -> None:
    p = Progress(after=10, repeat=60)
    assert not p.check(0, done=0, behind=5)
    assert not p.check(9, done=0, behind=5) and not p.stuck
    assert p.check(10, done=0, behind=5) and p.stuck
    assert not p.check(69, done=0, behind=5)
    assert p.check(70, done=0, behind=5)
    assert not p.check(71, done=0, behind=0) and not p.stuck, "nothing to read is not stuck"
    assert not p.check(90, done=3, behind=5)
    assert not p.check(99, done=3, behind=5) and p.check(100, done=3, behind=5)


class _Step:
    def __init__(self) -> None:
        self.seen: list[float] = []

    def watch(self, now: float) -> None:
        self.seen.append(now)


async def test_watchdog_measures_a_blocked_loop_and_watches_the_steps() -> None:
    step = _Step()
    dog = Watchdog(lambda: [step], interval=0.01, watch_every=0.1)
    task = asyncio.create_task(dog.run(), name="watchdog")
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # noqa: ASYNC251 (something holds the loop)
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert dog.lag.recent_max() >= 0.2
    assert step.seen, "a check ran after the blocked second"


def _join_step() -> Step:
    pipeline = "p"

    def source(model: str) -> PipelineTopic:
        return PipelineTopic(pipeline_name=pipeline, topic_name=f"seldon.ns.model.{model}.outputs")

    message = PipelineUpdateMessage(
        pipeline=pipeline,
        version=1,
        uid="u1",
        updates=[
            PipelineStepUpdate(
                sources=[source("a"), source("b")],
                sink=PipelineTopic(pipeline_name=pipeline, topic_name="seldon.ns.model.c.inputs"),
            )
        ],
        pipeline_error_topic="seldon.ns.errors.errors",
    )
    topology = topology_from(message, 1000)

    async def nothing(*_: object) -> None:
        return None

    state = StateOptions("changelog", nothing, lambda: AIOKafkaConsumer())
    return Step(
        topology,
        topology.steps[0],
        AIOKafkaConsumer(),
        AIOKafkaProducer(),
        "seldon.ns.errors.errors",
        nothing,
        state=state,
    )


async def test_a_lagging_join_polls_with_a_timeout_whatever_its_wall_deadlines() -> None:
    """The stall of a join catching up on a busy machine: records held while a source lags
    have wall-clock deadlines long past (windows close on stream time until every source is
    caught up), and a poll timeout of 0 taken from them made getmany() return at once with
    nothing fetched, without ever yielding the loop."""
    step = _join_step()
    assert step.stages.joiner is not None
    long_ago = time.time_ns() // 1_000_000 - 60_000
    step.stages.joiner.add(0, b"0.k", b"v", long_ago, object(), long_ago, wall_ms=long_ago)
    try:
        step.pacing.caught_up = False  # a source lags: the join's windows wait for stream time
        assert step._poll_timeout_ms() == 100
        step.pacing.caught_up = True  # every source read to its end: windows close on wall time
        assert step._poll_timeout_ms() == 0
    finally:
        await step.producer.stop()
        await step.consumer.stop()


async def test_a_stuck_join_says_which_partition_holds_stream_time_and_which_wait() -> None:
    from aiokafka import TopicPartition

    step = _join_step()
    a0 = TopicPartition("seldon.ns.model.a.outputs", 0)
    b0 = TopicPartition("seldon.ns.model.b.outputs", 0)
    try:
        step.assigned.set()
        step.pacing.clock.assign([a0, b0])
        step.pacing.clock.observe(a0, 9_000)
        step.pacing.clock.observe(b0, 2_000)
        step.pacing.clock.lagging([a0, b0])
        step.pacing.caught_up = False
        step.pacing.paused = {a0}
        why = step.why_waiting({a0: 50, b0: 70})
        assert "paused, read ahead of stream time by more than the window: " in why
        assert "seldon.ns.model.a.outputs[0]" in why
        assert "stream time held by seldon.ns.model.b.outputs[0] (at 2000 ms)" in why
        assert "nothing fetched from seldon.ns.model.b.outputs[0] (lag 70)" in why
    finally:
        await step.producer.stop()
        await step.consumer.stop()


def test_a_slow_loop_says_whether_it_worked_or_waited_for_a_core() -> None:
    assert _lag_cause(1.6, 1.5, 0.0).endswith(
        "something in the engine held the loop (0.00s in full collections)"
    )
    assert _lag_cause(1.6, 0.1, 0.0) == (
        "the loop's thread ran 0.10s of CPU in 1.60s: "
        "the process waited for a CPU (the machine is busy)"
    )
    assert _lag_cause(1.6, 1.5, 1.2).endswith("1.20s of it in a full garbage collection")
