"""A short run of scripts/bench.py (throughput part only): the table and JSON come out, and
both contenders wrote every record. Timing is never asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.kafka

RECORDS = 20_000


def test_bench_throughput_smoke(tmp_path: Path, bootstrap: str) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        "--bootstrap-servers",
        bootstrap,
        "--parts",
        "throughput",
        "--records",
        str(RECORDS),
        "--runs",
        "1",
        "--json",
        str(out),
        "--logs",
        str(tmp_path / "logs"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, cwd=REPO)
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    result = json.loads(out.read_text())
    assert result["errors"] == {}, report
    part = result["parts"]["throughput"]
    assert set(part["runs"]) == {"raw", "engine"}, report
    for kind, runs in part["runs"].items():
        assert len(runs) == 1, report
        run = runs[0]
        assert run["count"] == RECORDS, f"{kind}: {run}"
        assert run["rate"] > 0 and run["cpu_s"] > 0 and run["hwm_mib"] > 0, f"{kind}: {run}"
        assert run["first_append_ms"] <= run["last_append_ms"], f"{kind}: {run}"
    table = result["table"]
    assert table.splitlines()[0].startswith("| part |"), table
    assert "python -m dataflow" in table and "records/s" in table, table
    assert table in done.stdout, report


def test_bench_stateful_smoke(tmp_path: Path, bootstrap: str) -> None:
    """join, batch and trigger over a small backlog, and a short catch-up with one hog: every
    pre-loaded output arrives; the catch-up either caught up or says how far it got."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        "--bootstrap-servers",
        bootstrap,
        "--parts",
        "join,batch,trigger,catchup",
        "--quick",
        "--stateful-records",
        "2000",
        "--catchup-rate",
        "200",
        "--catchup-warmup",
        "3",
        "--catchup-down",
        "4",
        "--catchup-timeout",
        "60",
        "--catchup-hogs",
        "1",
        "--json",
        str(out),
        "--logs",
        str(tmp_path / "logs"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=REPO)
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["errors"] == {}, report
    assert done.returncode == 0, report
    for name, outputs in (("join", 2000), ("batch", 200), ("trigger", 2000)):
        part = result["parts"][name]
        for kind, runs in part["runs"].items():
            run = runs[0]
            assert run["complete"], f"{name} {kind}: {run}"
            assert run["count"] == (2000 if kind == "raw" else outputs), f"{name} {kind}: {run}"
            assert run["rate"] > 0 and run["cpu_us_per_record"] > 0, f"{name} {kind}: {run}"
    catchup = result["parts"]["catchup"]
    assert set(catchup["runs"]) == {"0", "1"}, report
    for by in catchup["runs"].values():
        run = by["engine"][0]
        assert run["backlog"] > 0 and run["sigterm_s"] >= 0, run
        assert run["complete"] or run["why"], run
    table = result["table"]
    assert "inner join (1 s window)" in table and "batch of 10" in table, table
    assert "join catch-up" in table and "hogs / without" in table, table
    assert table in done.stdout, report
