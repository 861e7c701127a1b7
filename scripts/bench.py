"""Benchmarks: wire conversion and a one-step chain on the local broker.

Prints conversions per second (fast wire path beside a full betterproto decode/build/encode)
and the end-to-end throughput of a one-step chain run by the engine's own step code beside a
raw aiokafka consume-and-produce loop measured in the same run, on the same broker, with the
same record count and producer settings. Medians of --runs runs; ratios against the raw loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer import demo_response

from dataflow import logs
from dataflow.engine import Engine
from dataflow.pipeline import Pipeline
from dataflow.proto.seldon.mlops.chainer import (
    PipelineStepUpdate,
    PipelineTopic,
    PipelineUpdateMessage,
)
from dataflow.settings import Settings
from dataflow.tools import ensure_topics
from dataflow.topology import topology_from

PIPELINE = "bench"


async def _fill(bootstrap: str, topic: str, n: int, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        headers = [("pipeline", PIPELINE.encode())]
        for _ in range(n):
            await producer.send(topic, value, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def _raw_loop(bootstrap: str, source: str, sink: str, n: int) -> float:
    """Consume, produce unchanged, await acks, commit per batch: the client's own cost."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=2, acks="all", enable_idempotence=True
    )
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await consumer.start()
    done = 0
    t0 = time.perf_counter()
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            futures = []
            for records in batch.values():
                for r in records:
                    sent = await producer.send(sink, r.value, key=r.key, headers=list(r.headers))
                    futures.append(sent)
                done += len(records)
            await asyncio.gather(*futures)
            if batch:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        return time.perf_counter() - t0
    finally:
        await consumer.stop()
        await producer.stop()


async def _engine_step(bootstrap: str, source: str, sink: str, n: int) -> float:
    """The engine's step code (filter, wire conversion, send, tracked commits), in process."""
    settings = Settings(kafka_bootstrap_servers=bootstrap)
    engine = Engine(settings)
    await engine.producer.start()
    await engine.admin.start()
    message = PipelineUpdateMessage(
        pipeline=PIPELINE,
        version=1,
        uid=uuid.uuid4().hex[:12],
        updates=[
            PipelineStepUpdate(
                sources=[PipelineTopic(pipeline_name=PIPELINE, topic_name=source)],
                sink=PipelineTopic(pipeline_name=PIPELINE, topic_name=sink),
            )
        ],
    )
    pipeline = Pipeline(
        topology_from(message, 60000),
        settings,
        engine.producer,
        engine.ensure_topic,
        lambda p, r: None,
    )
    t0 = time.perf_counter()
    try:
        await pipeline.start(timeout=60)
        step = pipeline.steps[0]
        while step.stats.acked < n:
            if pipeline.failed:
                raise RuntimeError(pipeline.failed)
            await asyncio.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        await pipeline.stop(10)
        await engine.producer.stop()
        await engine.admin.close()


async def bench_chain(bootstrap: str, n: int, runs: int) -> None:
    value = demo_response(1)
    raw_rates, engine_rates = [], []
    for run in range(runs):
        tag = uuid.uuid4().hex[:8]
        source, raw_sink, engine_sink = (f"bench.{tag}.{x}" for x in ("src", "raw", "eng"))
        await ensure_topics(bootstrap, [source, raw_sink, engine_sink], 1)
        await _fill(bootstrap, source, n, value)
        raw = await _raw_loop(bootstrap, source, raw_sink, n)
        eng = await _engine_step(bootstrap, source, engine_sink, n)
        raw_rates.append(n / raw)
        engine_rates.append(n / eng)
        print(f"  run {run + 1}: raw {n / raw:>9,.0f}/s   engine {n / eng:>9,.0f}/s", flush=True)
    raw_m, eng_m = statistics.median(raw_rates), statistics.median(engine_rates)
    print(f"\none-step chain, {n:,} records of {len(value)} B, median of {runs}:")
    print(f"  raw aiokafka consume+produce loop : {raw_m:>9,.0f} records/s")
    print(f"  engine step (filter+convert)      : {eng_m:>9,.0f} records/s")
    print(f"  engine / raw                      : {eng_m / raw_m:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("SELDON_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-wire", action="store_true")
    parser.add_argument("--skip-chain", action="store_true")
    args = parser.parse_args()
    logs.setup("WARNING", "WARNING")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    if not args.skip_wire:
        import bench_wire

        print("\nwire conversion (conversions per second):")
        bench_wire.main() if hasattr(bench_wire, "main") else bench_wire.run()
    if not args.skip_chain:
        try:
            import uvloop

            uvloop.run(bench_chain(args.bootstrap_servers, args.records, args.runs))
        except ImportError:
            asyncio.run(bench_chain(args.bootstrap_servers, args.records, args.runs))


if __name__ == "__main__":
    main()
