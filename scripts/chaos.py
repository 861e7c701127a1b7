"""Chaos suite: lost and duplicated ids of pipelines under engine kills, restarts, broker bounces.

For each (case, fault) pair: a private broker (scripts/kafka in a temporary folder; or the broker
of --bootstrap), the proxy scheduler with one explicit pipeline, `replicas` engine processes
(engine-a, engine-b, ...), a steady producer of unique ids and a live consumer of the pipeline's
output topic. Every topic of the case has `partitions` partitions. The fault is applied while
the producer runs; afterwards the engines run on until nothing moves for --quiet seconds (no
output, no change of the engines' uncommitted input, the pipeline Ready). Then the input
topic(s) and the output topic are read back from the beginning (read_committed): `sent` is the
ids on the input (for joins: on both sources), `lost` the sent ids with no output, `duplicated`
the outputs beyond the first per id. The longest output gap is the largest wall-clock gap
between output records as the live consumer received them; the same per output partition.
For every engine stop (kill -9, SIGTERM) the resumption time is how long until every output
partition received an output of an input produced after the stop (see `resume_after`).

Records: key `<n mod partitions>.c-0000123` (the numeric prefix picks the output partition in
the engine, and the producer writes id n to partition n mod partitions of every source, so joins
are co-partitioned), header `pipeline: <name>`, value a V2 ModelInferResponse with id
`c-0000123` and one INT64 tensor [1, 1] holding the id's number, so merged batches can be
decoded back into the ids they hold. Every source's record of an id has the same timestamp (when
the id was made), as two models' outputs answering one request do.

Besides events.txt and result.json, each run folder holds timeline.txt: the harness's events
and the engines' assignments, restores, warnings and starts on one clock.

Load and responsiveness: `cpu_hogs` busy loops (`sh -c 'while :; do :; done'`, each in its own
process group) run from before the engines start until they are stopped, to reproduce a busy
machine; a health probe asks every running engine's health server (`health_path`, /live) every
0.5 s with a 3 s timeout, except while that engine is stopped on purpose, and reports the worst
reply, the replies over 1 s and the probes without a reply (`health_*` of the result).

Used by `scripts/chaos` (command line) and `tests/integration/test_chaos.py` (`run_one`).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import atexit
import bisect
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402

from tests.integration import harness  # noqa: E402
from tests.integration.harness import Process, Proxy, engine, free_port  # noqa: E402


def _load_kafka_cluster() -> Any:
    """scripts/kafka_cluster.py as a module (scripts/ is no package, and putting it on sys.path
    would shadow other modules with its model.py, producer.py, ...)."""
    import importlib.util

    name = "dataflow_kafka_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "kafka_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


kafka_cluster = _load_kafka_cluster()
KafkaCluster = kafka_cluster.KafkaCluster

CASES = ("chain", "join", "outer", "batch")
#: Faults of the brokers of a cluster (--cluster N): they run alongside the engine faults of a
#: plan ('leader-kill+kill9': leader kills while the engine is killed), one after the other
#: among themselves.
BROKER_FAULTS = ("leader-kill", "broker-pause", "controller-kill")
FAULTS = ("kill9", "graceful", "bounce", "replica-kill", "replica-term", *BROKER_FAULTS)
#: Faults that stop engine replica 0 only (the others, with --replicas > 1, are the survivors).
ENGINE_FAULTS = ("kill9", "graceful", "replica-kill", "replica-term")
#: Seconds between the end of a broker fault and the next one that was due meanwhile.
BROKER_REST = 5.0
#: What --cluster runs by default (issue 20's acceptance table).
CLUSTER_FAULTS = ("leader-kill", "broker-pause", "controller-kill", "leader-kill+kill9")
ID_FORMAT = "c-{:07d}"


def record_key(n: int, partitions: int) -> str:
    """`<n mod partitions>.c-<n>`: the numeric prefix is the partition the engine writes the
    outputs of the record to (dataflow.step.partition_for), and the producer writes it there."""
    return f"{n % partitions}.{ID_FORMAT.format(n)}"


def key_id(key: str) -> str:
    """The id of a record key (`3.c-0000123` or `c-0000123`)."""
    return key.rsplit(".", 1)[-1]


# -- V2 messages on the wire (hand-built: betterproto costs ~0.5 ms per message) ------------


def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _len_field(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _enc_varint(len(body)) + body


def encode_response(rid: str, number: int, tensor: str) -> bytes:
    """ModelInferResponse{id, outputs: [{tensor, INT64, [1, 1], int64_contents: [number]}]}."""
    contents = _len_field(0x1A, _enc_varint(number))  # InferTensorContents.int64_contents (3)
    out = (
        _len_field(0x0A, tensor.encode())  # name (1)
        + _len_field(0x12, b"INT64")  # datatype (2)
        + _len_field(0x1A, b"\x01\x01")  # shape (3), packed
        + _len_field(0x2A, contents)  # contents (5)
    )
    return _len_field(0x1A, rid.encode()) + _len_field(0x2A, out)  # id (3), outputs (5)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, a, b): varints as (value, 0), length-delimited as the span [a, b)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
            yield number, wt, value, 0
        elif wt == 2:
            size, pos = _varint(buf, pos)
            yield number, wt, pos, pos + size
            pos += size
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt} at byte {pos}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def decode_request(value: bytes) -> tuple[str, list[int], int]:
    """A ModelInferRequest's id, its INT64 values (all tensors, all rows), its tensor count."""
    rid = ""
    tensors: list[tuple[bytes, list[int]]] = []
    raws: list[bytes] = []
    for number, wt, a, b in _fields(value, 0, len(value)):
        if number == 3 and wt == 2:
            rid = value[a:b].decode(errors="replace")
        elif number == 5 and wt == 2:
            datatype, ints = b"", []
            for tn, twt, ta, tb in _fields(value, a, b):
                if tn == 2 and twt == 2:
                    datatype = value[ta:tb]
                elif tn == 5 and twt == 2:
                    for cn, cwt, ca, cb in _fields(value, ta, tb):
                        if cn != 3:
                            continue
                        if cwt == 0:
                            ints.append(_signed(ca))
                        else:
                            pos = ca
                            while pos < cb:
                                v, pos = _varint(value, pos)
                                ints.append(_signed(v))
            tensors.append((datatype, ints))
        elif number == 7 and wt == 2:
            raws.append(value[a:b])
    values: list[int] = []
    for i, (datatype, ints) in enumerate(tensors):
        if raws:
            if datatype == b"INT64" and i < len(raws):
                blob = raws[i]
                values.extend(struct.unpack(f"<{len(blob) // 8}q", blob[: len(blob) // 8 * 8]))
        else:
            values.extend(ints)
    return rid, values, len(tensors)


def _self_check() -> None:
    """The hand-built encoding and decoding agree with the betterproto classes."""
    from dataflow.proto.inference import (
        InferTensorContents,
        ModelInferRequest,
        ModelInferRequestInferInputTensor,
        ModelInferResponse,
    )

    parsed = ModelInferResponse().parse(encode_response("c-0000300", 300, "x"))
    out = parsed.outputs[0]
    assert (parsed.id, out.name, out.datatype, out.shape, out.contents.int64_contents) == (
        "c-0000300",
        "x",
        "INT64",
        [1, 1],
        [300],
    ), parsed
    tensor = ModelInferRequestInferInputTensor(
        name="x",
        datatype="INT64",
        shape=[2, 1],
        contents=InferTensorContents(int64_contents=[7, 1 << 40]),
    )
    assert decode_request(bytes(ModelInferRequest(id="r", inputs=[tensor]))) == (
        "r",
        [7, 1 << 40],
        1,
    )
    raw = ModelInferRequest(
        id="r",
        inputs=[ModelInferRequestInferInputTensor(name="x", datatype="INT64", shape=[2, 1])],
        raw_input_contents=[struct.pack("<2q", 5, 6)],
    )
    assert decode_request(bytes(raw)) == ("r", [5, 6], 1)


# -- configuration and results ----------------------------------------------------------------


@dataclass
class Config:
    """One run: a case under a fault plan (faults joined by '+' run one after the other)."""

    case: str
    fault: str
    rate: float = 2000.0
    kills: int = 20
    kill_gap: tuple[float, float] = (1.0, 8.0)
    down: float = 30.0
    bounces: int = 3
    bounce_down: float = 5.0
    bounce_gap: float = 10.0
    lead: float = 3.0
    after: float = 10.0
    quiet: float = 15.0
    drain_cap: float = 300.0
    window_ms: int = 1000
    batch_size: int = 10
    batch_window_ms: int = 500
    term_timeout: float = 60.0
    seed: int | None = None
    partitions: int = 1
    replicas: int = 1
    kill_every: float = 10.0
    duration: float = 180.0
    log_level: str = "DEBUG"
    guarantee: str = "at_least_once"
    cpu_hogs: int = 0
    health_path: str = "/live"
    health_every: float = 0.5
    health_timeout: float = 3.0
    #: brokers of a private KRaft cluster (scripts/kafka_cluster.py); 0: one private broker
    cluster: int = 0
    broker_every: float = 20.0
    broker_down: float = 5.0
    pause_s: float = 15.0
    pause_every: float = 35.0
    broker_heap: str = "448m"
    #: SELDON_KAFKA_REPLICATION_FACTOR of the engines (None: not set, the engine's default)
    engine_replication: int | None = None

    @property
    def replication(self) -> int:
        """The replication factor of the topics the harness creates: 3 on a cluster of 3 or
        more (the brokers' default.replication.factor), else the brokers there are."""
        return min(3, self.cluster) if self.cluster else 1

    @property
    def faults(self) -> list[str]:
        return [f for f in self.fault.split("+") if f]

    @property
    def label(self) -> str:
        label = self.case
        if self.case in ("join", "outer") and self.window_ms != 1000:
            label = f"{self.case}({self.window_ms / 1000:g}s)"
        return label + ("-eos" if self.guarantee == "exactly_once" else "")


@dataclass
class Result:
    """One run's figures. Times are wall-clock seconds as this process saw them.

    `stall_*_s`: per engine stop (kill, SIGTERM), the longest time any output partition went
    without output from the signal until the next stop (see `stall_after`); median and max
    over the stops. `resume_*_s` ("caught up"): per stop, the time from the signal until every
    output partition that had traffic received an output of an input produced after the
    signal (outputs carry their input's timestamp; see `resume_after`), which includes working
    off the backlog; median and max over the stops, None if some partition never got there.
    `partition_gaps_s`: per output partition the longest gap between two arrivals;
    `survivor_partitions`: the output partitions whose whole path (every step's source
    partition) the replicas that were not stopped owned before the first fault, from their
    `assigned [...]` log lines; `survivor_gap_s` the longest gap among those.
    """

    case: str
    fault: str
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicated_s: float = 0.0
    longest_gap_s: float = 0.0
    exits: str = ""
    notes: str = ""
    run_s: float = 0.0
    logs: str = ""
    partitions: int = 1
    replicas: int = 1
    brokers: int = 1
    cpu_hogs: int = 0
    repeat: int = 1
    broker_faults: int = 0
    load: tuple[float, float] | None = None
    faults_applied: int = 0
    resume_median_s: float | None = None
    resume_max_s: float | None = None
    resume_never: int = 0
    stall_median_s: float | None = None
    stall_max_s: float | None = None
    partition_gaps_s: dict[int, float] = field(default_factory=dict)
    survivor_partitions: list[int] = field(default_factory=list)
    survivor_gap_s: float | None = None
    health_probes: int = 0
    health_worst_s: float | None = None
    health_slow: int = 0
    health_no_reply: int = 0
    health_silent_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> list[str]:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        def secs2(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        resume = stall = "-"
        if self.faults_applied:
            resume = f"{secs(self.resume_median_s)} / {secs(self.resume_max_s)}"
            if self.resume_never:
                resume += f" ({self.resume_never} never)"
            stall = f"{secs(self.stall_median_s)} / {secs(self.stall_max_s)}"
        gaps = ", ".join(
            f"p{p}{'*' if p in self.survivor_partitions else ''} {g:.1f}"
            for p, g in sorted(self.partition_gaps_s.items())
        )
        health = "-"
        if self.health_probes:
            health = f"{secs2(self.health_worst_s)} / {self.health_slow} / {self.health_no_reply}"
            if self.health_no_reply:
                health += f" ({self.health_silent_s:.0f}s silent)"
        load = "-" if self.load is None else f"{self.load[0]:.1f} → {self.load[1]:.1f}"
        return [
            str(self.repeat),
            self.case,
            self.fault,
            f"{self.partitions}x{self.replicas}"
            + (f" ({self.brokers} brokers)" if self.brokers > 1 else ""),
            str(self.cpu_hogs),
            load,
            str(self.sent),
            str(self.lost),
            str(self.duplicated),
            f"{self.duplicated_s:.2f}",
            str(self.faults_applied)
            + (f" + {self.broker_faults} broker" if self.brokers > 1 else ""),
            stall,
            resume,
            f"{self.longest_gap_s:.1f}",
            gaps or "-",
            secs(self.survivor_gap_s),
            health,
            self.exits or "-",
            f"{self.run_s:.0f}",
            self.notes or "-",
        ]


HEADER = [
    "run",
    "case",
    "fault",
    "partitions x replicas",
    "cpu hogs",
    "load 1m (start → end)",
    "sent",
    "lost",
    "duplicated",
    "duplicated (s of traffic)",
    "stops (engine + broker)",
    "output stall after a stop, median / max (s)",
    "caught up after a stop, median / max (s)",
    "longest output gap (s)",
    "longest gap per partition (s; * survivors')",
    "survivors' longest gap (s)",
    "health: worst reply (s) / replies > 1 s / no reply in 3 s",
    "engine exits",
    "run (s)",
    "notes",
]


def table(results: list[Result]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(r.row() for r in results)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def summary(results: list[Result]) -> str:
    """One line per case x fault run more than once: runs with lost or duplicated ids, the
    median of sent, the worst health reply and the probes without reply over all the runs."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.case, r.fault), []).append(r)
    lines = []
    for (case, fault), runs in groups.items():
        if len(runs) < 2:
            continue
        worst = [r.health_worst_s for r in runs if r.health_worst_s is not None]
        lines.append(
            f"{case}/{fault}: {len(runs)} runs; lost ids in {sum(1 for r in runs if r.lost)} "
            f"(median {statistics.median(r.lost for r in runs):g}, max "
            f"{max(r.lost for r in runs)}), duplicated in "
            f"{sum(1 for r in runs if r.duplicated)}; sent median "
            f"{statistics.median(r.sent for r in runs):g}; health worst reply "
            f"{max(worst, default=0.0):.2f}s (median of the runs' worst "
            f"{statistics.median(worst) if worst else 0.0:.2f}s), "
            f"{sum(r.health_slow for r in runs)} replies over 1s, "
            f"{sum(r.health_no_reply for r in runs)} probes without reply"
        )
    return "\n".join(lines)


# -- processes ------------------------------------------------------------------------------


def free_port_pair() -> int:
    """A port p with p and p + 1 free (scripts/kafka puts its controller on p + 1)."""
    for _ in range(100):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


class Broker:
    """A private broker of scripts/kafka: its own folder and ports, stopped by `close`."""

    def __init__(self, logs: Path, heap: str = "512m") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-kafka-"))
        # A copy of scripts/kafka as it is now: an edit of the script during a long run does not
        # break the bounces or the final stop (it finds everything through KAFKA_* variables).
        self.script = self.dir / "bin" / "kafka"
        self.script.parent.mkdir()
        shutil.copy2(REPO / "scripts" / "kafka", self.script)
        self.port = free_port_pair()
        self.logs = logs
        self.script_log = logs / "broker-script.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        for key in ("KAFKA_CACHE", "KAFKA_VERSION", "KAFKA_MAVEN_REPO"):
            if key in os.environ:
                self.env[key] = os.environ[key]
        self.env.update(KAFKA_DIR=str(self.dir), KAFKA_PORT=str(self.port), KAFKA_HEAP=heap)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _script(self, command: str) -> float:
        t0 = time.monotonic()
        with self.script_log.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                str(self.script),
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
            code = await proc.wait()
        if code != 0:
            tail = self.script_log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"scripts/kafka {command} failed ({code}):\n{tail}")
        return time.monotonic() - t0

    async def start(self) -> float:
        return await self._script("start")

    async def stop(self) -> float:
        return await self._script("stop")

    def close(self) -> None:
        """Stop (synchronously, safe in any finally), keep the broker log, remove the folder."""
        with self.script_log.open("ab") as log:
            subprocess.run(
                [str(self.script), "stop"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                check=False,
                timeout=60,
            )
        with contextlib.suppress(OSError):
            shutil.copy(self.dir / "broker.log", self.logs / "broker.log")
        shutil.rmtree(self.dir, ignore_errors=True)


async def start_cluster(cluster: Any) -> float:
    """Start a tied KafkaCluster: jars, configuration and storage formats in a thread, the
    brokers from this (the event loop's) thread, so that they die with it; seconds taken."""
    t0 = time.monotonic()
    await asyncio.to_thread(cluster.fetch)
    await asyncio.to_thread(cluster.configure)
    for node in cluster.nodes:
        cluster.spawn(node)
    for node in cluster.nodes:
        await asyncio.to_thread(cluster.wait_up, node, 120.0)
    await cluster.wait_brokers(timeout=60.0)
    return time.monotonic() - t0


async def topic_replication(cluster: Any) -> dict[str, Any]:
    """Every topic's replication factor on the cluster (the fewest replicas of its
    partitions) and the partitions not fully in sync."""
    factor: dict[str, int] = {}
    try:
        parts = await cluster.partitions(None)
    except RuntimeError as exc:
        return {"factor": {}, "error": str(exc)}
    for (topic, _), info in parts.items():
        factor[topic] = min(factor.get(topic, 1 << 30), len(info["replicas"]))
    short = [
        f"{t}[{p}]" for (t, p), i in sorted(parts.items()) if len(i["isr"]) < len(i["replicas"])
    ]
    return {"factor": dict(sorted(factor.items())), "not_in_sync": short}


# -- load on the machine: busy loops; the engines' health servers, probed ---------------------

HOG_COMMAND = ["sh", "-c", "while :; do :; done"]


def _libc_prctl() -> Any:
    """libc's prctl (Linux), looked up before a fork; None elsewhere."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class CpuHogs:
    """`count` busy loops (`sh -c 'while :; do :; done'`), each in its own session and process
    group, for the load of a busy machine. `stop` kills each loop's group (idempotent, safe in
    any finally); a loop also gets SIGKILL when this process dies (Linux parent-death signal),
    and any left at interpreter exit are killed (atexit), so none survives the harness."""

    _live: set[CpuHogs] = set()

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0.0
        self.cpu_s = 0.0  # CPU time the loops got (utime + stime), set by stop
        self.ran_s = 0.0
        self.pids: list[int] = []

    def start(self) -> CpuHogs:
        if not self.count:
            return self
        prctl, parent = _libc_prctl(), os.getpid()

        def die_with_parent() -> None:  # runs in the child between fork and exec
            if prctl is not None:
                prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

        CpuHogs._live.add(self)
        self.started = time.monotonic()
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    HOG_COMMAND,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # own session and process group (pgid = pid)
                    preexec_fn=die_with_parent,
                )
            )
            self.pids.append(self.procs[-1].pid)
        return self

    @staticmethod
    def _cpu_s(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        if not self.procs:
            return
        procs, self.procs = self.procs, []
        self.cpu_s += sum(self._cpu_s(p.pid) for p in procs if p.poll() is None)
        self.ran_s = time.monotonic() - self.started
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        CpuHogs._live.discard(self)

    def stats(self) -> dict[str, Any]:
        """The loops' share of the machine: CPU seconds they got over the seconds they ran."""
        return {
            "count": self.count,
            "ran_s": round(self.ran_s, 1),
            "cpu_s": round(self.cpu_s, 1),
            "cores_used": round(self.cpu_s / self.ran_s, 2) if self.ran_s else 0.0,
            "pids": self.pids,
        }

    @classmethod
    def stop_all(cls) -> None:
        for hogs in list(cls._live):
            hogs.stop()


atexit.register(CpuHogs.stop_all)


@dataclass
class ProbeStats:
    """The health probes of one engine replica (or of all of them, `merged`).

    A reply is any HTTP answer (its time: request sent to body read). `no_reply`: no answer
    within the timeout, or the connection refused or reset after that engine process had
    answered once (before its first answer the server is still starting: `starting`, not a
    failure). `silent_s`: the longest time from a probe that got no reply until the next reply
    (or the end of probing of that process)."""

    probes: int = 0
    replies: int = 0
    slow: int = 0
    no_reply: int = 0
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    starting: int = 0
    worst_s: float = 0.0
    worst_at_s: float | None = None
    silent_s: float = 0.0
    silent_at_s: float | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    reply_times: list[float] = field(default_factory=list)
    #: (seconds since the run began, reply time or None: no reply) of the slow and failed probes
    bad: list[tuple[float, float | None]] = field(default_factory=list)

    def merged(self, other: ProbeStats) -> ProbeStats:
        out = ProbeStats(
            probes=self.probes + other.probes,
            replies=self.replies + other.replies,
            slow=self.slow + other.slow,
            no_reply=self.no_reply + other.no_reply,
            timeouts=self.timeouts + other.timeouts,
            errors=self.errors + other.errors,
            starting=self.starting + other.starting,
            statuses=self.statuses + other.statuses,
            reply_times=self.reply_times + other.reply_times,
            bad=sorted(self.bad + other.bad, key=lambda b: b[0]),
        )
        worst = max((self, other), key=lambda s: s.worst_s)
        out.worst_s, out.worst_at_s = worst.worst_s, worst.worst_at_s
        silent = max((self, other), key=lambda s: s.silent_s)
        out.silent_s, out.silent_at_s = silent.silent_s, silent.silent_at_s
        return out

    def summary(self) -> dict[str, Any]:
        times = sorted(self.reply_times)
        return {
            "probes": self.probes,
            "replies": self.replies,
            "slow_over_1s": self.slow,
            "no_reply": self.no_reply,
            "timeouts": self.timeouts,
            "errors_after_first_reply": dict(self.errors),
            "refused_while_starting": self.starting,
            "worst_reply_s": round(self.worst_s, 3),
            "worst_reply_at_s": self.worst_at_s,
            "median_reply_s": round(statistics.median(times), 4) if times else None,
            "p99_reply_s": round(times[int(len(times) * 0.99)], 3) if times else None,
            "longest_silence_s": round(self.silent_s, 1),
            "longest_silence_began_s": self.silent_at_s,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "slow_or_unanswered_at_s": [
                [at, None if took is None else round(took, 2)] for at, took in self.bad[:200]
            ],
        }


#: The probe's HTTP client, in a process of its own: it times each request itself, so a reply
#: time is what a client outside the harness (a kubelet) would see, not the harness's own GIL
#: and event loop delays. One request per line on stdin (`port path timeout`), one answer per
#: line on stdout (`ok <status> <seconds>`, or `timeout|refused|<error> <seconds>`).
PROBE_CLIENT = """
import http.client, sys, time
for line in sys.stdin:
    port, path, timeout = line.split()
    sent = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=float(timeout))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        out = f"ok {response.status}"
    except TimeoutError:
        out = "timeout 0"
    except ConnectionRefusedError:
        out = "refused 0"
    except (OSError, http.client.HTTPException) as exc:
        out = f"{type(exc).__name__} 0"
    finally:
        conn.close()
    print(out, time.monotonic() - sent, flush=True)
"""


class _ProbeClient:
    """One `PROBE_CLIENT` process: `get(port, path, timeout)` -> (status, seconds taken)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE_CLIENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def get(self, port: int, path: str, timeout: float) -> tuple[int, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{port} {path} {timeout}\n")
        kind, status, took = self.proc.stdout.readline().split()
        if kind == "timeout":
            raise TimeoutError(float(took))
        if kind == "refused":
            raise ConnectionRefusedError(float(took))
        if kind != "ok":
            raise OSError(kind)
        return int(status), float(took)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


#: What a probe asks for: (engine process generation, health port), or None: not to be probed
#: now (stopped on purpose, not started, or the run is over).
ProbeTarget = tuple[int, int] | None


class HealthProbe:
    """GET `path` of each engine replica's health server every `every` s (one thread per
    replica, one request at a time, `timeout` s each) while `target(replica)` names a port.

    Threads, not the harness's event loop, and each thread's requests made and timed by a
    client process of its own (`PROBE_CLIENT`): the producer keeps the harness busy, and a
    probe must time the engine, not the harness. A probe that began before its engine was stopped on
    purpose (the target changed meanwhile) is not counted."""

    def __init__(
        self,
        replicas: int,
        target: Callable[[int], ProbeTarget],
        origin: float,
        path: str = "/live",
        every: float = 0.5,
        timeout: float = 3.0,
        slow: float = 1.0,
    ) -> None:
        self.target, self.origin, self.path = target, origin, path
        self.every, self.timeout, self.slow = every, timeout, slow
        self.per_replica = [ProbeStats() for _ in range(replicas)]
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"probe-{i}", daemon=True)
            for i in range(replicas)
        ]

    def start(self) -> HealthProbe:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(self.timeout + 2)

    def total(self) -> ProbeStats:
        total = ProbeStats()
        for stats in self.per_replica:
            total = total.merged(stats)
        return total

    def _loop(self, replica: int) -> None:
        client = _ProbeClient()
        try:
            self._probe(replica, client)
        finally:
            client.close()

    def _probe(self, replica: int, client: _ProbeClient) -> None:
        stats = self.per_replica[replica]
        answered: set[int] = set()  # generations (engine processes) that answered once
        silent_since: float | None = None  # first probe without a reply, of `silent_gen`
        silent_gen = -1
        while not self.halt.is_set():
            target = self.target(replica)
            if target is None or (silent_since is not None and target[0] != silent_gen):
                if silent_since is not None:  # silent until it was stopped: count until then
                    self._silence(stats, silent_since, time.monotonic())
                    silent_since = None
                if target is None:
                    self.halt.wait(0.05)
                    continue
            generation, port = target
            sent = time.monotonic()
            status: int | None = None
            failure = ""
            took = 0.0
            try:
                status, took = client.get(port, self.path, self.timeout)
            except TimeoutError:
                failure = "timeout"
            except ConnectionRefusedError:
                failure = "refused"
            except OSError as exc:
                failure = str(exc) or type(exc).__name__
            if self.target(replica) != target:
                continue  # stopped on purpose (or restarted) meanwhile: not this probe's fault
            if failure == "refused" and generation not in answered:
                stats.starting += 1
            elif failure:
                stats.probes += 1
                stats.no_reply += 1
                if failure == "timeout":
                    stats.timeouts += 1
                else:
                    stats.errors[failure] += 1
                stats.bad.append((round(sent - self.origin, 1), None))
                if silent_since is None:
                    silent_since, silent_gen = sent, generation
            else:
                assert status is not None
                answered.add(generation)
                stats.probes += 1
                stats.replies += 1
                stats.statuses[status] += 1
                stats.reply_times.append(took)
                if took > self.slow:
                    stats.slow += 1
                    stats.bad.append((round(sent - self.origin, 1), took))
                if took > stats.worst_s:
                    stats.worst_s, stats.worst_at_s = took, round(sent - self.origin, 1)
                if silent_since is not None:
                    self._silence(stats, silent_since, sent + took)
                    silent_since = None
            self.halt.wait(max(0.0, sent + self.every - time.monotonic()))
        if silent_since is not None:
            self._silence(stats, silent_since, time.monotonic())

    def _silence(self, stats: ProbeStats, began: float, ended: float) -> None:
        if ended - began > stats.silent_s:
            stats.silent_s, stats.silent_at_s = ended - began, round(began - self.origin, 1)


# -- producer and live consumer ---------------------------------------------------------------


class Producer:
    """Unique ids at a steady rate (catching up after stalls), every id to every source topic.

    Id n goes to partition n mod `partitions` of every source, keyed `record_key(n)`: input
    partition, key prefix and output partition agree, and join sources are co-partitioned.

    Sends are retried: a failed enqueue after a pause, a failed delivery by sending again (up to
    `attempts` times); counting uses the input topic, so an id that never made it is not sent.

    Every source's record of one id carries the same timestamp, the time the id was made, as
    the outputs of two models answering one pipeline request do (an output takes its input's
    timestamp). Left to the client, a send that blocks (a partition without a leader) would
    stamp one side seconds after the other: a pair no join window of 1 s may join.
    """

    def __init__(
        self,
        bootstrap: str,
        sources: list[tuple[str, str]],
        pipeline: str,
        rate: float,
        partitions: int = 1,
        attempts: int = 10,
        give_up_s: float = 120.0,
    ) -> None:
        self.bootstrap, self.sources, self.rate = bootstrap, sources, rate
        self.partitions = partitions
        self.headers = [("pipeline", pipeline.encode())]
        self.attempts, self.give_up_s = attempts, give_up_s
        self.stopping = asyncio.Event()
        self.retry: deque[tuple[str, int, bytes, bytes, int, int]] = deque()
        self.inflight = 0
        self.ids = 0
        self.acked = 0
        self.failed = 0
        self.resent = 0
        self.send_errors: Counter[str] = Counter()
        self.delivery_errors: Counter[str] = Counter()
        self.longest_block_s = 0.0
        self.duration_s = 0.0
        self._producer: AIOKafkaProducer | None = None

    def _done(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        ts: int,
        attempt: int,
        fut: Any,
    ) -> None:
        self.inflight -= 1
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.delivery_errors[type(exc).__name__ if exc else "Cancelled"] += 1
            if attempt >= self.attempts:
                self.failed += 1
            else:
                self.retry.append((topic, partition, key, value, ts, attempt + 1))
            return
        self.acked += 1

    async def _send(
        self, topic: str, partition: int, key: bytes, value: bytes, ts: int, attempt: int
    ) -> None:
        assert self._producer is not None
        first = time.monotonic()
        while True:
            t0 = time.monotonic()
            try:
                fut = await self._producer.send(
                    topic,
                    value,
                    key=key,
                    partition=partition,
                    headers=self.headers,
                    timestamp_ms=ts,
                )
            except (TimeoutError, KafkaError) as e:
                self.send_errors[type(e).__name__] += 1
                if time.monotonic() - first > self.give_up_s:
                    self.failed += 1
                    return
                await asyncio.sleep(0.5)
                continue
            finally:
                self.longest_block_s = max(self.longest_block_s, time.monotonic() - t0)
            self.inflight += 1
            fut.add_done_callback(partial(self._done, topic, partition, key, value, ts, attempt))
            return

    async def _resend(self) -> None:
        while self.retry:
            topic, partition, key, value, ts, attempt = self.retry.popleft()
            self.resent += 1
            await self._send(topic, partition, key, value, ts, attempt)

    async def run(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30000,
            retry_backoff_ms=200,
        )
        await self._producer.start()
        try:
            t0 = time.monotonic()
            n = 0
            while not self.stopping.is_set():
                await self._resend()
                due = int((time.monotonic() - t0) * self.rate)
                while n < due and not self.stopping.is_set():
                    rid = ID_FORMAT.format(n)
                    key = record_key(n, self.partitions).encode()
                    partition = n % self.partitions
                    ts = int(time.time() * 1000)  # one timestamp for every source's record
                    for topic, tensor in self.sources:
                        value = encode_response(rid, n, tensor)
                        await self._send(topic, partition, key, value, ts, 1)
                    n += 1
                    if n % 100 == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(0.01)
            self.ids = n
            self.duration_s = time.monotonic() - t0
            deadline = time.monotonic() + self.give_up_s
            while (self.inflight or self.retry) and time.monotonic() < deadline:
                await self._resend()
                await asyncio.sleep(0.05)
        finally:
            await self._producer.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "rate_achieved": round(self.ids / self.duration_s, 1) if self.duration_s else 0,
            "records_acked": self.acked,
            "records_failed": self.failed,
            "records_resent": self.resent,
            "records_unsettled": self.inflight + len(self.retry),
            "send_errors": dict(self.send_errors),
            "delivery_errors": dict(self.delivery_errors),
            "longest_send_block_s": round(self.longest_block_s, 2),
        }


class Watcher:
    """A live consumer of the output topic: when output records arrive (wall clock).

    `arrivals`: (monotonic time, records) per fetch; `by_partition`: per output partition,
    (monotonic time, records, latest record timestamp in ms) per fetch. An output carries its
    input's timestamp, so the latter tells when the newest input it answers was produced.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrivals: list[tuple[float, int]] = []
        self.by_partition: dict[int, list[tuple[float, int, int]]] = {}
        self.count = 0
        self.last = 0.0
        self.errors: Counter[str] = Counter()
        self.started = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        self.started.set()
        try:
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=200)
                except KafkaError as e:
                    self.errors[type(e).__name__] += 1
                    await asyncio.sleep(0.5)
                    continue
                n = sum(len(rs) for rs in batch.values())
                if n:
                    now = time.monotonic()
                    for tp, records in batch.items():
                        if records:
                            newest = max(r.timestamp for r in records)
                            arrivals = self.by_partition.setdefault(tp.partition, [])
                            arrivals.append((now, len(records), newest))
                    self.arrivals.append((now, n))
                    self.count += n
                    self.last = now
        finally:
            await consumer.stop()

    def longest_gap(self, origin: float) -> tuple[float, float]:
        """(longest gap between consecutive arrivals, when it began relative to `origin`)."""
        best, at = 0.0, 0.0
        for (t1, _), (t2, _) in zip(self.arrivals, self.arrivals[1:], strict=False):
            if t2 - t1 > best:
                best, at = t2 - t1, t1 - origin
        return best, at


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of `topic` (from the broker's metadata; [0] if it has none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = sorted(p["partition"] for d in described for p in d.get("partitions") or [])
    return found or [0]


async def read_topic(
    bootstrap: str, topic: str, timeout: float = 180, timestamps: list[int] | None = None
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every committed record of `topic`, from the beginning to its end; their
    timestamps (ms) appended to `timestamps` when given, in the same order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    parts = await partitions_of(bootstrap, topic)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            for records in batch.values():
                out.extend((r.key or b"", r.value or b"") for r in records)
                if timestamps is not None:
                    timestamps.extend(r.timestamp for r in records)
        else:
            raise RuntimeError(f"could not read {topic} to its end {end} within {timeout}s")
    finally:
        await consumer.stop()
    return out


#: Where the engine sends a pipeline's failed and late records (it names no error topic).
ERROR_TOPIC = "seldon.default.errors.errors"


async def error_topic(bootstrap: str, lost: set[str], topic: str = ERROR_TOPIC) -> dict[str, Any]:
    """The records of the engine's error topic (on a private broker): how many, their reasons
    (digits as #), and how many of the `lost` ids are there, with a few of their reasons."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        exists = topic in await admin.list_topics()
    finally:
        await admin.close()
    if not exists:
        return {"error_topic_records": 0}
    records = await read_topic(bootstrap, topic)
    reasons: Counter[str] = Counter()
    on_topic: dict[str, str] = {}
    for key, value in records:
        reason = value.decode(errors="replace")
        reasons[re.sub(r"\d+", "#", reason)[:160]] += 1
        rid = key_id(key.decode(errors="replace"))
        if rid in lost:
            on_topic.setdefault(rid, reason)
    return {
        "error_topic_records": len(records),
        "error_topic_reasons": dict(reasons.most_common(10)),
        "lost_on_error_topic": len(on_topic),
        "lost_on_error_topic_examples": dict(sorted(on_topic.items())[:10]),
    }


async def create_topics(
    bootstrap: str,
    names: list[str],
    partitions: int = 1,
    timeout: float = 60,
    replication: int = 1,
) -> None:
    """Create the topics (`partitions` each, `replication` replicas: aiokafka's CreateTopics
    knows no -1 for the broker's default; existing ones are kept) and wait until described."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, replication) for n in names])
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(names)
            if all(d["error_code"] == 0 and d["partitions"] for d in described):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not available after {timeout}s: {described}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


class LagProbe:
    """Records of a pipeline's topics not yet committed by the engine's step groups.

    The groups are found by name (`...-<uid or its MD5>[-s<step>]`, dataflow.topology.group_id).
    """

    def __init__(self, bootstrap: str, uid: str) -> None:
        self.keys = {uid, hashlib.md5(uid.encode()).hexdigest()}
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)

    async def __aenter__(self) -> LagProbe:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self) -> dict[str, int] | None:
        """Per topic, end offset minus committed offset; None when no group is found."""
        groups = [g[0] for g in await self.admin.list_consumer_groups()]
        mine = [g for g in groups if any(f"-{k}" in g for k in self.keys)]
        if not mine:
            return None
        committed: dict[TopicPartition, int] = {}
        for group in mine:
            offsets = await self.admin.list_consumer_group_offsets(group)
            for tp, meta in offsets.items():
                committed[tp] = meta.offset
        end = await self.consumer.end_offsets(list(committed))
        lag: Counter[str] = Counter()
        for tp, offset in committed.items():
            lag[tp.topic] += end[tp] - max(offset, 0)
        return dict(lag)


class _Tally(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[record.levelname] += 1


@contextlib.contextmanager
def client_log(path: Path) -> Iterator[Counter[str]]:
    """aiokafka's log lines of this process (producer, consumers) to `path`, not the terminal.

    While a broker is down they come by the hundred thousand (reconnect attempts).
    """
    logger = logging.getLogger("aiokafka")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    tally = _Tally()
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    logger.addHandler(tally)
    try:
        yield tally.lines
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(tally)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class LegacyProxy(Proxy):
    """The harness's proxy without `--state-dir`, for revisions of the proxy that lack it."""

    def start(self, *pipelines: Path) -> Proxy:
        args = [sys.executable, "-m", "dataflow.proxy", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--control-port", str(self.control_port)]
        if pipelines:
            args += ["--pipelines", *map(str, pipelines)]
        log = self.tmp / f"proxy-{self.port}.log"
        self.process = Process("proxy", args, harness._env({}), log).start()
        harness.wait_until(self._answers, 20, "the proxy control API")
        return self


def proxy_class() -> type[Proxy]:
    """Proxy, or LegacyProxy when the `dataflow.proxy` children will run knows no --state-dir."""
    help_text = subprocess.run(
        [sys.executable, "-m", "dataflow.proxy", "--help"],
        capture_output=True,
        text=True,
        env=harness._env({}),
        cwd=REPO,
        check=False,
    ).stdout
    return Proxy if "--state-dir" in help_text else LegacyProxy


@contextlib.contextmanager
def engine_source(path: Path | None) -> Iterator[None]:
    """Child processes (engine, proxy) import `dataflow` from `path` instead of the repository."""
    if path is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = str(path)
    os.environ["PYTHONSAFEPATH"] = "1"  # no working directory (the repository) on sys.path
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def working_tree() -> str:
    """`working tree at <commit>`, `+ changes in dataflow/` when it differs from that commit:
    the engine a run used, for its result (others may commit while a long run goes on)."""
    git = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, check=False)
    head = git(["git", "rev-parse", "--short=12", "HEAD"]).stdout.strip()
    if not head:
        return "working tree"
    dirty = git(["git", "status", "--porcelain", "--", "dataflow"]).stdout.strip()
    return f"working tree at {head}" + (" + changes in dataflow/" if dirty else "")


def snapshot(rev: str, into: Path) -> tuple[Path, str]:
    """`dataflow/` of git revision `rev` extracted under `into`; returns (folder, commit)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", commit, "dataflow"], cwd=REPO, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into, commit


# -- one run --------------------------------------------------------------------------------


@dataclass
class Layout:
    """The pipeline of a case: its YAML body, the source topics with their tensor, the sink,
    and every topic its steps read (`steps`, per step) or write."""

    body: str
    sources: list[tuple[str, str]]
    sink: str
    steps: list[list[str]] = field(default_factory=list)

    @property
    def topics(self) -> list[str]:
        names = [t for step in self.steps for t in step] + [t for t, _ in self.sources]
        return sorted({*names, self.sink})


def layout(cfg: Config, ns: str) -> Layout:
    def topic(model: str, io: str) -> str:
        return f"seldon.{ns}.model.{model}.{io}"

    if cfg.case == "chain":
        a, b = topic("a", "outputs"), topic("b", "inputs")
        c, d = topic("c", "inputs"), topic("d", "inputs")
        body = (
            "steps:\n"
            f"  - sources: [{a}]\n    sink: {b}\n"
            f"  - sources: [{b}]\n    sink: {c}\n"
            f"  - sources: [{c}]\n    sink: {d}\n"
        )
        return Layout(body, [(a, "x")], d, [[a], [b], [c]])
    if cfg.case in ("join", "outer"):
        a, b, c = topic("a", "outputs"), topic("b", "outputs"), topic("c", "inputs")
        join = "inner" if cfg.case == "join" else "outer"
        body = (
            "steps:\n"
            f"  - sources: [{a}, {b}]\n    sink: {c}\n"
            f"    inputJoinType: {join}\n    joinWindowMs: {cfg.window_ms}\n"
        )
        return Layout(body, [(a, "x"), (b, "y")], c, [[a, b]])
    if cfg.case == "batch":
        a, b = topic("a", "outputs"), topic("b", "inputs")
        body = (
            "steps:\n"
            f"  - sources: [{a}]\n    sink: {b}\n"
            f"    batch: {{size: {cfg.batch_size}, windowMs: {cfg.batch_window_ms}}}\n"
        )
        return Layout(body, [(a, "x")], b, [[a]])
    raise ValueError(f"unknown case {cfg.case!r} (one of {', '.join(CASES)})")


class Run:
    """The processes of one run and the faults applied to them.

    `cfg.replicas` engines, `engine-a`, `engine-b`, ...; the engine faults stop replica 0.
    Every stop is recorded in `stops` (how, replica, monotonic and wall time of the signal).
    """

    def __init__(
        self,
        cfg: Config,
        logs: Path,
        bootstrap: str,
        broker: Broker | None,
        cluster: Any = None,
    ) -> None:
        self.cfg, self.logs, self.bootstrap, self.broker = cfg, logs, bootstrap, broker
        self.cluster = cluster  # a KafkaCluster (--cluster N), or None
        self.sources: list[str] = []  # the source topics (the broker faults hit their leaders)
        self.topics: list[str] = []  # every topic of the pipeline
        self.broker_faults: list[dict[str, Any]] = []
        self.rng = random.Random(cfg.seed)
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.proxy: Proxy | None = None
        self.names = [replica_name(i) for i in range(cfg.replicas)]
        self.engines: list[Process | None] = [None] * cfg.replicas
        self.expect_down = [False] * cfg.replicas
        self.health_ports: list[int | None] = [None] * cfg.replicas
        self.engine_starts = 0
        self.last_start = 0.0
        self.exits: list[dict[str, Any]] = []
        self.stops: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.timeline: list[tuple[float, str]] = []  # (wall time, what)
        self.pipeline = ""  # its name, once loaded

    @property
    def engine(self) -> Process | None:
        """Replica 0 (the only one unless --replicas)."""
        return self.engines[0]

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {self.cfg.label}/{self.cfg.fault}: {text}"
        self.events.append(line)
        self.timeline.append((time.time(), f"harness: {text}"))
        print(line, flush=True)

    def start_engine(self, replica: int = 0) -> None:
        assert self.proxy is not None
        self.engine_starts += 1
        self.last_start = time.monotonic()
        name = self.names[replica]
        port = free_port()  # a new one per start: the health probe knows which process it asks
        with (self.logs / f"{name}.log").open("ab") as handle:
            handle.write(
                f"\n===== chaos: engine start #{self.engine_starts} "
                f"(health server :{port}) =====\n".encode()
            )
        extra: dict[str, str] = {}
        if self.cfg.engine_replication is not None:
            extra["kafka_replication_factor"] = str(self.cfg.engine_replication)
        self.engines[replica] = engine(
            self.logs,
            self.bootstrap,
            self.proxy,
            name=name,
            log_level_app=self.cfg.log_level,
            kafka_partitions_default=str(self.cfg.partitions),
            processing_guarantee=self.cfg.guarantee,
            health_server_port=str(port),
            **extra,
        )
        self.health_ports[replica] = port

    def probe_target(self, replica: int) -> ProbeTarget:
        """What the health probe asks of `replica` now: (its process, health port), or None
        while it is stopped on purpose (from the signal until it is started again)."""
        process, port = self.engines[replica], self.health_ports[replica]
        if self.expect_down[replica] or process is None or process.proc is None or port is None:
            return None
        return process.proc.pid, port

    def start_engines(self) -> None:
        for replica in range(self.cfg.replicas):
            self.start_engine(replica)

    def state(self, name: str) -> str | None:
        """The pipeline's state at the proxy (Ready once the engine acked its (re)creation)."""
        assert self.proxy is not None
        try:
            pipeline = self.proxy.pipeline(name)
        except OSError:
            return None
        return None if pipeline is None else str(pipeline["state"])

    def iteration(self, name: str) -> int:
        """The pipeline's current iteration timestamp at the proxy (0 if unknown)."""
        assert self.proxy is not None
        try:
            pipeline = self.proxy.pipeline(name)
        except OSError:
            return 0
        return int((pipeline or {}).get("timestamp") or 0)

    def ready_everywhere(self, name: str, after: int = 0) -> bool:
        """Ready at the proxy, and acked with success by every replica (proxies that show
        per-engine `streams`; tests/integration/test_chains.py waits the same way), in an
        iteration later than `after` (the acks of an iteration before a stop are stale)."""
        assert self.proxy is not None
        try:
            pipeline = self.proxy.pipeline(name)
        except OSError:
            return False
        if pipeline is None or pipeline.get("state") != "Ready":
            return False
        if after and int(pipeline.get("timestamp") or 0) <= after:
            return False
        streams = pipeline.get("streams")
        if streams is None:
            return True
        return all((streams.get(n) or {}).get("success") for n in self.names)

    async def wait_ready(self, name: str, timeout: float, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready_everywhere, name, after):
            if time.monotonic() > deadline:
                assert self.proxy is not None
                raise RuntimeError(
                    f"pipeline {name} not Ready on {', '.join(self.names)} after {timeout:g}s: "
                    f"{await asyncio.to_thread(self.proxy.pipeline, name)}"
                )
            await asyncio.sleep(0.2)

    async def wait_engine(self, timeout: float, replica: int = 0) -> int | None:
        proc = self.engines[replica]
        assert proc is not None
        try:
            return await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def stop_all(self, timeout: float) -> list[int | None]:
        """SIGTERM every replica at once; their exit codes."""
        self.expect_down = [True] * self.cfg.replicas
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(p.stop, timeout) for p in self.engines if p is not None)
            )
        )

    async def watchdog(self) -> None:
        """An engine that exits on its own is recorded and restarted, as a deployment would."""
        while True:
            await asyncio.sleep(0.5)
            for replica, process in enumerate(self.engines):
                proc = process.proc if process else None
                if self.expect_down[replica] or proc is None or proc.poll() is None:
                    continue
                self.exits.append(
                    {"how": "crash", "code": proc.returncode, "replica": self.names[replica]}
                )
                self.say(
                    f"{self.names[replica]} exited by itself with {proc.returncode}; restarting it"
                )
                self.start_engine(replica)

    async def _stop_restart(self, how: str, replica: int = 0, down: float = 0.0) -> dict[str, Any]:
        """Stop `replica` (SIGKILL for kill9 and replica-kill, else SIGTERM), wait for its exit,
        stay down `down` s, start it again (same replica id); the stop is recorded."""
        assert self.engines[replica] is not None
        process = self.engines[replica]
        assert process is not None
        kill = how in ("kill9", "replica-kill")
        self.expect_down[replica] = True
        stop: dict[str, Any] = {"how": how, "replica": self.names[replica]}
        stop.update(mono=time.monotonic(), wall=time.time())
        process.signal(signal.SIGKILL if kill else signal.SIGTERM)
        code = await self.wait_engine(30 if kill else self.cfg.term_timeout, replica)
        took = time.monotonic() - stop["mono"]
        if code is None:
            process.signal(signal.SIGKILL)
            await self.wait_engine(10, replica)
        stop.update(code=code, exit_s=round(took, 2), t=round(stop["mono"] - self.t0, 2))
        self.exits.append({"how": how, "code": code, "took_s": round(took, 2)})
        if down:
            await asyncio.sleep(down)
        self.start_engine(replica)
        self.expect_down[replica] = False
        stop["restarted_s"] = round(time.monotonic() - stop["mono"], 2)
        self.stops.append(stop)
        return stop

    async def kill9(self) -> None:
        for k in range(self.cfg.kills):
            await asyncio.sleep(self.rng.uniform(*self.cfg.kill_gap))
            stop = await self._stop_restart("kill9")
            self.say(
                f"kill -9 {stop['replica']} #{k + 1}/{self.cfg.kills} (exit {stop['code']}), "
                "restarted"
            )
        await asyncio.sleep(self.cfg.after)

    async def graceful(self) -> None:
        stop = await self._stop_restart("sigterm", down=self.cfg.down)
        self.say(
            f"SIGTERM: {stop['replica']} exited with {stop['code']} after {stop['exit_s']:.1f}s; "
            f"was down {self.cfg.down:g}s, restarted"
        )
        await asyncio.sleep(self.cfg.after)

    async def _every(self, how: str, verb: str) -> None:
        """Stop replica 0 every `kill_every` s for `duration` s, restarting it each time.

        A stop comes at its planned time (start + k * kill_every), but never before the
        restarted replica acked the pipeline again (else it would be stopped while it starts,
        a different fault); planned times that passed meanwhile are skipped.
        """
        if self.cfg.replicas < 2:
            raise ValueError(f"{how} needs --replicas 2 or more")
        start = time.monotonic()
        end = start + self.cfg.duration
        planned = int(self.cfg.duration // self.cfg.kill_every)
        k = 0
        while True:
            k += 1
            due = start + k * self.cfg.kill_every
            if due > end:
                break
            if due < time.monotonic():
                self.say(f"{how}: planned stop #{k} skipped (the replica was not back yet)")
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            before = await asyncio.to_thread(self.iteration, self.pipeline)
            stop = await self._stop_restart(how)
            try:
                await self.wait_ready(
                    self.pipeline, max(30.0, self.cfg.kill_every * 3), after=before
                )
                stop["ready_s"] = round(time.monotonic() - stop["mono"], 2)
            except RuntimeError as exc:
                self.say(f"{how}: {exc}")
            self.say(
                f"{verb} {stop['replica']} #{k}/{planned} (exit {stop['code']} after "
                f"{stop['exit_s']:.1f}s), restarted, acked again after {stop.get('ready_s')}s"
            )
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        await asyncio.sleep(self.cfg.after)

    async def replica_kill(self) -> None:
        await self._every("replica-kill", "kill -9")

    async def replica_term(self) -> None:
        await self._every("replica-term", "SIGTERM")

    async def bounce(self) -> None:
        assert self.broker is not None
        for k in range(self.cfg.bounces):
            if k:
                await asyncio.sleep(self.cfg.bounce_gap)
            took = await self.broker.stop()
            self.say(f"broker bounce #{k + 1}/{self.cfg.bounces}: stopped in {took:.1f}s")
            await asyncio.sleep(self.cfg.bounce_down)
            took = await self.broker.start()
            self.say(f"broker bounce #{k + 1}/{self.cfg.bounces}: up again in {took:.1f}s")
        await asyncio.sleep(self.cfg.after)

    # -- broker faults (a cluster) --------------------------------------------------------

    async def broker_plan(self, faults: list[str]) -> None:
        """The broker faults of the plan, one after the other."""
        for fault in faults:
            await getattr(self, fault.replace("-", "_"))()

    def _source_partition(self, k: int) -> tuple[str, int]:
        """The k-th source partition in turn: every source's partition 0, then 1, ..."""
        topics = self.sources or self.topics
        return topics[k % len(topics)], (k // len(topics)) % self.cfg.partitions

    async def _led_by(self, node: int) -> list[str]:
        """The pipeline's partitions `node` leads (for the timeline)."""
        assert self.cluster is not None
        try:
            parts = await self.cluster.partitions(self.topics)
        except RuntimeError:
            return []
        return sorted(
            f"{_short_topic(t)}[{p}]" for (t, p), i in parts.items() if i["leader"] == node
        )

    async def _broker_every(self, how: str, gap: float, apply: Callable[[int], Any]) -> None:
        """`apply(k)` at start + k * gap for `duration` s. A fault that is due while the last
        one is not over (a slow restart) comes `BROKER_REST` s after it instead; before each,
        every replica of every topic is in sync again (waited up to `gap` s: a fault on an
        under-replicated cluster would be a double fault)."""
        assert self.cluster is not None
        start = time.monotonic()
        end = start + self.cfg.duration
        k = 0
        while True:
            k += 1
            due = start + k * gap
            if due > end:
                break
            if due < time.monotonic():
                self.say(f"{how} #{k}: due while the last one was not over; in {BROKER_REST:g}s")
                due = time.monotonic() + BROKER_REST
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                waited = await self.cluster.wait_in_sync(None, timeout=gap)
                if waited > 1:
                    self.say(f"{how} #{k}: waited {waited:.1f}s for every replica in sync")
            except RuntimeError as exc:
                self.say(f"{how} #{k}: {exc}; applying it all the same")
            await apply(k)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        await asyncio.sleep(self.cfg.after)

    async def _kill_restart(self, how: str, k: int, node: int, why: str) -> None:
        """kill -9 `node`, keep it down `broker_down` s, start it again (from this thread: the
        parent-death signal of a tied cluster), wait until it serves; recorded and said."""
        assert self.cluster is not None
        led = await self._led_by(node)
        event: dict[str, Any] = {"how": how, "k": k, "node": node, "why": why, "led": led}
        event["at_s"] = round(time.monotonic() - self.t0, 2)
        event["wall"] = time.time()
        took = await asyncio.to_thread(self.cluster.kill, node)
        self.say(
            f"{how} #{k}: kill -9 node {node} ({why}; it led {', '.join(led) or 'nothing'}), "
            f"exited in {took:.2f}s"
        )
        await asyncio.sleep(self.cfg.broker_down)
        self.cluster.spawn(node)
        try:
            up = await asyncio.to_thread(self.cluster.wait_up, node, 120.0)
            self.say(f"{how} #{k}: node {node} restarted, serving after {up:.1f}s")
            event["restart_s"] = round(up, 2)
        except RuntimeError as exc:
            self.say(f"{how} #{k}: node {node} did not come back: {exc}")
            event["restart_s"] = None
        event["down_s"] = round(time.monotonic() - self.t0 - event["at_s"], 2)
        self.broker_faults.append(event)

    async def leader_kill(self) -> None:
        """Every `broker_every` s for `duration` s: kill -9 the broker leading a source
        partition (each in turn), restart it `broker_down` s later."""
        assert self.cluster is not None

        async def apply(k: int) -> None:
            assert self.cluster is not None
            topic, partition = self._source_partition(k - 1)
            node = await self.cluster.leader(topic, partition)
            if node is None:
                self.say(f"leader-kill #{k}: {topic}[{partition}] has no leader; skipped")
                return
            why = f"leader of {_short_topic(topic)}[{partition}]"
            await self._kill_restart("leader-kill", k, node, why)

        await self._broker_every("leader-kill", self.cfg.broker_every, apply)

    async def controller_kill(self) -> None:
        """Every `broker_every` s for `duration` s: kill -9 the active controller (the quorum
        leader), restart it `broker_down` s later."""
        assert self.cluster is not None

        async def apply(k: int) -> None:
            assert self.cluster is not None
            node = await asyncio.to_thread(self.cluster.controller)
            await self._kill_restart("controller-kill", k, node, "active controller")

        await self._broker_every("controller-kill", self.cfg.broker_every, apply)

    async def broker_pause(self) -> None:
        """Every `pause_every` s for `duration` s: SIGSTOP the broker leading a source partition
        (each in turn) for `pause_s` s (longer than a 10 s session timeout), then SIGCONT."""
        assert self.cluster is not None

        async def apply(k: int) -> None:
            assert self.cluster is not None
            topic, partition = self._source_partition(k - 1)
            node = await self.cluster.leader(topic, partition)
            if node is None:
                self.say(f"broker-pause #{k}: {topic}[{partition}] has no leader; skipped")
                return
            led = await self._led_by(node)
            event: dict[str, Any] = {
                "how": "broker-pause",
                "k": k,
                "node": node,
                "why": f"leader of {_short_topic(topic)}[{partition}]",
                "led": led,
                "at_s": round(time.monotonic() - self.t0, 2),
                "wall": time.time(),
            }
            self.cluster.pause(node)
            self.say(
                f"broker-pause #{k}: SIGSTOP node {node} ({event['why']}; it led "
                f"{', '.join(led) or 'nothing'}) for {self.cfg.pause_s:g}s"
            )
            try:
                await asyncio.sleep(self.cfg.pause_s)
            finally:
                self.cluster.resume(node)
            self.say(f"broker-pause #{k}: SIGCONT node {node}")
            event["down_s"] = round(time.monotonic() - self.t0 - event["at_s"], 2)
            self.broker_faults.append(event)

        await self._broker_every("broker-pause", self.cfg.pause_every, apply)


def _short_topic(topic: str) -> str:
    """`seldon.<ns>.model.a.outputs` -> `a.outputs` (for the timeline)."""
    parts = topic.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else topic


def replica_name(index: int) -> str:
    """engine-a, engine-b, ..., engine-z, engine-aa, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"engine-{letters}"


def _exits_summary(exits: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for e in exits:
        if e["how"] == "sigterm":
            parts.append(f"SIGTERM→{e['code']} ({e['took_s']:g}s)")
        elif e["how"] == "final" and e["code"] != 0:
            parts.append(f"final SIGTERM→{e['code']}")
        elif e["how"] in ("kill9", "replica-kill") and e["code"] != -9:
            parts.append(f"{e['how']}→{e['code']}")
    terms = [e for e in exits if e["how"] == "replica-term"]
    for code in sorted({e["code"] for e in terms}, key=str):
        took = [e["took_s"] for e in terms if e["code"] == code]
        parts.append(
            f"SIGTERM→{code} x{len(took)} (median {statistics.median(took):g}s, max {max(took):g}s)"
        )
    crashes = Counter(e["code"] for e in exits if e["how"] == "crash")
    parts += [f"crashed rc={code} x{n}" for code, n in sorted(crashes.items(), key=str)]
    return ", ".join(parts)


# -- figures: resumption after a fault, gaps per partition, partition ownership ----------------


def resume_after(
    at: float, at_wall: float, by_partition: dict[int, list[tuple[float, int, int]]]
) -> dict[int, float | None]:
    """Per output partition: seconds from `at` (monotonic; `at_wall` the same instant as wall
    time) to the first arrival holding an output of an input produced after it (its timestamp
    is later), None if none came. Outputs in flight at the fault, or replays of older input,
    do not count."""
    wall_ms = at_wall * 1000
    out: dict[int, float | None] = {}
    for partition, arrivals in by_partition.items():
        i = bisect.bisect_right(arrivals, (at, math.inf, math.inf))
        out[partition] = next((t - at for t, _, ts in arrivals[i:] if ts > wall_ms), None)
    return out


def stall_after(
    start: float, end: float, by_partition: dict[int, list[tuple[float, int, int]]]
) -> dict[int, float]:
    """Per output partition: the longest time without an arrival between `start` (a stop) and
    `end` (the next stop, or math.inf: then until the last arrival); a stall still going on at
    `end` counts until `end` (the next stop's own figure goes on from there). Replays and
    outputs in flight count as output here."""
    out: dict[int, float] = {}
    for partition, arrivals in by_partition.items():
        i = bisect.bisect_right(arrivals, (start, math.inf, math.inf))
        best, previous = 0.0, start
        for t, _, _ in arrivals[i:]:
            best = max(best, min(t, end) - previous)
            if t >= end:
                break
            previous = t
        out[partition] = best
    return out


def partition_gaps(
    by_partition: dict[int, list[tuple[float, int, int]]],
) -> dict[int, tuple[float, float]]:
    """Per output partition: (longest gap between two arrivals, when it began, monotonic)."""
    out: dict[int, tuple[float, float]] = {}
    for partition, arrivals in sorted(by_partition.items()):
        best, began = 0.0, arrivals[0][0] if arrivals else 0.0
        for (t1, *_), (t2, *_) in itertools.pairwise(arrivals):
            if t2 - t1 > best:
                best, began = t2 - t1, t1
        out[partition] = (best, began)
    return out


def stalled(arrivals: list[tuple[float, int]], over: float = 1.0) -> float:
    """Seconds spent in gaps between arrivals longer than `over`."""
    total = 0.0
    for (t1, _), (t2, _) in itertools.pairwise(arrivals):
        if t2 - t1 > over:
            total += t2 - t1
    return total


_LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\w+)\s+(?:\[([^\]]*)\] )?(.*)$")
_INTERESTING = re.compile(
    r"assigned \[|restored \d+ state|revoked|rebalanc|leave group|session|heartbeat|"
    r"engine .* started|pipeline .* ready|received |unreachable|reconnected|stopping|stopped|"
    r"shut",
    re.IGNORECASE,
)


def log_lines(text: str, ref_wall: float) -> Iterator[tuple[float, str, str, str, str]]:
    """(wall time, level, `pipeline=... step=...` prefix, message, raw line) of an engine log.

    Text lines carry only the local time of day: placed within 12 hours of `ref_wall`.
    """
    ref = time.localtime(ref_wall)
    ref_tod = ref.tm_hour * 3600 + ref.tm_min * 60 + ref.tm_sec + (ref_wall % 1)
    for raw in text.splitlines():
        m = _LOG_LINE.match(raw)
        if not m:
            continue
        h, mi, sec, ms, level, prefix, message = m.groups()
        tod = int(h) * 3600 + int(mi) * 60 + int(sec) + int(ms) / 1000
        delta = (tod - ref_tod + 43200) % 86400 - 43200
        yield ref_wall + delta, level, prefix or "", message, raw


def assignments(text: str, ref_wall: float) -> list[tuple[float, str, set[str]]]:
    """(wall time, consumer (the step prefix), its partitions as `topic[p]`) per `assigned`
    line (eager rebalances: each line is the consumer's whole assignment)."""
    out: list[tuple[float, str, set[str]]] = []
    for wall, _, prefix, message, _ in log_lines(text, ref_wall):
        if not message.startswith("assigned ["):
            continue
        try:
            parts = ast.literal_eval(message[len("assigned ") :])
        except (ValueError, SyntaxError):
            continue
        key = prefix or ",".join(sorted({str(p).rsplit("[", 1)[0] for p in parts}))
        out.append((wall, key, {str(p) for p in parts}))
    return out


def owned_at(lines: list[tuple[float, str, set[str]]], wall: float) -> set[str]:
    """The partitions held at `wall`: per consumer, its last assignment before then."""
    latest: dict[str, set[str]] = {}
    for at, key, parts in lines:
        if at <= wall:
            latest[key] = parts
    return set().union(*latest.values()) if latest else set()


def whole_paths(owned: set[str], step_topics: list[list[str]], partitions: int) -> list[int]:
    """The partitions p whose every step source partition `topic[p]` is in `owned`."""
    topics = [t for step in step_topics for t in step]
    return [p for p in range(partitions) if all(f"{t}[{p}]" in owned for t in topics)]


def _notes(counted: dict[str, Any], producer: Producer, lag: dict[str, int] | None) -> str:
    """What else deserves a look: split outer-join pairs, bad input, a drain left short."""
    notes = []
    if counted.get("lost_on_error_topic"):
        notes.append(f"{counted['lost_on_error_topic']} lost ids on the error topic")
    if counted["partial_join_outputs"]:
        notes.append(f"{counted['partial_join_outputs']} one-sided join outputs")
    if counted["one_sided_ids_also_joined"]:
        notes.append(
            f"{counted['one_sided_ids_also_joined']} ids answered alone, "
            "then joined within the grace"
        )
    if counted["input_duplicates"]:
        notes.append(f"{counted['input_duplicates']} duplicated input records")
    if producer.failed:
        notes.append(f"{producer.failed} sends failed")
    if counted["outputs_not_sent"] or counted["undecodable_outputs"]:
        notes.append(
            f"{counted['outputs_not_sent']} outputs of unsent ids, "
            f"{counted['undecodable_outputs']} undecodable"
        )
    if lag is None:
        notes.append("no engine consumer groups found")
    elif not lag:
        notes.append("engine committed no offsets")
    elif sum(lag.values()):
        notes.append(f"{sum(lag.values())} input records uncommitted at the end")
    return "; ".join(notes)


def _id_number(rid: str) -> int:
    return int(rid.rsplit("-", 1)[-1])


def id_ranges(ids: set[str], partitions: int) -> list[str]:
    """Ids as runs of consecutive ids of one partition (n, n + partitions, ...): `p1: 5-4001
    (1000 ids)`, in the order of their first id."""
    return [
        f"p{p}: {a}-{b} ({k} ids)" if k > 1 else f"p{p}: {a}"
        for a, b, k, p in _runs(ids, partitions)
    ]


def _runs(ids: set[str], partitions: int) -> list[tuple[int, int, int, int]]:
    """Ids as runs of consecutive ids of one partition (n, n + partitions, ...): (first, last,
    count, partition), in the order of their first id."""
    per: dict[int, list[int]] = {}
    for n in sorted(_id_number(i) for i in ids):
        per.setdefault(n % partitions, []).append(n)
    runs: list[tuple[int, int, int, int]] = []
    for p, numbers in per.items():
        first = last = numbers[0]
        for n in numbers[1:]:
            if n != last + partitions:
                runs.append((first, last, (last - first) // partitions + 1, p))
                first = n
            last = n
        runs.append((first, last, (last - first) // partitions + 1, p))
    return sorted(runs)


def lost_at(
    missing: set[str],
    inputs: list[list[tuple[bytes, bytes]]],
    times: list[list[int]],
    partitions: int,
    t0_wall: float,
) -> list[str]:
    """Each run of lost ids (see `id_ranges`) with when its records were written to each
    source, in seconds since the run began (the records' timestamps; the timeline's clock):
    `p1: 5-4001 (1000 ids) source 0 at 35.20-39.10s, source 1 at 35.21-49.00s`."""
    if not missing:
        return []
    written: list[dict[int, list[int]]] = []
    for records, stamps in zip(inputs, times, strict=True):
        per: dict[int, list[int]] = {}
        for (key, _), ts in zip(records, stamps, strict=False):
            rid = key_id(key.decode(errors="replace"))
            if rid in missing:
                per.setdefault(_id_number(rid), []).append(ts)
        written.append(per)
    out = []
    for first, last, k, p in _runs(missing, partitions):
        spans = []
        for i, per in enumerate(written):
            stamps = [ts for n in range(first, last + 1, partitions) for ts in per.get(n, [])]
            if stamps:
                a, b = min(stamps) / 1000 - t0_wall, max(stamps) / 1000 - t0_wall
                spans.append(f"source {i} at {a:.2f}-{b:.2f}s")
        ids = f"p{p}: {first}-{last} ({k} ids)" if k > 1 else f"p{p}: {first}"
        out.append(f"{ids} " + ", ".join(spans))
    return out


def count(
    cfg: Config, inputs: list[list[tuple[bytes, bytes]]], outputs: list[bytes]
) -> dict[str, Any]:
    """Sent, lost and duplicated ids from the records of the input topic(s) and the output."""
    per_source = [
        Counter(key_id(k.decode(errors="replace")) for k, _ in records) for records in inputs
    ]
    sent = set(per_source[0])
    for counts in per_source[1:]:
        sent &= set(counts)
    input_dups = sum(c - 1 for counts in per_source for c in counts.values() if c > 1)
    delivered: Counter[str] = Counter()
    # an outer join answers an id alone at its window's close and again joined when the partner
    # comes within the grace: one output of each shape is not a duplicate, a second of one is
    shapes: Counter[tuple[str, bool]] = Counter()
    partial_outputs = 0
    one_sided: set[str] = set()  # ids with a one-sided join output
    joined: set[str] = set()  # ids with an output of both sides
    undecodable = 0
    for value in outputs:
        try:
            rid, numbers, ntensors = decode_request(value)
        except (ValueError, IndexError):
            undecodable += 1
            continue
        if cfg.case == "batch":
            delivered.update(ID_FORMAT.format(n) for n in numbers)
            shapes.update((ID_FORMAT.format(n), False) for n in numbers)
        else:
            delivered[rid] += 1
            shapes[rid, cfg.case == "outer" and ntensors >= 2] += 1
            if cfg.case in ("join", "outer") and ntensors < 2:
                partial_outputs += 1
                one_sided.add(rid)
            elif cfg.case in ("join", "outer"):
                joined.add(rid)
    missing = sent - set(delivered)
    lost = len(missing)
    duplicated = sum(c - 1 for c in shapes.values() if c > 1)
    duplicated_ids = {rid for (rid, _), c in shapes.items() if c > 1}
    return {
        "missing": missing,
        "sent": len(sent),
        "lost": lost,
        "lost_per_partition": dict(
            sorted(Counter(_id_number(i) % cfg.partitions for i in missing).items())
        ),
        "lost_ranges": id_ranges(missing, cfg.partitions)[:40],
        "duplicated": duplicated,
        "ids_duplicated": len(duplicated_ids),
        "input_records": [len(r) for r in inputs],
        "input_duplicates": input_dups,
        "output_records": len(outputs),
        "outputs_not_sent": sum(c for rid, c in delivered.items() if rid not in sent),
        "partial_join_outputs": partial_outputs,
        "one_sided": one_sided,
        "duplicated_ids": duplicated_ids,
        "one_sided_ids_also_joined": len(one_sided & joined),
        "undecodable_outputs": undecodable,
    }


def _figures(
    cfg: Config, run: Run, watcher: Watcher, lay: Layout, result: Result
) -> dict[str, Any]:
    """Resumption after each engine stop, gaps per output partition, the survivors' partitions
    (set on `result`); the details that go with them (returned). Times of the details are
    seconds since the run began, as in events.txt and timeline.txt."""
    rel = partial(_rel, run.t0)
    resumes: list[dict[str, Any]] = []
    starts = [s["mono"] for s in run.stops]
    for stop, end in zip(run.stops, [*starts[1:], math.inf][: len(starts)], strict=True):
        per = resume_after(stop["mono"], stop["wall"], watcher.by_partition)
        done = [v for v in per.values() if v is not None]
        whole = max(done) if done and len(done) == len(per) else None
        stalls = stall_after(stop["mono"], end, watcher.by_partition)
        resumes.append(
            {
                "how": stop["how"],
                "replica": stop["replica"],
                "at_s": rel(stop["mono"]),
                "exit_s": stop["exit_s"],
                "restarted_s": stop["restarted_s"],
                "ready_s": stop.get("ready_s"),
                "stall_s": round(max(stalls.values(), default=0.0), 2),
                "resume_s": None if whole is None else round(whole, 2),
                "stall_per_partition_s": {p: round(v, 2) for p, v in sorted(stalls.items())},
                "resume_per_partition_s": {
                    p: None if v is None else round(v, 2) for p, v in sorted(per.items())
                },
            }
        )
    result.faults_applied = len(resumes)
    values = [r["resume_s"] for r in resumes if r["resume_s"] is not None]
    result.resume_never = len(resumes) - len(values)
    if values:
        result.resume_median_s = round(statistics.median(values), 2)
        result.resume_max_s = None if result.resume_never else round(max(values), 2)
    stall_values = [r["stall_s"] for r in resumes]
    if stall_values:
        result.stall_median_s = round(statistics.median(stall_values), 2)
        result.stall_max_s = round(max(stall_values), 2)
    gaps = partition_gaps(watcher.by_partition)
    result.partition_gaps_s = {p: round(g, 2) for p, (g, _) in gaps.items()}

    owners: dict[str, list[int]] = {}
    first = min((s["wall"] for s in run.stops), default=None)
    if first is not None:
        for name in run.names:
            text = _read(run.logs / f"{name}.log")
            owners[name] = whole_paths(
                owned_at(assignments(text, run.t0_wall), first), lay.steps, cfg.partitions
            )
    survivors = run.names[1:] if any(f in ENGINE_FAULTS for f in cfg.faults) else []
    if first is not None and survivors:
        owned: set[str] = set()
        for name in survivors:
            owned |= owned_at(assignments(_read(run.logs / f"{name}.log"), run.t0_wall), first)
        result.survivor_partitions = whole_paths(owned, lay.steps, cfg.partitions)
        in_survivors = [result.partition_gaps_s.get(p, 0.0) for p in result.survivor_partitions]
        result.survivor_gap_s = max(in_survivors) if in_survivors else None
    return {
        "resumes": resumes,
        "partition_gaps_began_s": {p: rel(at) for p, (_, at) in gaps.items()},
        "partition_outputs": {
            p: sum(n for _, n, _ in arrivals)
            for p, arrivals in sorted(watcher.by_partition.items())
        },
        "no_output_s": round(stalled(watcher.arrivals), 1),
        "output_span_s": round(watcher.arrivals[-1][0] - watcher.arrivals[0][0], 1)
        if watcher.arrivals
        else 0.0,
        "whole_paths_before_first_fault": owners,
        "stops": [{k: v for k, v in s.items() if k not in ("mono", "wall")} for s in run.stops],
        "engine_log_counts": {n: _log_counts(_read(run.logs / f"{n}.log")) for n in run.names},
    }


def _write_arrivals(run: Run, watcher: Watcher, path: Path) -> None:
    """The live consumer's arrivals and the stops, to compute other figures later: times in
    seconds since the run began, input timestamps in wall-clock ms."""
    data = {
        "run_began_wall": run.t0_wall,
        "stops": [
            {**{k: v for k, v in s.items() if k != "mono"}, "at_s": s["mono"] - run.t0}
            for s in run.stops
        ],
        "by_partition": {
            p: [[round(t - run.t0, 3), n, ts] for t, n, ts in arrivals]
            for p, arrivals in sorted(watcher.by_partition.items())
        },
    }
    path.write_text(json.dumps(data) + "\n")


def refigure(path: Path) -> dict[str, Any]:
    """Stall and caught-up figures again from a run's arrivals.json (e.g. after the way they
    are computed changed): per stop and their median / max, and the gaps per partition."""
    data = json.loads(path.read_text())
    by_partition = {
        int(p): [(t, n, ts) for t, n, ts in arrivals]
        for p, arrivals in data["by_partition"].items()
    }
    t0 = data["run_began_wall"]
    stops = data["stops"]
    starts = [s["at_s"] for s in stops]
    rows = []
    for stop, end in zip(stops, [*starts[1:], math.inf], strict=True):
        # arrivals.json times are seconds since the run began, on the wall clock of its start
        resume = resume_after(stop["at_s"], stop.get("wall", t0 + stop["at_s"]), by_partition)
        stall = stall_after(stop["at_s"], end, by_partition)
        done = [v for v in resume.values() if v is not None]
        rows.append(
            {
                "at_s": round(stop["at_s"], 2),
                "how": stop["how"],
                "stall_s": round(max(stall.values(), default=0.0), 2),
                "resume_s": round(max(done), 2) if done and len(done) == len(resume) else None,
            }
        )

    def summary(key: str) -> list[float | None]:
        values = [r[key] for r in rows if r[key] is not None]
        return [round(statistics.median(values), 2), round(max(values), 2)] if values else []

    return {
        "stops": rows,
        "stall_median_max_s": summary("stall_s"),
        "resume_median_max_s": summary("resume_s"),
        "partition_gaps_s": {p: round(g, 2) for p, (g, _) in partition_gaps(by_partition).items()},
    }


def _rel(origin: float, mono: float) -> float:
    return round(mono - origin, 2)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _log_counts(text: str) -> dict[str, int]:
    """Lines of an engine log worth counting: levels, assignments, restores, starts."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        level, message = m.group(5), m.group(7)
        if level in ("WARNING", "ERROR", "CRITICAL"):
            counts[level.lower()] += 1
        if message.startswith("assigned ["):
            counts["assigned"] += 1
        elif message.startswith("restored "):
            counts["restored"] += 1
        elif message.startswith("engine ") and " started" in message:
            counts["starts"] += 1
    return dict(counts)


def _write_timeline(run: Run, path: Path) -> None:
    """The harness's events and the engines' notable log lines (assignments, restores,
    warnings, starts) on one clock: seconds since the run began."""
    entries = list(run.timeline)
    for name in run.names:
        for wall, level, prefix, message, _ in log_lines(
            _read(run.logs / f"{name}.log"), run.t0_wall
        ):
            if message.startswith("settings: "):
                continue
            if level in ("WARNING", "ERROR", "CRITICAL") or _INTERESTING.search(message):
                step = f" [{prefix}]" if prefix else ""
                entries.append((wall, f"{name} {level}{step}: {message[:400]}"))
    entries.sort(key=lambda e: e[0])
    path.write_text("".join(f"{wall - run.t0_wall:8.2f}s {what}\n" for wall, what in entries))


async def run_one(
    cfg: Config,
    *,
    bootstrap: str | None = None,
    logs: Path,
    tag: str | None = None,
    engine_src: Path | None = None,
    engine_label: str | None = None,
) -> Result:
    """One (case, fault plan) run; `bootstrap` None: a private broker started and stopped here.

    `engine_src`: a folder holding the `dataflow` package the engine and proxy run (default: the
    repository's), e.g. a `snapshot` of a git revision.
    """
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    with engine_source(engine_src), client_log(logs / "clients.log") as lines:
        result = await _run_one(cfg, bootstrap, logs, tag)
    result.details["client_log_lines"] = dict(lines)
    result.details["engine"] = engine_label or working_tree()
    (logs / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


async def _run_one(cfg: Config, bootstrap: str | None, logs: Path, tag: str | None) -> Result:
    for fault in cfg.faults:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
        if fault.startswith("replica-") and cfg.replicas < 2:
            raise ValueError(f"the {fault} fault needs 2 or more replicas")
    if bootstrap is not None and "bounce" in cfg.faults:
        raise ValueError("the bounce fault needs a private broker (no --bootstrap)")
    broker_faults = [f for f in cfg.faults if f in BROKER_FAULTS]
    if broker_faults and not cfg.cluster:
        raise ValueError(f"the {broker_faults[0]} fault needs a cluster (--cluster 3)")
    if cfg.cluster and bootstrap is not None:
        raise ValueError("a cluster run starts its own cluster (no --bootstrap)")
    if cfg.cluster and "bounce" in cfg.faults:
        raise ValueError("bounce stops the private single broker; on a cluster: leader-kill")
    if cfg.cluster < 0:
        raise ValueError("cluster must be 0 (one broker) or the number of brokers")
    if cfg.partitions < 1 or cfg.replicas < 1:
        raise ValueError("partitions and replicas must be 1 or more")
    if cfg.cpu_hogs < 0:
        raise ValueError("cpu_hogs must be 0 or more")
    wall0 = time.monotonic()
    tag = tag or uuid.uuid4().hex[:8]
    safe = re.sub(r"[^a-z0-9]", "", f"{cfg.case}{cfg.fault}".lower())
    ns, name = f"chaos{safe}{tag}", f"chaos-{safe}-{tag}"
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    broker = Broker(logs) if bootstrap is None and not cfg.cluster else None
    cluster = (
        KafkaCluster.temporary(cfg.cluster, heap=cfg.broker_heap, say=print)
        if cfg.cluster
        else None
    )
    run: Run | None = None
    tasks: list[asyncio.Task[None]] = []
    hogs = CpuHogs(cfg.cpu_hogs)
    prober: HealthProbe | None = None
    result = Result(
        cfg.label,
        cfg.fault,
        logs=str(logs),
        partitions=cfg.partitions,
        replicas=cfg.replicas,
        brokers=max(1, cfg.cluster),
        cpu_hogs=cfg.cpu_hogs,
    )
    try:
        if broker is not None:
            took = await broker.start()
            print(f"{cfg.label}/{cfg.fault}: private broker {broker.bootstrap} up in {took:.1f}s")
            bootstrap = broker.bootstrap
        if cluster is not None:
            took = await start_cluster(cluster)
            print(
                f"{cfg.label}/{cfg.fault}: private {cfg.cluster}-node cluster {cluster.bootstrap} "
                f"up in {took:.1f}s ({cluster.dir})"
            )
            bootstrap = cluster.bootstrap
        assert bootstrap is not None
        run = Run(cfg, logs, bootstrap, broker, cluster)
        run.say(f"logs in {logs}")
        lay = layout(cfg, ns)
        run.sources, run.topics = [t for t, _ in lay.sources], lay.topics
        await create_topics(bootstrap, lay.topics, cfg.partitions, replication=cfg.replication)
        spec = logs / f"{name}.yaml"
        spec.write_text(f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\n{lay.body}")
        if cfg.cpu_hogs:
            hogs.start()  # in this (main) thread: the loops' parent-death signal is tied to it
            run.say(f"{cfg.cpu_hogs} busy loop(s) started: {' '.join(HOG_COMMAND)}")
        proxy = (await asyncio.to_thread(proxy_class))(logs)
        run.proxy = await asyncio.to_thread(proxy.start, spec)
        run.pipeline = name
        run.start_engines()
        prober = HealthProbe(
            cfg.replicas,
            run.probe_target,
            run.t0,
            path=cfg.health_path,
            every=cfg.health_every,
            timeout=cfg.health_timeout,
        ).start()
        await run.wait_ready(name, 90)
        run.say(
            f"pipeline Ready on {', '.join(run.names)}; {cfg.partitions} partition(s) per topic"
        )

        watcher = Watcher(bootstrap, lay.sink)
        producer = Producer(bootstrap, lay.sources, name, cfg.rate, cfg.partitions)
        tasks.append(asyncio.create_task(watcher.run()))
        await asyncio.wait_for(watcher.started.wait(), 60)
        tasks.append(asyncio.create_task(run.watchdog()))
        produce = asyncio.create_task(producer.run())
        tasks.append(produce)
        origin = time.monotonic()
        load_start = os.getloadavg()[0]
        run.say(
            f"producing {cfg.rate:g} ids/s to each of {', '.join(t for t, _ in lay.sources)}; "
            f"load {load_start:.1f}"
        )
        await asyncio.sleep(cfg.lead)
        # Broker faults run alongside the engine faults (one after the other among themselves).
        brokers = asyncio.create_task(run.broker_plan(broker_faults)) if broker_faults else None
        if brokers is not None:
            tasks.append(brokers)
        for fault in cfg.faults:
            if fault in BROKER_FAULTS:
                continue
            await getattr(run, fault.replace("-", "_"))()
            if produce.done():
                break
        if brokers is not None and not produce.done():
            await asyncio.wait([brokers, produce], return_when=asyncio.FIRST_COMPLETED)
            if brokers.done():
                brokers.result()  # its error, if any
        producer.stopping.set()
        await produce
        run.say(f"producer stopped: {producer.ids} ids, {producer.stats()}")

        # Drain: until nothing moves for `quiet` s: no output, no engine (re)start, no change
        # of the engine's uncommitted input or of the pipeline's state at the proxy (an outer
        # join's lone records wait a window). A pipeline not Ready within `starting` s of an
        # engine start is waited for (the engine is starting); not Ready later, e.g. an engine
        # whose loop stalled and lost its scheduler subscription, is not: the drain ends after
        # `quiet` s of that too, and the result notes it.
        quiet = cfg.quiet
        if cfg.case == "outer":
            quiet = max(quiet, cfg.window_ms / 1000 + 5)
        starting = max(60.0, quiet)
        stopped = time.monotonic()
        lag: dict[str, int] | None = None
        lag_changed = state_changed = stopped
        state: str | None = "Ready"
        async with LagProbe(bootstrap, name) as probe:
            while True:
                with contextlib.suppress(KafkaError, KeyError):
                    now_lag = await probe.lag()
                    if now_lag != lag:
                        lag, lag_changed = now_lag, time.monotonic()
                now_state = await asyncio.to_thread(run.state, name)
                now = time.monotonic()
                if now_state != state:
                    state, state_changed = now_state, now
                waiting = state != "Ready" and now - run.last_start < starting
                moved = max(
                    watcher.last,
                    stopped,
                    run.last_start,
                    lag_changed,
                    now if waiting else state_changed,
                )
                if time.monotonic() - moved >= quiet:
                    break
                if time.monotonic() - stopped > cfg.drain_cap:
                    run.say(f"drain cap {cfg.drain_cap:g}s reached")
                    break
                await asyncio.sleep(1.0)
        run.say(
            f"drained {time.monotonic() - stopped:.1f}s: {watcher.count} outputs seen live; "
            f"engine input lag {lag}; pipeline {state} at the proxy"
        )
        result.load = (round(load_start, 2), round(os.getloadavg()[0], 2))
        for code in await run.stop_all(cfg.term_timeout):
            run.exits.append({"how": "final", "code": code})
        prober.stop()  # the engines are stopped: the case is over
        hogs.stop()
        health = prober.total()
        result.health_probes, result.health_worst_s = health.probes, round(health.worst_s, 3)
        result.health_slow, result.health_no_reply = health.slow, health.no_reply
        result.health_silent_s = round(health.silent_s, 1)
        if cfg.cpu_hogs:
            run.say(f"busy loops stopped: {hogs.stats()}")

        topic_partitions = {t: len(await partitions_of(bootstrap, t)) for t in lay.topics}
        input_times: list[list[int]] = [[] for _ in lay.sources]
        inputs = [
            await read_topic(bootstrap, topic, timestamps=times)
            for (topic, _), times in zip(lay.sources, input_times, strict=True)
        ]
        outputs = [v for _, v in await read_topic(bootstrap, lay.sink)]
        counted = count(cfg, inputs, outputs)
        counted["lost_ranges_at_s"] = lost_at(
            counted["missing"], inputs, input_times, cfg.partitions, run.t0_wall
        )[:40]
        if broker is not None or cluster is not None:  # a private broker: its errors are ours
            counted.update(await error_topic(bootstrap, counted["missing"]))
        if counted["one_sided"]:  # outer joins: which ids came out alone, written when
            counted["one_sided_ranges_at_s"] = lost_at(
                counted["one_sided"], inputs, input_times, cfg.partitions, run.t0_wall
            )[:40]
        if counted["duplicated_ids"]:  # which ids came out more than once, written when
            counted["duplicated_ranges_at_s"] = lost_at(
                counted["duplicated_ids"], inputs, input_times, cfg.partitions, run.t0_wall
            )[:40]
        del counted["missing"], counted["one_sided"], counted["duplicated_ids"]
        replication: dict[str, Any] = {}
        if cluster is not None:
            replication = await topic_replication(cluster)
            run.say(f"replication of the cluster's topics: {replication}")
        gap, gap_at = watcher.longest_gap(origin)
        result.sent, result.lost = counted["sent"], counted["lost"]
        result.duplicated = counted["duplicated"]
        result.duplicated_s = counted["duplicated"] / cfg.rate
        result.longest_gap_s = gap
        result.exits = _exits_summary(run.exits)
        result.notes = _notes(counted, producer, lag)
        if cluster is not None:
            low = sorted(t for t, r in replication["factor"].items() if r < cfg.replication)
            if low:
                text = f"replication under {cfg.replication}: {', '.join(low)}"
                result.notes = f"{result.notes}; {text}" if result.notes else text
        if state != "Ready":
            not_ready = f"pipeline {state} at the end of the drain"
            result.notes = f"{result.notes}; {not_ready}" if result.notes else not_ready
        odd = {t: n for t, n in topic_partitions.items() if n != cfg.partitions}
        if odd:  # e.g. topics of an earlier run on --bootstrap, made with other partitions
            odd_text = f"topics not of {cfg.partitions} partitions: {odd}"
            result.notes = f"{result.notes}; {odd_text}" if result.notes else odd_text
        figures = _figures(cfg, run, watcher, lay, result)
        result.broker_faults = len(run.broker_faults)
        _write_arrivals(run, watcher, logs / "arrivals.json")
        result.details = {
            **counted,
            **figures,
            "longest_gap_began_s": round(gap_at, 1),
            "producer": producer.stats(),
            "engine_lag_after_drain": lag,
            "pipeline_state_after_drain": state,
            "topic_partitions": topic_partitions,
            "live_outputs": watcher.count,
            "live_consumer_errors": dict(watcher.errors),
            "engine_starts": run.engine_starts,
            "exits": run.exits,
            "health": {
                "path": cfg.health_path,
                "every_s": cfg.health_every,
                "timeout_s": cfg.health_timeout,
                **health.summary(),
                "per_replica": {
                    n: s.summary() for n, s in zip(run.names, prober.per_replica, strict=True)
                },
            },
            "cpu_hogs": hogs.stats(),
            "config": asdict(cfg),
            "pipeline": name,
            "bootstrap": bootstrap,
        }
        if cluster is not None:
            result.details["broker_faults"] = [
                {k: v for k, v in e.items() if k != "wall"} for e in run.broker_faults
            ]
            result.details["replication"] = replication
            result.details["cluster_dir"] = str(cluster.dir)
        run.say(
            f"sent {result.sent}, lost {result.lost}, duplicated {result.duplicated}, "
            f"longest gap {gap:.1f}s; after a stop: output stall median {result.stall_median_s} "
            f"max {result.stall_max_s} s, caught up median {result.resume_median_s} "
            f"max {result.resume_max_s} s; gaps per partition {result.partition_gaps_s}, "
            f"survivors' partitions {result.survivor_partitions}; health: worst reply "
            f"{result.health_worst_s}s of {result.health_probes} probes, "
            f"{result.health_slow} over 1s, {result.health_no_reply} without reply"
        )
    finally:
        hogs.stop()
        if prober is not None:
            prober.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if run is not None:
            run.expect_down = [True] * cfg.replicas
            for process in run.engines:
                if process is not None:
                    process.stop(10)
            if run.proxy is not None:
                run.proxy.stop()
            (logs / "events.txt").write_text("\n".join(run.events) + "\n")
            with contextlib.suppress(OSError):
                _write_timeline(run, logs / "timeline.txt")
        if broker is not None:
            broker.close()
        if cluster is not None:
            cluster.close(keep_logs=logs)
        result.run_s = time.monotonic() - wall0
    return result


# -- command line ---------------------------------------------------------------------------


def _csv(choices: tuple[str, ...], plus: bool = False) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        for item in items:
            for part in item.split("+") if plus else [item]:
                if part not in choices:
                    raise argparse.ArgumentTypeError(f"{part!r} is not one of {','.join(choices)}")
        return items

    return parse


def _gap(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/chaos",
        description=(
            "Chaos suite: for each case x fault, a private broker, the proxy scheduler,\n"
            "--replicas engines, a steady producer of unique ids and a live output consumer;\n"
            "the fault is applied while producing; then lost and duplicated ids are counted\n"
            "against the input topic, and output resumption after each engine stop and gaps\n"
            "per output partition are measured; every running engine's health server is asked\n"
            "--health-path every 0.5 s (3 s timeout): worst reply, replies over 1 s, probes\n"
            "without reply. --cpu-hogs N runs N busy loops meanwhile. Prints a markdown table,\n"
            "one row per run (and writes --json)."
        ),
        epilog=(
            "cases: chain (3 steps), join (inner), outer (outer join), batch (size 10, 500 ms)\n"
            "faults: kill9 (SIGKILL + immediate restart, --kills times at --kill-gap),\n"
            "        graceful (SIGTERM, down --down s, restart), bounce (broker stop/start,\n"
            "        --bounces times), replica-kill / replica-term (with --replicas 2+: SIGKILL /\n"
            "        SIGTERM replica 0 every --kill-every s for --duration s, restarting it at\n"
            "        once); kill9 and graceful stop replica 0 too; 'a+b' applies a then b\n"
            "with --cluster N (a private KRaft cluster, every node broker + controller):\n"
            "        leader-kill (kill -9 the leader of a source partition, each in turn, every\n"
            "        --broker-every s for --duration s; restarted --broker-down s later),\n"
            "        broker-pause (SIGSTOP that leader --pause s, every --pause-every s),\n"
            "        controller-kill (kill -9 the active controller, as leader-kill); broker\n"
            "        faults run alongside the engine faults of a plan: 'leader-kill+kill9'\n"
            "        kills leaders while the engine is killed"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cases", type=_csv(CASES), default=list(CASES), help="default: all")
    p.add_argument(
        "--faults",
        type=_csv(FAULTS, plus=True),
        default=None,
        help="default: " + ",".join(f for f in FAULTS if f not in BROKER_FAULTS) + "; with "
        "--cluster: " + ",".join(CLUSTER_FAULTS),
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run every case on a private N-node KRaft cluster (scripts/kafka_cluster.py; 3: "
        "replication 3, min.insync.replicas 2) instead of one private broker; the harness "
        "creates the topics at replication min(3, N)",
    )
    p.add_argument(
        "--broker-every",
        type=float,
        default=20.0,
        help="leader-kill, controller-kill: seconds between kills, for --duration s (default 20)",
    )
    p.add_argument(
        "--broker-down",
        type=float,
        default=5.0,
        help="leader-kill, controller-kill: seconds a killed broker stays down (default 5)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=15.0,
        help="broker-pause: seconds a leader stays stopped (SIGSTOP; default 15, longer than "
        "the engines' 10 s session timeout)",
    )
    p.add_argument(
        "--pause-every",
        type=float,
        default=35.0,
        help="broker-pause: seconds from one pause to the next, for --duration s (default 35)",
    )
    p.add_argument(
        "--broker-heap", default="448m", help="JVM heap of each cluster node (default 448m)"
    )
    p.add_argument(
        "--engine-replication",
        type=int,
        default=None,
        metavar="R",
        help="set the engines' SELDON_KAFKA_REPLICATION_FACTOR (default: not set, the engine's "
        "own default)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="ids per second (default 2000); each id goes to every source, so a join's two "
        "sources get --rate records/s each",
    )
    p.add_argument("--kills", type=int, default=20, help="kill -9 count (default 20)")
    p.add_argument(
        "--kill-gap",
        type=_gap,
        default=(1.0, 8.0),
        metavar="MIN,MAX",
        help="random seconds between kills (default 1,8)",
    )
    p.add_argument("--down", type=float, default=30.0, help="graceful: seconds down (default 30)")
    p.add_argument("--bounces", type=int, default=3, help="broker bounces (default 3)")
    p.add_argument("--bounce-down", type=float, default=5.0, help="seconds down (default 5)")
    p.add_argument("--bounce-gap", type=float, default=10.0, help="between bounces (default 10)")
    p.add_argument("--window-ms", type=int, default=1000, help="join window (default 1000)")
    p.add_argument(
        "--partitions", type=int, default=1, help="partitions of every topic (default 1)"
    )
    p.add_argument(
        "--replicas", type=int, default=1, help="engine processes engine-a, -b, ... (default 1)"
    )
    p.add_argument(
        "--kill-every",
        type=float,
        default=10.0,
        help="replica-kill/-term: seconds between stops (default 10)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=180.0,
        help="replica-kill/-term and the broker faults: seconds of stops (default 180)",
    )
    p.add_argument(
        "--log-level", default="DEBUG", help="engines' SELDON_LOG_LEVEL_APP (default DEBUG)"
    )
    p.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once"),
        default="at_least_once",
        help="engines' SELDON_PROCESSING_GUARANTEE (default at_least_once)",
    )
    p.add_argument(
        "--cpu-hogs",
        type=int,
        default=0,
        metavar="N",
        help="N busy loops (sh -c 'while :; do :; done') for the whole of each run, from "
        "before the engines start until they are stopped (default 0)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each case x fault N times, one table row per run (default 1)",
    )
    p.add_argument(
        "--health-path",
        default="/live",
        help="what the health probe asks each running engine every 0.5 s, 3 s timeout "
        "(default /live; /pipelines also describes the pipelines)",
    )
    p.add_argument("--lead", type=float, default=3.0, help="producing before the fault (3 s)")
    p.add_argument("--after", type=float, default=10.0, help="producing after the fault (10 s)")
    p.add_argument("--quiet", type=float, default=15.0, help="drain until no output for (15 s)")
    p.add_argument("--drain-cap", type=float, default=300.0, help="longest drain (default 300 s)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the kill gaps")
    p.add_argument("--json", type=Path, default=None, help="write the rows (with details) here")
    p.add_argument(
        "--logs", type=Path, default=None, help="log folder (default .run/chaos/<time>/)"
    )
    p.add_argument(
        "--bootstrap", default=None, help="use this broker instead of private ones (no bounce)"
    )
    p.add_argument(
        "--refigure",
        type=Path,
        nargs="+",
        default=None,
        metavar="ARRIVALS_JSON",
        help="only print the stall and caught-up figures again from runs' arrivals.json",
    )
    p.add_argument(
        "--engine-rev",
        default=None,
        metavar="REV",
        help="run the engine and proxy of this git revision (git archive), not the working tree",
    )
    return p


async def _main(args: argparse.Namespace) -> list[Result]:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    _self_check()
    root = args.logs or REPO / ".run" / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    print(f"chaos: logs in {root}")
    engine_src: Path | None = None
    engine_label: str | None = None  # the working tree, named per run (in result.json)
    if args.engine_rev:
        engine_src, commit = snapshot(args.engine_rev, root / "engine-src")
        engine_label = f"{args.engine_rev} ({commit[:12]})"
        print(f"chaos: engine and proxy from {engine_label}, extracted to {engine_src}")
    else:
        print(f"chaos: engine and proxy of the {working_tree()}")
    results: list[Result] = []
    try:
        for case, fault, k in itertools.product(args.cases, args.faults, range(args.repeat)):
            if args.cluster and "bounce" in fault.split("+"):
                if not k:
                    print(f"chaos: skipping {case}/{fault}: bounce needs the single private broker")
                continue
            if args.bootstrap and "bounce" in fault.split("+"):
                if not k:
                    print(f"chaos: skipping {case}/{fault}: bounce needs a private broker")
                continue
            cfg = Config(
                case=case,
                fault=fault,
                rate=args.rate,
                kills=args.kills,
                kill_gap=args.kill_gap,
                down=args.down,
                bounces=args.bounces,
                bounce_down=args.bounce_down,
                bounce_gap=args.bounce_gap,
                lead=args.lead,
                after=args.after,
                quiet=args.quiet,
                drain_cap=args.drain_cap,
                window_ms=args.window_ms,
                seed=None if args.seed is None else args.seed + k,
                partitions=args.partitions,
                replicas=args.replicas,
                kill_every=args.kill_every,
                duration=args.duration,
                log_level=args.log_level,
                guarantee=args.guarantee,
                cpu_hogs=args.cpu_hogs,
                health_path=args.health_path,
                cluster=args.cluster,
                broker_every=args.broker_every,
                broker_down=args.broker_down,
                pause_s=args.pause,
                pause_every=args.pause_every,
                broker_heap=args.broker_heap,
                engine_replication=args.engine_replication,
            )
            logs = root / f"{cfg.label}-{fault}".replace("(", "-").replace(")", "")
            if args.repeat > 1:
                logs = logs.with_name(f"{logs.name}-r{k + 1}")
            result = await run_one(
                cfg,
                bootstrap=args.bootstrap,
                logs=logs,
                engine_src=engine_src,
                engine_label=engine_label,
            )
            result.repeat = k + 1
            results.append(result)
            print(f"\nchaos: run {k + 1}/{args.repeat} of {cfg.label}/{fault}:")
            print(table([result]) + "\n", flush=True)
            if args.json:
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    except asyncio.CancelledError:
        print("\nchaos: interrupted; runs completed so far:", file=sys.stderr)
        print(table(results))
        raise
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.refigure:
        for path in args.refigure:
            print(json.dumps({"arrivals": str(path), **refigure(path)}))
        return 0
    if args.partitions < 1 or args.replicas < 1 or args.repeat < 1:
        p.error("--partitions, --replicas and --repeat must be 1 or more")
    if args.cluster < 0:
        p.error("--cluster must be the number of brokers (3)")
    if args.cluster and args.bootstrap:
        p.error("--cluster starts its own cluster: no --bootstrap")
    if args.faults is None:
        args.faults = (
            list(CLUSTER_FAULTS) if args.cluster else [f for f in FAULTS if f not in BROKER_FAULTS]
        )
    if not args.cluster and any(
        part in BROKER_FAULTS for fault in args.faults for part in fault.split("+")
    ):
        p.error("the leader-kill, broker-pause and controller-kill faults need --cluster 3")
    if args.cpu_hogs < 0:
        p.error("--cpu-hogs must be 0 or more")
    if args.replicas < 2 and any(
        part.startswith("replica-") for fault in args.faults for part in fault.split("+")
    ):
        p.error("the replica-kill and replica-term faults need --replicas 2 or more")
    try:
        results = asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    print()
    print(table(results))
    if summary(results):
        print("\n" + summary(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"\nchaos: rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
