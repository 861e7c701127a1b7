"""A step's stream time over its source partitions, and which partitions to pause.

Joins and trigger gates decide by record time, as Kafka Streams does: a window closes when the
step's stream time passes it, never because a partner's source has not been read yet. Each
partition's time is the largest record timestamp processed from it. Stream time is:

* while some partitions lag (records left to read), the lowest time among the lagging ones: what
  is still to be read there can be as old as that, so nothing younger may close (a lagging
  partition with no record processed yet holds stream time at None: nothing closes);
* when none lags, the highest partition time (Kafka Streams' task stream time);

and never goes back. While catching up, a partition more than `slack_ms` ahead of stream time is
paused (`ahead`), so sources are read in step and state does not fill with one source's backlog.

Cost: the caller tells which partitions lag once per fetched batch (`lagging`, O(partitions)),
then per record `observe`, `caught_up` and `now` cost O(log partitions) amortised, whatever the
backlog: the lagging partitions' times sit in a heap with stale entries dropped lazily.

Pure: partitions are any hashable, lag is told by the caller. No clock, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["StreamTime"]

TP = TypeVar("TP", bound=Hashable)

# Rebuild the heap once it holds this many times more entries than lagging partitions (+ floor).
_COMPACT_FACTOR = 4
_COMPACT_FLOOR = 64


class StreamTime(Generic[TP]):
    """Partition times and the stream time of one step.

    Example:
        >>> st: StreamTime[str] = StreamTime()
        >>> st.assign(["a", "b"])
        >>> st.observe("a", 5_000)
        >>> st.now(lagging={"b"}) is None  # b not read yet: nothing may close
        True
        >>> st.observe("b", 1_000)
        >>> st.now(lagging={"b"})
        1000
        >>> st.now(lagging=set())
        5000
    """

    def __init__(self) -> None:
        """Create a stream time with no partitions."""
        self._times: dict[TP, int | None] = {}
        self._stream: int | None = None
        self._newest: int | None = None  # the highest partition time
        self._lagging: set[TP] = set()  # assigned partitions with records left to read
        self._unread = 0  # lagging partitions with no time yet
        self._heap: list[tuple[int, int, TP]] = []  # (time, seq, tp) of lagging partitions
        self._seq = itertools.count()

    def assign(self, partitions: Iterable[TP]) -> None:
        """Track `partitions` (kept partitions keep their time).

        Args:
            partitions: The step's partitions now.
        """
        wanted = set(partitions)
        self._times = {tp: self._times.get(tp) for tp in wanted}
        known = [t for t in self._times.values() if t is not None]
        self._newest = max(known) if known else None
        self.lagging(self._lagging)

    def lagging(self, lagging: Iterable[TP]) -> None:
        """Say which partitions have records left to read (O(partitions): once per batch).

        Args:
            lagging: Partitions behind their end offset (unassigned ones are ignored).
        """
        times = self._times
        self._lagging = {tp for tp in lagging if tp in times}
        self._unread = sum(1 for tp in self._lagging if times[tp] is None)
        self._rebuild()

    def caught_up(self, tp: TP) -> None:
        """`tp` was read to its end: it no longer holds stream time back.

        Args:
            tp: The partition.
        """
        if tp in self._lagging:
            self._lagging.discard(tp)
            if self._times.get(tp) is None:
                self._unread -= 1

    def observe(self, tp: TP, timestamp_ms: int) -> None:
        """A record of `tp` with `timestamp_ms` was processed.

        Args:
            tp: The partition.
            timestamp_ms: The record's timestamp.
        """
        current = self._times.get(tp)
        if current is not None and timestamp_ms <= current:
            return
        self._times[tp] = timestamp_ms
        if self._newest is None or timestamp_ms > self._newest:
            self._newest = timestamp_ms
        if tp in self._lagging:
            if current is None:
                self._unread -= 1
            heapq.heappush(self._heap, (timestamp_ms, next(self._seq), tp))
            if len(self._heap) > _COMPACT_FACTOR * len(self._lagging) + _COMPACT_FLOOR:
                self._rebuild()

    def time_of(self, tp: TP) -> int | None:
        """The partition's time (largest timestamp processed), or None."""
        return self._times.get(tp)

    def now(self, lagging: Collection[TP] | None = None) -> int | None:
        """The stream time.

        Args:
            lagging: Partitions behind their end offset, if they changed since the last
                `lagging` call (None: as last told, with `caught_up` since).

        Returns:
            Stream time in ms, or None while it is unknown.
        """
        if lagging is not None:
            self.lagging(lagging)
        candidate: int | None
        if self._lagging:
            if self._unread:
                return self._stream
            heap, times, lag = self._heap, self._times, self._lagging
            while heap and (heap[0][2] not in lag or times[heap[0][2]] != heap[0][0]):
                heapq.heappop(heap)
            candidate = heap[0][0] if heap else None
        else:
            candidate = self._newest
        if candidate is not None and (self._stream is None or candidate > self._stream):
            self._stream = candidate
        return self._stream

    def holder(self) -> TP | None:
        """The lagging partition that holds stream time back (the lowest, or one not read
        yet), or None when nothing lags."""
        if not self._lagging:
            return None
        times = self._times
        return min(self._lagging, key=lambda tp: (times[tp] is not None, times[tp] or 0))

    def ahead(self, lagging: Collection[TP], slack_ms: int) -> set[TP]:
        """Partitions to pause: more than `slack_ms` ahead of stream time while others lag.

        Args:
            lagging: Partitions behind their end offset.
            slack_ms: How far ahead a partition may read (the window).

        Returns:
            The partitions to pause (empty when nothing lags).
        """
        if not any(tp in self._times for tp in lagging):
            return set()
        lag_times = [self._times.get(tp) for tp in lagging if tp in self._times]
        if any(t is None for t in lag_times):
            floor = None
        else:
            floor = min(t for t in lag_times if t is not None)
        # The partitions holding stream time back (and unread ones) are never paused.
        return {
            tp
            for tp, t in self._times.items()
            if t is not None and (floor is None or t > floor + slack_ms)
        }

    def _rebuild(self) -> None:
        times = self._times
        self._heap = [
            (t, next(self._seq), tp) for tp in self._lagging if (t := times[tp]) is not None
        ]
        heapq.heapify(self._heap)
