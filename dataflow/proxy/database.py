"""The proxy's durable state: pipelines, versions, uids, timestamps and acks, in SQLite.

One database file, `proxy.sqlite3`, in the state folder (`SELDON_PROXY_STATE_DIR`, default
`.proxy-state` in the working directory). It holds, per pipeline name, the current version (its
Create and unload messages as sent, fingerprint, uid, version, source, load time), the current
iteration (timestamp, operation, state, reason, each expected engine's last ack), the highest
version the name ever had, and the versions still retiring. The proxy writes a change before it
sends the messages the change makes (WAL journal, synchronous commits), so a proxy killed at any
point restarts with every uid an engine may have been told, and sends the same uids again: the
engines keep their pipelines, as they do when the real scheduler restarts from its own database.

A lock file keeps a second proxy from using the same folder (the lock goes with the process,
so a proxy killed with SIGKILL does not leave it behind).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from dataflow.proxy.records import (
    Definition,
    PipelineRecord,
    PipelineState,
    Retiring,
    StreamAck,
    StreamState,
)

FILE_NAME = "proxy.sqlite3"
LOCK_NAME = "proxy.lock"
SCHEMA_VERSION = 1

_DEFINITION = (
    "name TEXT NOT NULL, version INTEGER NOT NULL, uid TEXT NOT NULL, source TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, create_message BLOB NOT NULL, unload_message BLOB NOT NULL, "
    "loaded_at REAL NOT NULL"
)
_SCHEMA = (
    f"CREATE TABLE pipelines ({_DEFINITION}, max_version INTEGER NOT NULL, "
    "state TEXT NOT NULL, reason TEXT NOT NULL, timestamp INTEGER NOT NULL, "
    "operation TEXT NOT NULL, streams TEXT NOT NULL, outdated INTEGER NOT NULL, "
    "last_outdated TEXT, updated_at REAL NOT NULL, PRIMARY KEY (name))",
    f"CREATE TABLE retiring ({_DEFINITION}, position INTEGER NOT NULL, "
    "timestamp INTEGER NOT NULL, streams TEXT NOT NULL, keep_topics INTEGER NOT NULL, "
    "PRIMARY KEY (name, uid))",
)
_DEFINITION_COLUMNS = (
    "name, version, uid, source, fingerprint, create_message, unload_message, loaded_at"
)


class StateError(RuntimeError):
    """The state folder or database cannot be used; str() is the one line to print."""


def _streams_json(streams: dict[str, StreamAck]) -> str:
    return json.dumps({name: ack.as_dict() for name, ack in streams.items()}, sort_keys=True)


def _streams(text: str) -> dict[str, StreamAck]:
    data: dict[str, dict[str, Any]] = json.loads(text)
    return {
        name: StreamAck(StreamState(a["state"]), a["op"], a["success"], a["reason"])
        for name, a in data.items()
    }


def _definition_row(d: Definition) -> tuple[Any, ...]:
    return (d.name, d.version, d.uid, d.source, d.fingerprint, d.create, d.unload, d.loaded_at)


def _definition(row: sqlite3.Row) -> Definition:
    return Definition(
        name=row["name"],
        version=row["version"],
        uid=row["uid"],
        source=row["source"],
        fingerprint=row["fingerprint"],
        create=bytes(row["create_message"]),
        unload=bytes(row["unload_message"]),
        loaded_at=row["loaded_at"],
    )


class StateDatabase:
    """The SQLite file of one proxy's state (see the module docstring).

    Use `StateDatabase.open`; `close` releases the folder.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, lock: IO[str]) -> None:
        self.path = path
        self._db = connection
        self._lock = lock

    @classmethod
    def open(cls, folder: Path) -> StateDatabase:
        """Open (or create) the state in `folder` and lock it for this process.

        Raises:
            StateError: the folder cannot be created, another proxy uses it, or the database
                is not one this proxy can read.
        """
        path = folder / FILE_NAME
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = (folder / LOCK_NAME).open("a+", encoding="utf-8")
        except OSError as exc:
            raise StateError(f"cannot use the state folder {folder}: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise StateError(
                f"the state folder {folder} is in use by another proxy (pid {holder})"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            connection = sqlite3.connect(path, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                with connection:
                    connection.execute("BEGIN")
                    for statement in _SCHEMA:
                        connection.execute(statement)
                    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StateError(
                    f"{path}: state schema version {version}, this proxy reads {SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            lock.close()
            raise StateError(f"{path}: cannot open the state database: {exc}") from None
        except StateError:
            lock.close()
            raise
        return cls(path, connection, lock)

    def load(self) -> list[tuple[PipelineRecord, int]]:
        """Every saved pipeline record with its name's highest version, sorted by name.

        Raises:
            StateError: a row that cannot be read.
        """
        try:
            retiring: dict[str, list[Retiring]] = {}
            for row in self._db.execute("SELECT * FROM retiring ORDER BY name, position"):
                retiring.setdefault(row["name"], []).append(
                    Retiring(
                        _definition(row),
                        row["timestamp"],
                        _streams(row["streams"]),
                        keep_topics=bool(row["keep_topics"]),
                    )
                )
            out: list[tuple[PipelineRecord, int]] = []
            for row in self._db.execute("SELECT * FROM pipelines ORDER BY name"):
                record = PipelineRecord(
                    _definition(row),
                    state=PipelineState(row["state"]),
                    reason=row["reason"],
                    timestamp=row["timestamp"],
                    operation=row["operation"],
                    streams=_streams(row["streams"]),
                    outdated=row["outdated"],
                    last_outdated=row["last_outdated"],
                    retiring=retiring.get(row["name"], []),
                    updated_at=row["updated_at"],
                )
                out.append((record, row["max_version"]))
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: cannot read the saved state: {exc}") from None
        return out

    def save(self, records: Iterable[PipelineRecord], max_version: Callable[[str], int]) -> None:
        """Write these records (and their retiring versions) in one transaction.

        Raises:
            StateError: the write failed (nothing of it is kept).
        """
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for r in records:
                    self._db.execute(
                        f"INSERT OR REPLACE INTO pipelines ({_DEFINITION_COLUMNS}, max_version, "
                        "state, reason, timestamp, operation, streams, outdated, last_outdated, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            *_definition_row(r.definition),
                            max_version(r.name),
                            str(r.state),
                            r.reason,
                            r.timestamp,
                            r.operation,
                            _streams_json(r.streams),
                            r.outdated,
                            r.last_outdated,
                            r.updated_at,
                        ),
                    )
                    self._db.execute("DELETE FROM retiring WHERE name = ?", (r.name,))
                    for position, retiree in enumerate(r.retiring):
                        self._db.execute(
                            f"INSERT INTO retiring ({_DEFINITION_COLUMNS}, position, timestamp, "
                            "streams, keep_topics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                *_definition_row(retiree.definition),
                                position,
                                retiree.timestamp,
                                _streams_json(retiree.streams),
                                int(retiree.keep_topics),
                            ),
                        )
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot save the state: {exc}") from None

    def close(self) -> None:
        """Close the database and release the folder."""
        self._db.close()
        self._lock.close()
