"""Issue 10's acceptance: kill -9 the proxy under load and restart it with `--pipelines`.

A Seldon `Pipeline` of three steps without models (`a` reads the pipeline's inputs, `b` reads
`a.inputs`, `c` reads `b.inputs`), one engine, a producer of unique keys at a steady rate into
the pipeline's inputs topic. While it produces, the proxy is killed with SIGKILL and started
again on the same ports, state folder and `--pipelines` file, `restarts` times; after each
restart the run waits until the pipeline is Ready again under the same uid and records what
`python -m dataflow.proxy status` prints. Then every hop is read back from the beginning: each
must hold exactly one record per key sent (no copy of the pipeline was created, nothing was
replayed).

    python -m tests.integration.proxy_restart [--rate 2000] [--restarts 3] [--gap 5]
        [--bootstrap 127.0.0.1:9092] [--logs DIR]

Used by `tests/integration/test_proxy_state.py` with a lower rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.harness import REPO, Process, Proxy, engine, wait_until


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(body)) + body


def request(rid: str, number: int) -> bytes:
    """ModelInferRequest{id, inputs: [{x, INT64, [1, 1], int64_contents: [number]}]}."""
    contents = bytes((0x18,)) + _varint(number)  # int64_contents (3), one unpacked value
    tensor = _field(0x0A, b"x") + _field(0x12, b"INT64") + _field(0x1A, b"\x01\x01")
    return _field(0x1A, rid.encode()) + _field(0x2A, tensor + _field(0x2A, contents))


@dataclass
class Outcome:
    """What one run measured."""

    sent: int = 0
    hops: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)
    uids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    engine_warnings: list[str] = field(default_factory=list)
    logs: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.sent > 0
            and all(n == self.sent for n in self.hops.values())
            and all(n == self.sent for n in self.distinct.values())
            and len(set(self.uids)) == 1
        )


def spec_text(name: str, ns: str) -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"
        f"metadata:\n  name: {name}\n  namespace: {ns}\n"
        "spec:\n  steps:\n    - name: a\n"
        "    - name: b\n      inputs: [a.inputs]\n"
        "    - name: c\n      inputs: [b.inputs]\n"
    )


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    """The keys of every record of `topic`, from the beginning to its end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    keys: list[bytes] = []
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500, max_records=20000)
            for records in batch.values():
                keys.extend(r.key or b"" for r in records)
    finally:
        await consumer.stop()
    return keys


async def count_until(
    bootstrap: str, topic: str, target: int, timeout: float, settle: float
) -> int:
    """Read `topic` from the beginning until `target` records (or `timeout`), then `settle` s
    more (a copy of the pipeline would keep writing); returns how many were read."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    count = 0
    try:
        deadline = time.monotonic() + timeout
        while count < target and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=20000)
            count += sum(len(records) for records in batch.values())
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            batch = await consumer.getmany(timeout_ms=200, max_records=20000)
            count += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return count


def api_status(proxy: Proxy) -> str:
    """What `status` prints, from the control API (no CLI process: faster)."""
    rows = []
    for p in proxy.status():
        acked = ", ".join(f"{n} {s['state']}" for n, s in p["streams"].items() if s["op"])
        rows.append(f"{p['name']}  v{p['version']}  {p['state']}  {p['reason']}  [acked: {acked}]")
    return "; ".join(rows) or "no pipelines"


def status_line(proxy: Proxy) -> str:
    """What `python -m dataflow.proxy status` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "dataflow.proxy", "status", "--url", proxy.url],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    return (result.stdout + result.stderr).strip()


def ready_again(proxy: Proxy, name: str, after: int) -> dict[str, Any] | None:
    """The pipeline once Ready in an iteration later than `after` (the engine acked it)."""
    try:
        record = proxy.pipeline(name)
    except OSError:
        return None
    if record and record["state"] == "Ready" and record["timestamp"] > after:
        return record
    return None


async def run(
    bootstrap: str,
    logs: Path,
    *,
    rate: float = 2000.0,
    restarts: int = 3,
    gap: float = 5.0,
    lead: float = 2.0,
    settle: float = 3.0,
    cli: bool = True,
    say: Any = print,
) -> Outcome:
    """One acceptance run (see the module docstring); the processes are stopped at the end.

    `cli` False reads the status from the control API instead of running the CLI.
    """
    status = status_line if cli else api_status
    tag = uuid.uuid4().hex[:8]
    name, ns = f"restart-{tag}", f"pr{tag}"
    spec = logs / f"{name}.yaml"
    spec.write_text(spec_text(name, ns))
    hops = {
        "pipeline inputs (sent)": f"seldon.{ns}.pipeline.{name}.inputs",
        "a.inputs": f"seldon.{ns}.model.a.inputs",
        "b.inputs": f"seldon.{ns}.model.b.inputs",
        "c.inputs": f"seldon.{ns}.model.c.inputs",
    }
    outcome = Outcome(logs=str(logs))
    proxy = Proxy(logs).start(spec)
    eng: Process | None = None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    producing: asyncio.Task[None] | None = None
    try:
        eng = engine(logs, bootstrap, proxy, name="engine-a", log_level_app="INFO")
        first = await asyncio.to_thread(proxy.wait_state, name, "Ready", 90)
        outcome.uids.append(first["uid"])
        outcome.statuses.append(await asyncio.to_thread(status, proxy))
        say(f"pipeline {name} Ready, uid {first['uid']}; producing {rate:g}/s")

        await producer.start()
        stop = asyncio.Event()
        sent = 0

        async def produce() -> None:
            nonlocal sent
            t0 = time.monotonic()
            futures = []
            while not stop.is_set():
                due = int((time.monotonic() - t0) * rate)
                while sent < due:
                    key = f"k-{sent:08d}"
                    futures.append(
                        await producer.send(
                            hops["pipeline inputs (sent)"],
                            request(key, sent),
                            key=key.encode(),
                            headers=[("pipeline", name.encode())],
                        )
                    )
                    sent += 1
                await asyncio.sleep(0.005)
            await asyncio.gather(*futures)

        producing = asyncio.create_task(produce())
        await asyncio.sleep(lead)
        for k in range(restarts):
            assert proxy.process is not None
            before = await asyncio.to_thread(proxy.pipeline, name)
            assert before is not None
            proxy.process.signal(signal.SIGKILL)
            await asyncio.to_thread(proxy.process.wait, 10)
            t0 = time.monotonic()
            proxy = Proxy(logs, port=proxy.port, control_port=proxy.control_port)
            await asyncio.to_thread(proxy.start, spec)
            # Before the engine is back: the saved state.
            restored = await asyncio.to_thread(status, proxy)
            after = await asyncio.to_thread(
                wait_until,
                functools.partial(ready_again, proxy, name, before["timestamp"]),
                60,
                "the pipeline Ready again",
            )
            outcome.restart_s.append(round(time.monotonic() - t0, 2))
            outcome.uids.append(after["uid"])
            line = await asyncio.to_thread(status, proxy)
            outcome.statuses += [f"restarted: {restored}", f"engine back: {line}"]
            say(f"kill -9 #{k + 1}: restarted, status: {restored}")
            say(f"  Ready again after {outcome.restart_s[-1]} s; status: {line}")
            await asyncio.sleep(gap)
        stop.set()
        await producing
        outcome.sent = sent
        say(f"producer stopped after {sent} records; draining")
        await count_until(bootstrap, hops["c.inputs"], sent, timeout=60, settle=settle)
        for label, topic in hops.items():
            keys = await read_all(bootstrap, topic)
            outcome.hops[label] = len(keys)
            outcome.distinct[label] = len(Counter(keys))
        outcome.engine_warnings = [
            line for line in eng.output().splitlines() if "of that name runs" in line
        ]
    finally:
        if producing is not None and not producing.done():
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producing
        await producer.stop()
        if eng is not None:
            eng.stop()
        proxy.stop()
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.integration.proxy_restart")
    p.add_argument("--rate", type=float, default=2000.0, help="records per second (2000)")
    p.add_argument("--restarts", type=int, default=3, help="kill -9 and restarts (3)")
    p.add_argument("--gap", type=float, default=5.0, help="seconds between restarts (5)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--logs", type=Path, default=None)
    args = p.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="proxy-restart-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs in {logs}")
    outcome = asyncio.run(
        run(args.bootstrap, logs, rate=args.rate, restarts=args.restarts, gap=args.gap)
    )
    print(json.dumps({**asdict(outcome), "ok": outcome.ok}, indent=2))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
