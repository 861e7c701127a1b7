"""The grace period of join and trigger windows: a partner delayed past the window still joins.

A record's window closes W after it on stream time (or W of wall clock after it arrived, once
every source is caught up); a record that matched nothing is then kept for the grace G, so a
partner written late (a broker failover, a slow model) still finds it. Past W + G a record is
late: it matches what is held, and if nothing, goes to the error topic with a reason.
"""

from __future__ import annotations

from dataflow.gates import TriggerGate
from dataflow.joins import Joiner
from dataflow.windows import Output

W = 1_000
G = 10_000


def bar(left: bytes, right: bytes) -> bytes:
    return left + b"|" + right


def joiner(kind: str = "inner", grace: int = G) -> Joiner[str]:
    return Joiner(2, kind, W, bar, grace_ms=grace)  # type: ignore[arg-type]


def test_a_partner_delayed_past_the_window_joins_within_the_grace() -> None:
    j = joiner()
    j.add(0, b"k", b"a", 5_000, "a", 5_000, ident=b"ia")
    # Other traffic moves stream time 8 s on while the partner's write waits for a new leader.
    closed = j.expire(13_000)
    assert closed.outputs == [] and closed.released == [] and closed.removed == []
    assert j.held() == 1
    step = j.add(1, b"k", b"b", 5_000, "b", 13_000, ident=b"ib")
    assert [o.value for o in step.outputs] == [b"a|b"]
    assert step.released == ["b"], "past its window and matched: not kept"
    assert j.late == 0
    # Its partner leaves once the grace is over: nothing left behind.
    assert j.expire(5_000 + W + G + 1).released == ["a"]
    assert j.held() == 0


def test_without_grace_the_same_partner_is_late() -> None:
    j = joiner(grace=0)
    j.add(0, b"k", b"a", 5_000, "a", 5_000)
    j.expire(13_000)
    step = j.add(1, b"k", b"b", 5_000, "b", 13_000)
    assert [o.error for o in step.outputs] != [""]
    assert j.late == 1


def test_a_record_late_past_the_grace_goes_to_the_error_topic_with_a_reason() -> None:
    j = joiner()
    step = j.add(1, b"k", b"b", 5_000, "b", 5_000 + W + G + 1)
    assert len(step.outputs) == 1
    output = step.outputs[0]
    assert output.origin == "b" and output.contributors == ("b",)
    assert output.error.startswith("late for the join: 11001 ms behind stream time")
    assert "grace period (10000 ms)" in output.error
    assert step.released == ["b"] and step.stored == []
    assert j.late == 1 and j.held() == 0


def test_matched_records_leave_at_window_close_only_lone_ones_stay() -> None:
    j = joiner()
    j.add(0, b"k1", b"a1", 1_000, "a1", 1_000)
    j.add(1, b"k1", b"b1", 1_000, "b1", 1_000)
    j.add(0, b"k2", b"a2", 1_000, "a2", 1_000)
    step = j.expire(1_000 + W + 1)
    assert sorted(step.released) == ["a1", "b1"], "the joined pair leaves with its window"
    assert j.held() == 1, "the lone record waits for the grace"


def test_a_partner_arriving_within_the_grace_but_past_its_own_window_is_kept() -> None:
    """Both sides late: the first late one waits for the second."""
    j = joiner()
    step = j.add(0, b"k", b"a", 1_000, "a", 6_000, ident=b"ia")
    assert step.outputs == [] and [e.ident for e in step.stored] == [b"ia"]
    assert j.expire(6_000).released == [], "past its window, kept for the grace"
    step = j.add(1, b"k", b"b", 1_000, "b", 9_000)
    assert [o.value for o in step.outputs] == [b"a|b"]


def test_wall_clock_closing_keeps_lone_records_for_the_grace_too() -> None:
    j = joiner()
    j.add(0, b"k", b"a", 50, "a", 50, wall_ms=1_000_000)
    assert j.expire(50, 1_000_000 + W).released == []
    assert j.next_wall_deadline() == 1_000_000 + W + G
    step = j.add(1, b"k", b"b", 50, "b", 50, wall_ms=1_000_000 + G)
    assert [o.value for o in step.outputs] == [b"a|b"]
    assert sorted(j.expire(50, 1_000_000 + W + G).released) == ["a", "b"]


def test_outer_emits_alone_at_window_close_then_joined_with_a_late_partner() -> None:
    j = joiner("outer")
    j.add(0, b"k", b"a", 1_000, "a", 1_000, ident=b"ia")
    closed = j.expire(1_000 + W + 1)
    assert closed.outputs == [Output(b"k", b"a", 1_000, "a", ("a",))]
    assert closed.released == [] and [(e.ident, e.matched) for e in closed.stored] == [
        (b"ia", True)
    ]
    late = j.add(1, b"k", b"b", 1_000, "b", 5_000)
    assert [o.value for o in late.outputs] == [b"a|b"], "the complete set goes out too"
    assert late.released == ["b"]
    end = j.expire(1_000 + W + G + 1)
    assert end.outputs == [], "never emitted alone twice"
    assert end.released == ["a"] and j.held() == 0


def test_restored_lone_entry_past_its_window_waits_out_the_grace() -> None:
    first = joiner()
    entry = first.add(0, b"k", b"a", 1_000, "a", 1_000, ident=b"ia").stored[0]
    restored = joiner()
    restored.load(entry)
    assert restored.expire(4_000).released == []
    step = restored.add(1, b"k", b"b", 1_000, "b", 4_000)
    assert [o.value for o in step.outputs] == [b"a|b"]


def test_gate_lets_data_through_with_a_trigger_delayed_within_the_grace() -> None:
    g: TriggerGate[str] = TriggerGate(1, "inner", W, grace_ms=G)
    g.add_data(b"k", b"d", 1_000, "d", 1_000, ident=b"id")
    assert g.expire(7_000).released == []
    step = g.add_trigger(0, b"k", 1_000, "t", 7_000)
    assert [o.value for o in step.outputs] == [b"d"]


def test_gate_data_late_past_the_grace_goes_to_the_error_topic() -> None:
    g: TriggerGate[str] = TriggerGate(1, "inner", W, grace_ms=G)
    step = g.add_data(b"k", b"d", 1_000, "d", 1_000 + W + G + 1)
    assert [o.error.split(":")[0] for o in step.outputs] == ["late for the trigger"]
    assert step.released == ["d"] and g.late == 1


def test_any_join_has_no_grace() -> None:
    j = joiner("any")
    j.add(0, b"k", b"a", 1_000, "a", 1_000)
    assert j.held() == 1
    j.expire(1_002)
    assert j.held() == 0
