"""The proxy scheduler's state: pipelines, versions, iterations, acks and states. No I/O.

It follows the Seldon scheduler's Chainer server (spec 2.3, `scheduler/pkg/kafka/dataflow`):

* Every connected engine replica (subscriber name) serves every pipeline (no sharding).
* An *iteration* is one round of messages for a pipeline name: a Create (load, or resend when
  the set of subscribers changes) or a Delete (unload). Each iteration takes the next value of a
  per-name counter (`timestamp`, never reset) and records the subscribers expected to ack.
* An ack counts only when its uid is the current version's, its timestamp is the current
  iteration's, its stream is expected and its op fits the iteration; anything else is recorded
  as outdated and ignored for the state.
* States: Create acks make the pipeline Ready once every expected stream answered and at least
  one succeeded, Failed when all failed; later `Ready` acks (ok: Ready, failed: Failed) and
  `Rebalance` acks (Rebalancing) update it; Delete acks make it Terminating, then Terminated
  when all streams removed it (Failed if one could not).
* Versions: loading the same content again changes nothing. Changed content is the next
  version with a new uid; the previous version *retires*: it keeps running until the new one is
  Ready, then its uid gets a Delete (topics kept), resent on every rebalance until every engine
  acked it. A failed new version leaves the old one running. A Delete that no engine could
  receive (none connected) is kept the same way and sent when an engine subscribes.

The store only decides; it returns the messages to send (`Send`) and the caller delivers them.
It records which pipelines changed (`take_dirty`) so that the caller can persist them
(`dataflow.proxy.database`) before it sends anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessagePipelineOperation,
)
from dataflow.proxy.records import (
    NO_ENGINES,
    Ack,
    AckResult,
    Definition,
    LoadResult,
    PipelineRecord,
    PipelineState,
    Retiring,
    Send,
    StreamAck,
    StreamState,
    UnknownPipelineError,
    UnloadResult,
    new_uid,
    op_name,
)
from dataflow.specs import PipelineSpec

__all__ = ["PipelineStore"]

Op = PipelineUpdateMessagePipelineOperation

_CREATE_ACK_OPS = {Op.Create, Op.Ready, Op.Rebalance}
_CONFIRMED_BY_ENGINES = {PipelineState.CREATING, PipelineState.READY, PipelineState.REBALANCING}
RESTORED = "restored after a proxy restart, waiting for the engines"


def _stream_state(op: int, success: bool) -> StreamState:
    if op == Op.Delete:
        return StreamState.TERMINATED if success else StreamState.FAILED_TERMINATING
    if not success:
        return StreamState.FAILED
    if op == Op.Rebalance:
        return StreamState.REBALANCING
    return StreamState.READY


class PipelineStore:
    """Pipelines, subscribers and acks of the proxy scheduler.

    Args:
        uid_factory: makes the uid of a new version (default `new_uid`).
        clock: the wall clock, for the records' times (default `time.time`).
    """

    def __init__(
        self,
        uid_factory: Callable[[], str] = new_uid,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._uid_factory = uid_factory
        self._now = clock
        self._records: dict[str, PipelineRecord] = {}
        self._subscribers: list[str] = []
        self._clock: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._dirty: set[str] = set()

    @property
    def subscribers(self) -> tuple[str, ...]:
        """Connected subscriber names, in order of arrival."""
        return tuple(self._subscribers)

    def get(self, name: str) -> PipelineRecord | None:
        """The record of a pipeline name, or None."""
        return self._records.get(name)

    def records(self) -> list[PipelineRecord]:
        """Every pipeline record (terminated ones included), sorted by name."""
        return [self._records[name] for name in sorted(self._records)]

    def max_version(self, name: str) -> int:
        """The highest version a pipeline name ever had (0 if none)."""
        return self._versions.get(name, 0)

    # Persistence.

    def restore(self, record: PipelineRecord, max_version: int) -> None:
        """Put back a record saved by an earlier run (before any subscriber connects).

        Its timestamp continues the name's counter; its streams keep the last acks. A running
        pipeline is Creating again until the engines, once back, confirm it (a Ready from before
        the restart is not claimed); Failed, Terminating and Terminated ones keep their state.
        """
        if record.operation == "Create" and record.state in _CONFIRMED_BY_ENGINES:
            record.reason = f"{RESTORED} (last: {record.state}: {record.reason or '-'})"
            record.state = PipelineState.CREATING
        self._records[record.name] = record
        self._clock[record.name] = max(record.timestamp, self._clock.get(record.name, 0))
        self._versions[record.name] = max(max_version, record.version)

    def take_dirty(self) -> list[PipelineRecord]:
        """The records changed since the last call (to persist), sorted by name."""
        names, self._dirty = sorted(self._dirty), set()
        return [self._records[name] for name in names]

    def keep_dirty(self, records: list[PipelineRecord]) -> None:
        """Mark records as changed again (their saving failed)."""
        self._dirty.update(record.name for record in records)

    def _touch(self, record: PipelineRecord) -> None:
        record.updated_at = self._now()
        self._dirty.add(record.name)

    # Iterations.

    def _iterate(self, record: PipelineRecord, operation: str) -> list[Send]:
        """Start a new iteration: next timestamp, expected = current subscribers, messages."""
        timestamp = self._clock.get(record.name, 0) + 1
        self._clock[record.name] = timestamp
        record.timestamp = timestamp
        record.operation = operation
        record.streams = {name: StreamAck() for name in self._subscribers}
        self._touch(record)
        if operation == "Create":
            message = record.definition.create_message(timestamp)
            record.state = PipelineState.CREATING
        else:
            message = record.definition.delete_message(timestamp, keep_topics=False)
            record.state = PipelineState.TERMINATING
        if not self._subscribers:
            record.reason = NO_ENGINES
            if operation == "Delete":
                record.state = PipelineState.TERMINATED
                # An engine that is away may still run it: it gets the Delete when it is back.
                if all(r.definition.uid != record.uid for r in record.retiring):
                    record.retiring.append(
                        Retiring(record.definition, timestamp, keep_topics=False)
                    )
            return []
        record.reason = f"{operation} sent to {', '.join(self._subscribers)}"
        return [Send(name, message) for name in self._subscribers]

    def _retire(self, record: PipelineRecord, retirees: list[Retiring]) -> list[Send]:
        """Send the Delete (topics kept) of earlier versions to every subscriber."""
        sends: list[Send] = []
        for retiree in retirees:
            retiree.timestamp = record.timestamp
            retiree.streams = {name: StreamAck() for name in self._subscribers}
            message = retiree.definition.delete_message(
                record.timestamp, keep_topics=retiree.keep_topics
            )
            sends += [Send(name, message) for name in self._subscribers]
        if retirees:
            self._touch(record)
        return sends

    def _rebalance(self) -> list[Send]:
        """A new iteration for every pipeline not terminated (subscribers changed); the Deletes
        of retiring versions are sent again."""
        sends: list[Send] = []
        for record in self.records():
            if record.state != PipelineState.TERMINATED:
                sends += self._iterate(record, record.operation)
            sends += self._retire(record, [r for r in record.retiring if r.deleting])
        return sends

    # Commands.

    def load(self, spec: PipelineSpec) -> LoadResult:
        """Load a spec: a new pipeline, a new version of one, or nothing if unchanged.

        Args:
            spec: the pipeline spec; its pinned version/uid are used when present.

        Returns:
            The record, the outcome and the Create messages. The version a new one replaces
            retires: its Delete follows once the new version is Ready (`ack`).
        """
        fingerprint = spec.fingerprint()
        old = self._records.get(spec.name)
        running = (
            old is not None and old.operation == "Create" and old.state != PipelineState.TERMINATED
        )
        if old is not None and running and old.fingerprint == fingerprint:
            if old.state == PipelineState.FAILED:
                return LoadResult(old, "retried", self._iterate(old, "Create"))
            return LoadResult(old, "unchanged", [])
        version = spec.version if spec.version is not None else self.max_version(spec.name) + 1
        self._versions[spec.name] = max(version, self.max_version(spec.name))
        uid = spec.uid if spec.uid is not None else self._uid_factory()
        definition = Definition.of(spec, version, uid, self._now())
        retiring = list(old.retiring) if old is not None else []
        warning = None
        if old is not None and running and old.uid == uid:
            warning = (
                f"pipeline {spec.name!r} changed but keeps uid {uid!r}: engines that run that "
                "uid keep the old content (pin a new uid, or none)"
            )
        elif old is not None and running:
            retiring.append(Retiring(old.definition))
        elif old is not None and old.state != PipelineState.TERMINATED:
            # Its Delete is under way: its acks still count.
            retiring.append(Retiring(old.definition, old.timestamp, old.streams, keep_topics=False))
        record = PipelineRecord(
            definition, retiring=[r for r in retiring if r.definition.uid != uid]
        )
        self._records[spec.name] = record
        sends = self._iterate(record, "Create")
        return LoadResult(record, "updated" if running else "created", sends, warning)

    def unload(self, name: str) -> UnloadResult:
        """Unload a pipeline: Delete to every subscriber, then Terminating -> Terminated.

        Retiring versions still waiting get their Delete now too.

        Raises:
            UnknownPipelineError: no pipeline of that name.
        """
        record = self._records.get(name)
        if record is None:
            raise UnknownPipelineError(name)
        if record.state == PipelineState.TERMINATED:
            return UnloadResult(record, "already terminated", [])
        if record.operation == "Delete" and record.state == PipelineState.TERMINATING:
            return UnloadResult(record, "already terminating", [])
        waiting = [r for r in record.retiring if not r.deleting]
        sends = self._iterate(record, "Delete")
        sends += self._retire(record, waiting)
        return UnloadResult(record, str(record.state).lower(), sends)

    def subscribe(self, name: str) -> list[Send]:
        """A subscriber (re)connected: every live pipeline gets a new iteration, sent to all.

        Args:
            name: the subscriber name (a second subscription of a name replaces the first).
        """
        if name not in self._subscribers:
            self._subscribers.append(name)
        return self._rebalance()

    def unsubscribe(self, name: str) -> list[Send]:
        """A subscriber's stream ended: live pipelines get a new iteration without it."""
        if name not in self._subscribers:
            return []
        self._subscribers.remove(name)
        return self._rebalance()

    # Acks.

    def _outdated(self, record: PipelineRecord, ack: Ack) -> str | None:
        if ack.uid != record.uid:
            return f"uid {ack.uid} is not the current version's ({record.uid})"
        if ack.timestamp != record.timestamp:
            return f"timestamp {ack.timestamp} is not the current {record.timestamp}"
        if ack.stream not in record.streams:
            expected = ", ".join(record.streams) or "none"
            return f"stream {ack.stream!r} is not expected (expected: {expected})"
        if record.operation == "Delete" and ack.op != Op.Delete:
            return f"{op_name(ack.op)} ack while the pipeline is being deleted"
        if record.operation == "Create" and ack.op not in _CREATE_ACK_OPS:
            return f"{op_name(ack.op)} ack while the pipeline is being created"
        return None

    @staticmethod
    def _retiree_of(record: PipelineRecord, ack: Ack) -> Retiring | None:
        """The retiring version a Delete ack answers, if it is one."""
        for retiree in record.retiring:
            if (
                retiree.definition.uid == ack.uid
                and retiree.deleting
                and ack.timestamp == retiree.timestamp
                and ack.stream in retiree.streams
                and ack.op == Op.Delete
            ):
                return retiree
        return None

    def _ack_retiree(self, record: PipelineRecord, retiree: Retiring, ack: Ack) -> AckResult:
        retiree.streams[ack.stream] = StreamAck(
            _stream_state(ack.op, ack.success), op_name(ack.op), ack.success, ack.reason
        )
        self._touch(record)
        label = f"retiring v{retiree.definition.version} (uid {retiree.definition.uid})"
        states = [s.state for s in retiree.streams.values()]
        if states.count(StreamState.TERMINATED) == len(states):
            record.retiring.remove(retiree)
            return AckResult(ack, True, f"{label} deleted from every engine", record)
        done = states.count(StreamState.TERMINATED)
        return AckResult(ack, True, f"{label}: {done}/{len(states)} deleted", record)

    def ack(self, ack: Ack) -> AckResult:
        """Record an engine's ack and update the pipeline's state.

        Returns:
            Whether it counted, the resulting state or why it was ignored, and the Deletes of
            retiring versions when the current version became Ready.
        """
        record = self._records.get(ack.pipeline)
        if record is None:
            return AckResult(ack, False, f"unknown pipeline {ack.pipeline!r}", None)
        retiree = self._retiree_of(record, ack)
        if retiree is not None:
            return self._ack_retiree(record, retiree, ack)
        why = self._outdated(record, ack)
        if why is not None:
            record.outdated += 1
            record.last_outdated = why
            self._touch(record)
            return AckResult(ack, False, why, record)
        record.streams[ack.stream] = StreamAck(
            _stream_state(ack.op, ack.success), op_name(ack.op), ack.success, ack.reason
        )
        record.reason = ack.reason
        record.state = self._state(record, ack)
        self._touch(record)
        sends: list[Send] = []
        if record.state == PipelineState.READY:
            sends = self._retire(record, [r for r in record.retiring if not r.deleting])
        note = f"{record.state} ({record.summary()})"
        if sends:
            retired = ", ".join(f"v{r.definition.version}" for r in record.retiring if r.deleting)
            note += f"; Delete of {retired} sent"
        return AckResult(ack, True, note, record, sends)

    @staticmethod
    def _state(record: PipelineRecord, ack: Ack) -> PipelineState:
        states = [s.state for s in record.streams.values()]
        n = len(states)
        if record.operation == "Delete":
            if StreamState.FAILED_TERMINATING in states:
                return PipelineState.FAILED
            if states.count(StreamState.TERMINATED) == n:
                return PipelineState.TERMINATED
            return PipelineState.TERMINATING
        if ack.op in (Op.Ready, Op.Rebalance) and not ack.success:
            return PipelineState.FAILED
        if states.count(StreamState.FAILED) == n:
            return PipelineState.FAILED
        if StreamState.UNKNOWN in states:
            return PipelineState.CREATING
        if StreamState.REBALANCING in states:
            return PipelineState.REBALANCING
        return PipelineState.READY
