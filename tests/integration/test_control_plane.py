"""Proxy scheduler and engines over real gRPC on localhost, with the real broker."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, engine, wait_until

pytestmark = pytest.mark.kafka


def pipeline_file(tmp_path: Path, name: str, ns: str, uid: str | None = None) -> Path:
    pinned = f'uid: "{uid}"\nversion: 1\n' if uid else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"kind: PipelineUpdate\nname: {name}\n{pinned}steps:\n"
        f"  - sources: [seldon.{ns}.model.a.outputs]\n"
        f"    sink: seldon.{ns}.model.b.inputs\n"
    )
    return path


def test_create_ack_delete_and_resubscribe(tmp_path: Path, bootstrap: str, unique: str) -> None:
    name = f"cp-{unique}"
    path = pipeline_file(tmp_path, name, f"cp{unique}")
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy, name="engine-a")
    try:
        proxy.load(path)
        ready = proxy.wait_state(name, "Ready", timeout=60)
        ack = ready["streams"]["engine-a"]
        assert ack["success"] is True and ack["op"] == "Create", ready
        assert ready["outdated_acks"] == 0, "the engine echoed the timestamp and set its stream"

        proxy.unload(name)
        gone = proxy.wait_state(name, "Terminated", timeout=30)
        assert gone["streams"]["engine-a"]["op"] == "Delete", gone

        # The proxy goes away and comes back on the same port with the pipeline loaded at start.
        proxy.stop()
        time.sleep(1)
        proxy = Proxy(tmp_path, port=proxy.port, control_port=proxy.control_port)
        restarted = time.monotonic()
        proxy.start(path)
        proxy.wait_state(name, "Ready", timeout=30)
        assert time.monotonic() - restarted < 6 + 3, "resubscribed and acked within the backoff cap"
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0, eng.output()[-3000:]


def test_two_engines_both_receive_and_ack(tmp_path: Path, bootstrap: str, unique: str) -> None:
    name = f"cp2-{unique}"
    path = pipeline_file(tmp_path, name, f"cp2{unique}")
    proxy = Proxy(tmp_path).start()
    engines = [engine(tmp_path, bootstrap, proxy, name=n) for n in ("engine-a", "engine-b")]
    try:
        wait_until(
            lambda: "subscribing" in engines[0].output() and "subscribing" in engines[1].output(),
            20,
            "both engines to subscribe",
        )
        time.sleep(0.5)
        proxy.load(path)

        def both_acked() -> bool:
            p = proxy.pipeline(name)
            streams = p["streams"] if p else {}
            return all(streams.get(n, {}).get("success") is True for n in ("engine-a", "engine-b"))

        wait_until(both_acked, 60, "acks from both engines")
        assert proxy.pipeline(name)["state"] == "Ready"  # type: ignore[index]
    finally:
        codes = [e.stop() for e in engines]
        proxy.stop()
    assert codes == [0, 0]


def test_bad_pipeline_is_refused_with_a_reason(tmp_path: Path, bootstrap: str, unique: str) -> None:
    """A Create the engine cannot run is acked as failed with the reason, and nothing breaks."""
    name = f"cp3-{unique}"
    path = tmp_path / "bad.yaml"
    # A join of a pass-through topic (errors -> outputs) with a model topic cannot be built.
    path.write_text(
        f"kind: PipelineUpdate\nname: {name}\nsteps:\n"
        f"  - sources: [seldon.cp3{unique}.errors.errors, seldon.cp3{unique}.model.a.outputs]\n"
        f"    sink: seldon.cp3{unique}.pipeline.{name}.outputs\n"
    )
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        proxy.load(path)
        failed = proxy.wait_state(name, "Failed", timeout=30)
        assert "can't join" in failed["reason"], failed
        good = pipeline_file(tmp_path, f"cp3b-{unique}", f"cp3{unique}")
        proxy.load(good)
        proxy.wait_state(f"cp3b-{unique}", "Ready", timeout=60)
    finally:
        eng.signal(signal.SIGINT)
        code = eng.wait(30)
        proxy.stop()
    assert code == 0


async def test_unload_with_clean_topics_deletes_changelogs_and_groups(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """`cleanTopicsOnDelete`: the pipeline's own topics (as the scheduler asks: its inputs and
    outputs; model topics are the models'), its steps' changelogs and its consumer groups all
    go, so nothing of it is left to resume from."""
    from aiokafka.admin import AIOKafkaAdminClient

    from dataflow.topology import group_id

    name, m1, m2, m3 = (f"{x}{unique}" for x in ("cl", "ma", "mb", "mc"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"
        f"metadata: {{name: {name}}}\nspec:\n  dataflow: {{cleanTopicsOnDelete: true}}\n"
        f"  steps:\n    - name: {m1}\n    - name: {m2}\n"
        f"    - name: {m3}\n      inputs: [{m1}, {m2}]\n      joinWindowMs: 1000\n"
        f"  output: {{steps: [{m3}]}}\n"
    )
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy, name="engine-a")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    async def snapshot(prefix: str) -> tuple[set[str], set[str], set[str]]:
        topics = set(await admin.list_topics())
        groups = {g for g, _ in await admin.list_consumer_groups() if g.startswith(prefix)}
        own = {t for t in topics if f".pipeline.{name}." in t}
        return own, {t for t in topics if t.startswith(prefix)}, groups

    try:
        proxy.load(path)
        ready = proxy.wait_state(name, "Ready", timeout=60)
        prefix = group_id("seldon-dataflow", ready["uid"], 0)[: -len("s0")]
        before = await snapshot(prefix)
        proxy.unload(name)
        proxy.wait_state(name, "Terminated", timeout=30)
        after = before
        for _ in range(100):
            after = await snapshot(prefix)
            if not any(after):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
        code = eng.stop()
        proxy.stop()
    own, changelogs, groups = before
    assert own and groups and changelogs, before
    assert changelogs <= {f"{g}-changelog" for g in groups}
    assert after == (set(), set(), set()), f"left after unload: {after}"
    assert code == 0
