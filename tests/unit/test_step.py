"""dataflow.step against a stand-in consumer and producer: the two entry paths give the same
records, holds and counts; a revocation forgets what was consumed before it."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from dataflow import headers as hdr
from dataflow.cycles import RevisitGuard
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferResponse,
    ModelInferResponseInferOutputTensor,
)
from dataflow.state import StateOptions
from dataflow.step import Step
from tests.unit.fakes import ERRORS, NS, FakeConsumer, FakeProducer, Sent, record, settle, topology

A = f"{NS}.model.a.outputs"
SINK = f"{NS}.model.c.inputs"
A0, A1 = TopicPartition(A, 0), TopicPartition(A, 1)


def response(n: int) -> bytes:
    tensor = ModelInferResponseInferOutputTensor(
        name="t", datatype="INT32", shape=[1], contents=InferTensorContents(int_contents=[n])
    )
    return bytes(ModelInferResponse(model_name="a", id=f"r{n}", outputs=[tensor]))


def records() -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
    """A fetch with what both paths must treat alike: keys routed to sink partitions, a key
    without a numeric prefix, no key, headers to drop and keep, another pipeline's record (not
    ours: filtered), no timestamp, bytes that are not a response (to the error topic)."""
    mine = (("pipeline", b"p"), ("x-request-id", b"r"), (hdr.ALIBI_METHOD, b"m"), ("x-u", b"1"))
    versioned = (("x-pipeline-version", b"9"), ("pipeline", b"p"))
    return {
        A0: [
            record(A0, 10, response(0), b"0.k", 1_000, mine),
            record(A0, 11, response(1), b"2.k", 1_001, mine),
            record(A0, 12, response(2), b"x.k", 1_002, (("pipeline", b"other"),)),
            record(A0, 13, response(3), None, -1, versioned),
            record(A0, 14, b"\xff\xff\xff", b"1.k", 1_004, mine),
            record(A0, 15, response(5), b"7.k", 1_005, mine),
        ],
        A1: [record(A1, n, response(n), b"%d.z" % (n % 3), 2_000 + n, mine) for n in range(5)],
    }  # fmt: skip


async def run_path(batch_path: bool, batch_room: int = 1000) -> tuple[Step, FakeProducer]:
    t = topology(["a"], "c")
    producer = FakeProducer(partitions={SINK: 3}, batch_room=batch_room)

    async def ensure(topic: str) -> None:
        pass

    guard = None if batch_path else RevisitGuard(100)  # a cycle guard: the per-record path
    step = Step(t, t.steps[0], FakeConsumer({A0, A1}), producer, ERRORS, ensure, guard)  # type: ignore[arg-type]
    assert step._fast is batch_path
    await step.start()
    if batch_path:
        await step._process_batch(records())
    else:
        await step._process_stateful(records())
    await settle()
    return step, producer


def by_partition(sent: list[Sent]) -> dict[tuple[str, int | None], list[Sent]]:
    out: dict[tuple[str, int | None], list[Sent]] = {}
    for row in sent:
        out.setdefault((row.topic, row.partition), []).append(row)
    return out


async def test_the_batch_and_per_record_paths_send_byte_identical_records() -> None:
    fast, fast_sent = await run_path(batch_path=True, batch_room=2)
    slow, slow_sent = await run_path(batch_path=False)
    assert by_partition(fast_sent.sent) == by_partition(slow_sent.sent)
    sink = [row for row in fast_sent.sent if row.topic == SINK]
    assert len(sink) == 9 and {row.partition for row in sink} == {0, 1, 2}
    assert all(row.headers[-2:] == (("pipeline", b"p"), ("x-pipeline-version", b"1"))
               for row in sink)  # fmt: skip
    assert all(all(k != hdr.ALIBI_METHOD for k, _ in row.headers) for row in sink)
    [error] = [row for row in fast_sent.sent if row.topic == ERRORS]
    assert error.value is not None and error.value.startswith(f"{A}[0]@14: ".encode())
    for name in ("records_in", "filtered", "records_out", "acked", "errors", "empty"):
        assert getattr(fast.stats, name) == getattr(slow.stats, name), name
    assert fast.tracker.committable() == slow.tracker.committable() == {A0: 16, A1: 5}


async def test_a_batch_fetched_before_a_revocation_holds_nothing_after_it() -> None:
    step, producer = await run_path(batch_path=True)
    producer.hold_acks = True
    step.assigned.set()
    await step._process_batch({A0: [record(A0, 16, response(6), b"0.k")]})
    await step.on_revoked({A0})
    assert step._generation == 1 and not step.assigned.is_set()
    assert A0 not in step.pacing.positions
    assert step.consumer.commits[-1] == {A0: 16, A1: 5}, "committed up to the held record"  # type: ignore[attr-defined]
    producer.ack_all()
    await settle()
    assert A0 not in step.tracker.committable(), "the revoked partition's holds are forgotten"


async def test_a_partner_that_left_the_state_unwritten_is_held_until_its_pair_is_acked() -> None:
    # a@0 waits in the window, b@0 joins it (the pair's ack held back), then records 8 s
    # later close both windows before any flush: neither entry is ever written to the
    # changelog, so a@0's offset must stay held by the pair's delivery, not by a write.
    b = f"{NS}.model.b.outputs"
    B0 = TopicPartition(b, 0)
    t = topology(["a", "b"], "c")
    producer = FakeProducer(hold_acks=True)
    consumer = FakeConsumer({A0, B0}, highwaters={A0: 2, B0: 2})

    async def ensure(*args: Any) -> None:
        pass

    options = StateOptions("g-changelog", ensure, lambda: None)  # type: ignore[arg-type,return-value]
    step = Step(t, t.steps[0], consumer, producer, ERRORS, ensure, state=options)  # type: ignore[arg-type]
    await step.start()
    step.pacing.clock.assign({A0, B0})
    await step._process_stateful({A0: [record(A0, 0, response(1), b"0.k", 1_000)]})
    await step._process_stateful({B0: [record(B0, 0, response(2), b"0.k", 1_000)]})
    late = {
        A0: [record(A0, 1, response(3), b"0.x", 9_000)],
        B0: [record(B0, 1, response(4), b"0.x", 9_000)],
    }
    await step._process_stateful(late)
    assert step.stats.state_unwritten == 2, "a@0 and b@0 came and went"
    await step.state.flush()  # type: ignore[union-attr]
    pair = next(n for n, (topic, _, _) in enumerate(producer.batches) if topic == SINK)
    for n, future in enumerate(producer.held):
        if n != pair:
            future.set_result(None)
    await settle()
    assert step.tracker.committable() == {}, "held until the pair is acknowledged"
    producer.held[pair].set_result(None)
    await settle()
    assert step.tracker.committable() == {A0: 2, B0: 2}
