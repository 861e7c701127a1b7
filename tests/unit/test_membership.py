"""Static member ids: stable across restarts of one engine, unique across engines on a host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dataflow.membership import instance_id
from dataflow.settings import Settings

_PRINT_ID = (
    "import sys, time; from dataflow.membership import instance_id; "
    "from dataflow.settings import Settings; print(instance_id(Settings()), flush=True); "
    "time.sleep(float(sys.argv[1]))"
)


def _engine(hold: float, tmp: Path) -> subprocess.Popen[str]:
    # A private temp folder: other engines on this machine hold slots of their own.
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.Popen(
        [sys.executable, "-c", _PRINT_ID, str(hold)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_explicit_ids_win() -> None:
    assert instance_id(Settings(kafka_group_instance_id="pod-7")) == "pod-7"
    assert instance_id(Settings(dataflow_replica_id="engine-a")) == "engine-a"


def test_two_live_engines_get_two_slots_and_a_restart_gets_its_slot_back(tmp_path: Path) -> None:
    first = _engine(5, tmp_path)
    assert first.stdout is not None
    a = first.stdout.readline().strip()
    second = _engine(5, tmp_path)
    assert second.stdout is not None
    b = second.stdout.readline().strip()
    assert a != b, "two engines on one host"
    first.kill()  # kill -9: the kernel releases its lock
    first.wait()
    first.stdout.close()
    time.sleep(0.1)
    again = _engine(0, tmp_path)
    out, _ = again.communicate(timeout=30)
    second.kill()
    second.wait()
    second.stdout.close()
    assert out.strip() == a, "the restarted engine takes the dead one's slot"
