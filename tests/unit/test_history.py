"""The proxy's history of step figures and the trouble signals shown by the page, `dataflow
status` and `dataflow describe`."""

from __future__ import annotations

from typing import Any

from dataflow.cli import render
from dataflow.describe import empty_figures, render_text
from dataflow.proxy.history import History, Sample, rates, trouble_of


def samples(*rows: tuple[float, int, int, int, int]) -> list[Sample]:
    """(t, records_in, records_out, errors, lag) rows."""
    return [Sample(t, i, o, e, lag, 0) for t, i, o, e, lag in rows]


def test_all_well_is_no_trouble() -> None:
    rows = samples(*((t * 5.0, t * 10, t * 10, 0, 0) for t in range(20)))
    assert trouble_of(rows, empty_figures()) == []
    assert trouble_of([], None) == []


def test_the_watchdog_waiting_reason_is_a_stall() -> None:
    live = {**empty_figures(), "waiting": "partitions held back", "stuck_seconds": 12.4}
    assert trouble_of([], live) == ["stalled 12s: partitions held back"]


def test_lag_with_nothing_read_for_30_s_is_a_stall() -> None:
    rows = samples(*((t * 5.0, 100, 100, 0, 40) for t in range(8)))
    assert trouble_of(rows, None) == ["stalled: lag 40, nothing read for 35s"]
    # Records read in the window: no stall.
    rows[-1] = Sample(35.0, 101, 101, 0, 40, 0)
    assert trouble_of(rows, None) == []


def test_lag_growing_at_every_one_of_the_last_samples() -> None:
    rows = samples(*((t * 5.0, t * 10, t * 10, 0, 10 * t) for t in range(13)))
    assert trouble_of(rows, None) == ["lag growing: 0 -> 120 in 60s"]
    rows[-1] = Sample(60.0, 120, 120, 0, 100, 0)  # it came down: not growing
    assert trouble_of(rows, None) == []


def test_errors_in_the_last_minute_only() -> None:
    live = {**empty_figures(), "last_error": "t[0]@5: malformed"}
    rows = samples((0.0, 1, 1, 0, 0), (5.0, 2, 2, 2, 0))
    assert trouble_of(rows, live) == ["2 errors in the last minute (last: t[0]@5: malformed)"]
    rows = samples((0.0, 1, 1, 0, 0), (5.0, 2, 2, 1, 0), (70.0, 3, 3, 1, 0))
    assert trouble_of(rows, live) == []
    # A counter that went down (the pipeline was rebuilt) counts from 0.
    rows = samples((0.0, 1, 1, 5, 0), (5.0, 2, 2, 1, 0))
    assert trouble_of(rows, None) == ["1 error in the last minute"]


def test_rates_per_interval_newest_last() -> None:
    rows = samples((0.0, 0, 0, 0, 3), (5.0, 50, 40, 0, 2), (10.0, 50, 50, 0, 0))
    assert rates(rows) == [[5.0, 10.0, 8.0, 2], [0.0, 0.0, 2.0, 0]]
    assert rates(rows[:1]) == []


def described(errors: int = 0, uid: str = "u1") -> dict[str, Any]:
    live = empty_figures()
    live["totals"]["errors"] = errors
    return {
        "name": "p",
        "uid": uid,
        "steps": [
            {"name": "m1", "index": 0, "live": empty_figures()},
            {"name": "m2", "index": 1, "live": live},
            {"name": "never", "index": 2, "live": None},
        ],
    }


def test_history_annotates_a_description_and_forgets_old_versions() -> None:
    history = History(keep=60)
    for t in range(30):  # 145 s of samples, 60 kept (and one older as the base)
        history.add(t * 5.0, described(errors=1 if t == 29 else 0))
    assert len(history.samples("p", "u1", 1)) == 13
    assert history.samples("p", "u1", 2) == []
    out = history.annotate(described(errors=1))
    assert out["trouble"] == ["m2: 1 error in the last minute"]
    assert out["steps"][1]["trouble"] == ["1 error in the last minute"]
    assert len(out["steps"][0]["history"]) == 12 and out["steps"][2]["history"] == []
    assert history.trouble("p", "u1") == ["m2: 1 error in the last minute"]
    history.forget([("p", "u2")])
    assert history.samples("p", "u1", 1) == [] and history.trouble("p", "u1") == []


def test_status_and_describe_print_the_same_signals() -> None:
    record = {
        "name": "p",
        "version": 1,
        "uid": "u1",
        "state": "Ready",
        "reason": "",
        "streams": {},
        "trouble": ["m2: 1 error in the last minute"],
    }
    assert render.table([record]).splitlines()[1] == "  trouble: m2: 1 error in the last minute"
    assert "  trouble:  m2: 1 error in the last minute" in render.pipeline(record)
    d = History().annotate(described())
    d["steps"][1]["trouble"] = ["1 error in the last minute"]
    d["trouble"] = ["m2: 1 error in the last minute"]
    for step in d["steps"]:
        step.update(sources=[], triggers=[], sink="t", live=step["live"] or empty_figures())
    text = render_text(d)
    assert "  trouble:  m2: 1 error in the last minute" in text
    assert "step m2 (#1)" in text and "  trouble:  1 error in the last minute" in text
