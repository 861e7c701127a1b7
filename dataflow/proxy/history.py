"""The last minutes of every step's figures, kept by the proxy, and the trouble they show.

Pure: no I/O. The proxy samples its engines every `SAMPLE_S` seconds (`ProxyServer`'s history
task) and adds each pipeline's merged description (`dataflow.describe.merge`) here; the live
page draws the samples as sparklines, and the live page, `dataflow status` and `dataflow
describe` all show the same trouble signals, computed once here (`trouble_of`):

* **stalled**: the engine's watchdog says the step waits (records to read, none taken for
  10 s, and why), or the step has lag and read nothing over the last `STALL_S` seconds;
* **lag growing**: its lag is higher than `GROWING_S` seconds ago and rose at every one of the
  last three samples;
* **errors**: records sent to the error topic within the last `ERRORS_S` seconds.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["History", "Sample", "trouble_of"]

#: Seconds between two samples, and of history kept (a sparkline spans the whole history).
SAMPLE_S = 5.0
KEEP_S = 600.0
#: Windows of the trouble signals, in seconds.
STALL_S = 30.0
GROWING_S = 60.0
ERRORS_S = 60.0


class Sample(NamedTuple):
    """One step's figures at one time (monotonic seconds); totals summed over engines."""

    t: float
    records_in: int
    records_out: int
    errors: int
    lag: int
    held: int


def _sample(t: float, live: Mapping[str, Any]) -> Sample:
    totals = live.get("totals") or {}
    return Sample(
        t,
        int(totals.get("records_in", 0)),
        int(totals.get("records_out", 0)),
        int(totals.get("errors", 0)),
        int(live.get("lag_total", 0)),
        int(live.get("state_records", 0)),
    )


def _delta(new: int, old: int) -> int:
    return new - old if new >= old else new  # a counter that went down (a rebuild) restarts at 0


def _at_or_before(samples: Sequence[Sample], t: float) -> Sample:
    """The newest sample taken at or before `t`, else the oldest."""
    found = samples[0]
    for s in samples:
        if s.t > t:
            break
        found = s
    return found


def trouble_of(samples: Sequence[Sample], live: Mapping[str, Any] | None) -> list[str]:
    """The trouble signals of one step from its samples (oldest first) and its latest live
    figures (the watchdog's `waiting`); [] when all is well."""
    out: list[str] = []
    live = live or {}
    if live.get("waiting"):
        out.append(f"stalled {live.get('stuck_seconds', 0):.0f}s: {live['waiting']}")
    if not samples:
        return out
    last = samples[-1]
    since = last  # the oldest sample of the run that read nothing up to the last one
    for sample in reversed(samples):
        if sample.records_in != last.records_in:
            break
        since = sample
    idle = last.t - since.t
    if not out and last.lag > 0 and idle >= STALL_S:
        out.append(f"stalled: lag {last.lag}, nothing read for {idle:.0f}s")
    base = _at_or_before(samples, last.t - GROWING_S)
    recent = samples[-4:]
    if (
        len(recent) == 4
        and last.lag > base.lag
        and all(b.lag > a.lag for a, b in itertools.pairwise(recent))
    ):
        out.append(f"lag growing: {base.lag} -> {last.lag} in {last.t - base.t:.0f}s")
    base = _at_or_before(samples, last.t - ERRORS_S)
    errors = _delta(last.errors, base.errors) if base is not last else 0
    if errors:
        reason = live.get("last_error") or ""
        out.append(
            f"{errors} error{'s' if errors != 1 else ''} in the last minute"
            + (f" (last: {reason})" if reason else "")
        )
    return out


def rates(samples: Sequence[Sample]) -> list[list[float]]:
    """`[age s, in/s, out/s, lag]` per interval between two samples, oldest first (the
    sparkline's points; the age is of the interval's end, relative to the newest sample)."""
    if len(samples) < 2:
        return []
    now = samples[-1].t
    out: list[list[float]] = []
    for a, b in itertools.pairwise(samples):
        span = b.t - a.t
        if span <= 0:
            continue
        out.append(
            [
                round(now - b.t, 1),
                round(_delta(b.records_in, a.records_in) / span, 2),
                round(_delta(b.records_out, a.records_out) / span, 2),
                b.lag,
            ]
        )
    return out


class History:
    """Samples per (pipeline, uid, step index), `KEEP_S` seconds of them.

    Args:
        keep: seconds of samples kept.
    """

    def __init__(self, keep: float = KEEP_S) -> None:
        self.keep = keep
        self._samples: dict[tuple[str, str, int], deque[Sample]] = {}
        self._live: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        self._names: dict[tuple[str, str, int], str] = {}

    def add(self, now: float, described: Mapping[str, Any]) -> None:
        """Add a sample of every step of one pipeline's merged description."""
        name, uid = str(described.get("name")), str(described.get("uid"))
        for step in described.get("steps") or []:
            live = step.get("live")
            if live is None:
                continue
            key = (name, uid, int(step["index"]))
            ring = self._samples.setdefault(key, deque())
            ring.append(_sample(now, live))
            while len(ring) > 2 and now - ring[1].t >= self.keep:
                ring.popleft()
            self._live[key] = live
            self._names[key] = str(step.get("name", key[2]))

    def forget(self, keep: Iterable[tuple[str, str]]) -> None:
        """Drop the samples of every pipeline version not in `keep` ((name, uid) pairs)."""
        kept = set(keep)
        for key in [k for k in self._samples if k[:2] not in kept]:
            del self._samples[key]
            self._live.pop(key, None)
            self._names.pop(key, None)

    def samples(self, name: str, uid: str, index: int) -> list[Sample]:
        """One step's samples, oldest first."""
        return list(self._samples.get((name, uid, index), ()))

    def annotate(self, described: dict[str, Any]) -> dict[str, Any]:
        """`described` with, per step, `history` (`rates`) and `trouble` (`trouble_of` with
        its own live figures), and `trouble` at the top: `step: signal` of every step."""
        name, uid = str(described.get("name")), str(described.get("uid"))
        summary: list[str] = []
        for step in described.get("steps") or []:
            samples = self.samples(name, uid, int(step["index"]))
            step["history"] = rates(samples)
            step["trouble"] = trouble_of(samples, step.get("live"))
            summary.extend(f"{step['name']}: {signal}" for signal in step["trouble"])
        described["trouble"] = summary
        return described

    def trouble(self, name: str, uid: str) -> list[str]:
        """`step: signal` of one pipeline version as of its last sample (the list of pipelines
        shows this without asking the engines)."""
        out: list[str] = []
        for key, ring in sorted(self._samples.items()):
            if key[:2] == (name, uid):
                signals = trouble_of(list(ring), self._live.get(key))
                out.extend(f"{self._names[key]}: {signal}" for signal in signals)
        return out
