"""scripts/bench.py without a broker: the stateful parts' pipelines parse, and the table says
plainly when a run never finished (a stalled catch-up is a row, not a hang)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from dataflow.specs.loader import parse_spec
from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = module  # dataclasses look their module up
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # it puts scripts/ first, whose modules would shadow others
    return module


@pytest.mark.parametrize("kind", ["join", "batch", "trigger"])
def test_stateful_pipelines_parse(bench: ModuleType, kind: str) -> None:
    flow = bench.Flow.fresh(kind)
    parsed = parse_spec(flow.spec(), f"{kind}.yaml")
    assert parsed is not None
    assert flow.sink.endswith(".model.c.inputs")
    assert len(flow.sources) == (1 if kind == "batch" else 2)
    assert flow.expected(1000) == (100 if kind == "batch" else 1000)


def test_batch_ids_end_on_whole_batches(bench: ModuleType) -> None:
    assert bench.stateful_ids(4_005, "batch", 4) == 4_000
    assert bench.stateful_ids(4_005, "join", 4) == 4_005
    assert bench.stateful_ids(3, "batch", 4) == 40


def _run(kind: str, complete: bool, **extra: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "kind": kind,
        "complete": complete,
        "count": 4_000 if complete else 1_234,
        "expected": 4_000,
        "waited_s": 61.2,
        "load_before": 1.0,
        "load_after": 1.5,
    }
    if complete:
        run.update(rate=10_000.0, cpu_us_per_record=20.0, hwm_mib=50.0, to_all_s=1.0)
        run.update(rss_mib=40.0, procs=1, catchup_s=10.0, sigterm_s=0.4, backlog=4_000)
    else:
        run.update(why="no new output for 60 s", sigterm_s=0.5, backlog=3_000)
    run.update(extra)
    return run


def test_table_names_an_incomplete_stateful_run(bench: ModuleType) -> None:
    runs = {"raw": [_run("raw", True)], "engine": [_run("engine", False)]}
    part = {
        "step": "join",
        "ids": 4_000,
        "partitions": 4,
        "settings": {"SELDON_NUM_CORES": "2"},
        "load_before": 1.0,
        "load_after": 2.0,
        "runs": runs,
        "median": {k: bench._medians(rs, bench.MEDIAN_KEYS) for k, rs in runs.items()},
    }
    text = bench.table({"join-partitions": part}, 1)
    assert "4 partitions, SELDON_NUM_CORES=2" in text, text
    assert "did not complete within 61 s: 1,234 of 4,000 outputs" in text, text
    assert "10,000/s" in text, text  # the raw loop's figure stays


def test_table_names_a_catchup_that_never_finished(bench: ModuleType) -> None:
    runs = {
        "0": {"raw": [_run("raw", True)], "engine": [_run("engine", True)]},
        "3": {"raw": [_run("raw", True)], "engine": [_run("engine", False)]},
    }
    keys = ("rate", "cpu_us_per_record", "catchup_s")
    part = {
        "rate": 2000,
        "partitions": 4,
        "down_s": 60.0,
        "load_before": 1.0,
        "load_after": 2.0,
        "runs": runs,
        "median": {
            h: {k: bench._medians(rs, keys) for k, rs in by.items()} for h, by in runs.items()
        },
    }
    text = bench.table({"catchup": part}, 1)
    assert "no CPU hogs" in text and "3 CPU hogs" in text, text
    assert "did not catch up within 61 s: 1,234 of 4,000 outputs (no new output for 60 s)" in text
    ratio = next(line for line in text.splitlines() if "hogs / without" in line)
    assert ratio.split("|")[4].strip() == "-", ratio  # no engine ratio without a rate


@pytest.mark.parametrize("kind", ["join", "batch", "trigger"])
def test_the_in_process_step_bench_runs_every_kind(kind: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_step.py"
    done = subprocess.run(
        [sys.executable, str(script), kind, "2000"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outputs = {"join": 2000, "batch": 200, "trigger": 2000}[kind]
    assert "2000 ids" in done.stdout and f"; {outputs} outputs," in done.stdout, done.stdout
