"""Clover's webhook URL verification: when the handshake is answered, how often, and what is kept.

Clover proves a webhook URL by POSTing ``{"verificationCode": "..."}`` with
no ``X-Clover-Auth`` (the auth code is shown only after the URL is verified),
so the body authenticates nothing: anyone who knows the URL can send one.

Rules:

- Answered only while a verification is expected: no Clover auth code is
  configured yet (the set-up before the URL is verified), or the admin opened
  a window (``cloverwoo clover verify``, minutes long). A post carrying the
  valid auth code (only Clover and the admin know it) is always expected.
  Otherwise the answer is ``closed``: refused like any unauthenticated
  delivery, nothing kept.
- Unauthenticated posts are rate-limited (a person pressing "Send
  Verification Code", not a flood): at most ``burst`` at once, refilled at
  ``per_minute`` a minute. Over the limit the answer is ``throttled`` (429
  with ``retry_after``), nothing kept. A closed gate spends no allowance.
- Nothing is overwritten silently: every distinct code is kept with when it
  first and last came and how often (the ``keep`` most recently received), shown
  together; ``new`` is answered once per code, so the caller logs each code
  once, ``again`` for a code already kept.
- Pure: time (seconds, wall clock: the window and the codes are shown as
  times) is passed in, never read. A window lives in memory: a restart
  closes it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from cloverwoo_daemon.core.ratelimit import TokenBucket

__all__ = ["Decision", "ReceivedCode", "VerificationGate"]

Answer = Literal["new", "again", "closed", "throttled"]


class ReceivedCode(msgspec.Struct, frozen=True):
    code: str
    first_at: float
    last_at: float
    count: int = 1


class Decision(msgspec.Struct, frozen=True):
    answer: Answer
    retry_after: float = 0.0  # throttled: seconds until one more is answered

    @property
    def answered(self) -> bool:
        return self.answer in ("new", "again")


class VerificationGate:
    """The handshake's state: whether it is expected, its allowance, the codes received."""

    def __init__(self, *, configured: bool, burst: int = 5, per_minute: float = 6.0, keep: int = 10) -> None:
        self.configured = configured  # a Clover auth code is set: the URL was verified once
        self.window_until: float | None = None
        self.keep = keep
        self._bucket = TokenBucket(rate=per_minute / 60.0, burst=burst)
        self._codes: dict[str, ReceivedCode] = {}  # insertion order = first received

    def expected(self, now: float) -> bool:
        return not self.configured or self.window_open(now)

    def window_open(self, now: float) -> bool:
        return self.window_until is not None and now < self.window_until

    def open_window(self, now: float, seconds: float) -> float:
        """Answer unauthenticated handshakes for ``seconds`` from ``now``; returns when the window closes."""
        if not seconds > 0:
            raise ValueError(f"the window must last a positive number of seconds, not {seconds!r}")
        self.window_until = now + seconds
        return self.window_until

    def close_window(self) -> None:
        self.window_until = None

    def offer(self, code: str, now: float, *, authenticated: bool = False) -> Decision:
        """What to answer a handshake carrying ``code``; a code answered is kept."""
        if not authenticated:
            if not self.expected(now):
                return Decision("closed")
            wait = self._bucket.try_take(now)
            if wait > 0.0:
                return Decision("throttled", retry_after=wait)
        seen = self._codes.pop(code, None)
        if seen is None:
            self._codes[code] = ReceivedCode(code, now, now)
            while len(self._codes) > self.keep:
                del self._codes[next(iter(self._codes))]
            return Decision("new")
        self._codes[code] = ReceivedCode(code, seen.first_at, now, seen.count + 1)
        return Decision("again")

    @property
    def codes(self) -> tuple[ReceivedCode, ...]:
        """The codes kept, oldest first."""
        return tuple(sorted(self._codes.values(), key=lambda c: c.first_at))

    def summary(self, now: float) -> dict[str, object]:
        """What ``status`` shows: whether a handshake would be answered now, and why; the codes with their times."""
        reason = ("no Clover auth code configured yet" if not self.configured
                  else "a verification window is open" if self.window_open(now) else None)
        return {
            "expected": reason is not None,
            "reason": reason,
            "window_until": self.window_until if self.window_open(now) else None,
            "codes": [msgspec.to_builtins(c) for c in self.codes],
        }
