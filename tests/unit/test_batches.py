"""Batcher: emission by size (spec 6.2 vector 4) and by window, token release accounting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.batches import Batcher
from dataflow.joins import Output, Step

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
        assert step == Step()
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
        assert step == Step()
    assert batcher.held() == 9
    assert released == list(range(1, 11))


def test_batch_takes_key_and_origin_of_last_record_across_keys() -> None:
    batcher: Batcher[str] = Batcher(3, None, merge, rows)
    batcher.add(b"k1", b"a", 1, "a", T0)
    batcher.add(b"k2", b"b", 2, "b", T0)
    step = batcher.add(b"k3", b"c", 3, "c", T0)
    assert step == Step([Output(b"k3", b"a|b|c", 3, "c", ("a", "b", "c"))], ["a", "b", "c"])


def test_size_counts_rows_not_records() -> None:
    batcher: Batcher[str] = Batcher(5, None, merge, rows)
    assert batcher.add(b"k", b"1,2", 1, "a", T0) == Step()
    assert batcher.add(b"k", b"", 2, "empty", T0) == Step()
    assert batcher.rows_held() == 2
    step = batcher.add(b"k", b"3,4,5,6", 3, "b", T0)
    assert [o.value for o in step.outputs] == [b"1,2||3,4,5,6"]
    assert step.released == ["a", "empty", "b"]


def test_one_large_record_is_a_batch_of_its_own() -> None:
    batcher: Batcher[str] = Batcher(2, None, merge, rows)
    step = batcher.add(b"k", b"1,2,3", 1, "a", T0)
    assert step == Step([Output(b"k", b"1,2,3", 1, "a", ("a",))], ["a"])


def test_partial_batch_emitted_when_window_ends_without_traffic() -> None:
    batcher: Batcher[str] = Batcher(10, 500, merge, rows)
    assert batcher.next_deadline() is None
    batcher.add(b"k1", b"a", 1, "a", T0)
    assert batcher.next_deadline() == T0 + 500
    batcher.add(b"k2", b"b", 2, "b", T0 + 400)  # the window runs from the first arrival
    assert batcher.next_deadline() == T0 + 500
    assert batcher.expire(T0 + 499) == Step()
    step = batcher.expire(T0 + 500)
    assert step == Step([Output(b"k2", b"a|b", 2, "b", ("a", "b"))], ["a", "b"])
    assert batcher.next_deadline() is None
    assert batcher.expire(T0 + 10_000) == Step()


def test_window_reopens_with_the_next_record() -> None:
    batcher: Batcher[str] = Batcher(None, 500, merge, rows)
    batcher.add(b"k", b"a", 1, "a", T0)
    # the old batch is emitted first, then b opens a new one
    step = batcher.add(b"k", b"b", 2, "b", T0 + 600)
    assert step == Step([Output(b"k", b"a", 1, "a", ("a",))], ["a"])
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
    assert batcher.expire(T0 + 1000) == Step()


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

    def apply(step: Step[int]) -> None:
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
