"""One ack to the scheduler per command, summing the acks of an engine's worker processes."""

from __future__ import annotations

from dataflow.acks import AckBook, Summary
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)

Op = PipelineUpdateMessagePipelineOperation
READY = "pipeline data streams: ready"
W0, W1, W2 = "e-w0", "e-w1", "e-w2"


def command(op: Op, ts: int, uid: str = "u1") -> PipelineUpdateMessage:
    return PipelineUpdateMessage(op=op, pipeline="p", version=1, uid=uid, timestamp=ts)


def ack(
    worker: str, op: Op, ts: int, success: bool = True, reason: str = READY, uid: str = "u1"
) -> PipelineUpdateStatusMessage:
    update = PipelineUpdateMessage(
        op=op, pipeline="p", version=1, uid=uid, timestamp=ts, stream=worker
    )
    return PipelineUpdateStatusMessage(update=update, success=success, reason=reason)


def said(summaries: list[Summary]) -> list[tuple[str, int, bool, str]]:
    return [(s.op.name, s.update.timestamp, s.success, s.reason) for s in summaries]


def test_a_create_is_answered_once_every_worker_answered() -> None:
    book = AckBook()
    book.command(command(Op.Create, 3), {W0, W1})
    assert book.ack(W0, ack(W0, Op.Create, 3)) == []
    out = book.ack(W1, ack(W1, Op.Create, 3))
    assert said(out) == [("Create", 3, True, READY)]
    assert out[0].update.stream == ""  # the supervisor's subscriber sets its own name
    # The same answer again, or a Ready of a worker already ready: nothing new to say.
    assert book.ack(W1, ack(W1, Op.Create, 3)) == []
    assert book.ack(W0, ack(W0, Op.Ready, 3)) == []


def test_one_failing_worker_fails_the_command_with_its_reason() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0, W1, W2})
    book.ack(W2, ack(W2, Op.Create, 1, False, "w2 broke"))
    book.ack(W0, ack(W0, Op.Create, 1))
    out = book.ack(W1, ack(W1, Op.Create, 1, False, "w1 broke"))
    assert said(out) == [("Create", 1, False, "w1 broke")]  # the first in worker order


def test_acks_of_another_timestamp_uid_or_stranger_do_not_count() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0})
    book.command(command(Op.Create, 2), {W0})  # a new iteration replaces the first
    assert book.ack(W0, ack(W0, Op.Create, 1)) == []
    assert book.ack(W0, ack(W0, Op.Create, 2, uid="other")) == []
    assert book.ack(W1, ack(W1, Op.Create, 2)) == []  # not sent to W1
    assert book.ack(W0, ack(W0, Op.Delete, 2)) == []  # not the command's op
    assert said(book.ack(W0, ack(W0, Op.Create, 2))) == [("Create", 2, True, READY)]


def test_rebalances_are_summed_into_one_rebalance_and_one_ready() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0, W1})
    book.ack(W0, ack(W0, Op.Create, 1))
    book.ack(W1, ack(W1, Op.Create, 1))
    rebalancing = "pipeline data streams: rebalancing"
    assert said(book.ack(W0, ack(W0, Op.Rebalance, 1, reason=rebalancing))) == [
        ("Rebalance", 1, True, rebalancing)
    ]
    assert book.ack(W1, ack(W1, Op.Rebalance, 1, reason=rebalancing)) == []
    assert book.ack(W0, ack(W0, Op.Ready, 1)) == []  # W1 still rebalances
    assert said(book.ack(W1, ack(W1, Op.Ready, 1))) == [("Ready", 1, True, READY)]


def test_a_status_before_the_answer_follows_the_answer() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0, W1})
    book.ack(W0, ack(W0, Op.Create, 1))
    book.ack(W0, ack(W0, Op.Rebalance, 1, reason="rebalancing"))  # W1 joined its groups
    out = book.ack(W1, ack(W1, Op.Create, 1))
    assert said(out) == [("Create", 1, True, READY), ("Rebalance", 1, True, "rebalancing")]
    assert said(book.ack(W0, ack(W0, Op.Ready, 1))) == [("Ready", 1, True, READY)]


def test_a_runtime_failure_of_one_worker_is_a_failed_ready() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0, W1})
    book.ack(W0, ack(W0, Op.Create, 1))
    book.ack(W1, ack(W1, Op.Create, 1))
    out = book.ack(W1, ack(W1, Op.Ready, 1, False, "pipeline data streams error: x"))
    assert said(out) == [("Ready", 1, False, "pipeline data streams error: x")]
    # Its rebuild succeeds: the engine is ready again.
    assert said(book.ack(W1, ack(W1, Op.Create, 1))) == [("Ready", 1, True, READY)]


def test_a_dead_worker_is_not_waited_for_and_its_successor_gets_the_create() -> None:
    book = AckBook()
    create = command(Op.Create, 1)
    book.command(create, {W0, W1})
    book.ack(W0, ack(W0, Op.Create, 1))
    assert said(book.left(W1)) == [("Create", 1, True, READY)]
    assert book.replay(W1) == [create]
    # The new W1 answers the Create already answered: a status, unchanged.
    assert book.ack(W1, ack(W1, Op.Create, 1)) == []
    # One that cannot build it makes the engine failed.
    book.left(W1)
    book.replay(W1)
    assert said(book.ack(W1, ack(W1, Op.Create, 1, False, "no"))) == [("Ready", 1, False, "no")]


def test_a_worker_that_subscribes_before_the_answer_is_waited_for() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), set())  # no worker connected yet
    assert book.left(W0) == []
    assert len(book.replay(W0)) == 1
    assert len(book.replay(W1)) == 1
    assert book.ack(W0, ack(W0, Op.Create, 1)) == []
    assert said(book.ack(W1, ack(W1, Op.Create, 1))) == [("Create", 1, True, READY)]


def test_no_answer_while_no_worker_is_connected() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0})
    assert book.left(W0) == []  # nobody answered, nobody is left to: still waiting
    book.replay(W0)
    assert said(book.ack(W0, ack(W0, Op.Create, 1))) == [("Create", 1, True, READY)]


def test_a_delete_is_answered_once_then_forgotten() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1), {W0, W1})
    delete = command(Op.Delete, 2)
    book.command(delete, {W0, W1})
    assert book.ack(W0, ack(W0, Op.Ready, 2)) == []  # no status while deleting
    assert book.left(W1) == []  # W0 has not answered yet
    assert book.replay(W1) == [delete]  # a Delete not answered yet is sent again
    assert book.ack(W0, ack(W0, Op.Delete, 2, reason="pipeline removed")) == []
    out = book.ack(W1, ack(W1, Op.Delete, 2, reason="pipeline removed"))
    assert said(out) == [("Delete", 2, True, "pipeline removed")]
    assert "u1" not in book
    assert book.replay(W2) == []


def test_replay_sends_the_latest_create_of_every_uid_in_arrival_order() -> None:
    book = AckBook()
    book.command(command(Op.Create, 1, "b"), {W0})
    book.command(command(Op.Create, 1, "a"), {W0})
    book.command(command(Op.Create, 2, "b"), {W0})
    assert [(m.uid, m.timestamp) for m in book.replay(W1)] == [("b", 2), ("a", 1)]
