"""CPU per id and bytes per held entry of a stateful step, in process: no broker.

    python scripts/bench_step.py join 100000          # µs of CPU per pair
    python scripts/bench_step.py batch 100000         # per record (batch of 10)
    python scripts/bench_step.py trigger 100000       # per data record (+ its trigger)
    python scripts/bench_step.py join 100000 --held   # bytes per entry the step holds
    python scripts/bench_step.py join 100000 --profile

A real `dataflow.step.Step` (its stages, state, collector, pacing and committer) is fed fetched
batches of 1,000 records per source from the unit tests' stand-in consumer, and sends into real
aiokafka record batch builders whose sends are acknowledged at once. The backlog pattern of
`scripts/bench`'s stateful parts: id i keyed `0.<i>`, timestamps 0.5 ms apart; the state is
flushed (a commit) every `--flush` fetched batches (20: as a step at ~20,000 pairs/s flushing
every second, `dataflow.commits.STATE_FLUSH_INTERVAL`), so the figures do not move with the
machine's speed. The garbage collector is set as the engine sets it. `--held`: one source only
(nothing joins, nothing expires), then tracemalloc's bytes per held entry after the flush: the
entry, its token, window queues, the key's sides and the state's bookkeeping. Figures are CPU
time of this process (`time.process_time`); `scripts/bench` measures the whole engine against
the raw aiokafka loop.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

import dataflow.commits
from dataflow.engine import settle_garbage_collector
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.proto.seldon.mlops.chainer import (
    Batch,
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.state import StateOptions
from dataflow.step import Step
from dataflow.topology import Topology, topology_from
from tests.unit.fakes import ERRORS, NS, FakeConsumer, record

FETCH = 1000


class Builder:
    """aiokafka's record batch builder, as `create_batch` gives it."""

    def __init__(self) -> None:
        self.batch = DefaultRecordBatchBuilder(
            magic=2, compression_type=0, is_transactional=0, producer_id=-1,
            producer_epoch=-1, base_sequence=-1, batch_size=16384,
        )  # fmt: skip
        self.n = 0

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> Any:
        meta = self.batch.append(self.n, timestamp=timestamp, key=key, value=value,
                                 headers=headers)  # fmt: skip
        if meta is not None:
            self.n += 1
        return meta


class Producer:
    """Builds every record batch it is given and acknowledges it at once."""

    client = None

    def __init__(self) -> None:
        self.records = 0

    def _done(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, batch: Builder, topic: str, partition: int) -> Any:
        batch.batch.build()
        self.records += batch.n
        return self._done()

    async def send(self, topic: str, value: Any = None, **kw: Any) -> Any:
        self.records += 1
        return self._done()

    async def flush(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}


def response(n: int) -> bytes:
    tensor = ModelInferResponseInferOutputTensor(
        name="t", datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[n])
    )
    return bytes(ModelInferResponse(model_name="a", id=f"r{n}", outputs=[tensor]))


def topology(kind: str) -> Topology:
    model = f"{NS}.model"

    def topic(name: str) -> PipelineTopic:
        return PipelineTopic(pipeline_name="p", topic_name=f"{model}.{name}")

    a, b, sink = topic("a.outputs"), topic("b.outputs"), topic("c.inputs")
    if kind == "join":
        step = PipelineStepUpdate(sources=[a, b], sink=sink, join_window_ms=1000)
    elif kind == "batch":
        step = PipelineStepUpdate(sources=[a], sink=sink, batch=Batch(size=10))
    else:
        step = PipelineStepUpdate(sources=[a], triggers=[b], sink=sink, join_window_ms=1000)
    message = PipelineUpdateMessage(
        pipeline="p", version=1, uid="u", updates=[step], pipeline_error_topic=ERRORS
    )
    return topology_from(message, 1000)


async def run(kind: str, n: int, flush_every: int, held: bool, profile: bool) -> None:
    t = topology(kind)
    a0 = TopicPartition(f"{NS}.model.a.outputs", 0)
    b0 = TopicPartition(f"{NS}.model.b.outputs", 0)
    producer = Producer()

    async def ensure(*args: Any) -> None:
        pass

    options = StateOptions("changelog", ensure, lambda: None)  # type: ignore[arg-type,return-value]
    consumer = FakeConsumer({a0, b0} if kind != "batch" else {a0}, highwaters={a0: n, b0: n})
    step = Step(t, t.steps[0], consumer, producer, ERRORS, ensure, state=options)  # type: ignore[arg-type]
    await step.start()
    assert step.state is not None
    step.state.owned = {0}
    step.pacing.clock.assign(consumer.assigned)
    headers = (("pipeline", b"p"),)
    values = [response(i % 100) for i in range(100)]
    fetches = []
    for start in range(0, n, FETCH):
        ids = range(start, min(n, start + FETCH))
        fetch = {a0: [record(a0, i, values[i % 100], b"0.%d" % i, 1_000_000 + i // 2, headers)
                      for i in ids]}  # fmt: skip
        if kind != "batch" and not held:
            fetch[b0] = [record(b0, i, values[i % 100], b"0.%d" % i, 1_000_000 + i // 2,
                                headers) for i in ids]  # fmt: skip
        fetches.append(fetch)
    dataflow.commits.COMMIT_INTERVAL = float("inf")  # flushed every `flush_every` fetches
    settle_garbage_collector()
    if held:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for fetch in fetches:
            await step._process_stateful(fetch)
        await step.state.flush()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        count = step.stages.held()
        print(f"{kind}: {count} entries held, {grown / count:.0f} bytes per entry "
              f"({step.stats.state_bytes / count:.0f} of them key and value)")  # fmt: skip
        return
    profiler = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    for i, fetch in enumerate(fetches):
        await step._process_stateful(fetch)
        await step._after_batch()
        if i % flush_every == flush_every - 1:
            await step.committer.commit(force=True)
        await asyncio.sleep(0)
    await step._flush_and_commit(resend=False)
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - t0
    stats = step.stats
    print(f"{kind}: {n} ids, {cpu / n * 1e6:.1f} us CPU per id; {stats.records_out} outputs, "
          f"{stats.state_writes} state entries written, {stats.state_unwritten} never written, "
          f"{producer.records} records produced")  # fmt: skip
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["join", "batch", "trigger"])
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="ids (100,000)")
    parser.add_argument("--flush", type=int, default=20, help="fetches between state flushes")
    parser.add_argument("--held", action="store_true", help="bytes per held entry instead")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    args = parser.parse_args()
    if args.held and args.kind == "batch":
        parser.error("--held: a batch of 10 holds at most 9 entries; use join or trigger")
    import uvloop

    uvloop.run(run(args.kind, args.n, args.flush, args.held, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
