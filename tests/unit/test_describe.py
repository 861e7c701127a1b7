"""dataflow.describe: names, descriptions, rates from samples, merging engines, renderers."""

from __future__ import annotations

import shutil
import subprocess
from types import MappingProxyType

from dataflow.describe import (
    RateRing,
    describe_topology,
    figures,
    merge,
    render_dot,
    render_text,
    step_name,
    step_names,
    sum_figures,
)
from dataflow.stats import StepStats
from dataflow.topology import Source, StepSpec, Topology, Trigger
from dataflow.wire import ChainType

NS = "seldon.default"


def _join_topology() -> Topology:
    a = Source(
        f"{NS}.model.a.outputs",
        "p",
        frozenset({"OUTPUT0"}),
        MappingProxyType({}),
        ChainType.OUTPUT_INPUT,
    )
    b = Source(
        f"{NS}.model.b.outputs",
        "p",
        None,
        MappingProxyType({"OUTPUT0": "INPUT1"}),
        ChainType.OUTPUT_INPUT,
    )
    gate = Trigger(f"{NS}.pipeline.p.inputs", "p", None)
    join = StepSpec(
        index=0,
        sources=(a, b),
        triggers=(gate,),
        sink=f"{NS}.model.c.inputs",
        join="outer",
        triggers_join="any",
        window_ms=500,
        batch_size=4,
    )
    out = StepSpec(
        index=1,
        sources=(
            Source(
                f"{NS}.model.c.outputs", "p", None, MappingProxyType({}), ChainType.OUTPUT_OUTPUT
            ),
        ),
        triggers=(),
        sink=f"{NS}.pipeline.p.outputs",
        join="inner",
        triggers_join="inner",
        window_ms=0,
    )
    return Topology("p", 3, "uid-1", (join, out), output_topic=f"{NS}.pipeline.p.outputs")


def test_step_names_come_from_the_sink() -> None:
    assert step_name(f"{NS}.model.tfsimple1.inputs") == "tfsimple1"
    assert step_name(f"{NS}.pipeline.tfsimples.outputs") == "tfsimples.outputs"
    assert step_name("custom-topic") == "custom-topic"
    assert step_names(_join_topology()) == ["c", "p.outputs"]
    errors = Source(f"{NS}.errors.errors", "p", None, MappingProxyType({}), ChainType.PASSTHROUGH)
    t = _join_topology()
    carry = [
        StepSpec(i, (errors,), (), f"{NS}.pipeline.p.outputs", "inner", "inner", 0) for i in (2, 3)
    ]
    twice = Topology("p", 1, "u", (*t.steps, *carry))
    assert step_names(twice) == ["c", "p.outputs", "p.errors#2", "p.errors#3"]


def test_description_has_every_step_setting() -> None:
    d = describe_topology(
        _join_topology(),
        state="Ready",
        groups=["g-s0", "g-s1"],
        state_topics=["g-s0-changelog", ""],
    )
    assert (d["name"], d["version"], d["uid"], d["state"]) == ("p", 3, "uid-1", "Ready")
    join, out = d["steps"]
    assert join["name"] == "c" and join["join"] == "outer" and join["window_ms"] == 500
    assert join["sources"][0]["tensors"] == ["OUTPUT0"]
    assert join["sources"][1]["renames"] == {"OUTPUT0": "INPUT1"}
    assert join["triggers"] == [
        {"topic": f"{NS}.pipeline.p.inputs", "pipeline": "p", "tensors": None}
    ]
    assert join["triggers_join"] == "any"
    assert join["batch"] == {"size": 4, "window_ms": None}
    assert (join["consumer_group"], join["state_topic"]) == ("g-s0", "g-s0-changelog")
    assert out["join"] is None and out["triggers"] == [] and out["batch"] is None
    assert out["live"] is None  # no figures given


def test_rates_over_the_window_from_successive_samples() -> None:
    ring = RateRing(window=5.0)
    assert ring.add(0.0, {"records_in": 0})["records_in"] == 0.0
    assert ring.add(2.0, {"records_in": 20})["records_in"] == 10.0
    assert ring.add(4.0, {"records_in": 60})["records_in"] == 15.0
    # Samples older than the window are dropped: the base is now the one at 2 s.
    assert ring.add(7.0, {"records_in": 60})["records_in"] == 8.0
    assert ring.add(12.0, {"records_in": 60})["records_in"] == 0.0
    # A counter that went down (a rebuilt pipeline) counts from 0.
    assert ring.add(13.0, {"records_in": 5})["records_in"] == 0.833  # 5 over 6 s


def _live(records_in: int, rate: float, lag: dict[tuple[str, int], int], error: str = "") -> dict:
    stats = StepStats(records_in=records_in, acked=records_in, state_records=1, last_error=error)
    return figures(stats, lag, {"records_in": rate, "records_out": rate})


def test_figures_are_summed_across_engines() -> None:
    one = _live(10, 2.0, {("t", 0): 3})
    two = _live(5, 1.5, {("t", 1): 4}, "boom")
    total = sum_figures([one, two, None])
    assert total["totals"]["records_in"] == 15 and total["rates"]["records_in"] == 3.5
    assert total["lag"] == {"t/0": 3, "t/1": 4} and total["lag_total"] == 7
    assert total["state_records"] == 2 and total["last_error"] == "boom"


def test_merge_sums_each_step_and_keeps_engines_apart() -> None:
    topology = _join_topology()
    base = describe_topology(topology)  # as the proxy knows it: no group, no figures
    e1 = describe_topology(
        topology, state="Ready", groups=["g0", "g1"], live=lambda i: _live(10, 1.0, {})
    )
    e2 = describe_topology(topology, state="Rebalancing", live=lambda i: _live(4, 0.5, {}, "bad"))
    merged = merge(base, {"e1": e1, "e2": e2, "e3": {"error": "unreachable", "url": "http://x"}})
    assert [s["live"]["totals"]["records_in"] for s in merged["steps"]] == [14, 14]
    assert merged["steps"][0]["consumer_group"] == "g0"
    assert merged["engine_state"] == "Rebalancing"
    assert merged["engines"]["e3"] == {"error": "unreachable", "url": "http://x"}
    assert merged["engines"]["e1"]["steps"][0]["live"]["totals"]["records_in"] == 10
    assert merged["last_errors"] == [
        {"step": "c", "reason": "bad"},
        {"step": "p.outputs", "reason": "bad"},
    ]
    # An engine running another version adds nothing.
    other = dict(e1, uid="uid-2")
    assert merge(base, {"old": other})["steps"][0]["live"]["totals"]["records_in"] == 0


def test_text_has_one_block_per_step() -> None:
    d = describe_topology(
        _join_topology(), state="Ready", live=lambda i: _live(10, 2.0, {("t", 0): 1})
    )
    text = render_text(d)
    assert text.startswith("p v3 (uid uid-1)\n  state:    Ready\n")
    assert "\nstep c (#0)\n" in text and "\nstep p.outputs (#1)\n" in text
    assert "join:     outer, window 500 ms" in text and "triggers: any join" in text
    assert "(OUTPUT0->INPUT1)" in text and "in 10 (2.0/s)" in text and "lag:      1 (t/0 1)" in text


def test_dot_has_topics_and_steps_as_nodes() -> None:
    dot = render_dot(describe_topology(_join_topology()))
    assert dot.startswith('digraph "p" {')
    assert f'"t:{NS}.model.a.outputs" -> "s:0"' in dot
    assert f'"t:{NS}.pipeline.p.inputs" -> "s:0" [style=dashed' in dot
    assert f'"s:1" -> "t:{NS}.pipeline.p.outputs";' in dot
    if shutil.which("dot"):
        rendered = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True)
        assert rendered.returncode == 0 and "<svg" in rendered.stdout, rendered.stderr


def test_a_waiting_step_and_the_engines_loop_lag_are_shown_and_merged() -> None:
    topology = _join_topology()
    stuck = StepStats(records_in=7, waiting="stream time held by a[1] (at 5 ms)")
    stuck.stuck_seconds = 12.34
    e1 = describe_topology(
        topology, state="Ready", live=lambda i: figures(stuck, {("a", 1): 9}, {})
    )
    e1["event_loop_lag"] = {"last_ms": 1.5, "max_1m_ms": 40.0}
    e2 = describe_topology(topology, state="Ready", live=lambda i: figures(StepStats(), {}, {}))
    merged = merge(describe_topology(topology), {"e1": e1, "e2": e2})
    live = merged["steps"][0]["live"]
    assert live["waiting"] == "stream time held by a[1] (at 5 ms)"
    assert live["stuck_seconds"] == 12.3
    assert merged["engines"]["e1"]["event_loop_lag"] == {"last_ms": 1.5, "max_1m_ms": 40.0}
    text = render_text(merged)
    assert "waiting:  12s without progress: stream time held by a[1] (at 5 ms)" in text
    assert "e1: Ready event loop lag 1.5 ms, max 40.0 ms in the last minute" in text
    alone = render_text(e1)
    assert "loop:    event loop lag 1.5 ms, max 40.0 ms in the last minute" in alone
