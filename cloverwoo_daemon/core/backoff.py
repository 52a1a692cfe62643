"""Retry timing: exponential backoff with full jitter, and ``retry-after`` honoured.

Rules:

- The first retry waits about ``base`` seconds (Clover asks for 1 s after a
  429), each further one doubles, capped at ``cap``; the wait is drawn
  uniformly from ``[delay/2, delay]`` so that many clients retrying at once
  spread out instead of stampeding together.
- A server's ``retry-after`` is a floor, never shortened by jitter: Clover
  lengthens the penalty when a client comes back early.
- Attempts are bounded; ``None`` from ``next_delay`` means give up.
- Pure: the random source is passed in, so tests are deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 8  # total attempts, the first included

    def next_delay(self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); None to give up."""
        if attempt >= self.max_attempts:
            return None
        delay = min(self.cap, self.base * (2 ** (attempt - 1)))
        r = (rng or random).uniform(delay / 2, delay)
        if retry_after is not None and retry_after >= 0:
            return max(r, min(retry_after, self.cap * 4))
        return r


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds form); None if absent or unparsable."""
    if value is None:
        return None
    try:
        secs = float(value.strip())
    except ValueError:
        return None
    return secs if secs >= 0 else None
