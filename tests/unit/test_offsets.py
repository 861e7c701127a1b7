"""OffsetTracker: reference counts per offset and the commit low-water mark."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.offsets import OffsetTracker

P0 = ("topic", 0)
P1 = ("topic", 1)


def test_nothing_committable_while_first_offset_held() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 100)
    assert t.committable() == {}
    assert t.pending_count() == 1
    assert t.release(P0, 100)
    assert t.committable() == {P0: 101}
    assert t.pending_count() == 0


def test_commit_point_is_lowest_held_offset() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(3):
        t.hold(P0, offset)
    t.release(P0, 0)
    assert t.committable() == {P0: 1}
    t.release(P0, 2)
    assert t.committable() == {P0: 1}
    t.release(P0, 1)
    assert t.committable() == {P0: 3}


def test_out_of_order_release_never_passes_a_hole() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(3, 8):
        t.hold(P0, offset)
    t.release(P0, 5)
    t.release(P0, 6)
    t.release(P0, 7)
    assert t.committable() == {}  # 3 still held: nothing past it
    t.release(P0, 4)
    assert t.committable() == {}
    t.release(P0, 3)
    assert t.committable() == {P0: 8}


def test_five_released_before_three_does_not_commit_six() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 2)
    t.release(P0, 2)
    for offset in (3, 4, 5, 6):
        t.hold(P0, offset)
    t.release(P0, 5)
    t.release(P0, 6)
    assert t.committable() == {P0: 3}
    t.mark_committed({P0: 3})
    t.release(P0, 4)
    assert t.committable() == {}
    t.release(P0, 3)
    assert t.committable() == {P0: 7}


def test_reference_counts_need_every_release() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)
    t.hold(P0, 1)
    t.hold(P0, 1)  # e.g. consumed, and one pending output
    t.hold(P0, 1)  # and a second output
    t.release(P0, 0)
    assert t.committable() == {P0: 1}
    t.release(P0, 1)
    t.release(P0, 1)
    assert t.committable() == {P0: 1}
    assert t.pending_count() == 1
    t.release(P0, 1)
    assert t.committable() == {P0: 2}
    assert not t.release(P0, 1)  # no reference left


def test_offset_can_be_held_again_after_full_release() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)
    t.hold(P0, 1)
    t.release(P0, 1)
    t.hold(P0, 1)
    t.release(P0, 0)
    assert t.committable() == {P0: 1}
    t.release(P0, 1)
    assert t.committable() == {P0: 2}


def test_committable_only_when_advanced_since_mark() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)
    t.hold(P0, 1)
    t.release(P0, 0)
    assert t.committable() == {P0: 1}
    assert t.committable() == {P0: 1}  # asking again does not mark
    t.mark_committed({P0: 1})
    assert t.committable() == {}
    t.release(P0, 1)
    assert t.committable() == {P0: 2}
    t.mark_committed({P0: 2})
    t.mark_committed({P0: 1})  # never moves back
    assert t.committable() == {}
    t.hold(P0, 2)
    t.release(P0, 2)
    assert t.committable() == {P0: 3}


def test_skip_advances_without_reference() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.skip(P0, 10)
    assert t.committable() == {P0: 11}
    t.hold(P0, 11)
    t.skip(P0, 12)
    assert t.committable() == {P0: 11}
    t.release(P0, 11)
    assert t.committable() == {P0: 13}
    assert t.pending_count() == 0


def test_gaps_in_offsets_commit_after_last_seen() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 10)
    t.hold(P0, 15)  # 11..14: transaction markers, compacted away
    t.release(P0, 10)
    assert t.committable() == {P0: 15}
    t.release(P0, 15)
    assert t.committable() == {P0: 16}


def test_partitions_are_independent() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)
    t.hold(P0, 1)
    t.hold(P1, 50)
    t.hold(P1, 51)
    t.release(P1, 50)
    t.release(P0, 1)
    assert t.committable() == {P1: 51}
    assert t.pending_count() == 2
    assert t.pending_count(P0) == 1
    assert t.pending_count(P1) == 1
    assert t.pending_count(("other", 0)) == 0
    t.release(P0, 0)
    assert t.committable() == {P0: 2, P1: 51}
    assert t.partitions() == [P0, P1]


def test_forget_drops_partition_and_ignores_late_releases() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)
    t.hold(P0, 1)
    t.release(P0, 0)
    t.forget(P0)
    assert t.committable() == {}
    assert t.pending_count() == 0
    assert not t.release(P0, 1)  # late ack of a revoked partition
    t.mark_committed({P0: 5})  # ignored: forgotten
    assert t.partitions() == []
    # assigned again: tracking restarts from the first offset seen
    t.hold(P0, 1)
    assert t.committable() == {}
    t.release(P0, 1)
    assert t.committable() == {P0: 2}
    t.forget(P1)  # unknown: no error


def test_release_of_unknown_offset_is_ignored() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    assert not t.release(P0, 3)
    t.hold(P0, 3)
    assert not t.release(P0, 4)
    assert t.pending_count() == 1


def test_negative_offsets_rejected() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    with pytest.raises(ValueError):
        t.hold(P0, -1)
    with pytest.raises(ValueError):
        t.skip(P0, -1)


def test_long_held_offset_keeps_memory_bounded() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.hold(P0, 0)  # e.g. held by a join window for a long time
    for offset in range(1, 20_001):
        t.hold(P0, offset)
        t.release(P0, offset)
        assert t.committable() == {}
    heap = t._parts[P0].heap
    assert len(heap) < 200
    t.release(P0, 0)
    assert t.committable() == {P0: 20_001}


def test_many_offsets_released_in_order_is_fast() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    n = 50_000
    for offset in range(n):
        t.hold(P0, offset)
    for offset in range(n):
        t.release(P0, offset)
        if offset % 1000 == 0:
            assert t.committable() == {P0: offset + 1}
            t.mark_committed({P0: offset + 1})
    assert t.committable() == {P0: n}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_commit_point_matches_brute_force(refs: list[int], rnd: random.Random) -> None:
    """Random reference counts released in random order, checked against a brute force."""
    t: OffsetTracker[str] = OffsetTracker()
    start = 7
    pending: list[int] = []
    for i, count in enumerate(refs):
        for _ in range(count):
            t.hold("p", start + i)
            pending.append(start + i)
    rnd.shuffle(pending)
    committed = start
    held = {start + i: c for i, c in enumerate(refs)}
    for offset in pending:
        assert t.release("p", offset)
        held[offset] -= 1
        if held[offset] == 0:
            del held[offset]
        expected = min(held) if held else start + len(refs)
        got = t.committable().get("p", committed)
        assert got == max(expected, committed)
        assert all(got <= o for o in held)
        if rnd.random() < 0.5:
            t.mark_committed({"p": got})
            committed = got
    assert t.pending_count() == 0
    assert t.committable().get("p", committed) == start + len(refs)
