"""The engine's watchdog: how late the event loop runs, and steps that stopped moving.

One owned task (`Watchdog.run`, named `watchdog` by the engine). Every `interval` it sleeps and
measures how much later than asked it woke up: that is the event loop's lag, the time something
(a step working through a batch, a callback) held the loop without yielding. Lags go into a
histogram (`dataflow_event_loop_lag_seconds`) and a one-minute maximum (`describe`). About once
a second it asks every step whether it moved (`Step.watch`), so a step that has records to read
and takes none says why, even when its own loop is blocked.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from loguru import logger

from dataflow.stats import Histogram

__all__ = ["LoopLag", "Watchdog"]

#: Seconds between two samples of the loop's lag.
INTERVAL = 0.1
#: Seconds between two checks of the steps' progress.
WATCH_EVERY = 1.0
#: Seconds a lag counts towards `LoopLag.recent_max`.
RECENT = 60.0
#: A lag this long (s) is logged as a WARNING, at most once per `SLOW_LOG_EVERY` seconds.
SLOW = 1.0
SLOW_LOG_EVERY = 10.0


class Watched(Protocol):
    """What the watchdog asks of a step."""

    def watch(self, now: float) -> None:
        """Note progress at `now` (monotonic seconds); warn when stuck."""


class LoopLag:
    """Lags of the event loop: a histogram since start and the maximum of the last minute;
    and the time spent in full garbage collections (a cause of lag that is nobody's code)."""

    def __init__(self) -> None:
        self.histogram = Histogram()
        self.last = 0.0
        self._recent: deque[tuple[float, float]] = deque()  # (when, lag), maxima only
        self.gc_seconds = 0.0  # in collections of the oldest generation, since start
        self._gc_began = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A `gc.callbacks` hook: times collections of the oldest generation."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_began

    def observe(self, now: float, lag: float) -> None:
        """One sample at `now` (monotonic seconds)."""
        self.last = lag
        self.histogram.observe(lag)
        recent = self._recent
        while recent and recent[-1][1] <= lag:  # a monotonic queue: O(1) amortised
            recent.pop()
        recent.append((now, lag))
        while recent and recent[0][0] < now - RECENT:
            recent.popleft()

    def recent_max(self) -> float:
        """The largest lag of the last minute."""
        return self._recent[0][1] if self._recent else 0.0


class Watchdog:
    """Samples the loop's lag and checks the steps' progress.

    Args:
        steps: the steps running now (called on every check).
        interval: seconds between two lag samples.
        watch_every: seconds between two checks of the steps.
    """

    def __init__(
        self,
        steps: Callable[[], Iterable[Watched]],
        interval: float = INTERVAL,
        watch_every: float = WATCH_EVERY,
    ) -> None:
        self.steps = steps
        self.interval = interval
        self.watch_every = watch_every
        self.lag = LoopLag()

    async def run(self) -> None:
        """Until cancelled."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        logged = -SLOW_LOG_EVERY
        gc.callbacks.append(self.lag.on_gc)
        try:
            while True:
                asked = loop.time()
                in_gc = self.lag.gc_seconds
                ran = time.thread_time()  # the loop's own CPU: busy loop or waiting for a core
                await asyncio.sleep(self.interval)
                now = loop.time()
                lag = max(0.0, now - asked - self.interval)
                self.lag.observe(now, lag)
                if lag >= SLOW and now - logged >= SLOW_LOG_EVERY:
                    logged = now
                    logger.warning(
                        "event loop lag {:.2f}s: {}",
                        lag,
                        _lag_cause(
                            now - asked, time.thread_time() - ran, self.lag.gc_seconds - in_gc
                        ),
                    )
                if now - checked >= self.watch_every:
                    checked = now
                    self.check(time.monotonic())
        finally:
            gc.callbacks.remove(self.lag.on_gc)

    def check(self, now: float) -> None:
        """Ask every step whether it moved."""
        for step in list(self.steps()):
            try:
                step.watch(now)
            except Exception as exc:  # a step being torn down: the next check asks again
                logger.debug("watch {}: {!r}", step, exc)


def _lag_cause(wall: float, cpu: float, in_gc: float) -> str:
    """Why the loop woke late, from the CPU its thread used over `wall` seconds: a loop that
    ran most of the time was held by work (or a full collection); one that barely ran waited
    for a core the machine gave to others."""
    ran = f"the loop's thread ran {cpu:.2f}s of CPU in {wall:.2f}s"
    if in_gc >= 0.5 * wall:
        return f"{ran}, {in_gc:.2f}s of it in a full garbage collection"
    if cpu >= 0.5 * wall:
        return f"{ran}: something in the engine held the loop ({in_gc:.2f}s in full collections)"
    return f"{ran}: the process waited for a CPU (the machine is busy)"
