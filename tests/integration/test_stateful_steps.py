"""Joins, triggers, batches and cycles end to end: proxy, engine process, real topics."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from tests.integration.harness import Process, Proxy, consume, create_topics, engine

pytestmark = pytest.mark.kafka


def response(rid: str, *tensors: tuple[str, float]) -> bytes:
    return bytes(
        ModelInferResponse(
            id=rid,
            outputs=[
                ModelInferResponseInferOutputTensor(
                    name=n,
                    datatype="FP32",
                    shape=[1, 1],
                    contents=InferTensorContents(fp32_contents=[v]),
                )
                for n, v in tensors
            ],
        )
    )


async def send(
    bootstrap: str,
    topic: str,
    key: bytes,
    value: bytes,
    pipeline: str,
    timestamp_ms: int | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            value,
            key=key,
            headers=[("pipeline", pipeline.encode())],
            timestamp_ms=timestamp_ms,
        )
    finally:
        await producer.stop()


class Run:
    """One pipeline (explicit form) with a proxy and an engine process."""

    def __init__(self, tmp_path: Path, bootstrap: str, unique: str, tag: str) -> None:
        self.tmp, self.bootstrap = tmp_path, bootstrap
        self.ns, self.name = f"{tag}{unique}", f"{tag}-{unique}"
        self.proxy: Proxy | None = None
        self.engine: Process | None = None

    def topic(self, model: str, io: str) -> str:
        return f"seldon.{self.ns}.model.{model}.{io}"

    async def start(self, body: str, *topics: str, **settings: str) -> Run:
        await create_topics(self.bootstrap, *topics)
        path = self.tmp / f"{self.name}.yaml"
        path.write_text(
            f"kind: PipelineUpdate\nname: {self.name}\nversion: 1\nuid: {self.name}\n{body}"
        )
        self.proxy = Proxy(self.tmp).start(path)
        try:
            self.engine = engine(self.tmp, self.bootstrap, self.proxy, **settings)
            self.proxy.wait_state(self.name, "Ready", timeout=60)
        except BaseException:
            self.stop()  # a test that fails here must not leave its processes running
            raise
        return self

    def restart_engine(self) -> None:
        assert self.proxy is not None
        self.engine = engine(self.tmp, self.bootstrap, self.proxy)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.proxy is not None:
            self.proxy.stop()


def join_body(run: Run, join: str, window_ms: int) -> str:
    return (
        "steps:\n"
        f"  - sources: [{run.topic('a', 'outputs')}, {run.topic('b', 'outputs')}]\n"
        f"    sink: {run.topic('c', 'inputs')}\n"
        f"    inputJoinType: {join}\n    joinWindowMs: {window_ms}\n"
    )


def tensors(value: bytes) -> list[tuple[str, list[float]]]:
    request = ModelInferRequest().parse(value)
    return [(t.name, [round(v, 3) for v in t.contents.fp32_contents]) for t in request.inputs]


async def test_inner_join_inside_and_outside_the_window(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    run = Run(tmp_path, bootstrap, unique, "ij")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await run.start(join_body(run, "inner", 2000), a, b)
    try:
        now = int(time.time() * 1000)
        await send(bootstrap, a, b"k1", response("left", ("x", 1.0)), run.name, now)
        await send(bootstrap, b, b"k1", response("right", ("y", 2.0)), run.name, now + 500)
        # Same key, 10 s apart in record time: outside the 2 s window.
        await send(bootstrap, a, b"k2", response("left2", ("x", 3.0)), run.name, now)
        await send(bootstrap, b, b"k2", response("right2", ("y", 4.0)), run.name, now + 10_000)
        out = await consume(bootstrap, c, 1, settle=3.0)
    finally:
        run.stop()
    assert [(r.key, ModelInferRequest().parse(r.value).id, tensors(r.value)) for r in out] == [
        (b"k1", "left", [("x", [1.0]), ("y", [2.0])])
    ]


async def test_outer_join_emits_lone_record_when_window_closes(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    run = Run(tmp_path, bootstrap, unique, "oj")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await run.start(join_body(run, "outer", 1000), a, b)
    try:
        t0 = time.monotonic()
        await send(bootstrap, a, b"k1", response("alone", ("x", 1.0)), run.name)
        out = await consume(bootstrap, c, 1, timeout=10)
        waited = time.monotonic() - t0
    finally:
        run.stop()
    assert [tensors(r.value) for r in out] == [[("x", [1.0])]]
    assert waited < 1.0 + 1.0, f"lone record after {waited:.2f}s, window 1 s"


async def test_any_join_forwards_every_arrival(tmp_path: Path, bootstrap: str, unique: str) -> None:
    run = Run(tmp_path, bootstrap, unique, "aj")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await run.start(join_body(run, "any", 5000), a, b)
    try:
        await send(bootstrap, a, b"k1", response("one", ("x", 1.0)), run.name)
        await send(bootstrap, b, b"k1", response("two", ("y", 2.0)), run.name)
        out = await consume(bootstrap, c, 2, timeout=10, settle=1.0)
    finally:
        run.stop()
    assert sorted(tensors(r.value) for r in out) == [[("x", [1.0])], [("y", [2.0])]]


async def test_trigger_gates_data_and_never_forwards_its_tensors(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    run = Run(tmp_path, bootstrap, unique, "tr")
    a, t, c = run.topic("a", "outputs"), run.topic("t", "outputs"), run.topic("c", "inputs")
    body = (
        "steps:\n"
        f"  - sources: [{a}]\n    triggers: [{{topic: {t}, tensor: go}}]\n"
        f"    sink: {c}\n    joinWindowMs: 5000\n"
    )
    await run.start(body, a, t)
    try:
        await send(bootstrap, a, b"k1", response("data", ("x", 1.0)), run.name)
        # A trigger record without the named tensor does not fire.
        await send(bootstrap, t, b"k1", response("nogo", ("other", 9.0)), run.name)
        before = await consume(bootstrap, c, 1, timeout=2)
        await send(bootstrap, t, b"k1", response("trig", ("go", 5.0)), run.name)
        after = await consume(bootstrap, c, 1, timeout=10, settle=0.5)
    finally:
        run.stop()
    assert before == []
    assert [(ModelInferRequest().parse(r.value).id, tensors(r.value)) for r in after] == [
        ("data", [("x", [1.0])])
    ]


async def test_batch_by_size_and_by_window(tmp_path: Path, bootstrap: str, unique: str) -> None:
    run = Run(tmp_path, bootstrap, unique, "bt")
    a, b, c, d = (
        run.topic(m, io)
        for m, io in (("a", "outputs"), ("b", "inputs"), ("c", "outputs"), ("d", "inputs"))
    )
    body = (
        "steps:\n"
        f"  - sources: [{a}]\n    sink: {b}\n    batch: {{size: 3}}\n"
        f"  - sources: [{c}]\n    sink: {d}\n    batch: {{windowMs: 200}}\n"
    )
    await run.start(body, a, c)
    try:
        for i in range(3):
            await send(bootstrap, a, f"k{i}".encode(), response(f"r{i}", ("x", float(i))), run.name)
        t0 = time.monotonic()
        for i in range(2):
            await send(bootstrap, c, f"w{i}".encode(), response(f"w{i}", ("y", float(i))), run.name)
        windowed = await consume(bootstrap, d, 1, timeout=10, settle=0.5)
        waited = time.monotonic() - t0
        sized = await consume(bootstrap, b, 1, timeout=10, settle=0.5)
    finally:
        run.stop()
    assert len(sized) == 1
    merged = ModelInferRequest().parse(sized[0].value)
    assert (merged.id, merged.inputs[0].shape, tensors(sized[0].value)) == (
        "r2",
        [3, 1],
        [("x", [0.0, 1.0, 2.0])],
    )
    assert sized[0].key == b"k2"
    assert len(windowed) == 1 and tensors(windowed[0].value) == [("y", [0.0, 1.0])]
    assert waited < 1.0


async def test_cycle_past_max_revisits_goes_to_error_topic(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    run = Run(tmp_path, bootstrap, unique, "cy")
    a, b = run.topic("a", "outputs"), run.topic("b", "inputs")
    errors = f"seldon.{run.ns}.errors.errors"
    body = (
        f"allowCycles: true\nmaxStepRevisits: 2\nerrorTopic: {errors}\nsteps:\n"
        f"  - sources: [{a}]\n    sink: {b}\n"
        f"  - sources: [{b}]\n    sink: {a}\n"
    )
    await run.start(body, a, b)
    try:
        await send(bootstrap, a, b"req-1", response("loop", ("x", 1.0)), run.name)
        err = await consume(bootstrap, errors, 1, timeout=15, settle=1.0)
        looped = await consume(bootstrap, b, 100, timeout=1)
    finally:
        run.stop()
    assert len(err) == 1
    text = err[0].value.decode()
    assert text == f"ERROR: Max step revisits (2) exceeded for request req-1 in topic {b}"
    assert dict(err[0].headers)["seldon-pipeline-errors"] == err[0].value
    assert len(looped) == 3, "three visits to b pass (counts 0, 1, 2), the fourth is stopped"


async def test_join_survives_sigkill(tmp_path: Path, bootstrap: str, unique: str) -> None:
    run = Run(tmp_path, bootstrap, unique, "kj")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await run.start(join_body(run, "inner", 60_000), a, b)
    try:
        await send(bootstrap, a, b"k1", response("left", ("x", 1.0)), run.name)
        await asyncio.sleep(2.0)  # the engine has it in its join window
        assert run.engine is not None
        run.engine.signal(signal.SIGKILL)
        run.engine.wait(10)
        run.restart_engine()
        await send(bootstrap, b, b"k1", response("right", ("y", 2.0)), run.name)
        out = await consume(bootstrap, c, 1, timeout=60, settle=0.5)
    finally:
        run.stop()
    assert [tensors(r.value) for r in out] == [[("x", [1.0]), ("y", [2.0])]]


async def test_outputs_carry_the_input_timestamp(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """A chain's output keeps its input's timestamp, a join's the latest part's, an error record
    the failed input's (Kafka Streams' rule), not the engine's produce time."""
    run = Run(tmp_path, bootstrap, unique, "ts")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    x, y = run.topic("x", "outputs"), run.topic("y", "inputs")
    errors = f"seldon.{run.ns}.errors.errors"
    body = (
        f"errorTopic: {errors}\nsteps:\n"
        f"  - sources: [{a}, {b}]\n    sink: {c}\n    joinWindowMs: 5000\n"
        f"  - sources: [{x}]\n    sink: {y}\n"
    )
    await run.start(body, a, b, x)
    try:
        then = int(time.time() * 1000) - 3_600_000  # an hour ago: surely not "now"
        await send(bootstrap, x, b"k0", response("chain", ("x", 1.0)), run.name, then)
        await send(bootstrap, x, b"k9", b"\xff\xff\xff", run.name, then + 7)  # malformed
        await send(bootstrap, a, b"k1", response("left", ("x", 1.0)), run.name, then + 100)
        await send(bootstrap, b, b"k1", response("right", ("y", 2.0)), run.name, then + 900)
        chained = await consume(bootstrap, y, 1, timeout=20)
        joined = await consume(bootstrap, c, 1, timeout=20)
        failed = await consume(bootstrap, errors, 1, timeout=20)
    finally:
        run.stop()
    assert [r.timestamp for r in chained] == [then]
    assert [r.timestamp for r in joined] == [then + 900]
    assert [r.timestamp for r in failed] == [then + 7]


async def test_join_state_survives_a_graceful_restart_without_duplicates(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """A record in a 60 s window is committed once its state is in the changelog: after a
    graceful restart it is restored, not replayed, and joins its partner exactly once."""
    run = Run(tmp_path, bootstrap, unique, "gj")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await run.start(join_body(run, "inner", 60_000), a, b)
    try:
        await send(bootstrap, a, b"k1", response("left", ("x", 1.0)), run.name)
        await send(bootstrap, b, b"k0", response("r0", ("y", 0.0)), run.name)
        await send(bootstrap, a, b"k0", response("l0", ("x", 0.0)), run.name)
        first = await consume(bootstrap, c, 1, timeout=20, settle=1.0)
        assert run.engine is not None
        assert run.engine.stop() == 0
        log = run.engine.output()
        run.restart_engine()
        await send(bootstrap, b, b"k1", response("right", ("y", 2.0)), run.name)
        out = await consume(bootstrap, c, 2, timeout=30, settle=2.0)
        restarted = run.engine.output()
    finally:
        run.stop()
    assert [ModelInferRequest().parse(r.value).id for r in first] == ["l0"]
    assert [(r.key, tensors(r.value)) for r in out] == [
        (b"k0", [("x", [0.0]), ("y", [0.0])]),
        (b"k1", [("x", [1.0]), ("y", [2.0])]),
    ], "the k0 pair is not joined again after the restart"
    assert "restored 0 state entries" in log
    assert "restored 3 state entries" in restarted


async def test_a_record_that_converts_to_nothing_is_counted_and_logged(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """No tensor left after selection: no output (as the reference), but never unseen."""
    run = Run(tmp_path, bootstrap, unique, "em")
    a, b = run.topic("a", "outputs"), run.topic("b", "inputs")
    await run.start(f"steps:\n  - sources: [{{topic: {a}, tensor: wanted}}]\n    sink: {b}\n", a)
    try:
        await send(bootstrap, a, b"k1", response("other", ("unwanted", 1.0)), run.name)
        await send(bootstrap, a, b"k2", response("kept", ("wanted", 2.0)), run.name)
        out = await consume(bootstrap, b, 1, timeout=20, settle=1.0)
    finally:
        run.stop()
    assert [ModelInferRequest().parse(r.value).id for r in out] == ["kept"]
    assert run.engine is not None
    assert f"{a}[0]@0 converted to nothing: no output" in run.engine.output()


async def send_to(
    bootstrap: str,
    topic: str,
    partition: int,
    records: list[tuple[bytes, bytes, int | None]],
    pipeline: str,
) -> None:
    """Write (key, value, timestamp) records to one partition, in order, each acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, timestamp_ms in records:
            await producer.send_and_wait(
                topic,
                value,
                key=key,
                partition=partition,
                headers=[("pipeline", pipeline.encode())],
                timestamp_ms=timestamp_ms,
            )
    finally:
        await producer.stop()


async def test_a_batch_holds_one_partition_and_goes_out_on_it(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """Issue 19 item 4: one batch per input partition (the reference's batch store per stream
    task). A record left pending on partition 0 is not merged with partition 1's records, and
    partition 1's batch goes out on partition 1 (gateway keys `<partition>.<pipeline>.<id>`)."""
    run = Run(tmp_path, bootstrap, unique, "bp")
    a, b = run.topic("a", "outputs"), run.topic("b", "inputs")
    await create_topics(bootstrap, a, b, partitions=2)
    await run.start(f"steps:\n  - sources: [{a}]\n    sink: {b}\n    batch: {{size: 2}}\n")
    try:
        key = f"{{}}.{run.name}.{{}}".format
        await send_to(
            bootstrap, a, 0, [(key(0, "r0").encode(), response("r0", ("x", 0.0)), None)], run.name
        )
        await asyncio.sleep(2.0)  # the engine has r0 in partition 0's batch
        await send_to(
            bootstrap,
            a,
            1,
            [
                (key(1, "r1").encode(), response("r1", ("x", 1.0)), None),
                (key(1, "r2").encode(), response("r2", ("x", 2.0)), None),
            ],
            run.name,
        )
        out = await consume(bootstrap, b, 1, timeout=20, settle=2.0)
    finally:
        run.stop()
    assert [(r.partition, r.key) for r in out] == [(1, key(1, "r2").encode())]
    merged = ModelInferRequest().parse(out[0].value)
    assert (merged.id, merged.inputs[0].shape, tensors(out[0].value)) == (
        "r2",
        [2, 1],
        [("x", [1.0, 2.0])],
    ), "partition 1's batch holds partition 1's records only"


async def test_any_join_joins_a_key_seen_on_the_other_source_within_1ms(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """Issue 19 item 5: the reference's `any` join is an outer join with a 1 ms window: the
    first of two records of one key 1 ms apart goes out alone, the second joined with it (in
    source order); records further apart go out alone. The records are written before the
    pipeline starts, so the step reads them as a backlog, on stream time."""
    run = Run(tmp_path, bootstrap, unique, "a1")
    a, b, c = run.topic("a", "outputs"), run.topic("b", "outputs"), run.topic("c", "inputs")
    await create_topics(bootstrap, a, b)
    t0 = int(time.time() * 1000) - 60_000
    await send(bootstrap, b, b"k1", response("first", ("y", 2.0)), run.name, t0)
    await send(bootstrap, a, b"k1", response("second", ("x", 1.0)), run.name, t0 + 1)
    await send(bootstrap, a, b"k2", response("apart-a", ("x", 3.0)), run.name, t0 + 10)
    await send(bootstrap, b, b"k2", response("apart-b", ("y", 4.0)), run.name, t0 + 12)
    await run.start(join_body(run, "any", 5000))
    try:
        out = await consume(bootstrap, c, 4, timeout=30, settle=2.0)
    finally:
        run.stop()
    got = [(r.key, ModelInferRequest().parse(r.value).id, tensors(r.value)) for r in out]
    assert got == [
        (b"k1", "first", [("y", [2.0])]),
        (b"k1", "second", [("x", [1.0]), ("y", [2.0])]),
        (b"k2", "apart-a", [("x", [3.0])]),
        (b"k2", "apart-b", [("y", [4.0])]),
    ]
    assert [r.timestamp for r in out] == [t0, t0 + 1, t0 + 10, t0 + 12]
