"""A token bucket kept as one number (GCRA), for Clover's request-rate limits.

Rules:

- ``rate`` requests per second on average, at most ``burst`` of them at once
  after a quiet spell. In *any* window of length ``T`` the bucket grants at
  most ``rate * T + burst`` requests: that is the promise Clover's limits
  (16 req/s per token, 50 req/s per app) are checked against.
- The state is the *theoretical arrival time* ``tat``: the moment the bucket
  would be full again if nothing else were granted. A grant at ``t`` needs
  ``t >= tat - (burst - 1) / rate``. One number instead of (tokens, last
  refill) means no floating-point drift between refills.
- Time is passed in (``now``, seconds on any monotonic clock) and never read
  here, so the bucket is pure and tests drive it with made-up clocks. A
  ``now`` earlier than one already seen is treated as that later time: time
  never runs backwards for the bucket.
- Two ways to use it. ``reserve(now)`` books the next free slot and tells
  the caller how long to sleep (a client pacing itself). ``try_take(now)``
  grants only if a slot is free now and otherwise books nothing (a server
  deciding whether to answer 429). ``wait_time`` looks without booking.
- ``block_until(t)`` honours a server's ``retry-after``: nothing is granted
  before ``t``, whatever the bucket would otherwise allow.
- In-flight (concurrency) limits are not here: they need a semaphore, which
  belongs to the I/O layer.
"""

from __future__ import annotations

import math


class TokenBucket:
    """Pacing for one rate limit scope (one Clover token, or the whole app)."""

    __slots__ = ("rate", "burst", "_interval", "_tolerance", "_tat", "_clock")

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, not {rate!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1.0) * self._interval
        self._tat = -math.inf  # full bucket: nothing granted yet
        self._clock = -math.inf  # the latest `now` seen

    def _advance(self, now: float) -> float:
        if now > self._clock:
            self._clock = now
        return self._clock

    def wait_time(self, now: float) -> float:
        """Seconds from ``now`` until one request may go; 0.0 when it may go now. Books nothing."""
        t = self._advance(now)
        return max(0.0, self._tat - self._tolerance - t)

    def reserve(self, now: float) -> float:
        """Book the earliest free slot; returns how long to wait from ``now`` before sending.

        The booking is final: a caller that gives up after reserving has still
        used its slot, which errs on the side of sending less, never more.
        """
        t = self._advance(now)
        tat = max(self._tat, t)
        send_at = max(t, tat - self._tolerance)
        self._tat = tat + self._interval
        return send_at - t

    def try_take(self, now: float) -> float:
        """Grant one request at ``now`` if the bucket allows: returns 0.0 and books it.

        Otherwise books nothing and returns the (positive) wait until a
        request would be allowed, which a server turns into ``retry-after``.
        """
        wait = self.wait_time(now)
        if wait > 0.0:
            return wait
        self._tat = max(self._tat, self._clock) + self._interval
        return 0.0

    def take(self, now: float) -> None:
        """Book one request at ``now`` unconditionally (after ``wait_time`` said 0)."""
        t = self._advance(now)
        self._tat = max(self._tat, t) + self._interval

    def block_until(self, t: float) -> None:
        """Grant nothing before ``t`` (a server said ``retry-after``)."""
        self._tat = max(self._tat, t + self._tolerance)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst!r})"
