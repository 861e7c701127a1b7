"""Batcher: emission by size (spec 6.2 vector 4) and by window, token release accounting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import MappingProxyType

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.batches import Batcher, PartitionBatcher
from dataflow.proto.inference import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferRequestInferInputTensor,
)
from dataflow.stages import Ref, StepStages
from dataflow.topology import Source, StepSpec
from dataflow.windows import Entry, Output, Result
from dataflow.wire import ChainType

T0 = 5_000_000


def merge(values: Sequence[bytes]) -> bytes:
    """Fake `wire.merge_batch`: values are comma-separated rows, batches join with '|'."""
    return b"|".join(values)


def rows(value: bytes) -> int:
    """Fake `wire.batch_rows`: one row per comma-separated item, none for an empty value."""
    return len(value.split(b",")) if value else 0


def test_spec_vector_4_forwarding_threshold_10() -> None:
    batcher: Batcher[int] = Batcher(10, None, merge, rows)
    released: list[int] = []
    for i in range(1, 10):
        step = batcher.add(b"789", b"%d" % i, i, i, T0 + i)
        assert step == Result()
        assert batcher.held() == i
    assert batcher.next_deadline() is None  # no window: no timer
    step = batcher.add(b"789", b"10", 10, 10, T0 + 10)
    assert step.outputs == [
        Output(b"789", b"1|2|3|4|5|6|7|8|9|10", 10, 10, tuple(range(1, 11))),
    ]
    released += step.released
    assert batcher.held() == 0
    assert batcher.rows_held() == 0
    for i in range(11, 20):
        step = batcher.add(b"789", b"%d" % i, i, i, T0 + i)
        assert step == Result()
    assert batcher.held() == 9
    assert released == list(range(1, 11))


def test_batch_takes_key_and_origin_of_last_record_across_keys() -> None:
    batcher: Batcher[str] = Batcher(3, None, merge, rows)
    batcher.add(b"k1", b"a", 1, "a", T0)
    batcher.add(b"k2", b"b", 2, "b", T0)
    step = batcher.add(b"k3", b"c", 3, "c", T0)
    assert step == Result([Output(b"k3", b"a|b|c", 3, "c", ("a", "b", "c"))], ["a", "b", "c"])


def test_size_counts_rows_not_records() -> None:
    batcher: Batcher[str] = Batcher(5, None, merge, rows)
    assert batcher.add(b"k", b"1,2", 1, "a", T0) == Result()
    assert batcher.add(b"k", b"", 2, "empty", T0) == Result()
    assert batcher.rows_held() == 2
    step = batcher.add(b"k", b"3,4,5,6", 3, "b", T0)
    assert [o.value for o in step.outputs] == [b"1,2||3,4,5,6"]
    assert step.released == ["a", "empty", "b"]


def test_one_large_record_is_a_batch_of_its_own() -> None:
    batcher: Batcher[str] = Batcher(2, None, merge, rows)
    step = batcher.add(b"k", b"1,2,3", 1, "a", T0)
    assert step == Result([Output(b"k", b"1,2,3", 1, "a", ("a",))], ["a"])


def test_partial_batch_emitted_when_window_ends_without_traffic() -> None:
    batcher: Batcher[str] = Batcher(10, 500, merge, rows)
    assert batcher.next_deadline() is None
    batcher.add(b"k1", b"a", 1, "a", T0)
    assert batcher.next_deadline() == T0 + 500
    batcher.add(b"k2", b"b", 2, "b", T0 + 400)  # the window runs from the first arrival
    assert batcher.next_deadline() == T0 + 500
    assert batcher.expire(T0 + 499) == Result()
    step = batcher.expire(T0 + 500)
    assert step == Result([Output(b"k2", b"a|b", 2, "b", ("a", "b"))], ["a", "b"])
    assert batcher.next_deadline() is None
    assert batcher.expire(T0 + 10_000) == Result()


def test_window_reopens_with_the_next_record() -> None:
    batcher: Batcher[str] = Batcher(None, 500, merge, rows)
    batcher.add(b"k", b"a", 1, "a", T0)
    # the old batch is emitted first, then b opens a new one
    step = batcher.add(b"k", b"b", 2, "b", T0 + 600)
    assert step == Result([Output(b"k", b"a", 1, "a", ("a",))], ["a"])
    assert batcher.held() == 1
    assert batcher.next_deadline() == T0 + 1100


def test_size_reached_before_window_resets_timer() -> None:
    batcher: Batcher[str] = Batcher(2, 500, merge, rows)
    batcher.add(b"k", b"a", 1, "a", T0)
    assert len(batcher.add(b"k", b"b", 2, "b", T0 + 100).outputs) == 1
    assert batcher.next_deadline() is None
    batcher.add(b"k", b"c", 3, "c", T0 + 200)
    assert batcher.next_deadline() == T0 + 700


def test_discard_drops_selected_records() -> None:
    batcher: Batcher[str] = Batcher(3, 500, merge, rows)
    batcher.add(b"k", b"a", 1, "p0-a", T0)
    batcher.add(b"k", b"b", 2, "p1-b", T0)
    assert batcher.discard(lambda t: t.startswith("p0-")) == ["p0-a"]
    assert batcher.held() == 1
    assert batcher.rows_held() == 1
    assert batcher.next_deadline() == T0 + 500
    assert batcher.discard(lambda t: True) == ["p1-b"]
    assert batcher.next_deadline() is None
    assert batcher.expire(T0 + 1000) == Result()


def test_batcher_arguments_validated() -> None:
    with pytest.raises(ValueError):
        Batcher(None, None, merge, rows)
    with pytest.raises(ValueError):
        Batcher(0, None, merge, rows)
    with pytest.raises(ValueError):
        Batcher(None, 0, merge, rows)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    st.one_of(st.none(), st.integers(min_value=1, max_value=300)),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=200)),
        max_size=40,
    ),
)
def test_every_token_released_once_and_in_one_batch(
    size: int | None, window: int | None, script: list[tuple[int, int]]
) -> None:
    if size is None and window is None:
        size = 3
    batcher: Batcher[int] = Batcher(size, window, merge, rows)
    released: Counter[int] = Counter()
    outputs: list[Output[int]] = []
    now = T0

    def apply(step: Result[int]) -> None:
        outputs.extend(step.outputs)
        released.update(step.released)
        assert sorted(step.released) == sorted(t for o in step.outputs for t in o.contributors)

    def rows_of(tokens: Sequence[int]) -> int:
        return sum(script[t][0] for t in tokens)

    for i, (n_rows, advance) in enumerate(script):
        now += advance
        apply(batcher.expire(now))
        value = b",".join(b"x" for _ in range(n_rows))
        apply(batcher.add(b"%d" % i, value, i, i, now))
    held = batcher.held()
    apply(batcher.expire(now + (window or 0)))
    if window is None:
        assert batcher.held() == held
        released.update(batcher.discard(lambda t: True))
    assert batcher.held() == 0
    assert released == Counter(range(len(script)))
    # batches hold consecutive records in order, each tagged with its last record
    tokens = [t for o in outputs for t in o.contributors]
    assert tokens == sorted(tokens)
    for o in outputs:
        assert o.origin == o.contributors[-1]
        assert o.key == b"%d" % o.origin
        assert o.value == b"|".join(
            b",".join(b"x" for _ in range(script[t][0])) for t in o.contributors
        )
        if size is not None:
            assert rows_of(o.contributors[:-1]) < size  # emitted as soon as the size is reached
            if window is None:
                assert rows_of(o.contributors) >= size


def test_a_batch_that_cannot_be_merged_becomes_an_error_output_and_the_batcher_carries_on() -> None:
    def failing(values: Sequence[bytes]) -> bytes:
        if b"bad" in values:
            raise ValueError("no shape to batch along")
        return merge(values)

    b: Batcher[str] = Batcher(2, None, failing, rows)
    b.add(None, b"ok", 0, "t1", 0)
    step = b.add(None, b"bad", 0, "t2", 0)
    assert [(o.value, o.error, o.contributors) for o in step.outputs] == [
        (b"", "cannot batch: no shape to batch along", ("t1", "t2"))
    ]
    assert step.released == ["t1", "t2"] and b.held() == 0
    b.add(None, b"x", 0, "t3", 0)
    step = b.add(None, b"y", 0, "t4", 0)
    assert [o.error for o in step.outputs] == [""] and step.released == ["t3", "t4"]


# -- one batch per input partition (a stream task's batch store in the reference) ------------

Tok = tuple[int, str]  # (input partition, name)


def by_partition(size: int | None, window: int | None) -> PartitionBatcher[Tok]:
    return PartitionBatcher(size, window, merge, rows, partition=lambda token: token[0])


def test_a_batch_never_mixes_partitions() -> None:
    """The issue's case: a record left pending on partition 0, then two on partition 1: the
    batch of partition 1 holds only partition 1's records, partition 0's stays open."""
    batches = by_partition(2, None)
    assert batches.add(b"0.p.a", b"a", 1, (0, "a"), T0) == Result()
    assert batches.add(b"1.p.b", b"b", 2, (1, "b"), T0) == Result()
    step = batches.add(b"1.p.c", b"c", 3, (1, "c"), T0)
    assert step == Result(
        [Output(b"1.p.c", b"b|c", 3, (1, "c"), ((1, "b"), (1, "c")))],
        [
            (1, "b"),
            (1, "c"),
        ],
    )
    assert [e.token for e in step.removed] == [(1, "b"), (1, "c")]
    assert batches.held() == 1 and batches.rows_held() == 1
    step = batches.add(b"0.p.d", b"d", 4, (0, "d"), T0)
    assert [(o.key, o.value) for o in step.outputs] == [(b"0.p.d", b"a|d")]
    assert batches.held() == 0


def test_each_partition_has_its_own_window() -> None:
    batches = by_partition(10, 500)
    assert batches.next_deadline() is None
    batches.add(b"k", b"a", 1, (0, "a"), T0)
    batches.add(b"k", b"b", 2, (1, "b"), T0 + 100)
    batches.add(b"k", b"c", 3, (0, "c"), T0 + 200)
    assert batches.next_deadline() == T0 + 500
    assert batches.expire(T0 + 499) == Result()
    step = batches.expire(T0 + 500)
    assert [o.value for o in step.outputs] == [b"a|c"]
    assert step.released == [(0, "a"), (0, "c")]
    assert batches.next_deadline() == T0 + 600
    assert [o.value for o in batches.expire(T0 + 600).outputs] == [b"b"]
    assert batches.next_deadline() is None and batches.held() == 0


def test_expire_emits_due_batches_in_deadline_order_and_full_emits_all() -> None:
    batches = by_partition(10, 500)
    batches.add(b"k", b"b", 1, (1, "b"), T0)
    batches.add(b"k", b"a", 1, (0, "a"), T0 + 10)
    batches.add(b"k", b"c", 1, (2, "c"), T0 + 900)
    assert [o.value for o in batches.expire(T0 + 600).outputs] == [b"b", b"a"]
    batches.add(b"k", b"d", 1, (0, "d"), T0 + 900)
    step = batches.full()
    assert sorted(o.value for o in step.outputs) == [b"c", b"d"]
    assert batches.held() == 0 and batches.next_deadline() is None
    assert batches.full() == Result()


def test_discard_of_a_revoked_partition_drops_its_batch_only() -> None:
    batches = by_partition(3, 500)
    batches.add(b"k", b"a", 1, (0, "a"), T0)
    batches.add(b"k", b"b", 2, (1, "b"), T0 + 50)
    batches.add(b"k", b"c", 3, (0, "c"), T0 + 60)
    assert batches.discard(lambda token: token[0] == 0) == [(0, "a"), (0, "c")]
    assert batches.held() == 1 and batches.partitions() == 1
    assert batches.next_deadline() == T0 + 550
    # a new record of partition 0 opens a fresh batch with its own window
    batches.add(b"k", b"d", 4, (0, "d"), T0 + 100)
    assert batches.next_deadline() == T0 + 550
    assert [o.value for o in batches.expire(T0 + 600).outputs] == [b"b", b"d"]
    assert batches.held() == 0


def test_restored_entries_go_back_to_their_partition() -> None:
    batches = by_partition(2, None)
    batches.load(Entry("b", -1, b"k", b"a", 1, (0, "a"), b"ia"), b"k", T0)
    batches.load(Entry("b", -1, b"k", b"b", 2, (1, "b"), b"ib"), b"k", T0)
    assert batches.held() == 2 and batches.partitions() == 2
    step = batches.add(b"k", b"c", 3, (1, "c"), T0)
    assert [(o.value, o.contributors) for o in step.outputs] == [(b"b|c", ((1, "b"), (1, "c")))]


def test_partition_batcher_arguments_validated() -> None:
    with pytest.raises(ValueError):
        by_partition(None, None)
    with pytest.raises(ValueError):
        by_partition(0, None)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    st.one_of(st.none(), st.integers(min_value=1, max_value=300)),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),  # partition
            st.integers(min_value=0, max_value=3),  # rows
            st.integers(min_value=0, max_value=200),  # clock advance
        ),
        max_size=40,
    ),
)
def test_partitions_batch_as_independent_batchers(
    size: int | None, window: int | None, script: list[tuple[int, int, int]]
) -> None:
    """Per partition, the outputs are exactly those of a `Batcher` fed only that partition."""
    if size is None and window is None:
        size = 3
    batches = by_partition(size, window)
    alone: dict[int, Batcher[Tok]] = {p: Batcher(size, window, merge, rows) for p in range(4)}
    got: dict[int, list[Output[Tok]]] = {p: [] for p in range(4)}
    want: dict[int, list[Output[Tok]]] = {p: [] for p in range(4)}
    released: Counter[Tok] = Counter()

    def apply(step: Result[Tok]) -> None:
        released.update(step.released)
        for o in step.outputs:
            partitions = {t[0] for t in o.contributors}
            assert partitions == {o.origin[0]}, "a batch mixed partitions"
            got[o.origin[0]].append(o)

    now = T0
    for i, (p, n_rows, advance) in enumerate(script):
        now += advance
        apply(batches.expire(now))
        for q, batcher in alone.items():
            want[q] += batcher.expire(now).outputs
        value = b",".join(b"x" for _ in range(n_rows))
        token = (p, str(i))
        apply(batches.add(b"%d" % i, value, i, token, now))
        want[p] += alone[p].add(b"%d" % i, value, i, token, now).outputs
        assert batches.held() == sum(b.held() for b in alone.values())
        assert batches.rows_held() == sum(b.rows_held() for b in alone.values())
        deadlines = [d for b in alone.values() if (d := b.next_deadline()) is not None]
        assert batches.next_deadline() == (min(deadlines) if deadlines else None)
    assert got == want
    apply(batches.full())
    assert batches.held() == 0 and batches.partitions() == 0
    assert released == Counter((p, str(i)) for i, (p, _, _) in enumerate(script))


# -- the step's stages: a batching step keeps one batch per input partition -------------------


def _request(rid: str, value: float) -> bytes:
    tensor = ModelInferRequestInferInputTensor(
        name="x", datatype="FP32", shape=[1, 1], contents=InferTensorContents(fp32_contents=[value])
    )
    return bytes(ModelInferRequest(id=rid, inputs=[tensor]))


def test_step_stages_batch_per_input_partition() -> None:
    topic = "seldon.ns.model.a.outputs"
    source = Source(topic, "p", None, MappingProxyType({}), ChainType.OUTPUT_INPUT)
    spec = StepSpec(0, (source,), (), "seldon.ns.model.b.inputs", "inner", "inner", 0, 2, 500)
    stages = StepStages(spec, "seldon.ns.pipeline.p.outputs", None)

    def ref(partition: int, offset: int, rid: str) -> Ref:
        return Ref(TopicPartition(topic, partition), offset, f"{partition}.p.{rid}".encode(), (), 0)

    r0, r1, r2 = ref(0, 0, "r0"), ref(1, 0, "r1"), ref(1, 1, "r2")
    assert stages.add(0, r0, _request("r0", 0.0), 0, T0, b"i0").outputs == []
    assert stages.add(0, r1, _request("r1", 1.0), 0, T0 + 10, b"i1").outputs == []
    step = stages.add(0, r2, _request("r2", 2.0), 0, T0 + 20, b"i2")
    assert [(o.key, o.origin, o.contributors) for o in step.outputs] == [(b"1.p.r2", r2, (r1, r2))]
    merged = ModelInferRequest().parse(step.outputs[0].value)
    assert (merged.id, merged.inputs[0].shape, list(merged.inputs[0].contents.fp32_contents)) == (
        "r2",
        [2, 1],
        [1.0, 2.0],
    )
    assert stages.held() == 1
    assert stages.next_deadline() == T0 + 500
    # partition 0 is revoked: its pending batch goes (its record is read again elsewhere)
    stages.discard(lambda r: r.tp.partition == 0)
    assert stages.held() == 0 and stages.next_deadline() is None
    # by window, each partition's batch on its own
    stages.add(0, ref(0, 1, "r3"), _request("r3", 3.0), 0, T0 + 1000, b"i3")
    stages.add(0, ref(1, 2, "r4"), _request("r4", 4.0), 0, T0 + 1100, b"i4")
    step = stages.expire(None, T0 + 1500, True)
    assert [o.key for o in step.outputs] == [b"0.p.r3"]
    assert [o.key for o in stages.flush_batch(0, T0 + 1550).outputs] == [b"1.p.r4"]
    assert stages.held() == 0
