"""What an engine of several worker processes tells the scheduler: one ack summing its workers.

With `--num-cores N` the engine's supervisor forwards every scheduler command to its N workers
(`dataflow.workers`) and each answers it as an engine of its own would. The scheduler must see
one subscriber, so the supervisor answers each command once, for all of them:

* A command (Create or Delete, one uid and timestamp) is answered when every worker it was sent
  to and that is still connected answered it: success when all succeeded, else a failure with
  the reason of the first failing worker (workers in name order). A worker that dies is no
  longer waited for; a worker that (re)subscribes is sent the uid's latest Create (and a Delete
  not answered yet) and is then waited for too. No answer while no worker is connected.
* After a Create is answered, what the workers report (Ready and Rebalance status acks, and the
  Create answer of a worker that restarted) is summed the same way into one status: failed when
  any worker failed (`Ready`, success false, its reason), rebalancing when any rebalances
  (`Rebalance`), else ready (`Ready`). The scheduler gets a status ack only when that sum
  changes, so two workers rebalancing at once make one Rebalance and one Ready.
* Only acks of the uid's current timestamp count, as for the scheduler (spec 2.3).

Pure state, no I/O: the supervisor feeds it and sends what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateStatusMessage,
)
from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation as Op,
)

__all__ = ["AckBook", "Summary"]

COMMANDS = (Op.Create, Op.Delete)
"""The operations the scheduler sends (Rebalance and Ready only come back in acks)."""


@dataclass(frozen=True)
class Summary:
    """One ack for the scheduler: `update` is the scheduler's message it answers."""

    update: PipelineUpdateMessage
    op: Op
    success: bool
    reason: str


class _Kind(Enum):
    READY = "ready"
    REBALANCING = "rebalancing"
    FAILED = "failed"


@dataclass(frozen=True)
class _Said:
    """What one worker said in one ack."""

    op: Op
    success: bool
    reason: str

    @property
    def kind(self) -> _Kind:
        if not self.success:
            return _Kind.FAILED
        return _Kind.REBALANCING if self.op == Op.Rebalance else _Kind.READY


@dataclass
class _Tally:
    """The current command of one uid and what its workers said about it."""

    message: PipelineUpdateMessage
    members: set[str]  # workers it was sent to, still connected
    answers: dict[str, _Said] = field(default_factory=dict)  # their answers to the command
    latest: dict[str, _Said] = field(default_factory=dict)  # their latest ack of any op
    answered: bool = False
    status: _Kind | None = None  # the summed status the scheduler was told last

    def summary(self, op: Op, success: bool, reason: str) -> Summary:
        return Summary(self.message, op, success, reason)


def _first(said: dict[str, _Said], kind: _Kind) -> _Said:
    return next(s for _, s in sorted(said.items()) if s.kind == kind)


class AckBook:
    """The scheduler's commands per uid and their workers' acks (see the module docstring)."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    def __contains__(self, uid: str) -> bool:
        return uid in self._tallies

    def command(self, message: PipelineUpdateMessage, workers: set[str]) -> None:
        """A scheduler command (Create or Delete), sent to the connected `workers`.

        It replaces the uid's earlier command, answered or not: acks of an older timestamp no
        longer count.
        """
        if message.op not in COMMANDS:
            raise ValueError(f"not a command: {message.op!r}")
        self._tallies[message.uid] = _Tally(message, set(workers))

    def replay(self, worker: str) -> list[PipelineUpdateMessage]:
        """A worker (re)subscribed: the messages to send it, in the order they came.

        The latest Create of every uid, and the Deletes not answered yet; the worker is waited
        for on those not answered. What it said before (another process) is forgotten.
        """
        self.left(worker)
        messages = []
        for tally in self._tallies.values():
            if tally.message.op == Op.Create or not tally.answered:
                tally.members.add(worker)
                messages.append(tally.message)
        return messages

    def left(self, worker: str) -> list[Summary]:
        """A worker's stream ended (it died or stops): it is waited for no longer.

        Returns:
            The answers and status changes that were only waiting for it.
        """
        out: list[Summary] = []
        for uid, tally in list(self._tallies.items()):
            if worker not in tally.members:
                continue
            tally.members.discard(worker)
            tally.answers.pop(worker, None)
            tally.latest.pop(worker, None)
            out += self._settle(uid, tally)
        return out

    def ack(self, worker: str, status: PipelineUpdateStatusMessage) -> list[Summary]:
        """A worker's ack.

        Returns:
            What to tell the scheduler now (none, the command's answer, a status change, or
            the answer and then a status change), in that order.
        """
        update = status.update
        tally = self._tallies.get(update.uid)
        if (
            tally is None
            or worker not in tally.members
            or update.timestamp != tally.message.timestamp
        ):
            return []
        said = _Said(update.op, status.success, status.reason)
        if tally.message.op == Op.Delete:
            if update.op != Op.Delete:
                return []
        elif update.op not in (Op.Create, Op.Ready, Op.Rebalance):
            return []
        if update.op == tally.message.op and worker not in tally.answers:
            tally.answers[worker] = said
        tally.latest[worker] = said
        return self._settle(update.uid, tally)

    def _settle(self, uid: str, tally: _Tally) -> list[Summary]:
        out: list[Summary] = []
        if not tally.answered:
            if not tally.members or any(w not in tally.answers for w in tally.members):
                return out
            tally.answered = True
            answers = {w: tally.answers[w] for w in tally.members}
            op = tally.message.op
            if all(s.success for s in answers.values()):
                out.append(tally.summary(op, True, _first(answers, _Kind.READY).reason))
                tally.status = _Kind.READY
            else:
                out.append(tally.summary(op, False, _first(answers, _Kind.FAILED).reason))
                tally.status = _Kind.FAILED
            if op == Op.Delete:
                del self._tallies[uid]  # done: nothing to replay, no status follows
                return out
        latest = {w: s for w, s in tally.latest.items() if w in tally.members}
        if not latest:
            return out
        kinds = {s.kind for s in latest.values()}
        kind = next(k for k in (_Kind.FAILED, _Kind.REBALANCING, _Kind.READY) if k in kinds)
        if kind != tally.status:
            tally.status = kind
            reason = _first(latest, kind).reason
            op = Op.Rebalance if kind == _Kind.REBALANCING else Op.Ready
            out.append(tally.summary(op, kind != _Kind.FAILED, reason))
        return out
