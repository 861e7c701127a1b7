"""A short chaos run (scripts/chaos.py) on the shared broker: an inner join under restarts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.kafka


def _chaos() -> ModuleType:
    name = "dataflow_chaos"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


chaos = _chaos()


def _short(fault: str, **overrides: float) -> Any:
    """The inner join (1 s window) at 500 ids/s with short phases: well under a minute."""
    settings: dict[str, float] = {
        "rate": 500,
        "down": 5,
        "kills": 1,
        "lead": 2,
        "after": 4,
        "quiet": 8,
        "drain_cap": 40,
        **overrides,
    }
    return chaos.Config(
        case="join", fault=fault, window_ms=1000, kill_gap=(1.0, 3.0), seed=7, **settings
    )


def _summary(result: Any) -> str:
    return f"{chaos.table([result])}\ndetails: {result.details}\nlogs: {result.logs}"


def test_chaos_self_check() -> None:
    chaos._self_check()


async def test_join_loses_nothing_across_graceful_restart_and_kill9(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    result = await chaos.run_one(
        _short("graceful+kill9"), bootstrap=bootstrap, logs=tmp_path, tag=unique
    )
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert result.lost == 0, _summary(result)


async def test_join_duplicates_nothing_across_graceful_restart(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    result = await chaos.run_one(_short("graceful"), bootstrap=bootstrap, logs=tmp_path, tag=unique)
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert (result.lost, result.duplicated) == (0, 0), _summary(result)
