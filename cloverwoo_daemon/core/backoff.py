"""Retry timing: exponential backoff with full jitter, and ``retry-after`` honoured.

Rules:

- The first retry waits about ``base`` seconds (Clover asks for 1 s after a
  429: callers pass ``retry_after=1`` when a 429 names no time), each further
  one doubles, capped at ``cap``; the wait is drawn uniformly from
  ``[delay/2, delay]`` so that many clients retrying at once spread out
  instead of stampeding together.
- A server's ``retry-after`` is a floor, never shortened by jitter or by the
  cap: Clover lengthens the penalty when a client comes back early. A
  ``retry-after`` longer than ``max_retry_after`` is not waited out here: the
  call gives up (``None``) and the caller tries again later, rather than
  sitting in one retry loop for minutes.
- Attempts are bounded; ``None`` from ``next_delay`` means give up.
- Pure: the random source is passed in, so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_MAX_EXPONENT = 62  # 2**62 * any sane base is far beyond any cap; avoids float overflow


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 8  # total attempts, the first included
    max_retry_after: float = 120.0  # a longer server-imposed wait gives up instead

    def __post_init__(self) -> None:
        if not (self.base > 0 and math.isfinite(self.base)):
            raise ValueError(f"base must be a positive number, not {self.base!r}")
        if not (self.cap >= self.base and math.isfinite(self.cap)):
            raise ValueError(f"cap must be a number >= base, not {self.cap!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts!r}")
        if not self.max_retry_after >= 0:
            raise ValueError(f"max_retry_after must be >= 0, not {self.max_retry_after!r}")

    def next_delay(
        self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); None to give up."""
        attempt = max(attempt, 1)  # "no failure yet" is treated as the first
        if attempt >= self.max_attempts:
            return None
        delay = min(self.cap, self.base * (2 ** min(attempt - 1, _MAX_EXPONENT)))
        r = (rng or random).uniform(delay / 2, delay)
        if retry_after is not None and retry_after >= 0:
            if retry_after > self.max_retry_after:
                return None
            return max(r, retry_after)
        return r


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds form); None if absent or unparsable."""
    if value is None:
        return None
    try:
        secs = float(value.strip())
    except ValueError:
        return None
    return secs if secs >= 0 and math.isfinite(secs) else None
