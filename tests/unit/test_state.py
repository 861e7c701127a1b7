"""dataflow.state against a stand-in producer: changelog writes at each flush, as record
batches, holding the offsets they cover; entries that come and go between flushes never
written; tombstones after the deliveries; restore of new partitions; the bounds."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from loguru import logger

from dataflow import changelog
from dataflow.context import StepContext
from dataflow.errors import StepFailed
from dataflow.offsets import OffsetTracker
from dataflow.stages import Ref, StepStages
from dataflow.state import StateOptions, StepState
from dataflow.stats import StepStats
from dataflow.windows import Entry, EntryKind
from tests.unit.fakes import FakeProducer, settle, topology

A = "seldon.ns.model.a.outputs"
A0, A1 = TopicPartition(A, 0), TopicPartition(A, 1)
LOG = "g-changelog"


class Harness:
    def __init__(self, producer: FakeProducer, max_records: int = 100) -> None:
        self.producer = producer
        self.generation = 0
        self.failures: list[StepFailed] = []
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.stats = StepStats()
        self.ensured: list[tuple[str, int]] = []

        async def producer_for(task: int) -> Any:
            return producer

        async def ensure(name: str, partitions: int) -> None:
            self.ensured.append((name, partitions))

        t = topology(["a", "b"], "c")
        self.stages = StepStages(t.steps[0], t.output_topic, None)
        context = StepContext(
            producer,  # type: ignore[arg-type]
            producer_for,
            False,
            self.tracker,
            self.stats,
            logger,
            lambda: self.generation,
            self.failures.append,
        )
        options = StateOptions(LOG, ensure, lambda: None, max_records=max_records)  # type: ignore[arg-type,return-value]
        self.state = StepState(context, options, self.stages)

    def ref(self, tp: TopicPartition, offset: int) -> Ref:
        return Ref(tp, offset, b"k", (("pipeline", b"p"),), 1_000, 0.0, self.generation)


def entry(ref: Ref, ident: bytes = b"s0/a/1/5") -> Entry[Ref]:
    return Entry(EntryKind.JOIN, 0, b"k", b"value", 1_000, ref, ident)


async def test_start_makes_the_changelog_as_wide_as_the_widest_source() -> None:
    h = Harness(FakeProducer(partitions={"seldon.ns.model.a.outputs": 3}))
    await h.state.start(["seldon.ns.model.a.outputs", "seldon.ns.model.b.outputs"])
    assert h.ensured == [(LOG, 3)] and h.state.partitions == 3


async def test_a_write_waits_for_the_flush_and_holds_the_covered_offsets_until_acked() -> None:
    producer = FakeProducer(hold_acks=True)
    h = Harness(producer)
    h.state.partitions = 2
    cause = h.ref(A1, 5)
    h.state.hold().hold_from(A1, 5)
    h.tracker.skip(A1, 5)
    h.state.put([entry(cause)])
    assert producer.sent == [], "written at the next flush"
    assert h.state.entries == {b"s0/a/1/5": (1, 6)} and h.stats.state_bytes == 6
    await h.state.flush()
    [sent] = producer.sent
    assert sent.topic == LOG and sent.key == b"s0/a/1/5" and sent.partition == 1
    assert sent.value is not None and changelog.decode(sent.value).offset == 5
    assert producer.batches == [(LOG, 1, 1)], "as a record batch"
    assert h.tracker.committable() == {}
    producer.ack_all()
    await settle()
    assert h.tracker.committable() == {A1: 6} and h.stats.state_writes == 1


async def test_an_entry_written_once_goes_out_as_it_is_at_the_flush() -> None:
    producer = FakeProducer()
    h = Harness(producer)
    kept = entry(h.ref(A0, 5), b"s0/a/0/5")
    h.state.put([kept])
    kept.matched = True  # an outer join's flag changed before the flush
    h.state.put([kept])
    await h.state.flush()
    [sent] = producer.sent
    assert sent.value is not None and changelog.decode(sent.value).matched


async def test_an_entry_that_comes_and_goes_between_two_flushes_is_never_written() -> None:
    producer = FakeProducer()
    h = Harness(producer)
    ref = h.ref(A0, 5)
    h.state.hold().hold_from(A0, 5)
    h.tracker.skip(A0, 5)
    gone = entry(ref, b"s0/a/0/5")
    h.state.put([gone])
    ref.pending = 1  # the output carrying it is in flight: it holds the offset itself
    h.tracker.hold(A0, 5)
    h.state.remove([gone])
    await h.state.flush()
    await settle()
    assert producer.sent == [] and h.stats.state_unwritten == 1
    assert ref.deferred is None, "no tombstone to wait for"
    assert h.tracker.committable() == {}, "held by its delivery only"
    h.tracker.release(A0, 5)
    assert h.tracker.committable() == {A0: 6}


async def test_a_failed_write_fails_the_step_unless_its_partition_was_revoked() -> None:
    h = Harness(FakeProducer(failing={LOG: KafkaTimeoutError()}))
    cause = h.ref(A0, 1)
    h.state.hold().hold_from(A0, 1)
    h.state.put([entry(cause)])
    await h.state.flush()
    await settle()
    assert str(h.failures[0]).startswith(f"cannot write state to {LOG}")
    assert h.tracker.committable() == {}, "the record's offset stays held"
    h.failures.clear()
    h.state.hold().hold_from(A0, 2)
    h.state.put([entry(cause, b"s0/a/0/2")])
    await h.state.flush()
    h.generation += 1
    await settle()
    assert h.failures == []


async def test_a_removal_waits_for_the_deliveries_that_carry_its_data() -> None:
    producer = FakeProducer()
    h = Harness(producer)
    ref = h.ref(A0, 5)
    kept = entry(ref, b"s0/a/0/5")
    h.state.put([kept])
    await h.state.flush()
    ref.pending = 1  # an output carrying it is in flight
    h.state.remove([kept])
    assert ref.deferred == [kept] and h.state.tombstones == [] and h.stats.state_bytes == 0
    h.state.released(ref.deferred)
    await h.state.flush()
    assert producer.sent[-1][:4] == (LOG, 0, b"s0/a/0/5", None)


async def test_a_tombstone_is_skipped_when_the_entry_was_written_again() -> None:
    producer = FakeProducer()
    h = Harness(producer)
    ref = h.ref(A0, 5)
    old = entry(ref, b"s0/a/0/5")
    h.state.put([old])
    await h.state.flush()
    h.state.remove([old])
    h.state.put([entry(ref, b"s0/a/0/5")])  # the same record consumed again
    await h.state.flush()
    assert [s.value is None for s in producer.sent] == [False, False]


async def test_restore_loads_new_partitions_and_drops_those_gone() -> None:
    h = Harness(FakeProducer())

    def value(partition: int, offset: int) -> bytes:
        return changelog.encode(
            EntryKind.JOIN, 0, b"k", b"v", 1_000, False, (), A, partition, offset
        )

    latest: dict[bytes, bytes | None] = {
        b"s0/a/0/1": value(0, 1),
        b"s0/a/1/2": value(1, 2),  # a partition not assigned here
        b"s0/a/0/3": None,  # a tombstone
        b"s0/a/0/4": b"\x07garbage",
    }
    asked: list[set[int]] = []

    async def read(partitions: set[int]) -> dict[bytes, bytes | None]:
        asked.append(partitions)
        return latest

    loaded: list[Entry[Ref]] = []
    load = h.stages.load
    h.stages.load = lambda e, wall: (loaded.append(e), load(e, wall))  # type: ignore[method-assign,func-returns-value]
    h.state._read = read  # type: ignore[method-assign]
    await h.state.restore({A0}, lambda: 0)
    assert asked == [{0}] and h.state.owned == {0}
    assert h.state.entries == {b"s0/a/0/1": (0, 2)} and h.stats.restored == 1
    assert h.stages.held() == 1
    [restored] = loaded
    assert restored.kind == EntryKind.JOIN and restored.token.restored
    assert (restored.token.tp, restored.token.offset) == (A0, 1)
    await h.state.restore({A1}, lambda: 0)  # partition 0 moved away, 1 arrived
    assert asked[-1] == {1} and h.state.owned == {1}
    assert set(h.state.entries) == {b"s0/a/1/2"}


async def test_the_state_is_full_at_its_bound_and_says_so_once() -> None:
    h = Harness(FakeProducer(), max_records=2)
    for n in range(2):
        h.state.put([entry(h.ref(A0, n), b"s0/a/0/%d" % n)])
    assert h.state.check_full() and h.stats.state_full == 1
    assert h.state.check_full() and h.stats.state_full == 1, "counted when it becomes full"
    assert h.stats.state_records == 2
