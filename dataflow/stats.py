"""Counters and fixed-bucket histograms of one step: plain numbers, cheap on the hot path.

Prometheus reads them on each scrape (`dataflow.metrics`); nothing here imports I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: Upper bounds in seconds, from 10 us (a wire conversion) to 60 s (a join window).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class Histogram:
    """Counts per bucket (cumulative on export), sum and count, like a Prometheus histogram."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Add one observation."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def observe_many(self, seconds: float, count: int) -> None:
        """Add `count` observations of `seconds` each (the records of one batch)."""
        if count <= 0:
            return
        self.counts[bisect_left(self.bounds, seconds)] += count
        self.total += seconds * count
        self.count += count

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs including `+Inf`."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass
class StepStats:
    """What one step did, read by the metrics, the probes and the tests."""

    records_in: int = 0
    filtered: int = 0
    records_out: int = 0
    acked: int = 0
    errors: int = 0
    send_failures: int = 0
    empty: int = 0  # converted to nothing (no tensor left, an empty message): no output
    late: int = 0  # behind stream time by more than the window when read
    state_records: int = 0  # entries held in the step's state store
    state_bytes: int = 0  # their keys and values
    restored: int = 0  # entries read back from the changelog
    state_full: int = 0  # times the state reached its bound (fetching paused)
    state_writes: int = 0  # entries written to the changelog (tombstones not counted)
    state_unwritten: int = 0  # entries that left the state before a flush wrote them
    last_error: str = ""
    waiting: str = ""  # why a step with records to read takes none (empty while it moves)
    stuck_seconds: float = 0.0  # how long it has taken none
    convert_seconds: Histogram = field(default_factory=Histogram)
    latency_seconds: Histogram = field(default_factory=Histogram)
