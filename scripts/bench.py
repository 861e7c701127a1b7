"""Benchmark the whole engine process (`python -m dataflow`) against a naive raw aiokafka loop.

    scripts/bench                                   # every part, medians of 3 runs
    scripts/bench --records 300000 --parts throughput,latency --json out.json
    scripts/bench --quick                           # a short smoke of every part
    scripts/bench --parts wire                      # the wire-conversion micro-benchmark
    scripts/bench --parts guarantees                # at-least-once vs exactly-once vs raw
    scripts/bench --parts tracing                   # tracing off / on, 0, 1, 100 % sampled

Both contenders run as child processes on the same broker, alternated (raw, engine, raw,
engine, ...), each run on its own fresh topic pair, pre-loaded once before the run:

* engine: the proxy scheduler (`python -m dataflow.proxy`) and `python -m dataflow` subscribed to
  it, as a user runs them; the bench loads a one-step chain `model.a.outputs -> model.b.inputs`
  in the explicit form (`kind: PipelineUpdate`) through the proxy's control API.
* raw loop (`--raw-child`, this file): consume with `getmany`, produce every record with
  `await producer.send`, await the acks, commit per batch; producer acks=all, idempotent,
  linger 2 ms. The consumer and producer keep aiokafka's default sizes except in the 1 MiB part
  (64 MiB fetch and request sizes there, the engine fetches up to 1 GB by default).

Throughput is records / (append time of the last output record - append time of the first),
read back from the output topic, created with `message.timestamp.type=LogAppendTime` (the
engine stamps outputs with their input's timestamp); start-up and the group join are therefore
not counted. Added latency: the producer's send time (microseconds, in the record key) to the
output record's append time (whole milliseconds, so figures are up to 1 ms low). CPU: utime +
stime of the process tree from /proc/<pid>/stat between the start of the run and the last
output; RSS: VmRSS and VmHWM from /proc/<pid>/status. Every part prints the 1-minute load
average before and after it. The table is markdown; `--json PATH` also writes every run.

Stateful steps (parts join, batch, trigger; `-partitions` variants: --partitions partitions and
the engine's SELDON_NUM_CORES=--num-cores): a backlog of --stateful-records ids pre-loaded into
every source, id i keyed `<i mod partitions>.<i>` on that partition, timestamps spaced as if
written at --backlog-rate ids/s up to now, the same for an id on every source. join: an inner
join (joinWindowMs 1000) of `model.a.outputs` and `model.b.outputs`, one output per pair;
batch: batches of 10, one output per 10 records; trigger: `model.a.outputs` gated by
`model.t.outputs` (tensor `go`), one output per data record. The raw loop copies the same
number of records of the first source. Rates are pairs (join), input records (batch) or data
records (trigger) per second, first to last output append, CPU per the same unit; the engine
also reports the wall time from loading the pipeline to its last output. A run that never
completes (--stateful-timeout, or no new output for --idle-timeout) is reported as such.

catchup: the join at --catchup-partitions partitions, --catchup-rate ids/s written live to each
source (send time as timestamp); after --catchup-warmup s the engine gets SIGTERM and stays down
--catchup-down s while the writer goes on; the writer stops, the engine restarts, and the rate
is the pairs it was behind / (append time of the last output - restart time), CPU the restarted
process's (its start-up included) per pair. Once without and once with --catchup-hogs busy loops
(`sh -c 'while :; do :; done'`, own process groups, killed at the end and bounded by `timeout`)
running through the raw and the engine run; the raw loop copies a pre-loaded backlog of
rate x down records on as many partitions under the same hogs. A catch-up that does not finish
within --catchup-timeout (or makes no progress for --idle-timeout) is a row "did not catch up
within X s: Y of Z outputs", never a hang.

tracing (not in the default parts): the throughput part's 1-partition chain, alternated: the raw
loop, the engine with tracing off, and with tracing on (OTLP/gRPC to a Jaeger of
`scripts/jaeger build`, started by the bench on free ports) with 0 %, 1 % and 100 % of the
records sampled. Every record of every run carries a `traceparent` with a trace id of its own;
its sampled flag is set on every 100th record (1 %), every record (100 %), none otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from producer import demo_response  # noqa: E402

from dataflow import kafka  # noqa: E402

STATEFUL_PARTS = (
    "join",
    "batch",
    "trigger",
    "join-partitions",
    "batch-partitions",
    "trigger-partitions",
)
PARTS = ("throughput", "partitions", "latency", "rss", "large", *STATEFUL_PARTS, "catchup")
EXTRA_PARTS = ("wire", "guarantees", "tracing")
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}
BIG = 64 * 2**20
MIB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")
REVISIONS: set[str] = set()  # of every engine started


def engine_revision() -> str:
    """The commit the engine runs from, and the files under dataflow/ changed since."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.rstrip()

    import hashlib

    changed = [c for c in git("status", "--porcelain", "--", "dataflow").split("\n") if c]
    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    if not changed:
        return rev
    digest = hashlib.sha1()
    for path in sorted((REPO / "dataflow").rglob("*.py")):
        digest.update(path.read_bytes())
    return (
        f"{rev} + uncommitted {', '.join(c[3:] for c in changed)} (files {digest.hexdigest()[:8]})"
    )


def load1() -> float:
    return os.getloadavg()[0]


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# -- processes: CPU and memory from /proc --------------------------------------------------------


@dataclass
class ProcSample:
    """One reading of a process and its descendants."""

    cpu_s: float  # utime + stime of every process in the tree (+ children already reaped)
    rss: int  # bytes, VmRSS summed over the tree
    hwm: int  # bytes, VmHWM (peak RSS) summed over the tree
    procs: int  # processes in the tree


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sample(root: int) -> ProcSample:
    cpu = rss = hwm = procs = 0
    for pid in _tree(root):
        try:
            fields = _stat_fields(pid)
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            if pid == root:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
            rss += _status_kib(pid, "VmRSS") * 1024
            hwm += _status_kib(pid, "VmHWM") * 1024
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        cpu += ticks
        procs += 1
    return ProcSample(cpu / CLK_TCK, rss, hwm, procs)


# -- Kafka helpers -------------------------------------------------------------------------------


async def create_topics(
    bootstrap: str, names: Sequence[str], partitions: int, configs: dict[str, str] | None = None
) -> None:
    """Create fresh topics (the cluster's default replication) and wait until the broker
    describes all of them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=120_000)
    await admin.start()
    try:
        for chunk in _chunks(names, 200):
            topics = [kafka.NewTopic(n, partitions, configs=dict(configs or {})) for n in chunk]
            await kafka.create_topics(admin, topics, 120_000)
        deadline = time.monotonic() + 120
        for chunk in _chunks(names, 200):
            while True:
                described = await admin.describe_topics(chunk)
                ok = {
                    d["topic"]
                    for d in described
                    if d["error_code"] == 0 and len(d["partitions"]) == partitions
                }
                if ok >= set(chunk):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topics not described after 120 s: {sorted(chunk)[:3]}...")
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def cleanup(bootstrap: str, topics: Sequence[str], group_prefix: str) -> None:
    """Delete the bench's topics and its (empty) consumer groups; problems are ignored."""
    from aiokafka.protocol.admin import DeleteGroupsRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        for chunk in _chunks(topics, 200):
            try:
                await admin.delete_topics(chunk)
            except Exception as exc:
                print(f"  (topic deletion: {exc})", file=sys.stderr)
        try:
            groups = [g[0] for g in await admin.list_consumer_groups()]
            mine = [g for g in groups if g.startswith(group_prefix)]
            for _ in range(5):  # a member that just left may still be in the group for a moment
                if not mine:
                    break
                node = await admin.find_coordinator(mine[0])
                left = []
                for chunk in _chunks(mine, 200):
                    response = await admin._send_request(DeleteGroupsRequest(chunk), node)
                    left += [g for g, code in response.results if code == 68]  # GROUP_NOT_EMPTY
                mine = left
                if mine:
                    await asyncio.sleep(1)
        except Exception as exc:
            print(f"  (group deletion: {exc})", file=sys.stderr)
    finally:
        await admin.close()


async def fill(
    bootstrap: str, topic: str, n: int, value: bytes, partitions: int, pipeline: str
) -> float:
    """Write `n` records of `value` (header `pipeline: <pipeline>`) spread evenly over the
    partitions, a whole record batch at a time; returns the seconds it took."""

    def records(p: int) -> Iterator[tuple[bytes | None, int | None]]:
        return ((None, None) for _ in range(n // partitions + (p < n % partitions)))

    return await fill_records(bootstrap, topic, value, partitions, pipeline, records)


async def fill_records(
    bootstrap: str,
    topic: str,
    value: bytes,
    partitions: int,
    pipeline: str,
    records: Callable[[int], Iterable[tuple[bytes | None, int | None]]],
) -> float:
    """Write `value` once per (key, timestamp) of `records(partition)` to each partition, a
    whole record batch at a time; returns the seconds it took."""
    t0 = time.perf_counter()
    batch_size = 16 * MIB if len(value) > 64 * 1024 else 512 * 1024
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=5,
        max_batch_size=batch_size,
        max_request_size=BIG,
        request_timeout_ms=120_000,
    )
    await producer.start()
    headers = [("pipeline", pipeline.encode())]
    pending: list[asyncio.Future[Any]] = []
    try:
        for p in range(partitions):
            builder = producer.create_batch()
            for key, ts in records(p):
                if builder.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    pending.append(await producer.send_batch(builder, topic, partition=p))
                    builder = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=ts, headers=headers)
                    if len(pending) >= 32:
                        await asyncio.gather(*pending)
                        pending.clear()
            if builder.record_count():
                pending.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def _offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    return sum(ends[tp] - starts[tp] for tp in tps)


async def wait_count(
    bootstrap: str,
    topic: str,
    partitions: int,
    n: int,
    alive: Callable[[], str | None],
    first_timeout: float = 180,
    idle_timeout: float = 60,
) -> int:
    """Wait until `topic` holds `n` records; returns the count (more means duplicates).

    Raises:
        RuntimeError: nothing arrived for the timeouts, or `alive` reported a dead process.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        last, changed = -1, time.monotonic()
        while True:
            total = await _offsets(consumer, tps)
            if total >= n:
                await asyncio.sleep(1.0)  # duplicates, if any, would still be on their way
                return await _offsets(consumer, tps)
            now = time.monotonic()
            if total != last:
                last, changed = total, now
            elif now - changed > (first_timeout if total == 0 else idle_timeout):
                raise RuntimeError(f"{topic}: {total} of {n} records, no progress")
            problem = alive()
            if problem:
                raise RuntimeError(f"{topic}: {total} of {n} records; {problem}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def append_span(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """Append times (ms) of the first and the last record of a LogAppendTime topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, max_partition_fetch_bytes=BIG
    )
    await consumer.start()
    first, last = 2**63, 0
    try:
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            start = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            if end <= start:
                continue
            consumer.seek(tp, start)
            record = await asyncio.wait_for(consumer.getone(tp), 60)
            if record.timestamp_type != 1:
                raise RuntimeError(f"{topic} is not a LogAppendTime topic")
            first = min(first, record.timestamp)
            # The last record: exactly-once outputs end with a transaction marker (no record),
            # so read the tail up to the end rather than the one offset before it.
            consumer.seek(tp, max(start, end - 200))
            deadline = time.monotonic() + 60
            while await consumer.position(tp) < end and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for got in batch.get(tp, []):
                    last = max(last, got.timestamp)
    finally:
        await consumer.stop()
    return first, last


async def read_all(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < n and time.monotonic() < deadline:
            for rs in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(rs)
    finally:
        await consumer.stop()
    return records


async def receive_times(
    bootstrap: str, topic: str, n: int, ready: asyncio.Event, timeout: float = 120
) -> dict[bytes, float]:
    """Wall time (us) at which a live `read_committed` reader of `topic` receives each key: when
    an output becomes visible downstream (for exactly-once: after its transaction commits)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    seen: dict[bytes, float] = {}
    try:
        ready.set()
        deadline = time.monotonic() + timeout
        while len(seen) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now_us = time.time_ns() / 1000
            for rs in batch.values():
                for r in rs:
                    if r.key is not None:
                        seen.setdefault(r.key, now_us)
    finally:
        await consumer.stop()
    return seen


# -- the contenders ------------------------------------------------------------------------------


@dataclass
class Topics:
    """A one-step chain's topic pair and pipeline name, fresh for one run."""

    tag: str
    source: str
    sink: str
    pipeline: str
    uid: str

    @classmethod
    def fresh(cls, kind: str, index: int | None = None) -> Topics:
        tag = uuid.uuid4().hex[:8]
        suffix = "" if index is None else f"x{index}"
        ns = f"bench{kind}{tag}{suffix}"
        return cls(
            tag=tag,
            source=f"seldon.{ns}.model.a.outputs",
            sink=f"seldon.{ns}.model.b.inputs",
            pipeline=f"bench-{tag}{suffix}",
            uid=f"b{tag}{suffix}",
        )

    def spec(self) -> str:
        return (
            f"kind: PipelineUpdate\nname: {self.pipeline}\nversion: 1\nuid: {self.uid}\n"
            f"steps:\n  - sources: [{self.source}]\n    sink: {self.sink}\n"
        )


class EngineProcess:
    """The proxy scheduler and one engine process subscribed to it, logs in `logs`."""

    def __init__(self, bootstrap: str, logs: Path, tag: str, **settings: str) -> None:
        self.bootstrap, self.logs, self.tag, self.settings = bootstrap, logs, tag, settings
        self.group_prefix = f"bench-{tag}"
        self.proxy: Any = None
        self.engine: Any = None
        self.revision = ""

    @property
    def pid(self) -> int:
        return int(self.engine.proc.pid)

    def _start(self) -> None:
        from tests.integration.harness import Proxy, wait_until

        self.logs.mkdir(parents=True, exist_ok=True)
        self.revision = engine_revision()  # the working tree may change while the bench runs
        REVISIONS.add(self.revision)
        self.proxy = Proxy(self.logs).start()
        self._spawn()
        wait_until(
            lambda: self.dead() or self._get("/subscribers")["subscribers"],
            60,
            "the engine's subscription at the proxy",
        )
        if self.dead():
            raise RuntimeError(self.dead())

    def _spawn(self) -> None:
        from tests.integration.harness import engine

        self.engine = engine(
            self.logs,
            self.bootstrap,
            self.proxy,
            name=f"bench-{self.tag}",
            log_level_app="INFO",
            kafka_consumer_prefix=self.group_prefix,
            **dict(self.settings),  # the harness pops from it
        )

    async def start(self) -> EngineProcess:
        await asyncio.to_thread(self._start)
        return self

    async def terminate(self, timeout: float = 30) -> float:
        """SIGTERM the engine (kill -9 after `timeout`); the seconds until it exited."""
        t0 = time.monotonic()
        await asyncio.to_thread(self.engine.stop, timeout)
        return time.monotonic() - t0

    async def restart(self) -> None:
        """A new engine process with the same name, settings and consumer groups."""
        self.revision = engine_revision()
        REVISIONS.add(self.revision)
        await asyncio.to_thread(self._spawn)

    def dead(self) -> str | None:
        if self.engine is None or self.engine.proc.poll() is None:
            return None
        tail = self.engine.output()[-1500:]
        return f"engine exited with {self.engine.proc.returncode}:\n{tail}"

    def watch(self, pipeline: str) -> Callable[[], str | None]:
        """A check for `wait_outputs`: the engine died, or the proxy reports `pipeline` Failed
        (asked at most every 2 s)."""
        asked = [0.0]

        def problem() -> str | None:
            dead = self.dead()
            if dead or time.monotonic() - asked[0] < 2:
                return dead
            asked[0] = time.monotonic()
            try:
                states = {p["name"]: p for p in self._get("/pipelines")}
            except OSError:
                return None
            state = states.get(pipeline, {})
            if state.get("state") == "Failed":
                return f"pipeline {pipeline} Failed: {state.get('reason', '?')}"
            return None

        return problem

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.proxy.url + path, timeout=10) as response:
            return json.loads(response.read())

    def _load(self, text: str) -> Any:
        request = urllib.request.Request(
            self.proxy.url + "/pipelines?source=bench.yaml", data=text.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    async def load(self, specs: Sequence[str]) -> None:
        """POST every spec to the proxy, 8 at a time."""

        def run() -> None:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(self._load, specs))

        await asyncio.to_thread(run)

    async def begin(self, topics: Topics | Flow) -> None:
        """Load the pipeline of `topics`."""
        await self.load([topics.spec()])

    async def wait_ready(self, names: Sequence[str], timeout: float = 300) -> None:
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while True:
            states = {p["name"]: p for p in await asyncio.to_thread(self._get, "/pipelines")}
            ready = {n for n in wanted if states.get(n, {}).get("state") == "Ready"}
            if ready == wanted:
                return
            failed = [states[n] for n in wanted if states.get(n, {}).get("state") == "Failed"]
            if failed or self.dead() or time.monotonic() > deadline:
                why = self.dead() or (failed[0]["reason"] if failed else "timed out")
                raise RuntimeError(f"{len(ready)}/{len(wanted)} pipelines Ready: {why}")
            await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 60) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop, timeout)
        if self.proxy is not None:
            await asyncio.to_thread(self.proxy.stop)


class RawProcess:
    """The raw loop as a child process (this file with `--raw-child`)."""

    def __init__(self, bootstrap: str, logs: Path, tag: str) -> None:
        self.bootstrap, self.logs, self.tag = bootstrap, logs, tag
        self.group_prefix = f"bench-{tag}"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, topics: Topics, n: int, large: bool = False) -> RawProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        args = [str(HERE / "bench.py"), "--raw-child", "--bootstrap-servers", self.bootstrap]
        args += ["--source", topics.source, "--sink", topics.sink, "--records", str(n)]
        args += ["--group", f"{self.group_prefix}-raw"] + (["--large"] if large else [])
        with (self.logs / f"raw-{self.tag}.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 90)
        if line.strip() != b"ready":
            raise RuntimeError(f"raw loop did not start: {line!r} {self.dead()}")
        return self

    async def begin(self, topics: Topics) -> None:
        """Start the loop."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    def dead(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return None
        tail = (self.logs / f"raw-{self.tag}.log").read_text(errors="replace")[-1500:]
        return f"raw loop exited with {self.proc.returncode}:\n{tail}"

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _raw_loop(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, sink: str, n: int
) -> int:
    """Consume, produce unchanged, await acks, commit per batch: the client's own cost."""
    done = 0
    while done < n:
        batch = await consumer.getmany(timeout_ms=200, max_records=2000)
        futures = []
        for tp, records in batch.items():
            for r in records:
                sent = await producer.send(
                    sink, r.value, key=r.key, headers=list(r.headers), partition=tp.partition
                )
                futures.append(sent)
            done += len(records)
        await asyncio.gather(*futures)
        if batch:
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
    return done


async def raw_child(args: argparse.Namespace) -> None:
    """`--raw-child`: join, say `ready`, wait for `go`, run the loop, wait for stdin's end."""
    sizes = {"max_partition_fetch_bytes": BIG, "fetch_max_bytes": BIG} if args.large else {}
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap_servers,
        linger_ms=2,
        acks="all",
        enable_idempotence=True,
        **({"max_request_size": BIG} if args.large else {}),
    )
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **sizes,
    )
    loop = asyncio.get_running_loop()
    await producer.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError("no partitions assigned after 60 s")
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        done = await _raw_loop(consumer, producer, args.sink, args.records)
        print(f"done {done}", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await consumer.stop()
        await producer.stop()


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Bench:
    bootstrap: str
    logs: Path
    records: int
    runs: int
    partitions: int
    num_cores: int
    latency_seconds: float
    latency_rate: int
    rss_counts: list[int]
    large_records: int
    stateful_records: int = 200_000
    backlog_rate: int = 2000
    stateful_timeout: float = 600
    idle_timeout: float = 60
    catchup_rate: int = 2000
    catchup_partitions: int = 4
    catchup_warmup: float = 15
    catchup_down: float = 60
    catchup_timeout: float = 300
    catchup_hogs: int = 3
    results: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


async def _contender(
    bench: Bench, kind: str, topics: Topics, n: int, large: bool = False, **settings: str
) -> RawProcess | EngineProcess:
    """Start the raw loop (joined, waiting) or the proxy and engine (subscribed, idle)."""
    logs = bench.logs / f"{kind}-{topics.tag}"
    if kind == "raw":
        return await RawProcess(bench.bootstrap, logs, topics.tag).start(topics, n, large)
    return await EngineProcess(bench.bootstrap, logs, topics.tag, **settings).start()


async def throughput_run(
    bench: Bench,
    kind: str,
    n: int,
    value: bytes,
    partitions: int,
    large: bool = False,
    filler: Callable[[str, int, str], Awaitable[float]] | None = None,
    **settings: str,
) -> dict[str, Any]:
    """One pre-loaded run of the raw loop or the engine: rate from output append times.
    `filler(topic, partitions, pipeline)` writes the records instead of `fill`."""
    topics = Topics.fresh(kind[0])
    result: dict[str, Any] = {"kind": kind, "records": n, "partitions": partitions}
    proc: Any = None
    try:
        await create_topics(bench.bootstrap, [topics.source], partitions)
        await create_topics(bench.bootstrap, [topics.sink], partitions, LOG_APPEND)
        if filler is not None:
            result["fill_s"] = await filler(topics.source, partitions, topics.pipeline)
        else:
            result["fill_s"] = await fill(
                bench.bootstrap, topics.source, n, value, partitions, topics.pipeline
            )
        proc = await _contender(bench, kind, topics, n, large, **settings)
        result["load_before"] = load1()
        before = sample(proc.pid)
        t0 = time.monotonic()
        await proc.begin(topics)
        if isinstance(proc, EngineProcess):
            result["engine_revision"] = proc.revision
        count = await wait_count(bench.bootstrap, topics.sink, partitions, n, proc.dead)
        after = sample(proc.pid)
        result["wall_s"] = time.monotonic() - t0
        result["load_after"] = load1()
        first, last = await append_span(bench.bootstrap, topics.sink, partitions)
        span = max(last - first, 1) / 1000
        result.update(
            count=count,
            first_append_ms=first,
            last_append_ms=last,
            span_s=span,
            rate=n / span,
            cpu_s=after.cpu_s - before.cpu_s,
            cpu_us_per_record=(after.cpu_s - before.cpu_s) / n * 1e6,
            rss_mib=after.rss / MIB,
            hwm_mib=after.hwm / MIB,
            procs=after.procs,
        )
        return result
    finally:
        if proc is not None:
            await proc.stop()
        await cleanup(bench.bootstrap, [topics.source, topics.sink], f"bench-{topics.tag}")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


async def alternate(
    bench: Bench,
    name: str,
    n: int,
    value: bytes,
    partitions: int,
    large: bool = False,
    **settings: str,
) -> dict[str, Any]:
    part: dict[str, Any] = {"records": n, "value_bytes": len(value), "partitions": partitions}
    part["settings"] = {f"SELDON_{k.upper()}": v for k, v in settings.items()}
    part["load_before"] = load1()
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "engine": []}
    for i in range(bench.runs):
        for kind in ("raw", "engine"):
            r = await throughput_run(
                bench, kind, n, value, partitions, large, **(settings if kind == "engine" else {})
            )
            runs[kind].append(r)
            bench.say(
                f"  {name} run {i + 1}/{bench.runs} {kind:<6}: {r['rate']:>10,.0f} records/s,"
                f" {r['count']:,} out, cpu {r['cpu_us_per_record']:.1f} us/record,"
                f" peak rss {r['hwm_mib']:.0f} MiB, {r['procs']} process(es),"
                f" load {r['load_before']:.2f}->{r['load_after']:.2f}"
            )
    part["load_after"] = load1()
    part["runs"] = runs
    part["median"] = {
        kind: {
            k: _median(rs, k) for k in ("rate", "cpu_us_per_record", "rss_mib", "hwm_mib", "procs")
        }
        for kind, rs in runs.items()
    }
    return part


async def part_throughput(bench: Bench) -> dict[str, Any]:
    return await alternate(bench, "throughput", bench.records, demo_response(1), 1)


async def part_partitions(bench: Bench) -> dict[str, Any]:
    return await alternate(
        bench,
        "partitions",
        bench.records,
        demo_response(1),
        bench.partitions,
        num_cores=str(bench.num_cores),
    )


async def paced_send(bench: Bench, topics: Topics) -> tuple[int, float]:
    """Send at a steady rate for the configured time; key `<index>:<send time in us>`."""
    producer = AIOKafkaProducer(bootstrap_servers=bench.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    value = demo_response(1)
    headers = [("pipeline", topics.pipeline.encode())]
    total = int(bench.latency_rate * bench.latency_seconds)
    futures = []
    try:
        t0 = time.perf_counter()
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - t0) * bench.latency_rate) + 1)
            while i < due:
                sent_us = time.time_ns() // 1000
                futures.append(
                    await producer.send(
                        topics.source,
                        value,
                        key=f"{i}:{sent_us}".encode(),
                        headers=headers,
                        timestamp_ms=sent_us // 1000,
                    )
                )
                i += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
        return total, time.perf_counter() - t0
    finally:
        await producer.stop()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def latency_run(
    bench: Bench, kind: str, visible: bool = False, **settings: str
) -> dict[str, Any]:
    topics = Topics.fresh("l" + kind[0])
    n = int(bench.latency_rate * bench.latency_seconds)
    result: dict[str, Any] = {"kind": kind, "records": n, "rate": bench.latency_rate}
    proc: Any = None
    try:
        await create_topics(bench.bootstrap, [topics.source], 1)
        await create_topics(bench.bootstrap, [topics.sink], 1, LOG_APPEND)
        proc = await _contender(bench, kind, topics, n, **settings)
        await proc.begin(topics)
        if isinstance(proc, EngineProcess):
            result["engine_revision"] = proc.revision
            await proc.wait_ready([topics.pipeline], 120)
        result["load_before"] = load1()
        before = sample(proc.pid)
        receiver = None
        if visible:
            ready = asyncio.Event()
            receiver = asyncio.create_task(
                receive_times(bench.bootstrap, topics.sink, n, ready), name="bench-receiver"
            )
            await ready.wait()
        sent, result["send_s"] = await paced_send(bench, topics)
        count = await wait_count(bench.bootstrap, topics.sink, 1, sent, proc.dead)
        if receiver is not None:
            seen = await receiver
            visible_ms = sorted(
                (t - int(k.split(b":")[1])) / 1000 for k, t in seen.items() if b":" in k
            )
            result.update(
                visible_p50_ms=_percentile(visible_ms, 0.50),
                visible_p99_ms=_percentile(visible_ms, 0.99),
            )
        after = sample(proc.pid)
        result["load_after"] = load1()
        records = await read_all(bench.bootstrap, topics.sink, count)
        latencies = sorted(r.timestamp - int(r.key.split(b":")[1]) / 1000 for r in records if r.key)
        result.update(
            count=count,
            read=len(records),
            p50_ms=_percentile(latencies, 0.50),
            p99_ms=_percentile(latencies, 0.99),
            max_ms=latencies[-1] if latencies else float("nan"),
            cpu_us_per_record=(after.cpu_s - before.cpu_s) / n * 1e6,
            rss_mib=after.rss / MIB,
        )
        return result
    finally:
        if proc is not None:
            await proc.stop()
        await cleanup(bench.bootstrap, [topics.source, topics.sink], f"bench-{topics.tag}")


async def part_latency(bench: Bench) -> dict[str, Any]:
    part: dict[str, Any] = {"rate": bench.latency_rate, "seconds": bench.latency_seconds}
    part["load_before"] = load1()
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "engine": []}
    for i in range(bench.runs):
        for kind in ("raw", "engine"):
            r = await latency_run(bench, kind)
            runs[kind].append(r)
            bench.say(
                f"  latency run {i + 1}/{bench.runs} {kind:<6}: p50 {r['p50_ms']:.1f} ms,"
                f" p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms, {r['count']:,} out,"
                f" load {r['load_before']:.2f}->{r['load_after']:.2f}"
            )
    part["load_after"] = load1()
    part["runs"] = runs
    part["median"] = {
        kind: {k: _median(rs, k) for k in ("p50_ms", "p99_ms", "max_ms", "cpu_us_per_record")}
        for kind, rs in runs.items()
    }
    return part


#: The contenders of the guarantees part: (label, contender kind, engine settings).
GUARANTEES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("raw", "raw", {}),
    ("at_least_once", "engine", {"processing_guarantee": "at_least_once"}),
    ("exactly_once", "engine", {"processing_guarantee": "exactly_once"}),
)


async def part_guarantees(bench: Bench) -> dict[str, Any]:
    """The 1-partition chain's throughput and the latency at a steady rate, with the engine in
    both processing guarantees, alternated with the raw loop (raw, at-least-once,
    exactly-once, raw, ...)."""
    part: dict[str, Any] = {
        "records": bench.records,
        "rate": bench.latency_rate,
        "seconds": bench.latency_seconds,
        "load_before": load1(),
    }
    value = demo_response(1)
    through: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in GUARANTEES}
    latency: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in GUARANTEES}
    for i in range(bench.runs):
        for label, kind, settings in GUARANTEES:
            r = await throughput_run(bench, kind, bench.records, value, 1, False, **settings)
            through[label].append(r)
            bench.say(
                f"  guarantees throughput run {i + 1}/{bench.runs} {label:<13}: "
                f"{r['rate']:>10,.0f} records/s, {r['count']:,} out, "
                f"cpu {r['cpu_us_per_record']:.1f} us/record, "
                f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
            )
        for label, kind, settings in GUARANTEES:
            r = await latency_run(bench, kind, visible=True, **settings)
            latency[label].append(r)
            bench.say(
                f"  guarantees latency run {i + 1}/{bench.runs} {label:<13}: "
                f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms, "
                f"visible to a read_committed reader p50 {r['visible_p50_ms']:.1f} ms "
                f"p99 {r['visible_p99_ms']:.1f} ms, "
                f"{r['count']:,} out, load {r['load_before']:.2f}->{r['load_after']:.2f}"
            )
    part["load_after"] = load1()
    part["runs"] = {"throughput": through, "latency": latency}
    part["median"] = {
        label: {
            "rate": _median(through[label], "rate"),
            "cpu_us_per_record": _median(through[label], "cpu_us_per_record"),
            "p50_ms": _median(latency[label], "p50_ms"),
            "p99_ms": _median(latency[label], "p99_ms"),
            "visible_p50_ms": _median(latency[label], "visible_p50_ms"),
            "visible_p99_ms": _median(latency[label], "visible_p99_ms"),
        }
        for label, _, _ in GUARANTEES
    }
    return part


#: The contenders of the tracing part: (label, contender kind, tracing on, sampled 1 in N).
TRACING: tuple[tuple[str, str, bool, int], ...] = (
    ("raw", "raw", False, 0),
    ("off", "engine", False, 0),
    ("on, 0 %", "engine", True, 0),
    ("on, 1 %", "engine", True, 100),
    ("on, 100 %", "engine", True, 1),
)


async def fill_traced(
    bootstrap: str, topic: str, n: int, value: bytes, pipeline: str, every: int
) -> float:
    """Write `n` records to partition 0, each with a `traceparent` of a trace of its own,
    sampled on every `every`th record (0: none); returns the seconds it took."""
    t0 = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    pending: list[asyncio.Future[Any]] = []
    try:
        builder = producer.create_batch()
        for i in range(n):
            flag = "01" if every and i % every == 0 else "00"
            parent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{flag}".encode()
            headers = [("pipeline", pipeline.encode()), ("traceparent", parent)]
            if builder.append(key=None, value=value, timestamp=None, headers=headers) is None:
                pending.append(await producer.send_batch(builder, topic, partition=0))
                builder = producer.create_batch()
                builder.append(key=None, value=value, timestamp=None, headers=headers)
                if len(pending) >= 32:
                    await asyncio.gather(*pending)
                    pending.clear()
        if builder.record_count():
            pending.append(await producer.send_batch(builder, topic, partition=0))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside (the engine's OTEL_*)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def part_tracing(bench: Bench) -> dict[str, Any]:
    """Throughput with tracing off and on (0, 1, 100 % sampled), alternated with the raw loop."""
    from tests.integration.jaeger import Jaeger, binary

    path = binary()
    if path is None:
        raise RuntimeError("no Jaeger binary: run scripts/jaeger build (needs Go)")
    part: dict[str, Any] = {"records": bench.records, "load_before": load1()}
    value = demo_response(1)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _, _ in TRACING}
    bench.logs.mkdir(parents=True, exist_ok=True)
    jaeger = await asyncio.to_thread(Jaeger(bench.logs, path).start)
    try:
        for i in range(bench.runs):
            for label, kind, on, every in TRACING:
                env = {"OTEL_TRACES_EXPORTER": "otlp" if on else "none"}
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.otlp_endpoint

                async def filler(
                    topic: str, partitions: int, pipeline: str, every: int = every
                ) -> float:
                    return await fill_traced(
                        bench.bootstrap, topic, bench.records, value, pipeline, every
                    )

                with _environ(env):
                    r = await throughput_run(bench, kind, bench.records, value, 1, False, filler)
                runs[label].append(r)
                bench.say(
                    f"  tracing run {i + 1}/{bench.runs} {label:<10}: "
                    f"{r['rate']:>10,.0f} records/s, {r['count']:,} out, "
                    f"cpu {r['cpu_us_per_record']:.1f} us/record, "
                    f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
                )
    finally:
        await asyncio.to_thread(jaeger.stop)
    part["load_after"] = load1()
    part["runs"] = runs
    part["median"] = {
        label: {
            "rate": _median(runs[label], "rate"),
            "cpu_us_per_record": _median(runs[label], "cpu_us_per_record"),
        }
        for label, _, _, _ in TRACING
    }
    return part


def tracing_table(part: dict[str, Any], runs: int) -> str:
    """The tracing part: each mode's rate and its ratio to the raw loop of the same runs."""
    med = part["median"]
    raw = med["raw"]
    lines = [
        f"| tracing ({part['records']:,} records of 77 B, 1 partition, {_of(runs)}) "
        "| records/s | / raw loop | / tracing off | CPU per record |",
        "|---|---|---|---|---|",
    ]
    for label, _, _, _ in TRACING:
        m = med[label]
        lines.append(
            f"| {label} | {m['rate']:,.0f}/s | {_ratio(m['rate'], raw['rate'])} "
            f"| {_ratio(m['rate'], med['off']['rate'])} | {m['cpu_us_per_record']:.1f} us |"
        )
    lines.append(f"\nload {_load(part)}")
    return "\n".join(lines)


def guarantees_table(part: dict[str, Any], runs: int) -> str:
    """The guarantees part: each mode beside the raw loop, and exactly-once / at-least-once."""
    med = part["median"]
    raw, alo, eos = med["raw"], med["at_least_once"], med["exactly_once"]
    rows = [
        [
            f"records/s, 1 partition, {part['records']:,} of 77 B, {_of(runs)}",
            f"{raw['rate']:,.0f}/s",
            f"{alo['rate']:,.0f}/s ({_ratio(alo['rate'], raw['rate'])})",
            f"{eos['rate']:,.0f}/s ({_ratio(eos['rate'], raw['rate'])})",
            _ratio(eos["rate"], alo["rate"]),
        ],
        [
            "CPU per record",
            f"{raw['cpu_us_per_record']:.1f} us",
            f"{alo['cpu_us_per_record']:.1f} us",
            f"{eos['cpu_us_per_record']:.1f} us",
            _ratio(eos["cpu_us_per_record"], alo["cpu_us_per_record"]),
        ],
    ]
    for key, what in (
        ("p50_ms", "p50 added latency (send → output append)"),
        ("p99_ms", "p99 added latency (send → output append)"),
        ("visible_p50_ms", "p50 send → received by a live read_committed reader"),
        ("visible_p99_ms", "p99 send → received by a live read_committed reader"),
    ):
        rows.append(
            [
                f"{what} at {part['rate']:,}/s, {_of(runs)}",
                f"{raw[key]:.1f} ms",
                f"{alo[key]:.1f} ms ({_ratio(alo[key], raw[key])})",
                f"{eos[key]:.1f} ms ({_ratio(eos[key], raw[key])})",
                _ratio(eos[key], alo[key]),
            ]
        )
    header = [
        "figure",
        "raw aiokafka loop",
        "at_least_once (/ raw)",
        "exactly_once (/ raw)",
        "exactly / at-least",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append(f"\nload {_load(part)}")
    return "\n".join(lines)


async def rss_run(bench: Bench, count: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    pairs = [Topics.fresh("r", i) for i in range(count)]
    for p in pairs:  # one group prefix for the whole engine
        p.tag = tag
    topics = [t for p in pairs for t in (p.source, p.sink)]
    engine = EngineProcess(bench.bootstrap, bench.logs / f"rss{count}-{tag}", tag)
    result: dict[str, Any] = {"pipelines": count}
    try:
        await create_topics(bench.bootstrap, topics, 1)
        await engine.start()
        result["engine_revision"] = engine.revision
        idle = sample(engine.pid)
        result["load_before"] = load1()
        t0 = time.monotonic()
        await engine.load([p.spec() for p in pairs])
        result["posted_s"] = time.monotonic() - t0
        await engine.wait_ready([p.pipeline for p in pairs], 600)
        result["ready_s"] = time.monotonic() - t0
        await asyncio.sleep(3)
        loaded = sample(engine.pid)
        result.update(
            load_after=load1(),
            idle_rss_mib=idle.rss / MIB,
            rss_mib=loaded.rss / MIB,
            hwm_mib=loaded.hwm / MIB,
            load_cpu_s=loaded.cpu_s - idle.cpu_s,
        )
        return result
    finally:
        await engine.stop(90)
        await cleanup(bench.bootstrap, topics, f"bench-{tag}")


async def raw_idle_rss(bench: Bench) -> dict[str, Any]:
    """RSS of the raw loop process joined to one topic pair, idle: the client's floor."""
    topics = Topics.fresh("i")
    raw = RawProcess(bench.bootstrap, bench.logs / f"raw-{topics.tag}", topics.tag)
    try:
        await create_topics(bench.bootstrap, [topics.source, topics.sink], 1)
        await raw.start(topics, 1)
        await asyncio.sleep(3)
        s = sample(raw.pid)
        return {"rss_mib": s.rss / MIB, "hwm_mib": s.hwm / MIB}
    finally:
        await raw.stop()
        await cleanup(bench.bootstrap, [topics.source, topics.sink], f"bench-{topics.tag}")


async def part_rss(bench: Bench) -> dict[str, Any]:
    part: dict[str, Any] = {"load_before": load1()}
    part["raw"] = await raw_idle_rss(bench)
    bench.say(f"  rss raw loop, idle: {part['raw']['rss_mib']:.0f} MiB")
    part["engine"] = []
    for count in bench.rss_counts:
        r = await rss_run(bench, count)
        part["engine"].append(r)
        bench.say(
            f"  rss {count} pipelines: {r['rss_mib']:.0f} MiB (peak {r['hwm_mib']:.0f},"
            f" idle {r['idle_rss_mib']:.0f}), all Ready after {r['ready_s']:.2f} s"
            f" (posted in {r['posted_s']:.2f} s),"
            f" load {r['load_before']:.2f}->{r['load_after']:.2f}"
        )
    part["load_after"] = load1()
    return part


async def part_large(bench: Bench) -> dict[str, Any]:
    import bench_wire

    return await alternate(
        bench, "large", bench.large_records, bench_wire.raw_record(), 1, large=True
    )


# -- stateful steps: join, batch, trigger, and the join's catch-up --------------------------------


@functools.cache
def response_value(*names: str) -> bytes:
    """A model's response with one INT32 [1, 2] tensor per name (the sources of the stateful
    parts: a join merges tensors by name, so its two sources name theirs apart)."""
    from dataflow.proto.inference import (
        InferTensorContents,
        ModelInferResponse,
        ModelInferResponseInferOutputTensor,
    )

    tensors = [
        ModelInferResponseInferOutputTensor(
            name=name,
            datatype="INT32",
            shape=[1, 2],
            contents=InferTensorContents(int_contents=[1, 1]),
        )
        for name in names
    ]
    return bytes(
        ModelInferResponse(model_name="model.test", model_version="1", id="4312", outputs=tensors)
    )


#: What a stateful part's figures count: a joined pair, an input record, a gated data record.
UNITS = {"join": "pair", "batch": "record", "trigger": "record"}


@dataclass
class Flow:
    """A stateful step's topics and pipeline (explicit form), fresh for one run.

    `join`: an inner join (`joinWindowMs`) of `model.a.outputs` and `model.b.outputs`;
    `batch`: `model.a.outputs` in batches of `batch_size`; `trigger`: `model.a.outputs` gated
    by `model.t.outputs` (tensor `go`, `joinWindowMs`). The sink is `model.c.inputs`. Id i is
    keyed `<i mod partitions>.<i>` and written to that partition of every source with the same
    timestamp, so join sources are co-partitioned and the engine writes its output there too.
    """

    kind: str
    tag: str
    ns: str
    pipeline: str
    uid: str
    window_ms: int = 1000
    batch_size: int = 10

    @classmethod
    def fresh(cls, kind: str) -> Flow:
        if kind not in UNITS:
            raise ValueError(f"unknown stateful step {kind!r}")
        tag = uuid.uuid4().hex[:8]
        return cls(kind, tag, f"bench{kind}{tag}", f"bench-{tag}", f"b{tag}")

    def topic(self, model: str, io: str) -> str:
        return f"seldon.{self.ns}.model.{model}.{io}"

    @property
    def sources(self) -> list[tuple[str, bytes]]:
        """(topic, value) of every source, the data source first."""
        a = (self.topic("a", "outputs"), response_value("a0", "a1"))
        if self.kind == "join":
            return [a, (self.topic("b", "outputs"), response_value("b0", "b1"))]
        if self.kind == "trigger":
            return [a, (self.topic("t", "outputs"), response_value("go"))]
        return [a]

    @property
    def sink(self) -> str:
        return self.topic("c", "inputs")

    def expected(self, ids: int) -> int:
        """Outputs for `ids` ids (a batch step: one per `batch_size`)."""
        return ids // self.batch_size if self.kind == "batch" else ids

    def spec(self) -> str:
        a, sink = self.sources[0][0], self.sink
        step = f"  - sources: [{a}]\n    sink: {sink}\n"
        if self.kind == "join":
            b = self.sources[1][0]
            step = (
                f"  - sources: [{a}, {b}]\n    sink: {sink}\n"
                f"    inputJoinType: inner\n    joinWindowMs: {self.window_ms}\n"
            )
        elif self.kind == "trigger":
            t = self.sources[1][0]
            step += (
                f"    triggers: [{{topic: {t}, tensor: go}}]\n    joinWindowMs: {self.window_ms}\n"
            )
        else:
            step += f"    batch: {{size: {self.batch_size}}}\n"
        return (
            f"kind: PipelineUpdate\nname: {self.pipeline}\nversion: 1\nuid: {self.uid}\n"
            f"steps:\n{step}"
        )


def stateful_ids(ids: int, kind: str, partitions: int) -> int:
    """`ids` rounded down so that a batch step's every partition ends on a whole batch."""
    if kind != "batch":
        return ids
    whole = 10 * partitions
    return max(whole, ids // whole * whole)


async def fill_backlog(
    bootstrap: str,
    sources: Sequence[tuple[str, bytes]],
    ids: int,
    partitions: int,
    pipeline: str,
    rate: float,
) -> float:
    """Pre-load ids 0..ids-1 into every source: key `<p>.<i>` on partition p = i mod partitions,
    timestamps as if written at `rate` ids/s up to now (the same for an id on every source)."""
    step_ms = 1000 / rate
    ts0 = int(time.time() * 1000 - ids * step_ms)

    def records(p: int) -> Iterator[tuple[bytes | None, int | None]]:
        return ((f"{p}.{i}".encode(), ts0 + int(i * step_ms)) for i in range(p, ids, partitions))

    took = 0.0
    for topic, value in sources:
        took += await fill_records(bootstrap, topic, value, partitions, pipeline, records)
    return took


async def sink_count(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return await _offsets(consumer, [TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()


async def wait_outputs(
    bootstrap: str,
    topic: str,
    partitions: int,
    n: int,
    alive: Callable[[], str | None],
    timeout: float,
    idle: float,
    first_timeout: float = 180,
) -> dict[str, Any]:
    """Wait until `topic` holds `n` records, at most `timeout` s, and give up earlier when no new
    record arrived for `idle` s (`first_timeout` before the first new one) or the process died.

    Returns count (records on the topic), complete, waited_s (from the call), first_s (to the
    first new record, or None) and, when incomplete, why.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    t0 = time.monotonic()
    try:
        start = last = await _offsets(consumer, tps)
        changed, first = t0, None
        while True:
            total = await _offsets(consumer, tps)
            now = time.monotonic()
            if total >= n:
                await asyncio.sleep(1.0)  # duplicates, if any, would still be on their way
                total = await _offsets(consumer, tps)
                return {"count": total, "complete": True, "waited_s": now - t0, "first_s": first}
            if total != last:
                last, changed = total, now
                if first is None:
                    first = now - t0
            why = None
            if now - t0 > timeout:
                why = f"did not complete within {timeout:.0f} s"
            elif now - changed > (first_timeout if total == start else idle):
                why = f"no new output for {now - changed:.0f} s"
            else:
                problem = alive()
                if problem:
                    why = problem.strip().splitlines()[0]
            if why:
                return {
                    "count": total,
                    "complete": False,
                    "waited_s": now - t0,
                    "first_s": first,
                    "why": why,
                }
            await asyncio.sleep(0.25)
    finally:
        await consumer.stop()


def incomplete_text(r: dict[str, Any], verb: str = "complete") -> str:
    """`did not <verb> within X s: Y of Z outputs (why)` for a run that never finished."""
    return (
        f"did not {verb} within {r['waited_s']:.0f} s: {r['count']:,} of {r['expected']:,}"
        f" outputs ({r['why']})"
    )


async def stateful_run(
    bench: Bench, kind: str, step: str, ids: int, partitions: int, **settings: str
) -> dict[str, Any]:
    """One pre-loaded run: the engine over a fresh `step` pipeline, or the raw loop over a fresh
    topic pair holding `ids` records of the step's first source."""
    flow = Flow.fresh(step)
    raw = Topics.fresh("s")
    if kind == "raw":
        sources, sink, expected, tag = [(raw.source, flow.sources[0][1])], raw.sink, ids, raw.tag
    else:
        sources, sink, expected, tag = flow.sources, flow.sink, flow.expected(ids), flow.tag
    result: dict[str, Any] = {
        "kind": kind,
        "step": step,
        "ids": ids,
        "expected": expected,
        "partitions": partitions,
    }
    topics = [t for t, _ in sources] + [sink]
    proc: Any = None
    try:
        await create_topics(bench.bootstrap, topics[:-1], partitions)
        await create_topics(bench.bootstrap, [sink], partitions, LOG_APPEND)
        result["fill_s"] = await fill_backlog(
            bench.bootstrap, sources, ids, partitions, flow.pipeline, bench.backlog_rate
        )
        proc = await _contender(bench, kind, raw if kind == "raw" else flow, ids, **settings)  # type: ignore[arg-type]
        result["load_before"] = load1()
        before = sample(proc.pid)
        t0_wall = time.time()
        await proc.begin(raw if kind == "raw" else flow)
        if isinstance(proc, EngineProcess):
            result["engine_revision"] = proc.revision
        result.update(
            await wait_outputs(
                bench.bootstrap,
                sink,
                partitions,
                expected,
                proc.watch(flow.pipeline) if kind == "engine" else proc.dead,
                bench.stateful_timeout,
                bench.idle_timeout,
            )
        )
        after = sample(proc.pid)
        result["load_after"] = load1()
        result.update(
            cpu_s=after.cpu_s - before.cpu_s,
            rss_mib=after.rss / MIB,
            hwm_mib=after.hwm / MIB,
            procs=after.procs,
        )
        if result["complete"]:
            first, last = await append_span(bench.bootstrap, sink, partitions)
            span = max(last - first, 1) / 1000
            result.update(
                first_append_ms=first,
                last_append_ms=last,
                span_s=span,
                rate=ids / span,
                to_all_s=last / 1000 - t0_wall,
                cpu_us_per_record=result["cpu_s"] / ids * 1e6,
            )
        return result
    finally:
        if proc is not None:
            await proc.stop()
        await cleanup(bench.bootstrap, topics, f"bench-{tag}")


MEDIAN_KEYS = ("rate", "cpu_us_per_record", "rss_mib", "hwm_mib", "procs", "to_all_s")


def _medians(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, float] | None:
    done = [r for r in runs if r.get("complete", True)]
    if not done:
        return None
    return {k: _median(done, k) for k in keys if all(k in r for r in done)}


def _stateful_say(bench: Bench, name: str, i: int, r: dict[str, Any]) -> None:
    head = f"  {name} run {i + 1}/{bench.runs} {r['kind']:<6}:"
    load = f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
    if not r["complete"]:
        bench.say(f"{head} {incomplete_text(r)}, {load}")
        return
    unit = "records" if r["kind"] == "raw" else UNITS[r["step"]] + "s"
    bench.say(
        f"{head} {r['rate']:>10,.0f} {unit}/s, {r['count']:,} out, start to all outputs"
        f" {r['to_all_s']:.1f} s, cpu {r['cpu_us_per_record']:.1f} us/{unit[:-1]},"
        f" peak rss {r['hwm_mib']:.0f} MiB, {r['procs']} process(es), {load}"
    )


async def stateful_part(
    bench: Bench, name: str, step: str, partitions: int, **settings: str
) -> dict[str, Any]:
    """Raw loop and engine alternated over a pre-loaded backlog of `step`, medians of --runs."""
    ids = stateful_ids(bench.stateful_records, step, partitions)
    part: dict[str, Any] = {"step": step, "ids": ids, "partitions": partitions}
    part["settings"] = {f"SELDON_{k.upper()}": v for k, v in settings.items()}
    part["load_before"] = load1()
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "engine": []}
    for i in range(bench.runs):
        for kind in ("raw", "engine"):
            r = await stateful_run(
                bench, kind, step, ids, partitions, **(settings if kind == "engine" else {})
            )
            runs[kind].append(r)
            _stateful_say(bench, name, i, r)
    part["load_after"] = load1()
    part["runs"] = runs
    part["median"] = {kind: _medians(rs, MEDIAN_KEYS) for kind, rs in runs.items()}
    return part


def _stateful(step: str, many: bool = False) -> Callable[[Bench], Awaitable[dict[str, Any]]]:
    async def run(bench: Bench) -> dict[str, Any]:
        if not many:
            return await stateful_part(bench, step, step, 1)
        return await stateful_part(
            bench, f"{step}-partitions", step, bench.partitions, num_cores=str(bench.num_cores)
        )

    return run


class Hogs:
    """`count` busy loops (`sh -c 'while :; do :; done'`), each in its own process group and
    killed by `timeout -s KILL` after `bound_s` should the bench itself die; stopped on exit."""

    def __init__(self, count: int, bound_s: float) -> None:
        self.count, self.bound_s = count, bound_s
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hogs:
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    ["timeout", "-s", "KILL", str(int(self.bound_s)), "sh", "-c", HOG],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the one we started
            proc.wait()
        self.procs.clear()


HOG = "while :; do :; done"


class LiveSender:
    """Ids at a steady rate to every source of a join `flow` (catching up after a stall): id n
    keyed `<p>.<n>` on partition p = n mod partitions of both sources, both stamped with the
    send time; counts the ids whose every record was acked."""

    def __init__(self, bootstrap: str, flow: Flow, rate: float, partitions: int) -> None:
        self.bootstrap, self.flow, self.rate, self.partitions = bootstrap, flow, rate, partitions
        self.ids = 0
        self.failed: set[int] = set()
        self.errors = 0
        self.seconds = 0.0

    def _acked(self, n: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.failed.add(n)
            self.errors += 1

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        headers = [("pipeline", self.flow.pipeline.encode())]
        try:
            t0 = time.monotonic()
            n = 0
            while not stop.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                while n < due:
                    p = n % self.partitions
                    key, ts = f"{p}.{n}".encode(), int(time.time() * 1000)
                    for topic, value in self.flow.sources:
                        fut = await producer.send(
                            topic, value, key=key, partition=p, timestamp_ms=ts, headers=headers
                        )
                        fut.add_done_callback(functools.partial(self._acked, n))
                    n += 1
                    if n % 200 == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(0.005)
            self.ids, self.seconds = n, time.monotonic() - t0
            await producer.flush()
        finally:
            await producer.stop()

    @property
    def complete_ids(self) -> int:
        return self.ids - len(self.failed)


async def _during(task: asyncio.Task[Any], seconds: float) -> None:
    """Sleep `seconds`, raising at once should `task` fail meanwhile."""
    await asyncio.wait([task], timeout=seconds)
    if task.done():
        task.result()
        raise RuntimeError("the live sender stopped early")


async def distinct_keys(bootstrap: str, topic: str, count: int) -> int:
    return len({r.key for r in await read_all(bootstrap, topic, count, timeout=120)})


async def catchup_run(bench: Bench, hogs: int) -> dict[str, Any]:
    """The join live at --catchup-rate ids/s per source, SIGTERM after --catchup-warmup s, down
    --catchup-down s while the sender goes on, then the sender stops and the engine restarts
    over the backlog: records/s from the restart until every id sent has its output."""
    bootstrap, partitions = bench.bootstrap, bench.catchup_partitions
    flow = Flow.fresh("join")
    engine = EngineProcess(bootstrap, bench.logs / f"catchup-{flow.tag}", flow.tag)
    sender = LiveSender(bootstrap, flow, bench.catchup_rate, partitions)
    result: dict[str, Any] = {"kind": "engine", "hogs": hogs, "partitions": partitions}
    topics = [t for t, _ in flow.sources] + [flow.sink]
    stop = asyncio.Event()
    task: asyncio.Task[Any] | None = None
    try:
        await create_topics(bootstrap, topics[:-1], partitions)
        await create_topics(bootstrap, [flow.sink], partitions, LOG_APPEND)
        await engine.start()
        result["engine_revision"] = engine.revision
        await engine.begin(flow)
        await engine.wait_ready([flow.pipeline], 120)
        result["load_before"] = load1()
        task = asyncio.create_task(sender.run(stop), name="bench-live-sender")
        await _during(task, bench.catchup_warmup)
        result["sigterm_s"] = await engine.terminate(30)
        await _during(task, bench.catchup_down)
        stop.set()
        await task
        expected = sender.complete_ids
        before = await sink_count(bootstrap, flow.sink, partitions)
        result.update(
            ids=sender.ids,
            expected=expected,
            send_errors=sender.errors,
            sent_rate=sender.ids / sender.seconds if sender.seconds else 0.0,
            before_restart=before,
            backlog=expected - before,
        )
        t_restart = time.time()
        await engine.restart()
        result["engine_revision"] = engine.revision
        target = expected
        while True:
            waited = await wait_outputs(
                bootstrap,
                flow.sink,
                partitions,
                target,
                engine.watch(flow.pipeline),
                max(1.0, t_restart + bench.catchup_timeout - time.time()),
                bench.idle_timeout,
            )
            result.update(waited)
            result["waited_s"] = time.time() - t_restart
            if not waited["complete"]:
                break
            result["distinct"] = await distinct_keys(bootstrap, flow.sink, waited["count"])
            if result["distinct"] >= expected:
                break
            # Duplicates made up the count while some ids are still missing: wait for more.
            target = waited["count"] + expected - result["distinct"]
        after = sample(engine.pid)
        result["load_after"] = load1()
        result.update(
            duplicates=result["count"] - result.get("distinct", result["count"]),
            cpu_s=after.cpu_s,
            hwm_mib=after.hwm / MIB,
        )
        if result["complete"]:
            _, last = await append_span(bootstrap, flow.sink, partitions)
            caught = result["backlog"]
            result["catchup_s"] = last / 1000 - t_restart
            result.update(
                rate=caught / result["catchup_s"],
                cpu_us_per_record=after.cpu_s / max(caught, 1) * 1e6,
            )
        return result
    finally:
        stop.set()
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=30)
        await engine.stop(30)
        await cleanup(bootstrap, topics, f"bench-{flow.tag}")


async def part_catchup(bench: Bench) -> dict[str, Any]:
    """The join's catch-up, without and with --catchup-hogs busy loops, each beside the raw loop
    over a pre-loaded backlog of the same size (the same hogs running), alternated."""
    backlog = int(bench.catchup_rate * bench.catchup_down)
    part: dict[str, Any] = {
        "rate": bench.catchup_rate,
        "partitions": bench.catchup_partitions,
        "warmup_s": bench.catchup_warmup,
        "down_s": bench.catchup_down,
        "timeout_s": bench.catchup_timeout,
        "backlog": backlog,
        "hogs": bench.catchup_hogs,
        "load_before": load1(),
    }
    conditions = sorted({0, bench.catchup_hogs})
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        str(h): {"raw": [], "engine": []} for h in conditions
    }
    bound = 3 * (bench.catchup_warmup + bench.catchup_down + bench.catchup_timeout) + 600
    for i in range(bench.runs):
        for hogs in conditions:
            with Hogs(hogs, bound):
                raw = await stateful_run(bench, "raw", "join", backlog, bench.catchup_partitions)
                raw["hogs"] = hogs
                runs[str(hogs)]["raw"].append(raw)
                _stateful_say(bench, f"catchup, {hogs} hogs,", i, raw)
                r = await catchup_run(bench, hogs)
                runs[str(hogs)]["engine"].append(r)
            head = f"  catchup run {i + 1}/{bench.runs}, {hogs} hogs, engine:"
            load = f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
            lead = (
                f" {r['ids']:,} ids sent ({r['sent_rate']:,.0f}/s), SIGTERM took"
                f" {r['sigterm_s']:.1f} s, {r['backlog']:,} behind at the restart;"
            )
            if r["complete"]:
                bench.say(
                    f"{head}{lead} caught up in {r['catchup_s']:.1f} s, {r['rate']:,.0f} pairs/s,"
                    f" cpu {r['cpu_us_per_record']:.1f} us/pair, {r['duplicates']:,} duplicates,"
                    f" {load}"
                )
            else:
                bench.say(f"{head}{lead} {incomplete_text(r, 'catch up')}, {load}")
    part["load_after"] = load1()
    part["runs"] = runs
    part["median"] = {
        h: {
            kind: _medians(rs, ("rate", "cpu_us_per_record", "catchup_s"))
            for kind, rs in by.items()
        }
        for h, by in runs.items()
    }
    return part


# -- the table -----------------------------------------------------------------------------------


def _rate_cell(runs: list[dict[str, Any]], key: str = "rate") -> str:
    values = [r[key] for r in runs]
    cell = f"{statistics.median(values):,.0f}/s"
    if len(values) > 1:
        cell += f" ({min(values):,.0f}-{max(values):,.0f})"
    return cell


def _ratio(engine: float, raw: float) -> str:
    return f"{engine / raw:.2f}" if raw else "-"


def _of(runs: int, spread: str = "") -> str:
    return f"median of {runs} {spread}".rstrip() if runs > 1 else "1 run"


def _load(part: dict[str, Any]) -> str:
    return f"{part['load_before']:.2f} → {part['load_after']:.2f}"


def table(results: dict[str, Any], runs: int) -> str:
    rows: list[list[str]] = []

    def chain_rows(label: str, part: dict[str, Any], cpu_unit: str = "us") -> None:
        med, rs = part["median"], part["runs"]
        scale = 1000 if cpu_unit == "ms" else 1
        rows.append(
            [
                label,
                "records/s, first→last output append, " + _of(runs, "(min-max)"),
                _rate_cell(rs["raw"]),
                _rate_cell(rs["engine"]),
                _ratio(med["engine"]["rate"], med["raw"]["rate"]),
                _load(part),
            ]
        )
        rows.append(
            [
                "",
                "CPU per record (process tree, median)",
                f"{med['raw']['cpu_us_per_record'] / scale:.1f} {cpu_unit}",
                f"{med['engine']['cpu_us_per_record'] / scale:.1f} {cpu_unit}",
                _ratio(med["engine"]["cpu_us_per_record"], med["raw"]["cpu_us_per_record"]),
                "",
            ]
        )
        rows.append(
            [
                "",
                "peak RSS (VmHWM, median)",
                f"{med['raw']['hwm_mib']:.0f} MiB",
                f"{med['engine']['hwm_mib']:.0f} MiB",
                _ratio(med["engine"]["hwm_mib"], med["raw"]["hwm_mib"]),
                "",
            ]
        )

    if "throughput" in results:
        p = results["throughput"]
        chain_rows(f"one-step chain, 1 partition, {p['records']:,} of {p['value_bytes']} B", p)
    if "partitions" in results:
        p = results["partitions"]
        procs = int(p["median"]["engine"]["procs"])
        chain_rows(
            f"{p['partitions']} partitions, SELDON_NUM_CORES={p['settings']['SELDON_NUM_CORES']}"
            f" ({procs} engine process{'es' if procs != 1 else ''} seen), {p['records']:,} of "
            f"{p['value_bytes']} B",
            p,
        )
    if "latency" in results:
        p = results["latency"]
        med = p["median"]
        for i, (key, what) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max"))):
            rows.append(
                [
                    f"added latency at {p['rate']:,}/s for {p['seconds']:g} s" if i == 0 else "",
                    f"{what} ms, send → output append, " + _of(runs),
                    f"{med['raw'][key]:.1f} ms",
                    f"{med['engine'][key]:.1f} ms",
                    _ratio(med["engine"][key], med["raw"][key]),
                    _load(p) if i == 0 else "",
                ]
            )
    if "rss" in results:
        p = results["rss"]
        raw = p["raw"]["rss_mib"]
        first = True
        for r in p["engine"]:
            rows.append(
                [
                    "RSS, pipelines loaded through the proxy" if first else "",
                    f"{r['pipelines']} pipeline{'s' if r['pipelines'] != 1 else ''}: RSS (peak)",
                    f"{raw:.0f} MiB (1 consumer+producer, idle)" if first else "",
                    f"{r['rss_mib']:.0f} MiB ({r['hwm_mib']:.0f})",
                    _ratio(r["rss_mib"], raw),
                    _load(p) if first else "",
                ]
            )
            first = False
        if p["engine"]:
            rows.append(
                [
                    "",
                    "load → all Ready (proxy status): "
                    + " / ".join(str(r["pipelines"]) for r in p["engine"]),
                    "",
                    " / ".join(f"{r['ready_s']:.2f} s" for r in p["engine"]),
                    "",
                    "",
                ]
            )
            rows.append(
                [
                    "",
                    "idle engine before loading (RSS)",
                    "",
                    " / ".join(f"{r['idle_rss_mib']:.0f} MiB" for r in p["engine"]),
                    "",
                    "",
                ]
            )
    if "large" in results:
        p = results["large"]
        chain_rows(f"1 MiB raw tensor ({p['value_bytes']:,} B), {p['records']:,} records", p, "ms")
    for name in STATEFUL_PARTS:
        if name in results:
            rows += stateful_rows(results[name], runs)
    if "catchup" in results:
        rows += catchup_rows(results["catchup"], runs)
    header = ["part", "figure", "raw aiokafka loop", "python -m dataflow", "engine / raw", "load"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


STEP_LABELS = {
    "join": "inner join (1 s window) of two sources, {ids:,} pairs",
    "batch": "batch of 10, {ids:,} records",
    "trigger": "data gated by a trigger topic, {ids:,} data + {ids:,} trigger records",
}


def _done_cell(runs: list[dict[str, Any]], key: str = "rate", unit: str = "/s") -> str:
    """Median of the runs that completed (min-max), and how many did not."""
    done = [r[key] for r in runs if r.get("complete", True)]
    cell = ""
    if done:
        cell = f"{statistics.median(done):,.0f}{unit}"
        if len(done) > 1:
            cell += f" ({min(done):,.0f}-{max(done):,.0f})"
    failed = len(runs) - len(done)
    if failed:
        cell += f"; {failed} of {len(runs)} incomplete" if done else ""
    return cell


def _failure(runs: list[dict[str, Any]], verb: str) -> str:
    failed = [r for r in runs if not r.get("complete", True)]
    return incomplete_text(failed[0], verb) if failed else ""


def _cell(runs: list[dict[str, Any]], verb: str, key: str = "rate", unit: str = "/s") -> str:
    """The median cell, or the first failure when no run completed."""
    return _done_cell(runs, key, unit) or _failure(runs, verb)


def _med(med: dict[str, Any] | None, key: str) -> float | None:
    return None if med is None else med.get(key)


def _ratio_of(engine: float | None, raw: float | None) -> str:
    return _ratio(engine, raw) if engine is not None and raw is not None else "-"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def stateful_rows(part: dict[str, Any], runs: int) -> list[list[str]]:
    """Rows of a join, batch or trigger part: rate, CPU per unit, start to all outputs, RSS."""
    step, unit = part["step"], UNITS[part["step"]]
    med, rs = part["median"], part["runs"]
    label = STEP_LABELS[step].format(ids=part["ids"]) + f", {part['partitions']} partition"
    label += "s" if part["partitions"] != 1 else ""
    cores = part["settings"].get("SELDON_NUM_CORES")
    if cores:
        label += f", SELDON_NUM_CORES={cores}"
    raw, eng = med["raw"], med["engine"]
    rows = [
        [
            label,
            f"{unit}s/s (raw: records/s), first→last output append, " + _of(runs, "(min-max)"),
            _cell(rs["raw"], "complete"),
            _cell(rs["engine"], "complete"),
            _ratio_of(_med(eng, "rate"), _med(raw, "rate")),
            _load(part),
        ],
        [
            "",
            f"CPU per {unit} (process tree, median)",
            _us(_med(raw, "cpu_us_per_record")),
            _us(_med(eng, "cpu_us_per_record")),
            _ratio_of(_med(eng, "cpu_us_per_record"), _med(raw, "cpu_us_per_record")),
            "",
        ],
        [
            "",
            "start → every output on the sink (engine: pipeline load, wall s, median)",
            "-" if _med(raw, "to_all_s") is None else f"{_med(raw, 'to_all_s'):.1f} s",
            "-" if _med(eng, "to_all_s") is None else f"{_med(eng, 'to_all_s'):.1f} s",
            "",
            "",
        ],
        [
            "",
            "peak RSS (VmHWM, median)",
            "-" if raw is None else f"{raw['hwm_mib']:.0f} MiB",
            "-" if eng is None else f"{eng['hwm_mib']:.0f} MiB",
            _ratio_of(_med(eng, "hwm_mib"), _med(raw, "hwm_mib")),
            "",
        ],
    ]
    return rows


def catchup_rows(part: dict[str, Any], runs: int) -> list[list[str]]:
    """Rows of the catch-up part: per hog count, the rate from the restart to the last output,
    the time that took and CPU per pair; then the rates with hogs over those without."""
    rows: list[list[str]] = []
    rates: dict[str, tuple[float | None, float | None]] = {}
    for hogs, by in part["runs"].items():
        med = part["median"][hogs]
        raw, eng = med["raw"], med["engine"]
        backlogs = [r["backlog"] for r in by["engine"] if "backlog" in r]
        behind = f"{statistics.median(backlogs):,.0f}" if backlogs else "?"
        label = (
            f"join catch-up, {part['partitions']} partitions, {part['rate']:,} ids/s per source,"
            f" {part['down_s']:g} s down, {behind} pairs behind at the restart, "
            + (f"{hogs} CPU hogs" if hogs != "0" else "no CPU hogs")
        )
        rows.append(
            [
                label,
                "pairs/s restart → every output (raw: records/s over the same backlog, "
                "pre-loaded), " + _of(runs, "(min-max)"),
                _cell(by["raw"], "complete"),
                _cell(by["engine"], "catch up"),
                _ratio_of(_med(eng, "rate"), _med(raw, "rate")),
                _load(part) if not rows else "",
            ]
        )
        failure = _failure(by["engine"], "catch up")
        if failure and _med(eng, "rate") is not None:
            rows.append(["", "a run that never finished", "", failure, "", ""])
        rows.append(
            [
                "",
                "restart → last output (s, median); SIGTERM took",
                "",
                "-"
                if _med(eng, "catchup_s") is None
                else f"{_med(eng, 'catchup_s'):.1f} s; "
                + ", ".join(f"{r['sigterm_s']:.1f} s" for r in by["engine"] if "sigterm_s" in r),
                "",
                "",
            ]
        )
        rows.append(
            [
                "",
                "CPU per pair (raw: per record), restarted engine process (median)",
                _us(_med(raw, "cpu_us_per_record")),
                _us(_med(eng, "cpu_us_per_record")),
                _ratio_of(_med(eng, "cpu_us_per_record"), _med(raw, "cpu_us_per_record")),
                "",
            ]
        )
        rates[hogs] = (_med(raw, "rate"), _med(eng, "rate"))
    hogged = [h for h in rates if h != "0"]
    if "0" in rates and hogged:
        (raw0, eng0), (rawh, engh) = rates["0"], rates[hogged[0]]
        rows.append(
            [
                "",
                f"catch-up rate with {hogged[0]} hogs / without (acceptance: ≥ 0.33)",
                _ratio_of(rawh, raw0),
                _ratio_of(engh, eng0),
                "",
                "",
            ]
        )
    return rows


def wire_table() -> str:
    import bench_wire

    lines = ["| case | bytes | wire.convert | betterproto | ratio |", "|---|---|---|---|---|"]
    for r in bench_wire.run():
        lines.append(
            f"| {r['case']} | {r['bytes']:,} | {r['wire_per_s']:,.0f}/s {r['wire_us']:.1f} us"
            f" | {r['betterproto_per_s']:,.0f}/s {r['betterproto_us']:.0f} us"
            f" | {r['ratio']:.0f}x |"
        )
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS + EXTRA_PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS + EXTRA_PARTS)}"
        )
    return parts


def _counts(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("SELDON_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    p.add_argument(
        "--parts",
        type=_parts,
        default=list(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default all), wire, guarantees, tracing",
    )
    p.add_argument("--records", type=int, help="records per throughput run (1,000,000)")
    p.add_argument("--runs", type=int, help="runs of each contender per part (3)")
    p.add_argument("--partitions", type=int, default=4, help="of the partitions part (4)")
    p.add_argument("--num-cores", type=int, default=2, help="engine's, partitions part (2)")
    p.add_argument("--latency-seconds", type=float, help="per latency run (20)")
    p.add_argument("--latency-rate", type=int, default=1000, help="records/s (1000)")
    p.add_argument("--rss-counts", type=_counts, help="pipelines per RSS run (1,50,500)")
    p.add_argument("--large-records", type=int, help="1 MiB records per run (2000)")
    p.add_argument(
        "--stateful-records",
        type=int,
        help="ids per join/batch/trigger run: pairs, records, data records (200,000)",
    )
    p.add_argument(
        "--backlog-rate", type=int, default=2000, help="ids/s the backlog's timestamps span (2000)"
    )
    p.add_argument("--stateful-timeout", type=float, help="longest stateful run, s (600)")
    p.add_argument(
        "--idle-timeout", type=float, help="stateful runs: give up after no output for, s (60)"
    )
    p.add_argument("--catchup-rate", type=int, help="ids/s per source, live (2000)")
    p.add_argument("--catchup-partitions", type=int, default=4, help="of the catch-up (4)")
    p.add_argument("--catchup-warmup", type=float, help="live before the SIGTERM, s (15)")
    p.add_argument("--catchup-down", type=float, help="engine down, backlog growing, s (60)")
    p.add_argument("--catchup-timeout", type=float, help="restart → all outputs, at most s (300)")
    p.add_argument("--catchup-hogs", type=int, default=3, help="busy loops of the 2nd case (3)")
    p.add_argument("--quick", action="store_true", help="a short smoke of every part")
    p.add_argument("--json", type=Path, help="also write the results and the table here")
    p.add_argument("--logs", type=Path, help="process logs (default .run/bench/<time>/)")
    # The raw loop's own process (internal).
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--sink", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--large", action="store_true", help=argparse.SUPPRESS)
    return p


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    for name, normal, short in (
        ("records", 1_000_000, 20_000),
        ("runs", 3, 1),
        ("latency_seconds", 20.0, 5.0),
        ("rss_counts", [1, 50, 500], [1, 10]),
        ("large_records", 2000, 100),
        ("stateful_records", 200_000, 4_000),
        ("stateful_timeout", 600.0, 120.0),
        ("idle_timeout", 60.0, 30.0),
        ("catchup_rate", 2000, 500),
        ("catchup_warmup", 15.0, 5.0),
        ("catchup_down", 60.0, 10.0),
        ("catchup_timeout", 300.0, 90.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else normal)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")


def _run(main: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = args.logs or REPO / ".run" / "bench" / stamp
    bench = Bench(
        bootstrap=args.bootstrap_servers,
        logs=logs,
        records=args.records,
        runs=args.runs,
        partitions=args.partitions,
        num_cores=args.num_cores,
        latency_seconds=args.latency_seconds,
        latency_rate=args.latency_rate,
        rss_counts=args.rss_counts,
        large_records=args.large_records,
        stateful_records=args.stateful_records,
        backlog_rate=args.backlog_rate,
        stateful_timeout=args.stateful_timeout,
        idle_timeout=args.idle_timeout,
        catchup_rate=args.catchup_rate,
        catchup_partitions=args.catchup_partitions,
        catchup_warmup=args.catchup_warmup,
        catchup_down=args.catchup_down,
        catchup_timeout=args.catchup_timeout,
        catchup_hogs=args.catchup_hogs,
    )
    out: dict[str, Any] = {
        "started": stamp,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}, {platform.platform()}",
        "bootstrap": bench.bootstrap,
        "engine_revision": engine_revision(),
        "settings": {k: v for k, v in asdict(bench).items() if k not in ("results", "logs")},
        "logs": str(logs),
        "parts": {},
        "errors": {},
    }
    t0 = time.monotonic()
    bench.say(f"bench: logs in {logs}; load {os.getloadavg()}")
    functions: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
        "throughput": part_throughput,
        "partitions": part_partitions,
        "latency": part_latency,
        "rss": part_rss,
        "large": part_large,
        "guarantees": part_guarantees,
        "tracing": part_tracing,
        "catchup": part_catchup,
    }
    for name in STATEFUL_PARTS:
        functions[name] = _stateful(name.split("-")[0], name.endswith("-partitions"))
    for name in args.parts:
        if name == "wire":
            continue
        bench.say(f"{name}:")
        started = time.monotonic()
        try:
            out["parts"][name] = await functions[name](bench)
            out["parts"][name]["elapsed_s"] = time.monotonic() - started
        except Exception as exc:
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            bench.say(f"  {name} failed: {out['errors'][name]}")
    out["seconds"] = time.monotonic() - t0
    out["engine_revisions"] = sorted(REVISIONS)
    main_parts = {k: v for k, v in out["parts"].items() if k not in ("guarantees", "tracing")}
    out["table"] = table(main_parts, bench.runs) if main_parts else ""
    if "guarantees" in out["parts"]:
        out["guarantees_table"] = guarantees_table(out["parts"]["guarantees"], bench.runs)
    if "tracing" in out["parts"]:
        out["tracing_table"] = tracing_table(out["parts"]["tracing"], bench.runs)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.raw_child:
        _run(raw_child(args))
        return 0
    _defaults(args)
    out: dict[str, Any] = {"parts": {}, "errors": {}, "table": ""}
    if any(p != "wire" for p in args.parts):
        out = _run(run_bench(args))
    print(f"machine: {out.get('machine', platform.platform())}, load now {os.getloadavg()}")
    revisions = out.get("engine_revisions") or [out.get("engine_revision", "?")]
    if len(revisions) > 1:
        print("engine: its code changed during the bench; runs used:")
        print("\n".join(f"  {r}" for r in revisions))
    elif "engine_revision" in out:
        print(f"engine: {revisions[0]}")
    if out["table"]:
        print(f"\n{out['table']}\n")
    if out.get("guarantees_table"):
        print(f"\nprocessing guarantees:\n\n{out['guarantees_table']}\n")
    if out.get("tracing_table"):
        print(f"\ntracing:\n\n{out['tracing_table']}\n")
    if "seconds" in out:
        print(f"took {out['seconds']:.0f} s; logs in {out['logs']}")
    if "wire" in args.parts:
        out["wire"] = wire_table()
        print(f"\nwire conversion, one response -> one request:\n\n{out['wire']}\n")
    for name, error in out["errors"].items():
        print(f"part {name} failed: {error}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
