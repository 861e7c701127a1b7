"""What the proxy scheduler knows of each pipeline: records, versions, acks, and the results of
loads, unloads and acks (value types of `dataflow.proxy.store`). No I/O."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dataflow.proto.seldon.mlops.chainer import (
    PipelineUpdateMessage,
    PipelineUpdateMessagePipelineOperation,
    PipelineUpdateStatusMessage,
)
from dataflow.specs import PipelineSpec

__all__ = [
    "NO_ENGINES",
    "Ack",
    "AckResult",
    "Definition",
    "LoadResult",
    "PipelineRecord",
    "PipelineState",
    "Retiring",
    "Send",
    "StreamAck",
    "StreamState",
    "UnknownPipelineError",
    "UnloadResult",
    "new_uid",
    "op_name",
]

Op = PipelineUpdateMessagePipelineOperation

NO_ENGINES = "no dataflow engines available to handle pipeline"

_XID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"


def new_uid(now: float | None = None) -> str:
    """A fresh pipeline-version uid shaped like the scheduler's xid.

    20 lowercase base32hex characters encoding 4 bytes of Unix time and 8 random bytes.

    Args:
        now: the time to encode (default: the current time).
    """
    seconds = int(time.time() if now is None else now) & 0xFFFFFFFF
    value = (seconds << 64 | secrets.randbits(64)) << 4  # 96 bits padded to 100 = 20 x 5
    return "".join(_XID_ALPHABET[(value >> shift) & 31] for shift in range(95, -1, -5))


class PipelineState(StrEnum):
    """State of a pipeline as the proxy sees it (the scheduler's names)."""

    CREATING = "Creating"
    READY = "Ready"
    FAILED = "Failed"
    REBALANCING = "Rebalancing"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"


class StreamState(StrEnum):
    """What one expected stream (engine replica) reported in the current iteration."""

    UNKNOWN = "Unknown"
    READY = "Ready"
    FAILED = "Failed"
    REBALANCING = "Rebalancing"
    TERMINATED = "Terminated"
    FAILED_TERMINATING = "FailedTerminating"


def op_name(op: int) -> str:
    """The name of a `PipelineOperation` value (`Create`, ...), or its number if unknown."""
    try:
        return str(Op(op).name)
    except ValueError:
        return str(op)


@dataclass(frozen=True)
class Ack:
    """One `PipelineUpdateEvent` from an engine.

    Attributes:
        pipeline: pipeline name.
        version: pipeline version.
        uid: uid of that version.
        timestamp: the iteration timestamp the engine echoes.
        stream: the engine's subscriber name.
        op: the operation acknowledged (Create, Delete, Ready, Rebalance).
        success: whether it succeeded.
        reason: the engine's reason text.
    """

    pipeline: str
    version: int
    uid: str
    timestamp: int
    stream: str
    op: int
    success: bool
    reason: str

    @classmethod
    def from_message(cls, message: PipelineUpdateStatusMessage) -> Ack:
        """Read an ack from the protobuf message."""
        update = message.update
        return cls(
            pipeline=str(update.pipeline),
            version=int(update.version),
            uid=str(update.uid),
            timestamp=int(update.timestamp),
            stream=str(update.stream),
            op=int(update.op),
            success=bool(message.success),
            reason=str(message.reason),
        )

    def describe(self) -> str:
        """`ack from engine-a: p v1 (uid 1234, ts 3) Create ok: <reason>`."""
        outcome = "ok" if self.success else "failed"
        return (
            f"ack from {self.stream or '<no stream>'}: {self.pipeline} v{self.version} "
            f"(uid {self.uid}, ts {self.timestamp}) {op_name(self.op)} {outcome}: "
            f"{self.reason or '-'}"
        )


@dataclass
class StreamAck:
    """The latest accepted ack of one expected stream in the current iteration."""

    state: StreamState = StreamState.UNKNOWN
    op: str | None = None
    success: bool | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form: state, op, success, reason (op/success null until it acked)."""
        return {
            "state": str(self.state),
            "op": self.op,
            "success": self.success,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Send:
    """A message for one subscriber."""

    subscriber: str
    message: PipelineUpdateMessage


@dataclass(frozen=True)
class Definition:
    """One version of a pipeline as the engines receive it, fixed when it is loaded.

    The messages are kept as bytes, so a restarted proxy sends exactly what it sent before,
    whatever the spec parser of the day would make of the file.

    Attributes:
        name: pipeline name.
        version: the version.
        uid: its uid.
        source: the spec file it came from.
        fingerprint: digest of the spec's content (`PipelineSpec.fingerprint`).
        create: the Create message (timestamp 0).
        unload: the Delete message of a user unload (lists the topics to delete when the spec
            sets `cleanTopicsOnDelete`).
        loaded_at: when it was loaded (Unix time).
    """

    name: str
    version: int
    uid: str
    source: str
    fingerprint: str
    create: bytes
    unload: bytes
    loaded_at: float

    @classmethod
    def of(cls, spec: PipelineSpec, version: int, uid: str, loaded_at: float) -> Definition:
        """The definition of `spec` as version `version` with uid `uid`."""
        return cls(
            name=spec.name,
            version=version,
            uid=uid,
            source=spec.source,
            fingerprint=spec.fingerprint(),
            create=bytes(spec.to_message(version, uid)),
            unload=bytes(spec.to_delete_message(version, uid, keep_topics=False)),
            loaded_at=loaded_at,
        )

    def create_message(self, timestamp: int) -> PipelineUpdateMessage:
        """The Create message of an iteration."""
        message = PipelineUpdateMessage().parse(self.create)
        message.timestamp = timestamp
        return message

    def delete_message(self, timestamp: int, *, keep_topics: bool) -> PipelineUpdateMessage:
        """The Delete message of an iteration: bare, or the user unload's (`keep_topics` False)."""
        if keep_topics:
            message = PipelineUpdateMessage(
                op=Op.Delete, pipeline=self.name, version=self.version, uid=self.uid
            )
        else:
            message = PipelineUpdateMessage().parse(self.unload)
        message.timestamp = timestamp
        return message


@dataclass
class Retiring:
    """An earlier version of a pipeline that still has to be deleted from the engines.

    Attributes:
        definition: the version.
        timestamp: the iteration its Delete was sent in; 0 while it waits for the current
            version to be Ready.
        streams: the streams its Delete was sent to and what each answered.
        keep_topics: False for a user unload no engine received (its topics are deleted as
            the spec asks); True for a version replaced by another.
    """

    definition: Definition
    timestamp: int = 0
    streams: dict[str, StreamAck] = field(default_factory=dict)
    keep_topics: bool = True

    @property
    def deleting(self) -> bool:
        """True once its Delete was sent (or is due at the next subscription)."""
        return self.timestamp > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form: version, uid, state (`waiting` or `deleting`), timestamp, streams."""
        return {
            "version": self.definition.version,
            "uid": self.definition.uid,
            "state": "deleting" if self.deleting else "waiting",
            "timestamp": self.timestamp,
            "streams": {name: ack.as_dict() for name, ack in self.streams.items()},
        }


@dataclass
class PipelineRecord:
    """The current version of one pipeline name and its current iteration.

    Attributes:
        definition: the current version.
        state: pipeline state.
        reason: the last accepted ack's reason, or what the proxy did last.
        timestamp: the current iteration's timestamp.
        operation: the current iteration's operation, `Create` or `Delete`.
        streams: the expected streams of the iteration and what each reported.
        outdated: how many acks were ignored for this name since the version was loaded.
        last_outdated: why the last one was ignored.
        retiring: earlier versions still to be deleted from the engines, oldest first.
        updated_at: when the record last changed (Unix time).
    """

    definition: Definition
    state: PipelineState = PipelineState.CREATING
    reason: str = ""
    timestamp: int = 0
    operation: str = "Create"
    streams: dict[str, StreamAck] = field(default_factory=dict)
    outdated: int = 0
    last_outdated: str | None = None
    retiring: list[Retiring] = field(default_factory=list)
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        """Pipeline name."""
        return self.definition.name

    @property
    def version(self) -> int:
        """Current version."""
        return self.definition.version

    @property
    def uid(self) -> str:
        """Uid of the current version."""
        return self.definition.uid

    @property
    def fingerprint(self) -> str:
        """Digest of the current version's spec."""
        return self.definition.fingerprint

    def summary(self) -> str:
        """Counts of the iteration's streams, e.g. `1/2 ready, 1/2 waiting, 0/2 failed`."""
        n = len(self.streams)
        if n == 0:
            return NO_ENGINES
        states = [s.state for s in self.streams.values()]
        waiting = states.count(StreamState.UNKNOWN)
        if self.operation == "Delete":
            done = states.count(StreamState.TERMINATED)
            failed = n - done - waiting
            return f"{done}/{n} terminated, {waiting}/{n} terminating, {failed}/{n} failed"
        ready = states.count(StreamState.READY)
        rebalancing = states.count(StreamState.REBALANCING)
        failed = n - ready - waiting - rebalancing
        text = f"{ready}/{n} ready, {waiting}/{n} creating, {failed}/{n} failed"
        return text + (f", {rebalancing}/{n} rebalancing" if rebalancing else "")

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of the control API (`GET /pipelines`)."""
        return {
            "name": self.name,
            "version": self.version,
            "uid": self.uid,
            "timestamp": self.timestamp,
            "operation": self.operation,
            "state": str(self.state),
            "reason": self.reason,
            "summary": self.summary(),
            "streams": {name: ack.as_dict() for name, ack in self.streams.items()},
            "outdated_acks": self.outdated,
            "last_outdated": self.last_outdated,
            "source": self.definition.source,
            "loaded_at": self.definition.loaded_at,
            "updated_at": self.updated_at,
            "retiring": [r.as_dict() for r in self.retiring],
        }


@dataclass(frozen=True)
class LoadResult:
    """What `PipelineStore.load` did.

    Attributes:
        record: the pipeline's record after the load.
        outcome: `created` (new name, or loaded again after it terminated), `updated` (new
            version of a running pipeline; the old version is deleted), `unchanged` (same
            content, nothing sent) or `retried` (same content of a Failed pipeline, sent again).
        sends: messages to deliver.
        warning: something the user should know, or None.
    """

    record: PipelineRecord
    outcome: str
    sends: list[Send]
    warning: str | None = None


@dataclass(frozen=True)
class UnloadResult:
    """What `PipelineStore.unload` did.

    Attributes:
        record: the pipeline's record.
        outcome: `terminating`, `terminated` (no engine connected), `already terminating` or
            `already terminated`.
        sends: messages to deliver.
    """

    record: PipelineRecord
    outcome: str
    sends: list[Send]


@dataclass(frozen=True)
class AckResult:
    """What `PipelineStore.ack` did with an ack.

    Attributes:
        ack: the ack.
        accepted: False when it was outdated (ignored for the state).
        note: the resulting state, or why it was ignored.
        record: the pipeline's record, or None for an unknown pipeline.
        sends: messages to deliver (the Delete of a retiring version once the new one is Ready).
    """

    ack: Ack
    accepted: bool
    note: str
    record: PipelineRecord | None
    sends: list[Send] = field(default_factory=list)

    def describe(self) -> str:
        """One log line: the ack, then `-> <state> (...)` or `-> ignored (outdated: ...)`."""
        if self.accepted:
            return f"{self.ack.describe()} -> {self.note}"
        return f"{self.ack.describe()} -> ignored (outdated: {self.note})"


class UnknownPipelineError(KeyError):
    """No pipeline of that name was ever loaded."""

    def __str__(self) -> str:
        return f"unknown pipeline {self.args[0]!r}"
