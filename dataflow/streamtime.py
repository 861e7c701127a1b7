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

Pure: partitions are any hashable, lag is told by the caller. No clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["StreamTime"]

TP = TypeVar("TP", bound=Hashable)


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

    def assign(self, partitions: Iterable[TP]) -> None:
        """Track `partitions` (kept partitions keep their time).

        Args:
            partitions: The step's partitions now.
        """
        wanted = set(partitions)
        self._times = {tp: self._times.get(tp) for tp in wanted}

    def observe(self, tp: TP, timestamp_ms: int) -> None:
        """A record of `tp` with `timestamp_ms` was processed.

        Args:
            tp: The partition.
            timestamp_ms: The record's timestamp.
        """
        current = self._times.get(tp)
        if current is None or timestamp_ms > current:
            self._times[tp] = timestamp_ms

    def time_of(self, tp: TP) -> int | None:
        """The partition's time (largest timestamp processed), or None."""
        return self._times.get(tp)

    def now(self, lagging: Collection[TP]) -> int | None:
        """The stream time given which partitions still have records to read.

        Args:
            lagging: Partitions behind their end offset.

        Returns:
            Stream time in ms, or None while it is unknown.
        """
        lag = [tp for tp in lagging if tp in self._times]
        if lag:
            times = [self._times[tp] for tp in lag]
            if any(t is None for t in times):
                return self._stream
            candidate: int | None = min(t for t in times if t is not None)
        else:
            known = [t for t in self._times.values() if t is not None]
            candidate = max(known) if known else None
        if candidate is not None and (self._stream is None or candidate > self._stream):
            self._stream = candidate
        return self._stream

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
