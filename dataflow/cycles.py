"""Revisit counting for cyclic pipelines (spec 4.10), pure and clock-injected.

With `allowCycles`, each step counts how often a request (record key) was sent to each sink
topic. Past `max_revisits` the record is replaced by an error text (routed by the step to the
pipeline's error topic); reaching the pipeline outputs topic forgets the request. Unlike the
reference's store (in Kafka, kept forever), entries untouched for `ttl_ms` are dropped, so
requests that never reach the outputs do not leak memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["ERROR_PREFIX", "RevisitGuard"]

ERROR_PREFIX = "ERROR:"
"""Values starting with this text go to the pipeline error topic instead of the sink."""

DEFAULT_TTL_MS = 10 * 60 * 1000


@dataclass(slots=True)
class _Count:
    count: int
    touched_ms: int


class RevisitGuard:
    """Counts visits per (request key, sink topic) and stops runaway cycles.

    `visit` follows the reference: count = visits so far (0 at first); for the pipeline outputs
    topic every entry of the key is deleted and the record is forwarded (not counted); else if
    count > `max_revisits` the error text is returned, otherwise None (forward); in both cases the
    count becomes count + 1. So `max_revisits + 1` visits of one sink pass and later ones fail.

    Entries are for exactly the given key; the reference deletes every store key that merely
    starts with the request key (so finishing request `1` also reset `10`, `11`, ...).

    `now_ms` should not go backwards (use a monotonic clock): entries are kept in touch order.

    Args:
        max_revisits: The step's `maxStepRevisits` (>= 0).
        ttl_ms: Entries untouched for this long are dropped (> 0, default 10 minutes).

    Raises:
        ValueError: On a negative `max_revisits` or a non-positive `ttl_ms`.
    """

    def __init__(self, max_revisits: int, *, ttl_ms: int = DEFAULT_TTL_MS) -> None:
        """Create an empty guard (see the class docstring for the arguments)."""
        if max_revisits < 0:
            raise ValueError(f"max_revisits must be >= 0, got {max_revisits}")
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        self._max = max_revisits
        self._ttl_ms = ttl_ms
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()  # oldest touch first
        self._sinks: dict[str, set[str]] = {}  # key -> sinks with an entry

    def visit(
        self, key: str, sink_topic: str, to_pipeline_outputs: bool, now_ms: int
    ) -> str | None:
        """Count one record of request `key` about to be sent to `sink_topic`.

        Args:
            key: The record key (request id).
            sink_topic: The step's sink topic name.
            to_pipeline_outputs: Whether `sink_topic` is the pipeline's outputs topic.
            now_ms: The wall clock.

        Returns:
            None to forward the record unchanged, or the error text to send instead:
            `ERROR: Max step revisits (<N>) exceeded for request <key> in topic <sink_topic>`.
        """
        self.expire(now_ms)
        if to_pipeline_outputs:
            for sink in self._sinks.pop(key, ()):
                del self._counts[(key, sink)]
            return None
        entry = self._counts.get((key, sink_topic))
        if entry is None:
            self._counts[(key, sink_topic)] = _Count(1, now_ms)
            self._sinks.setdefault(key, set()).add(sink_topic)
            count = 0
        else:
            count = entry.count
            entry.count = count + 1
            entry.touched_ms = now_ms
            self._counts.move_to_end((key, sink_topic))
        if count > self._max:
            return (
                f"{ERROR_PREFIX} Max step revisits ({self._max}) exceeded for request {key} "
                f"in topic {sink_topic}"
            )
        return None

    def expire(self, now_ms: int) -> int:
        """Drop the entries untouched for `ttl_ms` or longer.

        Args:
            now_ms: The wall clock.

        Returns:
            How many entries were dropped.
        """
        dropped = 0
        counts = self._counts
        while counts:
            (key, sink), entry = next(iter(counts.items()))
            if entry.touched_ms + self._ttl_ms > now_ms:
                break
            del counts[(key, sink)]
            sinks = self._sinks[key]
            sinks.discard(sink)
            if not sinks:
                del self._sinks[key]
            dropped += 1
        return dropped

    def count(self, key: str, sink_topic: str) -> int:
        """Visits recorded so far for `key` toward `sink_topic` (0 if none)."""
        entry = self._counts.get((key, sink_topic))
        return 0 if entry is None else entry.count

    def __len__(self) -> int:
        """The number of (key, sink) entries held."""
        return len(self._counts)

    def next_deadline(self) -> int | None:
        """The wall-clock ms at which the oldest entry expires, None if there is none."""
        if not self._counts:
            return None
        entry = next(iter(self._counts.values()))
        return entry.touched_ms + self._ttl_ms
