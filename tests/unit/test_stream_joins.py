"""Joins, gates and batches on stream time, and the state they report for a changelog."""

from __future__ import annotations

from dataflow.batches import Batcher
from dataflow.gates import TriggerGate
from dataflow.joins import Joiner
from dataflow.windows import Entry, Output

W = 1_000
UNKNOWN = -(2**62)  # stream time not known yet (a source not read)


def bar(left: bytes, right: bytes) -> bytes:
    return left + b"|" + right


def joiner(kind: str = "inner") -> Joiner[str]:
    return Joiner(2, kind, W, bar)  # type: ignore[arg-type]


def test_a_backlog_of_one_source_waits_for_the_other() -> None:
    """The failure of wall-clock windows: one source's backlog is read long before the other's."""
    j = joiner()
    outputs = []
    for i in range(100):  # source 0's backlog, 100 s of traffic, read while source 1 is unread
        step = j.add(0, f"k{i}".encode(), f"a{i}".encode(), i * 1_000, f"a{i}", UNKNOWN)
        assert step.outputs == [] and step.released == []
    assert j.held() == 100
    for i in range(100):  # then source 1's, stream time following it
        ts = i * 1_000
        outputs += j.add(1, f"k{i}".encode(), f"b{i}".encode(), ts, f"b{i}", ts).outputs
    assert [o.value for o in outputs] == [f"a{i}|b{i}".encode() for i in range(100)]


def test_windows_close_when_stream_time_passes_them() -> None:
    j = joiner()
    j.add(0, b"k", b"a", 10_000, "a", 10_000, ident=b"a")
    assert j.expire(10_000 + W).released == [], "a partner exactly W later still matches"
    step = j.expire(10_000 + W + 1)
    assert step.released == ["a"]
    assert [e.ident for e in step.removed] == [b"a"]


def test_wall_clock_closes_windows_only_when_given() -> None:
    j = joiner("outer")
    j.add(0, b"k", b"a", 50, "a", 50, wall_ms=1_000_000)
    assert j.next_wall_deadline() == 1_000_000 + W
    assert j.expire(60).outputs == []
    step = j.expire(60, 1_000_000 + W)
    assert step.outputs == [Output(b"k", b"a", 50, "a", ("a",))]


def test_a_late_record_matches_what_is_held_but_is_not_kept() -> None:
    j = joiner()
    j.add(0, b"k", b"a", 5_000, "a", 5_500)
    step = j.add(1, b"k", b"b", 4_200, "b", 5_500)  # 1.3 s behind stream time: late
    assert [o.value for o in step.outputs] == [b"a|b"]
    assert step.released == ["b"] and step.stored == []
    assert j.late == 1 and j.held() == 1


def test_an_outer_join_emits_a_late_unmatched_record_alone() -> None:
    j = joiner("outer")
    step = j.add(1, b"k", b"b", 1_000, "b", 9_000)
    assert step.outputs == [Output(b"k", b"b", 1_000, "b", ("b",))]
    assert step.released == ["b"]


def test_stored_lists_new_entries_and_outer_match_flags() -> None:
    j = joiner("outer")
    first = j.add(0, b"k", b"a", 100, "a", 100, ident=b"ia")
    assert [(e.ident, e.matched) for e in first.stored] == [(b"ia", False)]
    second = j.add(1, b"k", b"b", 200, "b", 200, ident=b"ib")
    assert sorted((e.ident, e.matched) for e in second.stored) == [(b"ia", True), (b"ib", True)]
    closed = j.expire(10_000)
    assert closed.outputs == [], "both matched: no lone emission"
    assert sorted(e.ident for e in closed.removed) == [b"ia", b"ib"]


def test_restored_entries_join_later_records_and_emit_nothing_when_loaded() -> None:
    j = joiner()
    j.load(Entry("j", 0, b"k", b"a", 1_000, "a", b"ia"))
    assert j.held() == 1
    step = j.add(1, b"k", b"b", 1_200, "b", 1_200, ident=b"ib")
    assert [o.value for o in step.outputs] == [b"a|b"]


def test_a_record_consumed_again_replaces_its_own_entry() -> None:
    j = joiner()
    j.load(Entry("j", 0, b"k", b"a", 1_000, "a-restored", b"ia"))
    step = j.add(0, b"k", b"a", 1_000, "a-again", 1_000, ident=b"ia")
    assert step.outputs == [] and step.released == ["a-restored"]
    assert j.held() == 1
    out = j.add(1, b"k", b"b", 1_000, "b", 1_000, ident=b"ib").outputs
    assert len(out) == 1, "one copy of a, one output"


def test_an_outer_restored_unmatched_entry_is_emitted_when_its_window_closes() -> None:
    j = joiner("outer")
    j.load(Entry("j", 1, b"k", b"b", 1_000, "b", b"ib"))
    step = j.expire(1_000 + W + 1)
    assert step.outputs == [Output(b"k", b"b", 1_000, "b", ("b",))]


def test_gate_waits_for_a_trigger_read_later_in_a_backlog() -> None:
    g: TriggerGate[str] = TriggerGate(1, "inner", W)
    data = g.add_data(b"k", b"d", 1_000, "d", UNKNOWN, ident=b"id")
    assert data.outputs == [] and [e.kind for e in data.stored] == ["d"]
    step = g.add_trigger(0, b"k", 1_500, "t", 1_500, ident=b"it")
    assert step.outputs == [Output(b"k", b"d", 1_500, "d", ("d", "t"))]
    assert [e.ident for e in step.removed] == [b"id"]
    assert [e.ident for e in step.stored] == [b"it"]


def test_gate_restores_triggers_and_waiting_data() -> None:
    g: TriggerGate[str] = TriggerGate(1, "inner", W)
    g.load(Entry("t", 0, b"k", b"", 1_000, "t", b"it"))
    g.load(Entry("d", -1, b"k2", b"d2", 1_000, "d2", b"id2"))
    passed = g.add_data(b"k", b"d", 1_100, "d", 1_100).outputs
    assert [o.value for o in passed] == [b"d"]
    assert [o.value for o in g.add_trigger(0, b"k2", 1_200, "t2", 1_200).outputs] == [b"d2"]


def test_batch_reports_its_entries_and_is_stamped_with_the_latest_part() -> None:
    b: Batcher[str] = Batcher(3, None, lambda vs: b"+".join(vs), lambda v: 1)
    stored = []
    for i, ts in enumerate((500, 900, 700)):
        step = b.add(None, f"v{i}".encode(), ts, f"r{i}", 0, ident=f"b{i}".encode())
        stored += step.stored
    assert [e.ident for e in stored] == [b"b0", b"b1", b"b2"]
    assert step.outputs[0].timestamp_ms == 900
    assert [e.ident for e in step.removed] == [b"b0", b"b1", b"b2"]


def test_a_full_batch_is_sent_early() -> None:
    b: Batcher[str] = Batcher(10, None, lambda vs: b"+".join(vs), lambda v: 1)
    b.add(b"k", b"v0", 1, "r0", 0)
    b.load(Entry("b", -1, b"k", b"v1", 2, "r1", b"b1"), b"k", 0)
    step = b.full()
    assert [o.value for o in step.outputs] == [b"v0+v1"]
    assert b.held() == 0


def test_records_closed_on_stream_time_do_not_pile_up_in_the_wall_clock_queue() -> None:
    """While a source lags, windows close on stream time only; the closed records must not
    stay referenced by the wall clock's queue (a join catching up held every record it had
    read: 183,745 entries after 23 s, and full garbage collections of a second)."""
    j = joiner()
    for i in range(10_000):
        ts = i * 10
        j.add(i % 2, f"k{i}".encode(), b"v", ts, f"t{i}", ts, wall_ms=1_000_000)
        j.expire(ts)  # stream time follows the records; the wall clock is never consulted
    window = j._window
    assert j.held() <= 2 * W // 10 + 2
    assert len(window._wall_fifo) + len(window._wall_heap) <= 2 * window.count + 64
    assert len(window._fifo) + len(window._heap) <= 2 * window.count + 64
