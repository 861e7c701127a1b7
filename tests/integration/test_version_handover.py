"""A new pipeline version takes over where the old one stopped: nothing lost, no history replayed.

Through the proxy, on the real broker: a pipeline under steady traffic gets version 2, then
(with no traffic) version 3. Every request is answered; the duplicates are at most what the two
versions processed side by side; a version loaded with no traffic outputs nothing (no replay);
the replaced versions' groups and changelogs are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from dataflow.proto.inference import ModelInferResponse
from tests.integration.harness import Proxy, consume, create_topics, engine, wait_until
from tests.integration.test_stateful_steps import response

pytestmark = pytest.mark.kafka

RATE = 500  # requests per second


def _spec(name: str, ns: str, version: int, join: bool) -> str:
    """Version 2 selects a tensor in the middle of the pipeline, version 3 also sets a window
    on its last step: changes that leave the outputs as they were."""
    model = f"seldon.{ns}.model"
    out = f"seldon.{ns}.pipeline.{name}.outputs"
    select = ", tensor: x" if version >= 2 else ""
    window = "    joinWindowMs: 5000\n" if version >= 3 else ""
    if join:
        steps = (
            f"  - sources: [{model}.a.outputs, {model}.b.outputs]\n"
            f"    sink: {model}.c.outputs\n    inputJoinType: inner\n    joinWindowMs: 1000\n"
            f"  - sources: [{{topic: {model}.c.outputs{select}}}]\n    sink: {out}\n{window}"
        )
    else:
        steps = (
            f"  - sources: [{model}.a.outputs]\n    sink: {model}.b.outputs\n"
            f"  - sources: [{{topic: {model}.b.outputs{select}}}]\n"
            f"    sink: {model}.c.outputs\n"
            f"  - sources: [{model}.c.outputs]\n    sink: {out}\n{window}"
        )
    return f"kind: PipelineUpdate\nname: {name}\nsteps:\n{steps}"


class Traffic:
    """Unique ids at RATE a second to the sources, until stopped."""

    def __init__(self, bootstrap: str, topics: list[str], pipeline: str) -> None:
        self.bootstrap, self.topics, self.pipeline = bootstrap, topics, pipeline
        self.sent: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, prefix: str) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(prefix), name=f"traffic:{prefix}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self, prefix: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            t0, n = time.monotonic(), 0
            while not self._stop.is_set():
                rid = f"{prefix}-{n}"
                value = response(rid, ("x", float(n)))
                ts = int(time.time() * 1000)
                for topic in self.topics:
                    await producer.send(
                        topic,
                        value,
                        key=rid.encode(),
                        headers=[("pipeline", self.pipeline.encode())],
                        timestamp_ms=ts,
                    )
                self.sent.append(rid)
                n += 1
                ahead = t0 + n / RATE - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await producer.flush()
        finally:
            await producer.stop()


async def _settled(bootstrap: str, topic: str, at_least: int) -> list[str]:
    records = await consume(bootstrap, topic, at_least, timeout=60, settle=4.0)
    return [ModelInferResponse().parse(r.value).id for r in records]


def _replaced(proxy: Proxy, name: str, version: int) -> None:
    """Wait until `version` is Ready and the versions before it are deleted."""

    def done() -> bool:
        p = proxy.pipeline(name)
        return (
            p is not None
            and p["version"] == version
            and p["state"] == "Ready"
            and not p["retiring"]
        )

    wait_until(done, 60, f"v{version} Ready, older versions deleted")


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("join", [False, True], ids=["chain", "join"])
async def test_version_updates_under_traffic_lose_nothing_and_replay_nothing(
    tmp_path: Path, bootstrap: str, unique: str, join: bool
) -> None:
    ns, name = f"vh{unique}", f"vh-{unique}"
    model = f"seldon.{ns}.model"
    sources = [f"{model}.a.outputs", f"{model}.b.outputs"] if join else [f"{model}.a.outputs"]
    out = f"seldon.{ns}.pipeline.{name}.outputs"
    await create_topics(bootstrap, *sources, f"{model}.b.outputs", f"{model}.c.outputs", out)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(_spec(name, ns, 1, join))
    proxy = Proxy(tmp_path).start(spec)
    eng = engine(tmp_path, bootstrap, proxy)
    traffic = Traffic(bootstrap, sources, name)
    try:
        proxy.wait_state(name, "Ready", timeout=60)
        uids = [proxy.pipeline(name)["uid"]]  # type: ignore[index]
        traffic.start("t1")
        await asyncio.sleep(3)
        spec.write_text(_spec(name, ns, 2, join))  # version 2, under traffic
        proxy.load(spec)
        _replaced(proxy, name, 2)
        await asyncio.sleep(3)
        await traffic.stop()
        answered = await _settled(bootstrap, out, len(traffic.sent))
        # Version 3 with no traffic: nothing may come out (no record re-processed).
        uids.append(proxy.pipeline(name)["uid"])  # type: ignore[index]
        spec.write_text(_spec(name, ns, 3, join))
        proxy.load(spec)
        _replaced(proxy, name, 3)
        after_v3 = await _settled(bootstrap, out, len(answered))
        # And version 3 answers new requests.
        traffic.start("t3")
        await asyncio.sleep(2)
        await traffic.stop()
        final = await _settled(bootstrap, out, len(answered) + 1)
        groups = await _groups(bootstrap)
    finally:
        await traffic.stop()
        eng.stop()
        proxy.stop()
    log = eng.output()
    counts = Counter(final)
    lost = set(traffic.sent) - set(counts)
    duplicated = sum(c - 1 for c in counts.values())
    assert not lost, f"{len(lost)} of {len(traffic.sent)} never answered: {sorted(lost)[:5]}"
    assert len(after_v3) == len(answered), "version 3 re-processed records older than it"
    # Side by side, both versions may answer what arrived before v2 was Ready: a few seconds.
    assert duplicated <= RATE * 10, duplicated
    assert "takes over from" in log
    assert "deleted the" in log, "the replaced versions' groups and changelogs stay"
    for uid in uids:  # versions 1 and 2: their groups are gone
        digest = uid if len(uid) <= 16 else hashlib.md5(uid.encode()).hexdigest()
        assert not [g for g in groups if f"-{digest}-" in g], uid
    print(f"sent {len(traffic.sent)}, answered {len(counts)}, duplicated {duplicated}")
