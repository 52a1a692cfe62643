"""How many lines a repeated event may write: the first few per window, then one count.

Used for refused webhook deliveries: each is worth a log line (who, why),
but a flood of them must not fill the journal.

Rules:

- Per key (e.g. source and HTTP status), a window opens at the key's first
  event and lasts ``window`` seconds. The first ``limit`` events in it are
  admitted (the caller logs them); the rest are only counted.
- When a window has passed, its count of events not admitted is reported
  once (``Suppressed``), by the first ``admit`` or ``expire`` call after it
  ended; a window with nothing suppressed reports nothing. The next event
  of that key opens a new window.
- ``drain`` reports every count still open (at shutdown), so no suppressed
  event goes unreported.
- Pure: time is passed in (any monotonic clock). The number of keys is the
  caller's to bound (keys from a fixed set, never from request content).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["LogThrottle", "Suppressed"]


@dataclass(frozen=True)
class Suppressed:
    key: Hashable
    count: int  # events in the window that were not admitted
    seconds: float  # how long the window was open when reported


@dataclass
class _Window:
    start: float
    seen: int = 0


class LogThrottle:
    def __init__(self, *, limit: int, window: float) -> None:
        if limit < 1 or not window > 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self._open: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable, now: float) -> tuple[bool, list[Suppressed]]:
        """Whether this event of ``key`` is to be logged, and the counts of windows that ended before ``now``."""
        ended = self.expire(now)
        w = self._open.get(key)
        if w is None:
            w = self._open[key] = _Window(now)
        w.seen += 1
        return w.seen <= self.limit, ended

    def expire(self, now: float) -> list[Suppressed]:
        """Close every window that ended by ``now``; the counts of those that suppressed something."""
        ended = [k for k, w in self._open.items() if now >= w.start + self.window]
        out = []
        for k in ended:
            w = self._open.pop(k)
            if w.seen > self.limit:
                out.append(Suppressed(k, w.seen - self.limit, self.window))
        return out

    def drain(self, now: float) -> list[Suppressed]:
        """Close every window now (shutdown): the counts of those that suppressed something."""
        out = [Suppressed(k, w.seen - self.limit, max(0.0, now - w.start))
               for k, w in self._open.items() if w.seen > self.limit]
        self._open.clear()
        return out
