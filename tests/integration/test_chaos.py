"""Short chaos runs (scripts/chaos.py) on the shared broker: an inner join under restarts (also at
4 partitions under busy loops, the machine of issue 19), a chain of two replicas under replica
kills; on a private 3-node cluster, the join across a partition leader's kill -9 (issue 20); the
harness's figures on made-up arrivals, its busy loops and its health probe."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def _short(fault: str, case: str = "join", **overrides: float) -> Any:
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
        case=case, fault=fault, window_ms=1000, kill_gap=(1.0, 3.0), seed=7, **settings
    )


def _summary(result: Any) -> str:
    return f"{chaos.table([result])}\ndetails: {result.details}\nlogs: {result.logs}"


def _running(pids: list[int]) -> list[int]:
    """Those of `pids` that still exist (also as zombies: the harness must reap its loops)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _with_in_command_line(text: str) -> list[int]:
    """The processes whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def _cluster_gone(folder: str) -> bool:
    return not Path(folder).exists() and not _with_in_command_line(folder)


def test_chaos_self_check() -> None:
    chaos._self_check()


def test_keys_replicas_and_figures() -> None:
    assert chaos.record_key(7, 4) == "3.c-0000007"
    assert chaos.key_id("3.c-0000007") == chaos.key_id("c-0000007") == "c-0000007"
    lost = {chaos.ID_FORMAT.format(n) for n in (1, 5, 9, 13, 2, 6, 100)}
    assert chaos.id_ranges(lost, 4) == ["p1: 1-13 (4 ids)", "p2: 2-6 (2 ids)", "p0: 100"]
    assert [chaos.replica_name(i) for i in (0, 1, 25, 26)] == [
        "engine-a",
        "engine-b",
        "engine-z",
        "engine-aa",
    ]
    # Arrivals (monotonic s, records, newest input timestamp ms); a stop at t=10 (wall 1000 s).
    by_partition = {
        0: [(9.0, 5, 999_000), (10.1, 5, 999_900), (12.0, 5, 999_950), (13.5, 5, 1_000_500)],
        1: [(9.5, 5, 999_500), (10.4, 5, 1_000_300)],
        2: [(9.0, 5, 999_000)],
    }
    # In-flight outputs (10.1) and replays of older input (12.0) are not a resumption.
    assert chaos.resume_after(10.0, 1000.0, by_partition) == pytest.approx(
        {0: 3.5, 1: 0.4, 2: None}
    )
    # Longest time without output after the stop (until the next one at 13): in flight at
    # 10.1, then 1.9 s; the partition with nothing after the stop: 0.
    assert chaos.stall_after(10.0, 13.0, by_partition) == pytest.approx({0: 1.9, 1: 0.4, 2: 0.0})
    # A stall going on at the next stop counts until then only.
    assert chaos.stall_after(10.0, 11.0, by_partition)[0] == pytest.approx(0.9)
    assert chaos.stall_after(10.0, 12.5, by_partition)[0] == pytest.approx(1.9)
    gaps = chaos.partition_gaps(by_partition)
    assert gaps[0] == pytest.approx((1.9, 10.1)) and gaps[1] == pytest.approx((0.9, 9.5))
    assert gaps[2] == (0.0, 9.0)
    assert chaos.stalled([(0.0, 1), (0.5, 1), (3.0, 1), (3.2, 1)]) == pytest.approx(2.5)


def test_cpu_hogs_run_in_their_own_groups_and_are_stopped() -> None:
    hogs = chaos.CpuHogs(2).start()
    try:
        pids = list(hogs.pids)
        assert len(pids) == 2 and hogs.alive() == 2
        assert all(os.getpgid(pid) == pid != os.getpgid(0) for pid in pids)
        time.sleep(0.5)
    finally:
        hogs.stop()
    hogs.stop()  # idempotent, as in the harness's finally
    assert not _running(pids)
    stats = hogs.stats()
    assert stats["count"] == 2 and stats["cpu_s"] > 0, stats
    assert chaos.CpuHogs(0).start().stats()["pids"] == []


def test_health_probe_counts_slow_replies_silence_and_ignores_stops() -> None:
    delay = [0.0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay[0])
            with contextlib.suppress(OSError):  # the probe gave up waiting
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    target: list[Any] = [(1, port)]
    probe = chaos.HealthProbe(
        1, lambda _: target[0], time.monotonic(), every=0.1, timeout=0.5, slow=0.2
    ).start()
    try:
        time.sleep(0.5)  # fast replies
        delay[0] = 0.3
        time.sleep(0.8)  # slow replies (over 0.2 s)
        delay[0] = 1.0
        time.sleep(1.3)  # no reply within 0.5 s: silent
        delay[0] = 0.0
        time.sleep(0.6)  # answers again
        target[0] = None  # stopped on purpose: not probed
        time.sleep(0.3)
        target[0] = (2, chaos.free_port())  # a new process, not listening yet: starting
        time.sleep(0.4)
    finally:
        probe.stop()
        server.shutdown()
        server.server_close()
    stats = probe.total().summary()
    assert stats["slow_over_1s"] >= 2, stats  # (over `slow`, 0.2 s here)
    assert stats["timeouts"] >= 2 and stats["no_reply"] == stats["timeouts"], stats
    assert 0.3 <= stats["worst_reply_s"] < 0.5, stats
    assert 1.0 <= stats["longest_silence_s"] <= 2.0, stats
    assert stats["refused_while_starting"] >= 2 and not stats["errors_after_first_reply"], stats


def test_ownership_from_engine_logs() -> None:
    ref = time.mktime((2026, 1, 2, 10, 0, 0, 0, 0, -1))  # 10:00:00 local time
    log = "\n".join(
        [
            "===== chaos: engine start #1 =====",
            "10:00:01.000 DEBUG   [pipeline=p step=0] assigned ['a[0]', 'a[1]', 'a[2]', 'a[3]']",
            "10:00:01.100 DEBUG   [pipeline=p step=1] assigned ['b[0]', 'b[1]', 'b[2]', 'b[3]']",
            "10:00:02.000 DEBUG   [pipeline=p step=0] assigned ['a[2]', 'a[3]']",
            "10:00:02.100 DEBUG   [pipeline=p step=1] assigned ['b[1]', 'b[2]']",
            "10:00:05.000 DEBUG   [pipeline=p step=0] assigned ['a[0]', 'a[1]', 'a[2]', 'a[3]']",
            "10:00:05.000 INFO    restored 3 state entries of partitions [0] from x in 0.01s",
        ]
    )
    lines = chaos.assignments(log, ref)
    assert [round(w - ref, 1) for w, _, _ in lines] == [1.0, 1.1, 2.0, 2.1, 5.0]
    owned = chaos.owned_at(lines, ref + 3)
    assert owned == {"a[2]", "a[3]", "b[1]", "b[2]"}
    assert chaos.whole_paths(owned, [["a"], ["b"]], 4) == [2]
    assert chaos._log_counts(log) == {"assigned": 5, "restored": 1}
    # Just after midnight, a line of 23:59:59 is a second before, not a day after.
    midnight = time.mktime((2026, 1, 3, 0, 0, 0, 0, 0, -1))
    (wall, *_), *_ = chaos.log_lines("23:59:59.000 INFO    x", midnight)
    assert wall == pytest.approx(midnight - 1)


async def test_join_loses_nothing_across_graceful_restart_and_kill9(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    result = await chaos.run_one(
        _short("graceful+kill9", partitions=2), bootstrap=bootstrap, logs=tmp_path, tag=unique
    )
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert result.lost == 0, _summary(result)
    assert set(result.partition_gaps_s) == {0, 1}, _summary(result)  # co-partitioned sources
    assert result.faults_applied == 2 and result.resume_never == 0, _summary(result)


async def test_join_duplicates_nothing_across_graceful_restart(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    result = await chaos.run_one(_short("graceful"), bootstrap=bootstrap, logs=tmp_path, tag=unique)
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert (result.lost, result.duplicated) == (0, 0), _summary(result)


async def test_chain_of_two_replicas_loses_nothing_across_replica_kills(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    cfg = _short("replica-kill", case="chain", partitions=2, replicas=2, kill_every=3, duration=6)
    result = await chaos.run_one(cfg, bootstrap=bootstrap, logs=tmp_path, tag=unique)
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert result.lost == 0, _summary(result)
    # A planned stop is skipped while the killed replica is not back yet (a slow restart on a
    # loaded machine), so at least one of the two is applied.
    assert result.faults_applied >= 1 and result.resume_never == 0, _summary(result)
    assert (tmp_path / "engine-b.log").exists() and (tmp_path / "timeline.txt").exists()


async def test_exactly_once_join_writes_each_id_once_across_kill9(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """Exactly-once mode: a read_committed reader sees every id once after two kill -9."""
    cfg = _short("kill9", partitions=2, kills=2)
    cfg.guarantee = "exactly_once"
    result = await chaos.run_one(cfg, bootstrap=bootstrap, logs=tmp_path, tag=unique)
    print(_summary(result))
    assert result.sent > 0, _summary(result)
    assert (result.lost, result.duplicated) == (0, 0), _summary(result)
    assert result.faults_applied == 2 and result.resume_never == 0, _summary(result)


async def test_join_at_4_partitions_with_2_busy_loops_loses_nothing_and_stays_responsive(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """The CI short case of issue 19: the join's graceful restart at 4 partitions while two busy
    loops take the cores; the engines' health servers answer every probe within 3 s."""
    result = await chaos.run_one(
        _short("graceful", partitions=4, cpu_hogs=2), bootstrap=bootstrap, logs=tmp_path, tag=unique
    )
    print(_summary(result))
    assert result.sent > 0 and result.cpu_hogs == 2, _summary(result)
    assert (result.lost, result.duplicated) == (0, 0), _summary(result)
    assert set(result.partition_gaps_s) == {0, 1, 2, 3}, _summary(result)
    assert result.health_probes > 0, _summary(result)
    assert result.health_no_reply == 0, _summary(result)
    hogs = result.details["cpu_hogs"]
    assert hogs["count"] == 2 and hogs["cpu_s"] > 0, _summary(result)
    assert not _running(hogs["pids"]), hogs


def test_lost_ids_say_when_each_source_wrote_them() -> None:
    ids = [chaos.ID_FORMAT.format(n) for n in range(8)]
    inputs = [
        [(chaos.record_key(n, 2).encode(), b"") for n in range(8)],
        [(chaos.record_key(n, 2).encode(), b"") for n in range(8)],
    ]
    t0 = 1000.0
    times = [
        [int((t0 + 1 + n / 10) * 1000) for n in range(8)],
        [int((t0 + 5 + n / 10) * 1000) for n in range(8)],  # the second side 4 s later
    ]
    missing = {ids[2], ids[4], ids[6], ids[5]}
    assert chaos.lost_at(missing, inputs, times, 2, t0) == [
        "p0: 2-6 (3 ids) source 0 at 1.20-1.60s, source 1 at 5.20-5.60s",
        "p1: 5 source 0 at 1.50-1.50s, source 1 at 5.50-5.50s",
    ]
    assert chaos.lost_at(set(), inputs, times, 2, t0) == []


def test_cluster_runs_create_topics_at_replication_3() -> None:
    assert chaos.Config(case="join", fault="leader-kill", cluster=3).replication == 3
    assert chaos.Config(case="join", fault="kill9").replication == 1
    assert "leader-kill+kill9" in chaos.CLUSTER_FAULTS
    with pytest.raises(SystemExit):  # the broker faults need --cluster
        chaos.main(["--cases", "join", "--faults", "leader-kill"])


@pytest.mark.timeout(300)
async def test_join_on_a_3_node_cluster_loses_nothing_across_a_leader_kill(
    tmp_path: Path, unique: str
) -> None:
    """Issue 20's CI case: the inner join at 2 partitions on a private 3-node KRaft cluster
    (replication 3, min.insync.replicas 2); 5 s into producing, the broker leading the first
    source's partition 0 gets kill -9 and is restarted 3 s later. Nothing may be lost, every
    topic has 3 replicas, and no broker outlives the run."""
    cfg = _short("leader-kill", partitions=2, cluster=3, broker_every=5, duration=5)
    cfg.broker_down = 3
    result = await chaos.run_one(cfg, logs=tmp_path, tag=unique)
    print(_summary(result))
    assert result.sent > 0 and result.brokers == 3, _summary(result)
    assert result.broker_faults == 1, _summary(result)
    assert result.lost == 0, _summary(result)
    assert set(result.partition_gaps_s) == {0, 1}, _summary(result)
    factors = result.details["replication"]["factor"]
    sources = [t for t in factors if t.endswith((".a.outputs", ".b.outputs", ".c.inputs"))]
    assert len(sources) == 3 and all(factors[t] == 3 for t in sources), factors
    assert (tmp_path / "broker-1.log").exists() and (tmp_path / "timeline.txt").exists()
    folder = result.details["cluster_dir"]
    assert _cluster_gone(folder), folder  # every broker killed and reaped, its folder removed


async def test_lost_ids_found_on_the_error_topic_are_counted(bootstrap: str, unique: str) -> None:
    topic = f"chaos-errors-{unique}"
    await chaos.create_topics(bootstrap, [topic])
    records = [
        (b"0.c-0000001", b"late for the join: 31000 ms behind stream time", []),
        (b"1.c-0000002", b"late for the join: 45000 ms behind stream time", []),
        (b"0.c-0000004", b"output too large", []),
    ]
    await chaos.harness.produce(bootstrap, topic, records)
    found = await chaos.error_topic(bootstrap, {"c-0000001", "c-0000002", "c-0000003"}, topic)
    assert found["error_topic_records"] == 3
    assert found["lost_on_error_topic"] == 2
    assert found["error_topic_reasons"] == {
        "late for the join: # ms behind stream time": 2,
        "output too large": 1,
    }
    assert (await chaos.error_topic(bootstrap, set(), f"{topic}-none")) == {
        "error_topic_records": 0
    }


def test_one_sided_outer_join_outputs_are_named() -> None:
    from dataflow.proto.inference import (
        InferTensorContents,
        ModelInferRequest,
        ModelInferRequestInferInputTensor,
    )

    def output(n: int, *names: str) -> bytes:
        tensors = [
            ModelInferRequestInferInputTensor(
                name=name,
                datatype="INT64",
                shape=[1, 1],
                contents=InferTensorContents(int64_contents=[n]),
            )
            for name in names
        ]
        return bytes(ModelInferRequest(id=chaos.ID_FORMAT.format(n), inputs=tensors))

    inputs = [[(chaos.record_key(n, 1).encode(), b"") for n in range(3)]] * 2
    outputs = [output(0, "x", "y"), output(1, "x"), output(1, "x", "y"), output(2, "y")]
    counted = chaos.count(chaos.Config(case="outer", fault="kill9"), inputs, outputs)
    # id 1 answered alone, then joined: a completed answer, not a duplicate
    assert (counted["lost"], counted["duplicated"], counted["partial_join_outputs"]) == (0, 0, 2)
    assert counted["one_sided"] == {"c-0000001", "c-0000002"}
    assert counted["one_sided_ids_also_joined"] == 1
    assert counted["duplicated_ids"] == set()
    # the same shape twice is a duplicate
    counted = chaos.count(
        chaos.Config(case="outer", fault="kill9"), inputs, [*outputs, output(1, "x", "y")]
    )
    assert (counted["duplicated"], counted["duplicated_ids"]) == (1, {"c-0000001"})
    counted = chaos.count(chaos.Config(case="join", fault="kill9"), inputs, outputs)
    assert (counted["duplicated"], counted["duplicated_ids"]) == (1, {"c-0000001"})
