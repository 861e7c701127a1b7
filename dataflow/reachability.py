"""Whether the engine reaches its Kafka cluster: probed every second, for `/ready` and the logs.

A probe asks every known broker at once for the metadata of the topics the engine's pipelines
use, and succeeds with the first answer in which each of their partitions has a leader: one
broker down of several is no outage while the partitions have moved to the others
(`leaderless`), and a partition with no leader is one, however many brokers answer.

`/live` never looks at Kafka (a broker outage must not restart every engine); `/ready` turns 503
once no probe succeeded for `SELDON_BROKER_READY_TIMEOUT_MS`, and back to 200 with the next one
that does. The outage is logged twice: once when it starts and once, with its length and how many
client log lines were held back meanwhile (`dataflow.logs`), when the broker answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from dataflow import logs

__all__ = ["BrokerWatch", "leaderless"]


def leaderless(topics: list[Any]) -> list[str]:
    """`topic[partition]` (or `topic`: an error for the whole topic) of a metadata response's
    topics that no broker leads. Each item is `(error, topic, [is_internal,] partitions)`
    with partitions `(error, partition, leader, ...)`, as every MetadataResponse version."""
    missing: list[str] = []
    for item in topics:
        error, topic, partitions = item[0], item[1], item[-1]
        if error:
            missing.append(f"{topic} (error {error})")
            continue
        for partition in partitions:
            if partition[2] < 0:
                missing.append(f"{topic}[{partition[1]}]")
    return sorted(missing)


class BrokerWatch:
    """Probes the broker with `probe` every `interval` seconds.

    Args:
        probe: one round trip to the broker (a metadata request); raises when it cannot.
        ready_timeout: seconds without a successful probe after which the engine is not ready.
        interval: seconds between probes.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[Any]],
        ready_timeout: float,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.ready_timeout = ready_timeout
        self.interval = interval
        self._clock = clock
        self.last_ok = clock()
        self.down_since: float | None = None
        self.last_error = ""

    @property
    def reachable(self) -> bool:
        """True unless no probe succeeded for `ready_timeout` seconds."""
        return self._clock() - self.last_ok <= self.ready_timeout

    def check(self) -> tuple[bool, str]:
        """The readiness check: (ok, message)."""
        if self.reachable:
            return True, "kafka reachable"
        down = self._clock() - self.last_ok
        return False, f"kafka unreachable for {down:.0f}s: {self.last_error}"

    async def probe_once(self) -> bool:
        """One probe; logs the start and the end of an outage."""
        try:
            await asyncio.wait_for(self._probe(), max(self.interval * 2, 1.0))
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if self.down_since is None:
                self.down_since = self.last_ok
                logger.warning("kafka unreachable: {}", self.last_error)
            return False
        now = self._clock()
        if self.down_since is not None:
            held = logs.take_suppressed()
            extra = f" ({held} client log lines held back)" if held else ""
            logger.info(
                "kafka unreachable for {:.0f} s; reconnected{}", now - self.down_since, extra
            )
            self.down_since = None
        self.last_ok = now
        return True

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)
