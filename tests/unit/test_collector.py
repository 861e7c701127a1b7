"""dataflow.collector against a stand-in producer: headers, partitions, holds released on ack,
retries, the too-large path, the error topic, record batches of one fetch."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from dataflow import headers as hdr
from dataflow.collector import SEND_ATTEMPTS, Collector, RetryKind, partition_for
from dataflow.context import StepContext
from dataflow.errors import StepFailed
from dataflow.offsets import BatchHold, OffsetTracker
from dataflow.stages import Ref
from dataflow.stats import StepStats
from dataflow.windows import Entry, EntryKind, Output
from tests.unit.fakes import ERRORS, FakeProducer, record, settle

SINK = "seldon.ns.model.c.inputs"
A0 = TopicPartition("seldon.ns.model.a.outputs", 0)


class Harness:
    def __init__(self, producer: FakeProducer, exactly_once: bool = False) -> None:
        self.producer = producer
        self.generation = 0
        self.failures: list[StepFailed] = []
        self.released: list[Entry[Ref]] = []
        self.ensured: list[str] = []
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.stats = StepStats()

        async def producer_for(task: int) -> Any:
            return producer

        async def ensure(topic: str) -> None:
            self.ensured.append(topic)

        from loguru import logger

        context = StepContext(
            producer,  # type: ignore[arg-type]
            producer_for,
            exactly_once,
            self.tracker,
            self.stats,
            logger,
            lambda: self.generation,
            self.failures.append,
        )
        self.collector = Collector(
            context,
            sink=SINK,
            error_topic=ERRORS,
            rewrite=hdr.Rewrite("p", 3),
            ensure_topic=ensure,
            on_released=self.released.extend,
        )

    def ref(self, offset: int, key: bytes | None = b"2.k", headers: Any = ()) -> Ref:
        return Ref(A0, offset, key, headers, 1_000, 0.0, self.generation)


def output(ref: Ref, value: bytes = b"v") -> Output[Ref]:
    return Output(ref.key, value, ref.timestamp, ref, (ref,))


def test_partition_for_takes_the_keys_numeric_prefix_clamped() -> None:
    assert partition_for(b"2.pipeline.abc", 4) == 2
    assert partition_for(b"9.x", 4) == 3
    assert partition_for(b"abc", 4) == 0 and partition_for(None, 4) == 0


async def test_a_delivery_rewrites_headers_frames_the_value_and_releases_its_hold_on_ack() -> None:
    h = Harness(FakeProducer())
    h.collector.sink_partitions = 4
    h.collector.frame = b"\x00FRAME"
    given = (("pipeline", b"up"), ("x-request-id", b"r1"), (hdr.ALIBI_TYPE, b"a"), ("x-u", b"1"))
    ref = h.ref(7, headers=given)
    h.tracker.hold(A0, 7)  # the record's own hold, released by the step
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    h.tracker.release(A0, 7)
    assert h.tracker.committable() == {}, "held until the broker acknowledges"
    await settle()
    assert h.tracker.committable() == {A0: 8}
    [sent] = h.producer.sent
    assert sent.partition == 2 and sent.value == b"\x00FRAMEv" and sent.timestamp == 1_000
    assert sent.headers == (
        ("x-request-id", b"r1"),
        ("x-u", b"1"),
        ("pipeline", b"p"),
        ("x-pipeline-version", b"3"),
    )
    assert h.stats.records_out == 1 and h.stats.acked == 1 and ref.pending == 0


async def test_a_failed_send_is_retried_then_fails_the_step_after_the_last_attempt() -> None:
    h = Harness(FakeProducer(failing={SINK: KafkaTimeoutError()}))
    ref = h.ref(3)
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    await settle()
    [retry] = h.collector.retries
    assert retry.kind is RetryKind.AGAIN and retry.attempt == 2
    assert "KafkaTimeoutError" in retry.reason and h.stats.send_failures == 1
    for _attempt in range(2, SEND_ATTEMPTS + 1):
        await h.collector.resend()
        await settle()
    assert len(h.failures) == 1 and str(h.failures[0]).startswith(f"cannot deliver to {SINK}")
    assert h.tracker.committable() == {}, "a record never delivered is never committed"


async def test_a_revoked_records_failed_send_is_dropped_for_the_next_owner() -> None:
    h = Harness(FakeProducer(failing={SINK: KafkaTimeoutError()}))
    ref = h.ref(3)
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    h.generation += 1  # revoked before the ack came
    await settle()
    assert h.collector.retries == [] and h.failures == []


async def test_exactly_once_a_failed_send_fails_the_step() -> None:
    h = Harness(FakeProducer(failing={SINK: KafkaTimeoutError()}), exactly_once=True)
    ref = h.ref(3)
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    await settle()
    assert h.collector.retries == []
    assert str(h.failures[0]).startswith(f"transaction failed: send to {SINK}")


async def test_a_record_refused_in_a_batch_is_sent_alone_then_to_the_error_topic() -> None:
    producer = FakeProducer(failing={SINK: MessageSizeTooLargeError()})
    h = Harness(producer)
    ref = h.ref(5, headers=(("x-request-id", b"r9"),))
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref, b"x" * 10), (), attempt=1)
    await settle()
    [retry] = h.collector.retries
    assert retry.kind is RetryKind.ALONE and retry.reason.startswith("output of 10 bytes refused")
    producer.failing.clear()
    producer.refusing[SINK] = MessageSizeTooLargeError()  # refused alone too
    await h.collector.resend()
    await settle()
    [error] = producer.sent[1:]
    assert error.topic == ERRORS and error.value == retry.reason.encode()
    assert (hdr.PIPELINE_ERRORS, retry.reason.encode()) in error.headers
    assert h.ensured == [ERRORS] and h.stats.errors == 1
    assert h.tracker.committable() == {A0: 6}, "the error record's ack releases the hold"


async def test_an_output_refused_by_send_goes_to_the_error_topic_at_once() -> None:
    producer = FakeProducer(refusing={SINK: MessageSizeTooLargeError()})
    h = Harness(producer)
    ref = h.ref(1)
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref, b"xy"), (), attempt=1)
    await settle()
    [error] = producer.sent
    assert error.topic == ERRORS
    assert error.value is not None and error.value.startswith(b"output of 2 bytes to ")
    assert h.stats.last_error.endswith("is too large: [Error 10] MessageSizeTooLargeError")


async def test_a_record_that_does_not_convert_is_rejected_with_its_position() -> None:
    h = Harness(FakeProducer())
    ref = h.ref(4)
    await h.collector.reject(ref, ValueError("bad bytes"))
    await settle()
    [error] = h.producer.sent
    assert error.value == b"seldon.ns.model.a.outputs[0]@4: bad bytes"
    assert h.tracker.committable() == {A0: 5}


async def test_state_removals_deferred_by_a_record_are_released_by_its_last_ack() -> None:
    h = Harness(FakeProducer())
    ref = h.ref(2)
    entry: Entry[Ref] = Entry(EntryKind.JOIN, 0, b"k", b"v", 1, ref, b"s0/a/0/2")
    ref.deferred = [entry]
    h.collector.hold_all((ref,))
    h.collector.hold_all((ref,))
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    await settle()
    assert h.released == [], "one delivery still carries its data"
    await h.collector.deliver(SINK, output(ref), (), attempt=1)
    await settle()
    assert h.released == [entry] and ref.deferred is None


async def test_a_fetch_is_held_once_per_partition_until_every_record_batch_is_acked() -> None:
    producer = FakeProducer(batch_room=2, hold_acks=True)
    h = Harness(producer)
    records = [record(A0, n, b"v%d" % n) for n in range(5)]
    hold = BatchHold(h.tracker, lambda: h.generation)
    hold.hold_from(A0, 0)
    h.tracker.skip(A0, 4)
    sends = h.collector.fetch_sends(hold, 0.0)
    out = await sends.get(0)
    for r in records:
        item = (r.value, A0, r)
        if not out.add(0, r.key, r.value, r.timestamp, [], item):
            await out.add_to_next(0, r.key, r.value, r.timestamp, [], item)
    await sends.seal()
    hold.sealed()
    assert producer.batches == [(SINK, 0, 2), (SINK, 0, 2), (SINK, 0, 1)]
    producer.held[0].set_result(None)
    producer.held[1].set_result(None)
    await settle()
    assert h.tracker.committable() == {}, "one batch of the fetch is not acknowledged yet"
    producer.held[2].set_result(None)
    await settle()
    assert h.tracker.committable() == {A0: 5} and h.stats.acked == 5


async def test_a_failed_record_batch_is_retried_record_by_record() -> None:
    producer = FakeProducer(failing={SINK: KafkaTimeoutError()})
    h = Harness(producer)
    records = [record(A0, n, b"v%d" % n) for n in range(3)]
    hold = BatchHold(h.tracker, lambda: h.generation)
    hold.hold_from(A0, 0)
    h.tracker.skip(A0, 2)
    sends = h.collector.fetch_sends(hold, 0.0)
    out = await sends.get(0)
    for r in records:
        assert out.add(0, r.key, r.value, r.timestamp, [], (r.value, A0, r))
    await sends.seal()
    hold.sealed()
    await settle()
    assert [(r.attempt, r.output.value) for r in h.collector.retries] == [
        (2, b"v0"),
        (2, b"v1"),
        (2, b"v2"),
    ]
    assert h.tracker.committable() == {}, "each record now holds its own offset"
    producer.failing.clear()
    await h.collector.resend()
    await settle()
    assert h.tracker.committable() == {A0: 3}
