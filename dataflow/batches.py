"""Request batching as a pure, clock-injected state machine (spec 4.8, with a window timer).

Values are opaque bytes: merging and row counting are injected (`wire.merge_batch`,
`wire.batch_rows`). Results use the same `Output`/`Step` types and token contract as
`dataflow.joins`: every token handed in is released exactly once, in the `Step` that emits the
batch it is in (or by `discard`), and a batch output lists every token in it as a contributor.
Each request held is an `Entry` (kind `"b"`) listed in `Step.stored` when added and in
`Step.removed` when its batch is emitted, for the caller's changelog; `load` restores one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from dataflow.joins import Entry, Output, Step

__all__ = ["Batcher"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    entry: Entry[T]
    key: bytes | None
    value: bytes
    timestamp_ms: int
    token: T
    rows: int


class Batcher(Generic[T]):
    """Accumulates requests into one batch and emits it by size or by window.

    As in the reference, all keys share one batch (the earlier records' keys are lost: the
    output takes the key, headers and timestamp of the LAST record). The batch is emitted:

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
        if size is None and window_ms is None:
            raise ValueError("a batch needs a size, a window, or both")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if window_ms is not None and window_ms < 1:
            raise ValueError(f"window_ms must be >= 1, got {window_ms}")
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
    ) -> Step[T]:
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
        step = self.expire(now_ms)
        entry = Entry("b", -1, key or b"", value, timestamp_ms, token, ident)
        self._append(entry, key, now_ms)
        step.stored.append(entry)
        if self._size is not None and self._row_count >= self._size:
            step.extend(self._emit())
        return step

    def load(self, entry: Entry[T], key: bytes | None, now_ms: int) -> None:
        """Put back a restored request (from a changelog); its batch's window starts now.

        Args:
            entry: A `"b"` entry as listed in some `Step.stored`.
            key: The record key (None when the record had none).
            now_ms: The wall clock.
        """
        self._append(entry, key, now_ms)

    def _append(self, entry: Entry[T], key: bytes | None, now_ms: int) -> None:
        if not self._items and self._window_ms is not None:
            self._deadline = now_ms + self._window_ms
        value = entry.value
        item = _Item(entry, key, value, entry.timestamp_ms, entry.token, self._rows(value))
        self._items.append(item)
        self._row_count += item.rows

    def full(self) -> Step[T]:
        """Emit the open batch now (the step's state is full: back-pressure, never a drop).

        Returns:
            The emitted batch, if any, and the tokens released with it.
        """
        return self._emit() if self._items else Step()

    def expire(self, now_ms: int) -> Step[T]:
        """Emit the partial batch if its window ended at or before `now_ms`.

        Args:
            now_ms: The wall clock.

        Returns:
            The emitted batch, if any, and the tokens released with it.
        """
        if self._deadline is not None and self._deadline <= now_ms and self._items:
            return self._emit()
        return Step()

    def _emit(self) -> Step[T]:
        items = self._items
        self._items = []
        self._row_count = 0
        self._deadline = None
        last = items[-1]
        tokens = [item.token for item in items]
        try:
            merged, error = self._merge([item.value for item in items]), ""
        except Exception as exc:  # the batch goes to the error topic; the batcher carries on
            merged, error = b"", f"cannot batch: {exc}"
        # Timestamped as the latest of its parts (Kafka Streams' rule for derived records).
        latest = max(item.timestamp_ms for item in items)
        output = Output(last.key, merged, latest, last.token, tuple(tokens), error)
        return Step([output], tokens, [], [item.entry for item in items])

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop held requests whose token satisfies `predicate`, with no output.

        For partitions that were revoked: their records will be consumed again elsewhere. The
        batch's window keeps its start unless the batch becomes empty.

        Args:
            predicate: Selects the tokens to drop.

        Returns:
            The tokens released, in arrival order.
        """
        kept = [item for item in self._items if not predicate(item.token)]
        released = [item.token for item in self._items if predicate(item.token)]
        self._items = kept
        self._row_count = sum(item.rows for item in kept)
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
