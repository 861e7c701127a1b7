"""The proxy scheduler's pure logic: versions, iterations, expected streams, acks, states."""

from __future__ import annotations

import itertools
import re

import pytest

from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)
from dataflow.proxy.records import (
    NO_ENGINES,
    Ack,
    PipelineRecord,
    PipelineState,
    Send,
    StreamState,
    UnknownPipelineError,
    new_uid,
)
from dataflow.proxy.store import PipelineStore
from dataflow.specs import PipelineSpec, parse_spec

Op = PipelineUpdateMessagePipelineOperation


def seldon(name: str = "chain", model: str = "m1", clean: bool = False) -> PipelineSpec:
    dataflow = "  dataflow: {cleanTopicsOnDelete: true}\n" if clean else ""
    text = (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\n"
        f"metadata: {{name: {name}}}\nspec:\n  steps: [{{name: {model}}}]\n{dataflow}"
    )
    return parse_spec(text, f"{name}.yaml")


def explicit(uid: str = "1234", sink: str = "b.inputs", version: int = 1) -> PipelineSpec:
    text = (
        f"kind: PipelineUpdate\nname: demo\nversion: {version}\nuid: '{uid}'\n"
        f"steps: [{{sources: [a.outputs], sink: {sink}}}]\n"
    )
    return parse_spec(text, "demo.yaml")


NOW = 1_700_000_000.0


@pytest.fixture
def store() -> PipelineStore:
    counter = itertools.count(1)
    return PipelineStore(uid_factory=lambda: f"uid{next(counter)}", clock=lambda: NOW)


def ack(
    message: PipelineUpdateMessage,
    stream: str,
    success: bool = True,
    op: int | None = None,
    reason: str = "pipeline data streams: ready",
    **overrides: object,
) -> Ack:
    fields: dict[str, object] = {
        "pipeline": message.pipeline,
        "version": message.version,
        "uid": message.uid,
        "timestamp": message.timestamp,
        "stream": stream,
        "op": int(message.op) if op is None else op,
        "success": success,
        "reason": reason,
    }
    fields.update(overrides)
    return Ack(**fields)  # type: ignore[arg-type]


def state(record: PipelineRecord | None) -> PipelineState:
    """The record's state, read through a call so that type narrowing does not stick."""
    assert record is not None
    return record.state


def only(sends: list[Send], subscriber: str) -> PipelineUpdateMessage:
    messages = [s.message for s in sends if s.subscriber == subscriber]
    assert len(messages) == 1, sends
    return messages[0]


def test_new_uid_looks_like_an_xid() -> None:
    uids = {new_uid() for _ in range(100)}
    assert len(uids) == 100
    assert all(re.fullmatch(r"[0-9a-v]{20}", u) for u in uids)
    # time first: later seconds sort later, like xids
    assert new_uid(1_700_000_000) < new_uid(1_800_000_000)
    assert new_uid(0).startswith("000000")


def test_load_without_engines_waits(store: PipelineStore) -> None:
    result = store.load(seldon())
    assert result.outcome == "created" and result.sends == []
    record = result.record
    assert (record.name, record.version, record.uid, record.timestamp) == ("chain", 1, "uid1", 1)
    assert state(record) is PipelineState.CREATING
    assert record.reason == NO_ENGINES and record.summary() == NO_ENGINES


def test_subscribe_sends_current_pipelines_and_ack_makes_ready(store: PipelineStore) -> None:
    store.load(seldon())
    sends = store.subscribe("engine-a")
    message = only(sends, "engine-a")
    assert message.op == Op.Create and message.timestamp == 2
    assert message.pipeline == "chain" and message.uid == "uid1" and message.version == 1
    assert len(message.updates) == 2  # the model step and the error step
    record = store.get("chain")
    assert record is not None and record.streams["engine-a"].state is StreamState.UNKNOWN
    result = store.ack(ack(message, "engine-a"))
    assert result.accepted and state(record) is PipelineState.READY
    assert record.reason == "pipeline data streams: ready"
    assert result.describe() == (
        "ack from engine-a: chain v1 (uid uid1, ts 2) Create ok: pipeline data streams: ready"
        " -> Ready (1/1 ready, 0/1 creating, 0/1 failed)"
    )


def test_load_sends_create_to_every_subscriber(store: PipelineStore) -> None:
    assert store.subscribe("engine-a") == []
    assert store.subscribe("engine-b") == []
    sends = store.load(seldon()).sends
    assert [s.subscriber for s in sends] == ["engine-a", "engine-b"]
    message = sends[0].message
    assert message is sends[1].message and message.timestamp == 1
    record = store.get("chain")
    assert record is not None
    assert record.reason == "Create sent to engine-a, engine-b"
    store.ack(ack(message, "engine-a"))
    assert state(record) is PipelineState.CREATING
    assert record.summary() == "1/2 ready, 1/2 creating, 0/2 failed"
    store.ack(ack(message, "engine-b"))
    assert state(record) is PipelineState.READY


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ((True, False), PipelineState.READY),  # >= 1 ok and none unknown
        ((False, True), PipelineState.READY),
        ((False, False), PipelineState.FAILED),  # all failed
    ],
)
def test_create_acks_from_two_streams(
    store: PipelineStore, results: tuple[bool, bool], expected: PipelineState
) -> None:
    store.subscribe("a")
    store.subscribe("b")
    message = store.load(seldon()).sends[0].message
    record = store.ack(ack(message, "a", results[0])).record
    assert record is not None and state(record) is PipelineState.CREATING
    store.ack(ack(message, "b", results[1], reason="failed to create all pipeline steps"))
    assert state(record) is expected


def test_second_subscriber_gets_the_pipeline_and_a_new_iteration(store: PipelineStore) -> None:
    store.subscribe("engine-a")
    first = store.load(seldon()).sends[0].message
    store.ack(ack(first, "engine-a"))
    sends = store.subscribe("engine-b")
    assert sorted(s.subscriber for s in sends) == ["engine-a", "engine-b"]
    second = only(sends, "engine-b")
    assert second.op == Op.Create and second.timestamp == first.timestamp + 1
    record = store.get("chain")
    assert record is not None and state(record) is PipelineState.CREATING
    assert set(record.streams) == {"engine-a", "engine-b"}
    # engine-a's ack of the previous iteration no longer counts
    assert not store.ack(ack(first, "engine-a")).accepted
    store.ack(ack(second, "engine-a"))
    store.ack(ack(second, "engine-b"))
    assert state(record) is PipelineState.READY


def test_outdated_acks_are_recorded_and_ignored(store: PipelineStore) -> None:
    store.subscribe("engine-a")
    message = store.load(seldon()).sends[0].message
    record = store.get("chain")
    assert record is not None
    cases = {
        "timestamp 0 is not the current 1": ack(message, "engine-a", timestamp=0),
        "stream 'ghost' is not expected (expected: engine-a)": ack(message, "ghost"),
        "uid other is not the current version's (uid1)": ack(message, "engine-a", uid="other"),
        "Delete ack while the pipeline is being created": ack(message, "engine-a", op=Op.Delete),
    }
    for why, outdated in cases.items():
        result = store.ack(outdated)
        assert not result.accepted and result.note == why
        assert result.describe().endswith(f"-> ignored (outdated: {why})")
    assert state(record) is PipelineState.CREATING
    assert record.streams["engine-a"].state is StreamState.UNKNOWN
    assert record.outdated == 4
    assert record.last_outdated == "Delete ack while the pipeline is being created"
    unknown = store.ack(ack(message, "engine-a", pipeline="nope"))
    assert not unknown.accepted and unknown.record is None
    assert unknown.note == "unknown pipeline 'nope'"


def test_runtime_ready_and_rebalance_acks(store: PipelineStore) -> None:
    store.subscribe("a")
    message = store.load(seldon()).sends[0].message
    record = store.get("chain")
    assert record is not None
    store.ack(ack(message, "a"))
    store.ack(ack(message, "a", op=Op.Rebalance, reason="pipeline data streams: rebalancing"))
    assert state(record) is PipelineState.REBALANCING
    assert record.streams["a"].state is StreamState.REBALANCING
    assert record.summary() == "0/1 ready, 0/1 creating, 0/1 failed, 1/1 rebalancing"
    store.ack(ack(message, "a", op=Op.Ready))
    assert state(record) is PipelineState.READY
    store.ack(ack(message, "a", False, op=Op.Ready, reason="kafka streams state: ERROR"))
    assert state(record) is PipelineState.FAILED and record.reason == "kafka streams state: ERROR"
    store.ack(ack(message, "a", op=Op.Ready))
    assert state(record) is PipelineState.READY


def test_runtime_failure_on_one_replica_fails_the_pipeline(store: PipelineStore) -> None:
    store.subscribe("a")
    store.subscribe("b")
    message = store.load(seldon()).sends[0].message
    store.ack(ack(message, "a"))
    store.ack(ack(message, "b"))
    result = store.ack(ack(message, "b", False, op=Op.Ready))
    assert result.record is not None and state(result.record) is PipelineState.FAILED


def test_unload_sends_delete_then_terminated(store: PipelineStore) -> None:
    store.subscribe("a")
    store.subscribe("b")
    create = store.load(seldon()).sends[0].message
    result = store.unload("chain")
    assert result.outcome == "terminating"
    assert [s.subscriber for s in result.sends] == ["a", "b"]
    delete = result.sends[0].message
    assert delete.op == Op.Delete and delete.updates == []
    assert delete.timestamp == create.timestamp + 1 and delete.uid == create.uid
    record = result.record
    assert state(record) is PipelineState.TERMINATING and record.operation == "Delete"
    # a late Create ack is outdated
    assert not store.ack(ack(create, "a")).accepted
    assert not store.ack(ack(delete, "a", op=Op.Ready)).accepted
    store.ack(ack(delete, "a", reason="pipeline removed"))
    assert state(record) is PipelineState.TERMINATING
    assert record.summary() == "1/2 terminated, 1/2 terminating, 0/2 failed"
    store.ack(ack(delete, "b", reason="pipeline removed"))
    assert state(record) is PipelineState.TERMINATED
    assert store.unload("chain").outcome == "already terminated"
    # a terminated pipeline is not sent again when engines come and go
    assert store.subscribe("c") == []


def test_failed_delete_and_unload_again(store: PipelineStore) -> None:
    store.subscribe("a")
    store.load(seldon())
    delete = store.unload("chain").sends[0].message
    assert store.unload("chain").outcome == "already terminating"
    store.ack(ack(delete, "a", False, reason="kafka streams topic deletion error"))
    record = store.get("chain")
    assert record is not None and state(record) is PipelineState.FAILED
    again = store.unload("chain")
    assert again.outcome == "terminating" and again.sends[0].message.timestamp == 3


def test_unload_without_engines_terminates_at_once(store: PipelineStore) -> None:
    store.load(seldon())
    result = store.unload("chain")
    assert result.outcome == "terminated" and result.sends == []
    assert result.record.reason == NO_ENGINES


def test_unload_unknown(store: PipelineStore) -> None:
    with pytest.raises(UnknownPipelineError) as info:
        store.unload("nope")
    assert str(info.value) == "unknown pipeline 'nope'"


def test_clean_topics_on_delete(store: PipelineStore) -> None:
    store.subscribe("a")
    store.load(seldon(clean=True))
    delete = store.unload("chain").sends[0].message
    assert [u.sink.topic_name for u in delete.updates] == ["seldon.default.pipeline.chain.outputs"]


def test_versions_unchanged_updated_retried(store: PipelineStore) -> None:
    store.subscribe("a")
    v1 = store.load(seldon()).sends[0].message
    store.ack(ack(v1, "a"))
    same = store.load(seldon())
    assert same.outcome == "unchanged" and same.sends == []
    changed = store.load(seldon(model="m2"))
    assert changed.outcome == "updated"
    record = changed.record
    assert (record.version, record.uid) == (2, "uid2")
    # only the new version is created; the old one runs on until the new one is Ready
    [create] = (s.message for s in changed.sends)
    assert (create.op, create.uid, create.version) == (Op.Create, "uid2", 2)
    assert create.timestamp == v1.timestamp + 1
    assert [(r.definition.uid, r.deleting) for r in record.retiring] == [("uid1", False)]
    store.ack(ack(create, "a", False, reason="failed to create all pipeline steps"))
    assert state(record) is PipelineState.FAILED
    assert [r.definition.uid for r in record.retiring] == ["uid1"]  # a failed version: old kept
    retried = store.load(seldon(model="m2"))
    assert retried.outcome == "retried" and retried.record is record
    again = only(retried.sends, "a")
    assert again.timestamp == create.timestamp + 1
    ready = store.ack(ack(again, "a"))
    assert state(record) is PipelineState.READY
    [delete] = (s.message for s in ready.sends)
    assert (delete.op, delete.uid, delete.version, delete.updates) == (Op.Delete, "uid1", 1, [])
    assert delete.timestamp == again.timestamp
    assert ready.note.endswith("; Delete of v1 sent")
    done = store.ack(ack(delete, "a", reason="pipeline removed"))
    assert done.accepted and done.note == "retiring v1 (uid uid1) deleted from every engine"
    assert record.retiring == [] and state(record) is PipelineState.READY


def test_pinned_version_and_uid(store: PipelineStore) -> None:
    store.subscribe("a")
    message = store.load(explicit()).sends[0].message
    assert (message.version, message.uid) == (1, "1234")
    same_uid = store.load(explicit(sink="c.inputs"))
    assert same_uid.outcome == "updated" and same_uid.warning is not None
    assert "keeps uid '1234'" in same_uid.warning
    assert [s.message.op for s in same_uid.sends] == [Op.Create]  # never Delete the same uid
    assert same_uid.record.retiring == []
    new = store.load(explicit(uid="5678", sink="d.inputs", version=2))
    assert [(s.message.op, s.message.uid) for s in new.sends] == [(Op.Create, "5678")]
    ready = store.ack(ack(new.sends[0].message, "a"))
    assert [(s.message.op, s.message.uid) for s in ready.sends] == [(Op.Delete, "1234")]


def test_reload_after_termination_is_a_new_version(store: PipelineStore) -> None:
    store.load(seldon())
    store.unload("chain")
    result = store.load(seldon())
    assert result.outcome == "created"
    assert (result.record.version, result.record.uid, result.record.timestamp) == (2, "uid2", 3)


def test_unsubscribe_rebalances_the_rest(store: PipelineStore) -> None:
    store.subscribe("a")
    store.subscribe("b")
    message = store.load(seldon()).sends[0].message
    store.ack(ack(message, "a"))
    store.ack(ack(message, "b"))
    sends = store.unsubscribe("b")
    assert [s.subscriber for s in sends] == ["a"]
    record = store.get("chain")
    assert record is not None and state(record) is PipelineState.CREATING
    assert set(record.streams) == {"a"}
    assert store.unsubscribe("b") == []
    assert store.unsubscribe("a") == []
    assert state(record) is PipelineState.CREATING and record.reason == NO_ENGINES


def test_last_engine_leaving_finishes_a_termination(store: PipelineStore) -> None:
    store.subscribe("a")
    store.load(seldon())
    store.unload("chain")
    store.unsubscribe("a")
    record = store.get("chain")
    assert record is not None and state(record) is PipelineState.TERMINATED


def test_resubscription_of_a_name_keeps_one_subscriber(store: PipelineStore) -> None:
    store.subscribe("a")
    store.load(seldon())
    sends = store.subscribe("a")
    assert store.subscribers == ("a",)
    assert only(sends, "a").timestamp == 2


def test_ack_from_message_and_json_shape(store: PipelineStore) -> None:
    store.subscribe("engine-a")
    message = store.load(explicit()).sends[0].message
    status = PipelineUpdateStatusMessage(
        update=PipelineUpdateMessage(
            op=Op.Create,
            pipeline="demo",
            version=1,
            uid="1234",
            timestamp=message.timestamp,
            stream="engine-a",
        ),
        success=True,
        reason="pipeline data streams: ready",
    )
    result = store.ack(Ack.from_message(status))
    assert result.accepted
    assert store.records()[0].as_dict() == {
        "name": "demo",
        "version": 1,
        "uid": "1234",
        "timestamp": 1,
        "operation": "Create",
        "state": "Ready",
        "reason": "pipeline data streams: ready",
        "summary": "1/1 ready, 0/1 creating, 0/1 failed",
        "streams": {
            "engine-a": {
                "state": "Ready",
                "op": "Create",
                "success": True,
                "reason": "pipeline data streams: ready",
            }
        },
        "outdated_acks": 0,
        "last_outdated": None,
        "source": "demo.yaml",
        "loaded_at": NOW,
        "updated_at": NOW,
        "retiring": [],
    }


def test_timestamps_are_per_name_and_never_reset(store: PipelineStore) -> None:
    store.load(seldon("x"))
    store.load(seldon("y"))
    store.subscribe("a")
    x, y = store.get("x"), store.get("y")
    assert x is not None and y is not None
    assert (x.timestamp, y.timestamp) == (2, 2)
    store.unload("x")
    store.load(seldon("x"))
    x = store.get("x")
    assert x is not None and x.timestamp == 4 and y.timestamp == 2
    assert [r.name for r in store.records()] == ["x", "y"]


def test_retiring_versions_wait_for_every_engine_and_are_resent_on_rebalance(
    store: PipelineStore,
) -> None:
    store.subscribe("a")
    store.subscribe("b")
    v1 = store.load(seldon()).sends[0].message
    v2 = store.load(seldon(model="m2")).sends[0].message
    store.ack(ack(v2, "a"))
    assert store.ack(ack(v2, "b")).sends[0].message.uid == v1.uid  # Ready: Delete of v1
    record = store.get("chain")
    assert record is not None
    sends = store.subscribe("c")  # a rebalance: Create of v2 and the Delete of v1 again
    assert sorted((s.subscriber, s.message.op.name, s.message.uid) for s in sends) == [
        ("a", "Create", "uid2"),
        ("a", "Delete", "uid1"),
        ("b", "Create", "uid2"),
        ("b", "Delete", "uid1"),
        ("c", "Create", "uid2"),
        ("c", "Delete", "uid1"),
    ]
    delete = next(s.message for s in sends if s.message.op == Op.Delete)
    assert set(record.retiring[0].streams) == {"a", "b", "c"}
    for stream in ("a", "b"):
        assert store.ack(ack(delete, stream, reason="pipeline removed")).accepted
    failed = store.ack(ack(delete, "c", False, reason="kafka topic deletion error"))
    assert failed.accepted and failed.note == "retiring v1 (uid uid1): 2/3 deleted"
    assert record.retiring[0].as_dict()["streams"]["c"]["state"] == "FailedTerminating"
    again = [s for s in store.unsubscribe("c") if s.message.op == Op.Delete]
    assert [s.subscriber for s in again] == ["a", "b"]


def test_unload_deletes_a_waiting_retiree_too(store: PipelineStore) -> None:
    store.subscribe("a")
    store.load(seldon())
    store.load(seldon(model="m2"))
    sends = store.unload("chain").sends
    assert [(s.message.op, s.message.uid) for s in sends] == [
        (Op.Delete, "uid2"),
        (Op.Delete, "uid1"),
    ]


def test_a_delete_no_engine_received_is_sent_when_one_subscribes(store: PipelineStore) -> None:
    store.load(seldon(clean=True))
    assert store.unload("chain").outcome == "terminated"
    record = store.get("chain")
    assert record is not None and [r.deleting for r in record.retiring] == [True]
    delete = only(store.subscribe("a"), "a")
    assert delete.op == Op.Delete and delete.uid == "uid1"
    assert [u.sink.topic_name for u in delete.updates] == ["seldon.default.pipeline.chain.outputs"]
    store.ack(ack(delete, "a", reason="pipeline removed"))
    assert record.retiring == [] and state(record) is PipelineState.TERMINATED
    assert store.subscribe("b") == []


def test_a_reload_of_the_same_pinned_uid_drops_its_pending_delete(store: PipelineStore) -> None:
    store.load(explicit())
    store.unload("demo")
    result = store.load(explicit())
    assert result.outcome == "created" and result.record.retiring == []
    assert [s.message.op for s in store.subscribe("a")] == [Op.Create]


def test_dirty_records_and_restore(store: PipelineStore) -> None:
    assert store.take_dirty() == []
    store.subscribe("a")
    message = store.load(seldon()).sends[0].message
    assert [r.name for r in store.take_dirty()] == ["chain"]
    assert store.take_dirty() == []
    store.ack(ack(message, "a"))
    [record] = store.take_dirty()
    store.keep_dirty([record])
    assert store.take_dirty() == [record]

    restarted = PipelineStore(uid_factory=lambda: "fresh", clock=lambda: NOW)
    restarted.restore(record, max_version=3)
    assert state(restarted.get("chain")) is PipelineState.CREATING  # until the engines confirm
    assert record.reason.startswith("restored after a proxy restart, waiting for the engines")
    assert record.streams["a"].state is StreamState.READY
    assert restarted.load(seldon()).outcome == "unchanged"
    assert restarted.max_version("chain") == 3
    create = only(restarted.subscribe("a"), "a")
    assert (create.uid, create.timestamp) == ("uid1", message.timestamp + 1)
    changed = restarted.load(seldon(model="m2")).record
    assert (changed.version, changed.uid) == (4, "fresh")


def test_restore_keeps_failed_and_terminated_states(store: PipelineStore) -> None:
    store.subscribe("a")
    failed = store.load(seldon("f")).sends[0].message
    store.ack(ack(failed, "a", False, reason="failed to create all pipeline steps"))
    store.load(seldon("t"))
    delete = store.unload("t").sends[0].message
    store.ack(ack(delete, "a", reason="pipeline removed"))
    restarted = PipelineStore(clock=lambda: NOW)
    for record in store.records():
        restarted.restore(record, record.version)
    assert state(restarted.get("f")) is PipelineState.FAILED
    assert state(restarted.get("t")) is PipelineState.TERMINATED
    assert restarted.load(seldon("f")).outcome == "retried"
