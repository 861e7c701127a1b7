"""Durable proxy state and version handover: a restarted proxy keeps its pipelines and uids, an
unchanged reload is a no-op, a changed spec's old uid is deleted once the new one is Ready; with
real engines: the handover, a bounded self-loop, and kill -9 of the proxy under load."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dataflow.proto.seldon.mlops.chainer import PipelineUpdateMessagePipelineOperation
from dataflow.proxy import ProxyServer
from dataflow.proxy.database import StateDatabase, StateError
from tests.integration import proxy_restart
from tests.integration.harness import Proxy, consume, create_topics, engine, produce, wait_until
from tests.integration.test_proxy import CHAIN, FakeEngine

Op = PipelineUpdateMessagePipelineOperation
TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def proxy_on(folder: Path, port: int = 0) -> AsyncIterator[ProxyServer]:
    database = StateDatabase.open(folder)
    proxy = ProxyServer(host="127.0.0.1", port=port, control_port=0, database=database)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        database.close()


async def until(condition: object) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def changed_chain(tmp_path: Path) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN.read_text().replace("INPUT1", "INPUT9"))
    return path


async def test_a_restarted_proxy_keeps_pipelines_uids_and_acks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with proxy_on(state) as proxy:
        [loaded] = proxy.load_paths([CHAIN])
        engine_a = FakeEngine(proxy.port, "engine-a")
        create = await engine_a.next()
        await engine_a.ack(create)
        await until(lambda: str(proxy.store.get("tfsimples").state) == "Ready")  # type: ignore[union-attr]
        before = proxy.store.get("tfsimples").as_dict()  # type: ignore[union-attr]
    await engine_a.close()  # after the proxy: it stopped while the engine was connected
    assert loaded.record.uid == create.uid

    async with proxy_on(state, port=proxy.port) as again:
        record = again.store.get("tfsimples")
        assert record is not None
        after = record.as_dict()
        # what the engines last said is kept; Ready again once they confirm it
        for key in ("version", "uid", "timestamp", "source", "loaded_at", "streams"):
            assert after[key] == before[key], key
        assert after["streams"]["engine-a"]["state"] == "Ready"
        assert after["state"] == "Creating"
        assert after["reason"] == (
            "restored after a proxy restart, waiting for the engines "
            "(last: Ready: pipeline data streams: ready)"
        )
        assert [r.outcome for r in again.load_paths([CHAIN])] == ["unchanged"]
        engine_b = FakeEngine(again.port, "engine-a")
        resent = await engine_b.next()
        assert (resent.op, resent.uid, resent.version) == (Op.Create, create.uid, 1)
        assert resent.timestamp > create.timestamp  # the name's counter went on
        await engine_b.ack(resent)
        await until(lambda: str(again.store.get("tfsimples").state) == "Ready")  # type: ignore[union-attr]
        await engine_b.close()


async def test_a_changed_spec_deletes_the_old_uid_once_the_new_one_is_ready(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with proxy_on(state) as proxy:
        eng = FakeEngine(proxy.port, "engine-a")
        await until(lambda: proxy.store.subscribers == ("engine-a",))
        proxy.load_paths([CHAIN])
        v1 = await eng.next()
        await eng.ack(v1)
        [result] = proxy.load_paths([changed_chain(tmp_path)])
        assert result.outcome == "updated"
        v2 = await eng.next()
        assert (v2.op, v2.version) == (Op.Create, 2) and v2.uid != v1.uid
        assert eng.messages.empty()  # no Delete of v1 while v2 is not Ready
        record = proxy.store.get("tfsimples")
        assert record is not None and [r["state"] for r in record.as_dict()["retiring"]] == [
            "waiting"
        ]
        await eng.close()

    # The proxy restarts in the middle of the handover: v1 still waits for v2.
    async with proxy_on(state, port=proxy.port) as again:
        eng = FakeEngine(again.port, "engine-a")
        v2 = await eng.next()
        assert v2.version == 2
        await eng.ack(v2)
        delete = await eng.next()
        assert (delete.op, delete.uid, delete.version, delete.updates) == (
            Op.Delete,
            v1.uid,
            1,
            [],
        )
        await eng.ack(delete, reason="pipeline removed")
        record = again.store.get("tfsimples")
        await until(lambda: record is not None and record.retiring == [])
        assert record is not None and str(record.state) == "Ready" and record.uid == v2.uid
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{again.control_port}/pipelines/tfsimples") as response,
        ):
            body = await response.json()
        assert body["retiring"] == [] and body["version"] == 2
        await eng.close()


def test_the_database_keeps_every_field(tmp_path: Path) -> None:
    from dataflow.proxy.store import PipelineStore
    from tests.unit.test_proxy_store import ack, seldon

    store = PipelineStore(clock=lambda: 1.5)
    store.subscribe("a")
    v1 = store.load(seldon(clean=True)).sends[0].message
    store.ack(ack(v1, "a"))
    v2 = store.load(seldon(model="m2", clean=True)).sends[0].message
    store.ack(ack(v2, "a", timestamp=99))  # outdated: counted
    store.ack(ack(v2, "a"))  # Ready: v1's Delete goes out
    store.unsubscribe("a")
    store.unload("chain")  # no engine: its Delete waits for one
    database = StateDatabase.open(tmp_path)
    try:
        database.save(store.take_dirty(), store.max_version)
        [(loaded, max_version)] = database.load()
    finally:
        database.close()
    original = store.get("chain")
    assert original is not None and max_version == 2
    assert loaded == original
    assert [(r.definition.uid, r.deleting, r.keep_topics) for r in loaded.retiring] == [
        (v1.uid, True, True),
        (v2.uid, True, False),
    ]
    assert loaded.definition.create_message(5).updates == v2.updates


def test_one_proxy_per_state_folder(tmp_path: Path) -> None:
    first = StateDatabase.open(tmp_path)
    try:
        with pytest.raises(StateError, match=r"is in use by another proxy \(pid \d+\)"):
            StateDatabase.open(tmp_path)
    finally:
        first.close()
    StateDatabase.open(tmp_path).close()  # released
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot use the state folder"):
        StateDatabase.open(tmp_path / "file" / "sub")


def test_a_state_of_another_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    database = StateDatabase.open(tmp_path)
    database.close()
    with sqlite3.connect(tmp_path / "proxy.sqlite3") as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(StateError, match="state schema version 99, this proxy reads 1"):
        StateDatabase.open(tmp_path)


# -- with engines and the broker ----------------------------------------------------------------


@pytest.mark.kafka
def test_version_handover_with_an_engine(tmp_path: Path, bootstrap: str, unique: str) -> None:
    name, ns = f"vh-{unique}", f"vh{unique}"
    path = tmp_path / f"{name}.yaml"

    def write(sink: str) -> None:
        path.write_text(
            f"kind: PipelineUpdate\nname: {name}\nsteps:\n"
            f"  - sources: [seldon.{ns}.model.a.outputs]\n"
            f"    sink: seldon.{ns}.model.{sink}.inputs\n"
        )

    write("b")
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        v1 = proxy.wait_state(name, "Ready", 60)
        write("c")
        proxy.load(path)
        v2 = proxy.wait_state(name, "Ready", 60)
        assert v2["version"] == 2 and v2["uid"] != v1["uid"]
        wait_until(lambda: proxy.pipeline(name)["retiring"] == [], 30, "v1 deleted")  # type: ignore[index]
        out = eng.output()
        assert re.search(
            rf"pipeline {name} v2 \(uid {v2['uid']}\) replaces v1 \(uid {v1['uid']}\); both "
            "process records until the old uid is deleted",
            out,
        ), out[-3000:]
        assert re.search(rf"ack Delete {name} v1 \(uid {v1['uid']}, ts \d+\) ok", out), out[-3000:]
    finally:
        code = eng.stop()
        proxy.stop()
    assert code == 0


@pytest.mark.kafka
async def test_an_allowed_self_loop_is_bounded(tmp_path: Path, bootstrap: str, unique: str) -> None:
    name, ns = f"loop-{unique}", f"loop{unique}"
    topic, errors = f"seldon.{ns}.model.a.inputs", f"seldon.{ns}.errors.errors"
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"kind: PipelineUpdate\nname: {name}\nallowCycles: true\nmaxStepRevisits: 3\n"
        f"errorTopic: {errors}\nsteps:\n  - sources: [{topic}]\n    sink: {topic}\n"
    )
    await create_topics(bootstrap, topic, errors)
    proxy = Proxy(tmp_path).start(path)
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        await asyncio.to_thread(proxy.wait_state, name, "Ready", 60)
        await produce(
            bootstrap,
            topic,
            [(b"r1", proxy_restart.request("r1", 1), [("pipeline", name.encode())])],
        )
        err = await consume(bootstrap, errors, 1, timeout=20, settle=1.0)
        looped = await consume(bootstrap, topic, 100, timeout=2)
    finally:
        eng.stop()
        proxy.stop()
    assert [e.value.decode() for e in err] == [
        f"ERROR: Max step revisits (3) exceeded for request r1 in topic {topic}"
    ]
    assert len(looped) == 5, "the record and 4 visits (counts 0-3); the 5th goes to the errors"


@pytest.mark.kafka
async def test_kill_9_of_the_proxy_under_load_multiplies_nothing(
    tmp_path: Path, bootstrap: str
) -> None:
    outcome = await proxy_restart.run(
        bootstrap,
        tmp_path,
        rate=300,
        restarts=3,
        gap=0.0,
        lead=0.5,
        settle=2.0,
        cli=False,
        say=lambda _: None,
    )
    assert outcome.ok, outcome
    assert len(outcome.statuses) == 1 + 2 * 3
    for line in outcome.statuses:
        if line.startswith("restarted: "):  # the saved state, unless the engine was quicker
            assert re.match(r"restarted: restart-\w+  v1  (Creating  restored after|Ready)", line)
            assert line.endswith("[acked: engine-a Ready]"), line
        else:
            assert re.match(r"(engine back: )?restart-\w+  v1  Ready  ", line), line
    assert outcome.engine_warnings == []


def test_status_lists_retiring_versions() -> None:
    from dataflow.cli.render import streams as _streams

    record = {
        "streams": {"engine-a": {"state": "Ready", "op": "Create"}, "b": {"op": None}},
        "retiring": [{"version": 1, "state": "deleting"}, {"version": 2, "state": "waiting"}],
    }
    assert _streams(record) == (
        "acked: engine-a Ready; waiting: b; retiring: v1 deleting, v2 waiting"
    )
    assert _streams({"streams": {}, "retiring": []}) == "no dataflow engines"
