"""Request batching as a pure, clock-injected state machine (spec 4.8, with a window timer).

Values are opaque bytes: merging and row counting are injected (`wire.merge_batch`,
`wire.batch_rows`). Results use the same `Output`/`Result` types and token contract as
`dataflow.windows`: every token handed in is released exactly once, in the `Result` that emits the
batch it is in (or by `discard`), and a batch output lists every token in it as a contributor.
Each request held is an `Entry` (kind `"b"`) listed in `Result.stored` when added and in
`Result.removed` when its batch is emitted, for the caller's changelog; `load` restores one.

A step batches with a `PartitionBatcher`: one `Batcher` per input partition, as the reference
keeps one batch store per stream task, so a batch never mixes records of two partitions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Generic, TypeVar

from dataflow.windows import Entry, EntryKind, Output, Result

__all__ = ["Batcher", "PartitionBatcher"]

T = TypeVar("T")


def _check(size: int | None, window_ms: int | None) -> None:
    if size is None and window_ms is None:
        raise ValueError("a batch needs a size, a window, or both")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if window_ms is not None and window_ms < 1:
        raise ValueError(f"window_ms must be >= 1, got {window_ms}")


_BATCH = EntryKind.BATCH  # an enum member costs a class attribute lookup per use

_Item = tuple[Entry[T], bytes | None, int]
"""A request in a batch: its entry, its key (None when the record had none), its rows."""


class Batcher(Generic[T]):
    """Accumulates requests into one batch and emits it by size or by window.

    As in the reference, all keys share one batch (the earlier records' keys are lost: the
    output takes the key, headers and timestamp of the LAST record); a step keeps one batcher
    per input partition (`PartitionBatcher`). The batch is emitted:

    * by size: as soon as the sum of `rows(value)` over the batch is >= `size` (the reference
      compares the merged request's first input's dim 0, which is that sum when all requests
      carry the same first tensor);
    * by window (a fix: the reference has no timer, so a partial batch waits forever): when
      `window_ms` of wall clock have passed since the batch's first record arrived, evaluated by
      `expire(now_ms)` (and at the start of `add`) with no further traffic needed.

    Args:
        size: Rows that complete a batch (>= 1), or None to batch by window only.
        window_ms: Longest time a batch stays open (>= 1), or None to batch by size only.
        merge: Merges the batch's values, in arrival order, into one value.
        rows: Rows (dim 0) of one value.

    Raises:
        ValueError: If both `size` and `window_ms` are None, or either is < 1.
    """

    def __init__(
        self,
        size: int | None,
        window_ms: int | None,
        merge: Callable[[Sequence[bytes]], bytes],
        rows: Callable[[bytes], int],
    ) -> None:
        """Create an empty batcher (see the class docstring for the arguments)."""
        _check(size, window_ms)
        self._size = size
        self._window_ms = window_ms
        self._merge = merge
        self._rows = rows
        self._items: list[_Item[T]] = []
        self._row_count = 0
        self._deadline: int | None = None

    def add(
        self,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        *,
        ident: bytes = b"",
    ) -> Result[T]:
        """Add one request to the batch.

        A batch whose window ended by `now_ms` is emitted first; this record then starts a new one.

        Args:
            key: The record key.
            value: The request (opaque).
            timestamp_ms: The record timestamp.
            token: The record's token.
            now_ms: The wall clock.
            ident: The entry's name (its changelog key).

        Returns:
            The emitted batch, if any, and the tokens released with it.
        """
        step: Result[T] = Result([], [], [], [])
        if self._items and self._deadline is not None and self._deadline <= now_ms:
            self._emit(step)  # as `expire(now_ms)`
        entry = Entry(_BATCH, -1, key or b"", value, timestamp_ms, token, ident)
        self._append(entry, key, now_ms)
        step.stored.append(entry)
        if self._size is not None and self._row_count >= self._size:
            self._emit(step)
        return step

    def load(self, entry: Entry[T], key: bytes | None, now_ms: int) -> None:
        """Put back a restored request (from a changelog); its batch's window starts now.

        Args:
            entry: A `"b"` entry as listed in some `Result.stored`.
            key: The record key (None when the record had none).
            now_ms: The wall clock.
        """
        self._append(entry, key, now_ms)

    def _append(self, entry: Entry[T], key: bytes | None, now_ms: int) -> None:
        if not self._items and self._window_ms is not None:
            self._deadline = now_ms + self._window_ms
        rows = self._rows(entry.value)
        self._items.append((entry, key, rows))
        self._row_count += rows

    def full(self) -> Result[T]:
        """Emit the open batch now (the step's state is full: back-pressure, never a drop).

        Returns:
            The emitted batch, if any, and the tokens released with it.
        """
        return self._emit(Result()) if self._items else Result()

    def expire(self, now_ms: int) -> Result[T]:
        """Emit the partial batch if its window ended at or before `now_ms`.

        Args:
            now_ms: The wall clock.

        Returns:
            The emitted batch, if any, and the tokens released with it.
        """
        if self._deadline is not None and self._deadline <= now_ms and self._items:
            return self._emit(Result())
        return Result()

    def _emit(self, step: Result[T]) -> Result[T]:
        """Emit the open batch (not empty) into `step`, which it returns."""
        items = self._items
        self._items = []
        self._row_count = 0
        self._deadline = None
        entries = [item[0] for item in items]
        tokens = [entry.token for entry in entries]
        try:
            merged, error = self._merge([entry.value for entry in entries]), ""
        except Exception as exc:  # the batch goes to the error topic; the batcher carries on
            merged, error = b"", f"cannot batch: {exc}"
        # Timestamped as the latest of its parts (Kafka Streams' rule for derived records).
        latest = max(entry.timestamp_ms for entry in entries)
        last, last_key, _ = items[-1]
        step.outputs.append(Output(last_key, merged, latest, last.token, tuple(tokens), error))
        step.released += tokens
        step.removed += entries
        return step

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop held requests whose token satisfies `predicate`, with no output.

        For partitions that were revoked: their records will be consumed again elsewhere. The
        batch's window keeps its start unless the batch becomes empty.

        Args:
            predicate: Selects the tokens to drop.

        Returns:
            The tokens released, in arrival order.
        """
        kept = [item for item in self._items if not predicate(item[0].token)]
        released = [item[0].token for item in self._items if predicate(item[0].token)]
        self._items = kept
        self._row_count = sum(rows for _, _, rows in kept)
        if not kept:
            self._deadline = None
        return released

    def held(self) -> int:
        """The number of requests in the open batch."""
        return len(self._items)

    def rows_held(self) -> int:
        """The number of rows in the open batch."""
        return self._row_count

    def next_deadline(self) -> int | None:
        """Wall-clock ms at which the open batch's window ends (None: no batch, or no window)."""
        return self._deadline if self._items else None


class PartitionBatcher(Generic[T]):
    """One `Batcher` per input partition: a batch never mixes records of two partitions.

    The reference batches in a processor with one `batch-store` per stream task, and a task
    reads one partition (of each source topic): so each input partition has its own open
    batch, and the batch goes out with the key, headers and timestamp of its last record. With
    gateway keys (`<partition>.<pipeline>.<id>`) that is the partition the batch's records came
    from (the sink partition is the key's numeric prefix, spec 4.12), so the gateway that waits
    on that partition sees the answer.

    A partition's `Batcher` is created when a record of it arrives with no batch open and
    dropped when its batch is emitted or discarded: only open batches are kept. `add` and `load`
    cost one dict lookup more than a single `Batcher`; `expire`, `full`, `next_deadline`,
    `held` and `discard` (called per fetch or poll, not per record) look at the open batches
    only.

    Args:
        size: Rows that complete a batch (>= 1), or None to batch by window only.
        window_ms: Longest time a batch stays open (>= 1), or None to batch by size only.
        merge: Merges a batch's values, in arrival order, into one value.
        rows: Rows (dim 0) of one value.
        partition: The input partition of a token (any hashable: the step uses the record's
            topic-partition).

    Raises:
        ValueError: If both `size` and `window_ms` are None, or either is < 1.
    """

    def __init__(
        self,
        size: int | None,
        window_ms: int | None,
        merge: Callable[[Sequence[bytes]], bytes],
        rows: Callable[[bytes], int],
        *,
        partition: Callable[[T], Hashable],
    ) -> None:
        """Create with no open batch (see the class docstring for the arguments)."""
        _check(size, window_ms)
        self._new = partial(Batcher[T], size, window_ms, merge, rows)
        self._window_ms = window_ms
        self._partition = partition
        self._open: dict[Hashable, Batcher[T]] = {}

    def _batcher(self, token: T) -> tuple[Hashable, Batcher[T]]:
        part = self._partition(token)
        batcher = self._open.get(part)
        if batcher is None:
            batcher = self._new()
            self._open[part] = batcher
        return part, batcher

    def add(
        self,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int,
        token: T,
        now_ms: int,
        *,
        ident: bytes = b"",
    ) -> Result[T]:
        """Add one request to the batch of its partition (see `Batcher.add`).

        Only that partition's batch is looked at: a window of another partition that ended is
        emitted by `expire`.

        Returns:
            The batch of this partition emitted, if any, and the tokens released with it.
        """
        part = self._partition(token)
        batcher = self._open.get(part)
        if batcher is None:
            batcher = self._open[part] = self._new()
        step = batcher.add(key, value, timestamp_ms, token, now_ms, ident=ident)
        if not batcher._items:  # emitted: only open batches are kept
            del self._open[part]
        return step

    def load(self, entry: Entry[T], key: bytes | None, now_ms: int) -> None:
        """Put back a restored request in its partition's batch (see `Batcher.load`)."""
        self._batcher(entry.token)[1].load(entry, key, now_ms)

    def expire(self, now_ms: int) -> Result[T]:
        """Emit every batch whose window ended at or before `now_ms`, earliest deadline first.

        Args:
            now_ms: The wall clock.

        Returns:
            The emitted batches, if any, and the tokens released with them.
        """
        due = [
            (deadline, n, part)
            for n, (part, batcher) in enumerate(self._open.items())
            if (deadline := batcher.next_deadline()) is not None and deadline <= now_ms
        ]
        step: Result[T] = Result()
        for _, _, part in sorted(due, key=lambda item: item[:2]):
            step.extend(self._open.pop(part).expire(now_ms))
        return step

    def full(self) -> Result[T]:
        """Emit every open batch now (the step's state is full), in order of opening.

        Returns:
            The emitted batches, if any, and the tokens released with them.
        """
        step: Result[T] = Result()
        for batcher in self._open.values():
            step.extend(batcher.full())
        self._open.clear()
        return step

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop held requests whose token satisfies `predicate`, with no output.

        For partitions that were revoked: their records will be consumed again elsewhere, and
        their batches (emptied) are dropped.

        Args:
            predicate: Selects the tokens to drop.

        Returns:
            The tokens released, partition by partition, in arrival order.
        """
        released: list[T] = []
        for part, batcher in list(self._open.items()):
            released += batcher.discard(predicate)
            if not batcher.held():
                del self._open[part]
        return released

    def held(self) -> int:
        """The number of requests in open batches."""
        return sum(batcher.held() for batcher in self._open.values())

    def rows_held(self) -> int:
        """The number of rows in open batches."""
        return sum(batcher.rows_held() for batcher in self._open.values())

    def partitions(self) -> int:
        """The number of partitions with an open batch."""
        return len(self._open)

    def next_deadline(self) -> int | None:
        """Wall-clock ms at which the first open batch's window ends (None: none, or no window)."""
        if self._window_ms is None:
            return None
        deadlines = [d for b in self._open.values() if (d := b.next_deadline()) is not None]
        return min(deadlines) if deadlines else None
