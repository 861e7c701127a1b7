"""Per-partition tracking of in-flight offsets: what is safe to commit.

A step consumes a record, may keep it in a join window or a batch, and produces outputs from it.
Its offset may only be committed once nothing still depends on it. `OffsetTracker` counts
references per offset:

* `hold` when a record is consumed, and once more for every pending output or stage that keeps it;
* `release` when that reference ends (the state machine released it, the broker acknowledged
  the output);
* `committable` gives, per partition, the offset to commit: the lowest offset still referenced, or
  the last seen offset + 1 when nothing is referenced. Offsets are never committed past a hole,
  whatever the order of releases.

Pure and synchronous: no clock, no I/O. Partitions (`tp`) are any hashable value.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchHold", "OffsetTracker"]

TP = TypeVar("TP", bound=Hashable)

# Rebuild a partition's heap once stale entries outnumber live ones by this factor (plus a floor).
_COMPACT_FACTOR = 2
_COMPACT_FLOOR = 64


@dataclass(slots=True)
class _Partition:
    refs: dict[int, int] = field(default_factory=dict)  # offset -> reference count (> 0)
    heap: list[int] = field(default_factory=list)  # offsets pushed when they became referenced
    last_seen: int = -1  # highest offset ever held or skipped
    committed: int = -1  # last committed (or baseline) next-offset

    def low_water(self) -> int:
        """The next offset to commit: lowest referenced offset, else last seen + 1."""
        heap = self.heap
        refs = self.refs
        while heap and heap[0] not in refs:
            heapq.heappop(heap)
        if heap:
            return heap[0]
        return self.last_seen + 1

    def compact(self) -> None:
        if len(self.heap) > _COMPACT_FACTOR * len(self.refs) + _COMPACT_FLOOR:
            self.heap = sorted(self.refs)  # a sorted list is a valid heap


class OffsetTracker(Generic[TP]):
    """Reference counts of in-flight offsets per topic-partition.

    The commit point of a partition is the lowest offset still referenced (Kafka commits the next
    offset to read), or the last seen offset + 1 when every offset seen has been released. Offsets
    that are released early (say 5 before 3) never let the commit point pass a referenced offset.

    A partition's baseline is the first offset seen for it: nothing is reported committable until
    the commit point moves beyond that baseline (committing the position the consumer started
    from would be a no-op).

    Example:
        >>> t: OffsetTracker[str] = OffsetTracker()
        >>> t.hold("p0", 3); t.hold("p0", 4); t.release("p0", 4)
        True
        >>> t.committable()
        {}
        >>> t.release("p0", 3)
        True
        >>> t.committable()
        {'p0': 5}
    """

    def __init__(self) -> None:
        """Create an empty tracker."""
        self._parts: dict[TP, _Partition] = {}

    def _part(self, tp: TP, offset: int) -> _Partition:
        part = self._parts.get(tp)
        if part is None:
            part = _Partition(last_seen=offset - 1, committed=offset)
            self._parts[tp] = part
        return part

    def hold(self, tp: TP, offset: int) -> None:
        """Add one reference to `offset` of partition `tp`.

        Call it when the record is consumed, and again for every further reference (each pending
        output the record contributes to, each stage that keeps it).

        Args:
            tp: The topic-partition (any hashable).
            offset: The record's offset.

        Raises:
            ValueError: If `offset` is negative.
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        part = self._part(tp, offset)
        count = part.refs.get(offset, 0)
        if count == 0:
            heapq.heappush(part.heap, offset)
        part.refs[offset] = count + 1
        if offset > part.last_seen:
            part.last_seen = offset

    def skip(self, tp: TP, offset: int) -> None:
        """Record that `offset` was seen and needs nothing (e.g. filtered out by the header filter).

        Equivalent to `hold` followed by `release`.

        Args:
            tp: The topic-partition.
            offset: The record's offset.

        Raises:
            ValueError: If `offset` is negative.
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        part = self._part(tp, offset)
        if offset > part.last_seen:
            part.last_seen = offset

    def release(self, tp: TP, offset: int) -> bool:
        """Remove one reference from `offset` of partition `tp`.

        Releasing an offset that holds no reference (typically a late delivery acknowledgement for
        a partition that was revoked and `forget`-ten) is ignored.

        Args:
            tp: The topic-partition.
            offset: The record's offset.

        Returns:
            True if a reference was removed, False if there was none to remove.
        """
        part = self._parts.get(tp)
        if part is None:
            return False
        count = part.refs.get(offset)
        if count is None:
            return False
        if count == 1:
            del part.refs[offset]
            part.compact()
        else:
            part.refs[offset] = count - 1
        return True

    def committable(self) -> dict[TP, int]:
        """The offsets to commit now.

        Returns:
            For each partition whose commit point advanced since the last `mark_committed` (or
            since its first offset was seen), the next offset to commit (Kafka semantics: the
            offset of the next record to read).
        """
        result: dict[TP, int] = {}
        for tp, part in self._parts.items():
            low = part.low_water()
            if low > part.committed:
                result[tp] = low
        return result

    def mark_committed(self, offsets: Mapping[TP, int]) -> None:
        """Record that `offsets` (as returned by `committable`) were committed.

        Partitions that were forgotten meanwhile are ignored; an offset lower than the one already
        recorded does not move the mark back.

        Args:
            offsets: Partition to committed next-offset.
        """
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None and offset > part.committed:
                part.committed = offset

    def pending_count(self, tp: TP | None = None) -> int:
        """The number of distinct offsets still referenced.

        Args:
            tp: Count only this partition; all partitions when None.

        Returns:
            How many offsets hold at least one reference.
        """
        if tp is not None:
            part = self._parts.get(tp)
            return 0 if part is None else len(part.refs)
        return sum(len(part.refs) for part in self._parts.values())

    def forget(self, tp: TP) -> None:
        """Drop every trace of partition `tp` (after it was revoked).

        Later `release` calls for it are ignored; if it is assigned again, tracking restarts from
        the first offset seen.

        Args:
            tp: The topic-partition.
        """
        self._parts.pop(tp, None)

    def partitions(self) -> list[TP]:
        """The partitions currently tracked.

        Returns:
            The partitions in first-seen order.
        """
        return list(self._parts)


class BatchHold(Generic[TP]):
    """One hold per partition for a group of records (a fetched batch, or the records whose
    state changes wait in a changelog flush), released once every record batch sent for them is
    acknowledged.

    `hold_from(tp, offset)` holds `tp` in the tracker from `offset`; each record batch sent counts
    one in `pending` and calls `done()` when acknowledged; `sealed()` says no more will be sent.
    The holds end when both are so, unless the partitions were revoked meanwhile (`generation`
    moved on): the tracker forgot them then.

    Args:
        tracker: the step's offset tracker.
        generation: the step's partition generation now (a callable: it moves on revocation).
    """

    __slots__ = ("_generation", "generation", "pending", "sealed_", "tps", "tracker")

    def __init__(self, tracker: OffsetTracker[TP], generation: Callable[[], int]) -> None:
        self.tracker = tracker
        self._generation = generation
        self.generation = generation()
        self.tps: list[tuple[TP, int]] = []
        self.pending = 0
        self.sealed_ = False

    def hold_from(self, tp: TP, offset: int) -> None:
        """Hold `tp` from `offset` until the group is done."""
        self.tracker.hold(tp, offset)
        self.tps.append((tp, offset))

    def sealed(self) -> None:
        """Every record batch of the group was sent."""
        self.sealed_ = True
        self._maybe_release()

    def done(self) -> None:
        """One record batch was acknowledged."""
        self.pending -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.sealed_ and self.pending == 0 and self.generation == self._generation():
            for tp, offset in self.tps:
                self.tracker.release(tp, offset)
            self.tps = []
