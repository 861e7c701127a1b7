"""Chaos suite: lost and duplicated ids of pipelines under engine kills, restarts, broker bounces.

For each (case, fault) pair: a private broker (scripts/kafka in a temporary folder; or the broker
of --bootstrap), the proxy scheduler with one explicit pipeline, one engine process, a steady
producer of unique ids and a live consumer of the pipeline's output topic. The fault is applied
while the producer runs; afterwards the engine runs on until nothing moves for --quiet seconds
(no output, no change of the engine's uncommitted input, the pipeline Ready). Then the input
topic(s) and the output topic are read back from the beginning (read_committed): `sent` is the
ids on the input (for joins: on both sources), `lost` the sent ids with no output, `duplicated`
the outputs beyond the first per id. The longest output gap is the largest wall-clock gap
between output records as the live consumer received them.

Records: key = the id (b"c-0000123"), header `pipeline: <name>`, value a V2 ModelInferResponse
with id = the id and one INT64 tensor [1, 1] holding the id's number, so merged batches can be
decoded back into the ids they hold.

Used by `scripts/chaos` (command line) and `tests/integration/test_chaos.py` (`run_one`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
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

CASES = ("chain", "join", "outer", "batch")
FAULTS = ("kill9", "graceful", "bounce")
ID_FORMAT = "c-{:07d}"

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

    @property
    def faults(self) -> list[str]:
        return [f for f in self.fault.split("+") if f]

    @property
    def label(self) -> str:
        if self.case in ("join", "outer") and self.window_ms != 1000:
            return f"{self.case}({self.window_ms / 1000:g}s)"
        return self.case


@dataclass
class Result:
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
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> list[str]:
        return [
            self.case,
            self.fault,
            str(self.sent),
            str(self.lost),
            str(self.duplicated),
            f"{self.duplicated_s:.2f}",
            f"{self.longest_gap_s:.1f}",
            self.exits or "-",
            f"{self.run_s:.0f}",
            self.notes or "-",
        ]


HEADER = [
    "case",
    "fault",
    "sent",
    "lost",
    "duplicated",
    "duplicated (s of traffic)",
    "longest output gap (s)",
    "engine exits",
    "run (s)",
    "notes",
]


def table(results: list[Result]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(r.row() for r in results)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


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
                str(REPO / "scripts" / "kafka"),
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
                [str(REPO / "scripts" / "kafka"), "stop"],
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


# -- producer and live consumer ---------------------------------------------------------------


class Producer:
    """Unique ids at a steady rate (catching up after stalls), every id to every source topic.

    Sends are retried: a failed enqueue after a pause, a failed delivery by sending again (up to
    `attempts` times); counting uses the input topic, so an id that never made it is not sent.
    """

    def __init__(
        self,
        bootstrap: str,
        sources: list[tuple[str, str]],
        pipeline: str,
        rate: float,
        attempts: int = 10,
        give_up_s: float = 120.0,
    ) -> None:
        self.bootstrap, self.sources, self.rate = bootstrap, sources, rate
        self.headers = [("pipeline", pipeline.encode())]
        self.attempts, self.give_up_s = attempts, give_up_s
        self.stopping = asyncio.Event()
        self.retry: deque[tuple[str, bytes, bytes, int]] = deque()
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

    def _done(self, topic: str, key: bytes, value: bytes, attempt: int, fut: Any) -> None:
        self.inflight -= 1
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.delivery_errors[type(exc).__name__ if exc else "Cancelled"] += 1
            if attempt >= self.attempts:
                self.failed += 1
            else:
                self.retry.append((topic, key, value, attempt + 1))
            return
        self.acked += 1

    async def _send(self, topic: str, key: bytes, value: bytes, attempt: int) -> None:
        assert self._producer is not None
        first = time.monotonic()
        while True:
            t0 = time.monotonic()
            try:
                fut = await self._producer.send(topic, value, key=key, headers=self.headers)
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
            fut.add_done_callback(partial(self._done, topic, key, value, attempt))
            return

    async def _resend(self) -> None:
        while self.retry:
            topic, key, value, attempt = self.retry.popleft()
            self.resent += 1
            await self._send(topic, key, value, attempt)

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
                    key = rid.encode()
                    for topic, tensor in self.sources:
                        await self._send(topic, key, encode_response(rid, n, tensor), 1)
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
    """A live consumer of the output topic: when output records arrive (wall clock)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrivals: list[tuple[float, int]] = []
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


async def read_topic(bootstrap: str, topic: str, timeout: float = 180) -> list[tuple[bytes, bytes]]:
    """(key, value) of every committed record of `topic`, from the beginning to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
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
        else:
            raise RuntimeError(f"could not read {topic} to its end {end} within {timeout}s")
    finally:
        await consumer.stop()
    return out


async def create_topics(bootstrap: str, names: list[str], timeout: float = 60) -> None:
    """Create the topics (one partition; existing ones are kept) and wait until described."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
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

    The groups are found by name (`...-<uid or its MD5>-s<step>`, dataflow.topology.group_id).
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
        mine = [g for g in groups if any(f"-{k}-s" in g for k in self.keys)]
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
    """The pipeline of a case: its YAML body, the source topics with their tensor, the sink."""

    body: str
    sources: list[tuple[str, str]]
    sink: str


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
        return Layout(body, [(a, "x")], d)
    if cfg.case in ("join", "outer"):
        a, b, c = topic("a", "outputs"), topic("b", "outputs"), topic("c", "inputs")
        join = "inner" if cfg.case == "join" else "outer"
        body = (
            "steps:\n"
            f"  - sources: [{a}, {b}]\n    sink: {c}\n"
            f"    inputJoinType: {join}\n    joinWindowMs: {cfg.window_ms}\n"
        )
        return Layout(body, [(a, "x"), (b, "y")], c)
    if cfg.case == "batch":
        a, b = topic("a", "outputs"), topic("b", "inputs")
        body = (
            "steps:\n"
            f"  - sources: [{a}]\n    sink: {b}\n"
            f"    batch: {{size: {cfg.batch_size}, windowMs: {cfg.batch_window_ms}}}\n"
        )
        return Layout(body, [(a, "x")], b)
    raise ValueError(f"unknown case {cfg.case!r} (one of {', '.join(CASES)})")


class Run:
    """The processes of one run and the faults applied to them."""

    def __init__(self, cfg: Config, logs: Path, bootstrap: str, broker: Broker | None) -> None:
        self.cfg, self.logs, self.bootstrap, self.broker = cfg, logs, bootstrap, broker
        self.rng = random.Random(cfg.seed)
        self.t0 = time.monotonic()
        self.proxy: Proxy | None = None
        self.engine: Process | None = None
        self.engine_starts = 0
        self.last_start = 0.0
        self.expect_down = False
        self.exits: list[dict[str, Any]] = []
        self.events: list[str] = []

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {self.cfg.label}/{self.cfg.fault}: {text}"
        self.events.append(line)
        print(line, flush=True)

    def start_engine(self) -> None:
        assert self.proxy is not None
        self.engine_starts += 1
        self.last_start = time.monotonic()
        log = self.logs / "engine-a.log"
        with log.open("ab") as handle:
            handle.write(f"\n===== chaos: engine start #{self.engine_starts} =====\n".encode())
        self.engine = engine(self.logs, self.bootstrap, self.proxy, log_level_app="INFO")

    def state(self, name: str) -> str | None:
        """The pipeline's state at the proxy (Ready once the engine acked its (re)creation)."""
        assert self.proxy is not None
        try:
            pipeline = self.proxy.pipeline(name)
        except OSError:
            return None
        return None if pipeline is None else str(pipeline["state"])

    async def wait_engine(self, timeout: float) -> int | None:
        assert self.engine is not None
        try:
            return await asyncio.to_thread(self.engine.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def watchdog(self) -> None:
        """An engine that exits on its own is recorded and restarted, as a deployment would."""
        while True:
            await asyncio.sleep(0.5)
            proc = self.engine.proc if self.engine else None
            if self.expect_down or proc is None or proc.poll() is None:
                continue
            self.exits.append({"how": "crash", "code": proc.returncode})
            self.say(f"engine exited by itself with {proc.returncode}; restarting it")
            self.start_engine()

    async def kill9(self) -> None:
        for k in range(self.cfg.kills):
            await asyncio.sleep(self.rng.uniform(*self.cfg.kill_gap))
            assert self.engine is not None
            self.expect_down = True
            self.engine.signal(signal.SIGKILL)
            code = await self.wait_engine(30)
            self.exits.append({"how": "kill9", "code": code})
            self.start_engine()
            self.expect_down = False
            self.say(f"kill -9 #{k + 1}/{self.cfg.kills} (exit {code}), restarted")
        await asyncio.sleep(self.cfg.after)

    async def graceful(self) -> None:
        assert self.engine is not None
        self.expect_down = True
        t = time.monotonic()
        self.engine.signal(signal.SIGTERM)
        code = await self.wait_engine(self.cfg.term_timeout)
        took = time.monotonic() - t
        if code is None:
            self.engine.signal(signal.SIGKILL)
            await self.wait_engine(10)
        self.exits.append({"how": "sigterm", "code": code, "took_s": round(took, 2)})
        self.say(f"SIGTERM: engine exited with {code} after {took:.1f}s; down {self.cfg.down:g}s")
        await asyncio.sleep(self.cfg.down)
        self.start_engine()
        self.expect_down = False
        self.say("engine restarted")
        await asyncio.sleep(self.cfg.after)

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


def _exits_summary(exits: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for e in exits:
        if e["how"] == "sigterm":
            parts.append(f"SIGTERM→{e['code']} ({e['took_s']:g}s)")
        elif e["how"] == "final" and e["code"] != 0:
            parts.append(f"final SIGTERM→{e['code']}")
        elif e["how"] == "kill9" and e["code"] != -9:
            parts.append(f"kill9→{e['code']}")
    crashes = Counter(e["code"] for e in exits if e["how"] == "crash")
    parts += [f"crashed rc={code} x{n}" for code, n in sorted(crashes.items(), key=str)]
    return ", ".join(parts)


def _notes(counted: dict[str, Any], producer: Producer, lag: dict[str, int] | None) -> str:
    """What else deserves a look: split outer-join pairs, bad input, a drain left short."""
    notes = []
    if counted["partial_join_outputs"]:
        notes.append(f"{counted['partial_join_outputs']} one-sided join outputs")
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


def count(
    cfg: Config, inputs: list[list[tuple[bytes, bytes]]], outputs: list[bytes]
) -> dict[str, Any]:
    """Sent, lost and duplicated ids from the records of the input topic(s) and the output."""
    per_source = [Counter(k.decode(errors="replace") for k, _ in records) for records in inputs]
    sent = set(per_source[0])
    for counts in per_source[1:]:
        sent &= set(counts)
    input_dups = sum(c - 1 for counts in per_source for c in counts.values() if c > 1)
    delivered: Counter[str] = Counter()
    partial_outputs = 0
    undecodable = 0
    for value in outputs:
        try:
            rid, numbers, ntensors = decode_request(value)
        except (ValueError, IndexError):
            undecodable += 1
            continue
        if cfg.case == "batch":
            delivered.update(ID_FORMAT.format(n) for n in numbers)
        else:
            delivered[rid] += 1
            if cfg.case in ("join", "outer") and ntensors < 2:
                partial_outputs += 1
    lost = len(sent - set(delivered))
    duplicated = sum(c - 1 for c in delivered.values() if c > 1)
    return {
        "sent": len(sent),
        "lost": lost,
        "duplicated": duplicated,
        "ids_duplicated": sum(1 for c in delivered.values() if c > 1),
        "input_records": [len(r) for r in inputs],
        "input_duplicates": input_dups,
        "output_records": len(outputs),
        "outputs_not_sent": sum(c for rid, c in delivered.items() if rid not in sent),
        "partial_join_outputs": partial_outputs,
        "undecodable_outputs": undecodable,
    }


async def run_one(
    cfg: Config,
    *,
    bootstrap: str | None = None,
    logs: Path,
    tag: str | None = None,
    engine_src: Path | None = None,
    engine_label: str = "working tree",
) -> Result:
    """One (case, fault plan) run; `bootstrap` None: a private broker started and stopped here.

    `engine_src`: a folder holding the `dataflow` package the engine and proxy run (default: the
    repository's), e.g. a `snapshot` of a git revision.
    """
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    with engine_source(engine_src), client_log(logs / "clients.log") as lines:
        result = await _run_one(cfg, bootstrap, logs, tag)
    result.details["client_log_lines"] = dict(lines)
    result.details["engine"] = engine_label
    (logs / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


async def _run_one(cfg: Config, bootstrap: str | None, logs: Path, tag: str | None) -> Result:
    for fault in cfg.faults:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
    if bootstrap is not None and "bounce" in cfg.faults:
        raise ValueError("the bounce fault needs a private broker (no --bootstrap)")
    wall0 = time.monotonic()
    tag = tag or uuid.uuid4().hex[:8]
    safe = re.sub(r"[^a-z0-9]", "", f"{cfg.case}{cfg.fault}".lower())
    ns, name = f"chaos{safe}{tag}", f"chaos-{safe}-{tag}"
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    broker = Broker(logs) if bootstrap is None else None
    run: Run | None = None
    tasks: list[asyncio.Task[None]] = []
    result = Result(cfg.label, cfg.fault, logs=str(logs))
    try:
        if broker is not None:
            took = await broker.start()
            print(f"{cfg.label}/{cfg.fault}: private broker {broker.bootstrap} up in {took:.1f}s")
            bootstrap = broker.bootstrap
        assert bootstrap is not None
        run = Run(cfg, logs, bootstrap, broker)
        run.say(f"logs in {logs}")
        lay = layout(cfg, ns)
        await create_topics(bootstrap, [t for t, _ in lay.sources] + [lay.sink])
        spec = logs / f"{name}.yaml"
        spec.write_text(f"kind: PipelineUpdate\nname: {name}\nversion: 1\nuid: {name}\n{lay.body}")
        proxy = (await asyncio.to_thread(proxy_class))(logs)
        run.proxy = await asyncio.to_thread(proxy.start, spec)
        run.start_engine()
        await asyncio.to_thread(run.proxy.wait_state, name, "Ready", 90)
        run.say("pipeline Ready")

        watcher = Watcher(bootstrap, lay.sink)
        producer = Producer(bootstrap, lay.sources, name, cfg.rate)
        tasks.append(asyncio.create_task(watcher.run()))
        await asyncio.wait_for(watcher.started.wait(), 60)
        tasks.append(asyncio.create_task(run.watchdog()))
        produce = asyncio.create_task(producer.run())
        tasks.append(produce)
        origin = time.monotonic()
        run.say(f"producing {cfg.rate:g} ids/s to {', '.join(t for t, _ in lay.sources)}")
        await asyncio.sleep(cfg.lead)
        for fault in cfg.faults:
            await getattr(run, fault)()
            if produce.done():
                break
        producer.stopping.set()
        await produce
        run.say(f"producer stopped: {producer.ids} ids, {producer.stats()}")

        # Drain: until nothing moves for `quiet` s: no output, no engine (re)start, no change
        # of the engine's uncommitted input, the pipeline Ready at the proxy (an outer join's
        # lone records wait a window).
        quiet = cfg.quiet
        if cfg.case == "outer":
            quiet = max(quiet, cfg.window_ms / 1000 + 5)
        stopped = time.monotonic()
        lag: dict[str, int] | None = None
        lag_changed = stopped
        ready_since: float | None = None
        async with LagProbe(bootstrap, name) as probe:
            while True:
                with contextlib.suppress(KafkaError, KeyError):
                    now_lag = await probe.lag()
                    if now_lag != lag:
                        lag, lag_changed = now_lag, time.monotonic()
                state = await asyncio.to_thread(run.state, name)
                if state != "Ready":
                    ready_since = None
                elif ready_since is None:
                    ready_since = time.monotonic()
                moved = max(
                    watcher.last,
                    stopped,
                    run.last_start,
                    lag_changed,
                    ready_since or time.monotonic(),
                )
                if time.monotonic() - moved >= quiet:
                    break
                if time.monotonic() - stopped > cfg.drain_cap:
                    run.say(f"drain cap {cfg.drain_cap:g}s reached")
                    break
                await asyncio.sleep(1.0)
        run.say(
            f"drained {time.monotonic() - stopped:.1f}s: {watcher.count} outputs seen live; "
            f"engine input lag {lag}"
        )
        run.expect_down = True
        assert run.engine is not None
        final = await asyncio.to_thread(run.engine.stop, cfg.term_timeout)
        run.exits.append({"how": "final", "code": final})

        inputs = [await read_topic(bootstrap, topic) for topic, _ in lay.sources]
        outputs = [v for _, v in await read_topic(bootstrap, lay.sink)]
        counted = count(cfg, inputs, outputs)
        gap, gap_at = watcher.longest_gap(origin)
        result.sent, result.lost = counted["sent"], counted["lost"]
        result.duplicated = counted["duplicated"]
        result.duplicated_s = counted["duplicated"] / cfg.rate
        result.longest_gap_s = gap
        result.exits = _exits_summary(run.exits)
        result.notes = _notes(counted, producer, lag)
        result.details = {
            **counted,
            "longest_gap_began_s": round(gap_at, 1),
            "producer": producer.stats(),
            "engine_lag_after_drain": lag,
            "live_outputs": watcher.count,
            "live_consumer_errors": dict(watcher.errors),
            "engine_starts": run.engine_starts,
            "exits": run.exits,
            "config": asdict(cfg),
            "pipeline": name,
            "bootstrap": bootstrap,
        }
        run.say(
            f"sent {result.sent}, lost {result.lost}, duplicated {result.duplicated}, "
            f"longest gap {gap:.1f}s"
        )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if run is not None:
            if run.engine is not None:
                run.expect_down = True
                run.engine.stop(10)
            if run.proxy is not None:
                run.proxy.stop()
            (logs / "events.txt").write_text("\n".join(run.events) + "\n")
        if broker is not None:
            broker.close()
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
            "Chaos suite: for each case x fault, a private broker, the proxy scheduler, one\n"
            "engine, a steady producer of unique ids and a live output consumer; the fault is\n"
            "applied while producing; then lost and duplicated ids are counted against the\n"
            "input topic. Prints a markdown table (and writes --json)."
        ),
        epilog=(
            "cases: chain (3 steps), join (inner), outer (outer join), batch (size 10, 500 ms)\n"
            "faults: kill9 (SIGKILL + immediate restart, --kills times at --kill-gap),\n"
            "        graceful (SIGTERM, down --down s, restart), bounce (broker stop/start,\n"
            "        --bounces times); 'a+b' applies a then b in one run"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cases", type=_csv(CASES), default=list(CASES), help="default: all")
    p.add_argument(
        "--faults", type=_csv(FAULTS, plus=True), default=list(FAULTS), help="default: all"
    )
    p.add_argument("--rate", type=float, default=2000.0, help="ids per second (default 2000)")
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
    engine_src, engine_label = None, "working tree"
    if args.engine_rev:
        engine_src, commit = snapshot(args.engine_rev, root / "engine-src")
        engine_label = f"{args.engine_rev} ({commit[:12]})"
        print(f"chaos: engine and proxy from {engine_label}, extracted to {engine_src}")
    results: list[Result] = []
    try:
        for case in args.cases:
            for fault in args.faults:
                if args.bootstrap and "bounce" in fault.split("+"):
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
                    seed=args.seed,
                )
                logs = root / f"{cfg.label}-{fault}".replace("(", "-").replace(")", "")
                result = await run_one(
                    cfg,
                    bootstrap=args.bootstrap,
                    logs=logs,
                    engine_src=engine_src,
                    engine_label=engine_label,
                )
                results.append(result)
                if args.json:
                    args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    except asyncio.CancelledError:
        print("\nchaos: interrupted; runs completed so far:", file=sys.stderr)
        print(table(results))
        raise
    return results


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results = asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"\nchaos: rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
