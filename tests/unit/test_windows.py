"""`dataflow.windows`: `Output` keeps a frozen dataclass's behaviour with its own `__init__`;
`Window` queues deadlines in order (a FIFO, and a heap for the out-of-order ones)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random

import pytest

from dataflow.windows import Entry, EntryKind, Output, Window


def test_output_is_a_frozen_dataclass_with_its_fields_in_order() -> None:
    out = Output(b"k", b"v", 5, "a", ("a", "b"))
    assert [f.name for f in dataclasses.fields(out)] == [
        "key",
        "value",
        "timestamp_ms",
        "origin",
        "contributors",
        "error",
    ]
    assert (out.key, out.value, out.timestamp_ms, out.origin, out.contributors, out.error) == (
        b"k",
        b"v",
        5,
        "a",
        ("a", "b"),
        "",
    )
    assert out == Output(key=b"k", value=b"v", timestamp_ms=5, origin="a", contributors=("a", "b"))
    assert hash(out) == hash(Output(b"k", b"v", 5, "a", ("a", "b"), ""))
    assert out != Output(b"k", b"v", 5, "a", ("a", "b"), "bad")
    assert repr(out) == (
        "Output(key=b'k', value=b'v', timestamp_ms=5, origin='a', contributors=('a', 'b'), "
        "error='')"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.value = b"w"  # type: ignore[misc]
    assert dataclasses.replace(out, error="e") == Output(b"k", b"v", 5, "a", ("a", "b"), "e")
    assert pickle.loads(pickle.dumps(out)) == out
    assert copy.copy(out) == out
    assert not hasattr(out, "__dict__")


def entry(name: str, deadline_ms: int, wall_deadline_ms: int | None = None) -> Entry[str]:
    return Entry(
        EntryKind.JOIN, 0, b"k", b"v", 0, name, name.encode(), deadline_ms, wall_deadline_ms
    )


def drain(window: Window[str], now_ms: int, wall_ms: int | None = None) -> list[str]:
    out = []
    while (record := window.pop_due(now_ms, wall_ms)) is not None:
        out.append(record.token)
    return out


def queued(window: Window[str]) -> tuple[int, int, int, int]:
    return (
        len(window._fifo),
        len(window._heap),
        len(window._wall_fifo),
        len(window._wall_heap),
    )


def test_out_of_order_deadlines_leave_in_deadline_order_and_ties_in_push_order() -> None:
    window: Window[str] = Window(100)
    deadlines = [10, 20, 15, 20, 15, 10, 30, 20]
    for i, deadline in enumerate(deadlines):
        window.push(entry(f"r{i}", deadline))
    # In order: r0 r1 r3 r6 in the FIFO; r2 r4 r5 r7 came after a later deadline: the heap.
    assert queued(window) == (4, 4, 0, 0)
    expected = [f"r{i}" for _, i in sorted((d, i) for i, d in enumerate(deadlines))]
    assert expected == ["r0", "r5", "r2", "r4", "r1", "r3", "r7", "r6"]
    assert [e.token for e in window.live()] == expected
    assert window.next_deadline() == 10
    assert not window.due(9) and window.due(10)
    assert drain(window, 9) == []
    assert drain(window, 15) == ["r0", "r5", "r2", "r4"]
    assert window.next_deadline() == 20 and window.count == 4
    assert drain(window, 25) == ["r1", "r3", "r7"]
    assert drain(window, 1000) == ["r6"]
    assert window.next_deadline() is None and window.count == 0 and queued(window) == (0, 0, 0, 0)


@pytest.mark.parametrize("wall", [False, True])
def test_random_deadlines_leave_as_a_sort_by_deadline_then_push_order(wall: bool) -> None:
    rng = random.Random(7)
    window: Window[str] = Window(5)
    pushed: list[tuple[int, int]] = []
    now = 0
    for i in range(2000):
        deadline = now + rng.randrange(-3, 8)  # mostly in order, ties and stragglers
        pushed.append((deadline, i))
        if wall:  # the wall deadline is wall_ms + W; the stream deadline never comes due
            window.push(entry(f"r{i}", 10**9), deadline - 5)
        else:
            window.push(entry(f"r{i}", deadline))
        now += rng.randrange(0, 2)
    assert window._heap or window._wall_heap, "no deadline went out of order"
    got = drain(window, 10**6) if not wall else drain(window, 0, 10**6)
    assert got == [f"r{i}" for _, i in sorted(pushed)]


def test_popping_by_one_deadline_at_a_time_matches_the_order_too() -> None:
    rng = random.Random(3)
    window: Window[str] = Window(5)
    pushed = [(rng.randrange(0, 50), i) for i in range(300)]
    for deadline, i in pushed:
        window.push(entry(f"r{i}", deadline))
    got: list[str] = []
    while (deadline := window.next_deadline()) is not None:
        assert window.due(deadline)
        got += drain(window, deadline)
    assert got == [f"r{i}" for _, i in sorted(pushed)]


def test_grace_pushes_the_record_again_at_its_deadlines_plus_grace() -> None:
    window: Window[str] = Window(100, grace_ms=50)
    late, early = entry("late", 30), entry("early", 40)
    window.push(late, wall_ms=1000)  # wall deadline 1100
    window.push(early, wall_ms=1000)
    window.push(entry("later", 200), wall_ms=1001)
    record = window.pop_due(35)
    assert record is late and not record.alive and window.count == 2
    window.grace(record)  # deadline 80 < 200 (the FIFO's last): out of order, into the heap
    assert (record.deadline_ms, record.wall_deadline_ms, record.grace) == (80, 1150, True)
    assert window.count == 3 and record.alive
    assert window._heap and window.next_deadline() == 40
    assert drain(window, 79) == ["early"]
    assert window.next_deadline() == 80
    # Its first wall-clock item (1100) is stale now: the record leaves at 1150, not before.
    assert window.next_wall_deadline() == 1101  # "later"; "early" (1100) is dead
    assert drain(window, 79, 1149) == ["later"]
    assert window.next_wall_deadline() == 1150
    assert drain(window, 79, 1150) == ["late"]
    assert window.count == 0 and window.next_deadline() is None


def test_grace_in_order_goes_to_the_fifo() -> None:
    window: Window[str] = Window(10, grace_ms=100)
    window.push(entry("a", 5))
    window.push(entry("b", 6))
    record = window.pop_due(5)
    assert record is not None
    window.grace(record)  # 105 >= 6
    assert queued(window) == (2, 0, 0, 0)
    assert drain(window, 104) == ["b"]
    assert drain(window, 105) == ["a"]


def test_stale_items_are_skipped() -> None:
    window: Window[str] = Window(100)
    records = [entry(f"r{i}", d, w) for i, (d, w) in enumerate([(10, 500), (5, 400), (20, 300)])]
    for record in records:
        window.push(record)  # wall deadlines given with the records: 500, 400, 300
    assert queued(window) == (2, 1, 1, 2)
    window.kill(records[1])  # the heap's front on the window clock
    window.kill(records[1])  # killing twice counts once
    assert window.count == 2
    assert window.next_deadline() == 10 and window.next_wall_deadline() == 300
    assert [e.token for e in window.live()] == ["r0", "r2"]
    assert window.pop_due(10) is records[0]
    # r0 left by the window clock: its wall item (500) is stale; r1's (400) is dead.
    assert window.next_wall_deadline() == 300
    assert drain(window, 0, 1000) == ["r2"]
    assert window.next_wall_deadline() is None and window.next_deadline() is None
    assert queued(window) == (0, 0, 0, 0)


@pytest.mark.parametrize("by_wall", [False, True])
def test_compaction_bounds_the_queues_of_the_clock_records_do_not_leave_by(by_wall: bool) -> None:
    """Records leave by one clock only; the other clock's FIFO and heap (some deadlines out of
    order) would keep every one of them without compaction."""
    rng = random.Random(11)
    window: Window[str] = Window(10)
    used_heaps = [0, 0]
    for i in range(20_000):
        ts = i + rng.randrange(0, 5)  # jitter: some deadlines go to the heaps
        window.push(entry(f"r{i}", window.deadline(ts)), wall_ms=ts)
        # Checked as the push compacts: popping lowers the count, not the other clock's queue.
        fifo, heap, wall_fifo, wall_heap = queued(window)
        limit = 2 * window.count + 64
        assert fifo + heap <= limit and wall_fifo + wall_heap <= limit
        used_heaps[0] = max(used_heaps[0], heap)
        used_heaps[1] = max(used_heaps[1], wall_heap)
        if by_wall:
            drain(window, 0, i)  # stream time stands still; the wall clock closes windows
        else:
            drain(window, i)  # the wall clock is never consulted
        assert window.count <= 20
    assert used_heaps[0] > 0 and used_heaps[1] > 0
