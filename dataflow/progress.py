"""Whether a step is stuck: it has records to read but reads none of them.

Pure: the caller passes the clock, how many records the step has taken in so far and how many
are left to read; `Progress` says how long the step has been stuck and when to warn (once after
`after` seconds, then at most once per `repeat` seconds while it stays stuck).
"""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """Progress of one step, checked from time to time.

    Example:
        >>> p = Progress(after=10, repeat=60)
        >>> p.check(0.0, done=5, behind=100)
        False
        >>> p.check(11.0, done=5, behind=100)  # 11 s with records to read, none taken
        True
        >>> p.stuck_for(11.0)
        11.0
        >>> p.check(30.0, done=5, behind=100)  # warned 19 s ago
        False
        >>> p.check(31.0, done=6, behind=100)  # moving again
        False
        >>> p.stuck_for(31.0)
        0.0
    """

    def __init__(self, after: float = 10.0, repeat: float = 60.0) -> None:
        """Warn after `after` seconds without progress, again at most every `repeat` s."""
        self.after = after
        self.repeat = repeat
        self._done = -1
        self._since: float | None = None  # when it last moved (or had nothing to read)
        self._warned: float | None = None
        self._stuck = False

    def check(self, now: float, done: int, behind: int) -> bool:
        """Note the figures at `now`; True when a warning is due.

        Args:
            now: a monotonic clock in seconds.
            done: records taken in so far (any counter that grows with progress).
            behind: records left to read.
        """
        if self._since is None or done != self._done or behind <= 0:
            self._done = done
            self._since = now
            self._stuck = False
            self._warned = None
            return False
        self._stuck = now - self._since >= self.after
        if not self._stuck:
            return False
        if self._warned is not None and now - self._warned < self.repeat:
            return False
        self._warned = now
        return True

    @property
    def stuck(self) -> bool:
        """True while the step has had records to read and taken none for `after` seconds."""
        return self._stuck

    def stuck_for(self, now: float) -> float:
        """Seconds without progress while stuck, else 0."""
        if not self._stuck or self._since is None:
            return 0.0
        return now - self._since
