"""A step's state store: what its join window, trigger gate or batch holds, as changelog records.

Kafka Streams keeps a stateful task's store in a compacted changelog topic and restores it
before the task processes anything; so does a step here. The store itself is the state machines
of `joins`, `gates` and `batches` (in memory); this module is what goes to and comes from the
changelog:

* topic: `<step consumer group>-changelog`, compacted, one per stateful step, created with the
  pipeline's topics and deleted with them;
* key: the entry's `ident`, `<kind><index>/<topic>/<partition>/<offset>[/<n>]` of the input
  record it holds (the same record consumed again after a crash overwrites its own entry);
* value: the entry (kind, index, timestamp, outer-join flag, key, value, the origin record's
  headers and position), or a tombstone (no value) when it leaves the state;
* partition: the input record's partition (modulo the changelog's partitions), so the member that
  owns an input partition restores exactly its entries.

Pure: encoding and decoding only, no I/O.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dataflow.windows import EntryKind

__all__ = [
    "CHANGELOG_CONFIG",
    "Restored",
    "changelog_topic",
    "decode",
    "encode",
    "ident",
    "ident_prefix",
]

#: Topic configuration of a changelog: compacted, rolled and cleaned often, so a restore reads
#: little more than the live entries.
CHANGELOG_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "60000",
    "min.compaction.lag.ms": "0",
}

_VERSION = 1
_HEAD = struct.Struct(">BcbqBiq")  # version, kind, index, timestamp, flags, partition, offset
_LEN = struct.Struct(">i")
_MATCHED = 1
_NO_KEY = 2

Headers = Sequence[tuple[str, bytes]]


def changelog_topic(group: str) -> str:
    """The changelog topic of the step whose consumer group is `group`."""
    return f"{group}-changelog"


def ident_prefix(kind: str, index: int, topic: str, partition: int) -> bytes:
    """What the names of one source's (`kind` "s") or trigger's ("t") entries of one
    partition start with: the name of the entry of offset `o` is the prefix + `b"%d" % o`."""
    return f"{kind}{index}/{topic}/{partition}/".encode()


def ident(kind: str, index: int, topic: str, partition: int, offset: int, n: int = 0) -> bytes:
    """The name (changelog key) of the entry that holds one input record."""
    name = ident_prefix(kind, index, topic, partition) + b"%d" % offset
    return name if n == 0 else name + b"/%d" % n


@dataclass(frozen=True, slots=True)
class Restored:
    """One entry read back from a changelog."""

    kind: EntryKind
    index: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    matched: bool
    headers: tuple[tuple[str, bytes], ...]
    topic: str
    partition: int
    offset: int


def _chunk(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


@functools.lru_cache(maxsize=256)
def _topic_chunk(topic: str) -> bytes:
    return _chunk(topic.encode())


def encode(
    kind: EntryKind | str,
    index: int,
    key: bytes | None,
    value: bytes,
    timestamp_ms: int,
    matched: bool,
    headers: Headers,
    topic: str,
    partition: int,
    offset: int,
) -> bytes:
    """The changelog value of one entry."""
    flags = (_MATCHED if matched else 0) | (_NO_KEY if key is None else 0)
    key = key or b""
    parts = [
        _HEAD.pack(_VERSION, kind.encode(), index, timestamp_ms, flags, partition, offset),
        _topic_chunk(topic),
        _LEN.pack(len(key)),
        key,
        _LEN.pack(len(value)),
        value,
        _LEN.pack(len(headers)),
    ]
    for name, hvalue in headers:
        parts.append(_chunk(name.encode()))
        parts.append(_chunk(hvalue or b""))
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def chunk(self) -> bytes:
        (size,) = _LEN.unpack_from(self.data, self.pos)
        start = self.pos + _LEN.size
        end = start + size
        if size < 0 or end > len(self.data):
            raise ValueError("truncated changelog entry")
        self.pos = end
        return self.data[start:end]

    def count(self) -> int:
        (n,) = _LEN.unpack_from(self.data, self.pos)
        self.pos += _LEN.size
        return int(n)


def decode(data: bytes) -> Restored:
    """An entry from its changelog value.

    Raises:
        ValueError: the bytes are not an entry of this version.
    """
    try:
        version, kind, index, timestamp, flags, partition, offset = _HEAD.unpack_from(data, 0)
        if version != _VERSION:
            raise ValueError(f"changelog entry version {version}, expected {_VERSION}")
        reader = _Reader(data, _HEAD.size)
        topic = reader.chunk().decode()
        key = reader.chunk()
        value = reader.chunk()
        headers = tuple((reader.chunk().decode(), reader.chunk()) for _ in range(reader.count()))
    except struct.error as exc:
        raise ValueError(f"truncated changelog entry: {exc}") from None
    try:
        entry_kind = EntryKind(kind.decode())
    except ValueError:
        raise ValueError(f"unknown changelog entry kind {kind!r}") from None
    return Restored(
        kind=entry_kind,
        index=index,
        key=None if flags & _NO_KEY else key,
        value=value,
        timestamp_ms=timestamp,
        matched=bool(flags & _MATCHED),
        headers=headers,
        topic=topic,
        partition=partition,
        offset=offset,
    )
