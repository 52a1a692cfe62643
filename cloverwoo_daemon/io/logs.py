"""Logging, configured in one place: structlog for our code, stdlib bridged into the same pipeline.

Rules this module keeps:

- ``configure_logging`` is the only place logging is set up; everything else
  just calls ``structlog.get_logger()`` (or stdlib ``logging.getLogger``).
- One line per event on stdout: JSON off a tty (journald takes it), the
  console renderer on a tty. Every line has ``event``, ``level`` and
  ``timestamp`` (ISO 8601, UTC).
- stdlib records (hypercorn, quart, httpx, ...) go through the same
  processors as structlog events, so they get the same keys and the same
  redaction. hypercorn, quart, httpx and httpcore are raised to WARNING:
  httpx logs every request at INFO.
- Redaction runs last before rendering, over every field, recursively, and
  over formatted exceptions: any configured secret value is replaced by
  ``[redacted]`` wherever it appears, whole or inside a longer string.
  Values that are not JSON primitives are turned into text first, so a
  secret cannot slip through an object's ``repr`` at render time.
- Secrets learned while the process runs (an OAuth token pair fetched or
  refreshed, read back from the state store, a code being exchanged) are
  redacted from the moment they are learned: whoever learns one calls
  ``redact_also`` before anything can log it. The configured secrets are
  kept for the whole run; learned ones are kept up to ``LEARNED_KEPT`` (the
  oldest forgotten first: a token refreshed hourly for a year would
  otherwise grow the list without bound).
"""

from __future__ import annotations

import collections
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TextIO

import structlog

__all__ = ["LEARNED_KEPT", "REDACTED", "Redactor", "configure_logging", "redact_also"]

REDACTED = "[redacted]"
LEARNED_KEPT = 64
"""Secrets learned at run time kept for redaction (a few per OAuth location: access, refresh, the previous pair)."""
_MIN_LEARNED = 8  # shorter values are not credentials; redacting them would blank common words
_QUIET = ("hypercorn", "hypercorn.error", "hypercorn.access", "quart", "quart.app", "quart.serving", "httpx",
          "httpcore")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


class Redactor:
    """A structlog processor that replaces every secret value (configured or learned) with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._configured = {s for s in secrets if s}
        self._learned: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._compile()

    @property
    def secrets(self) -> list[str]:
        return sorted(self._configured | set(self._learned), key=len, reverse=True)

    def learn(self, *values: str) -> None:
        """Redact ``values`` too from now on (the configured secrets stay; learned ones are bounded)."""
        changed = False
        for v in values:
            if not v or len(v) < _MIN_LEARNED or v in self._configured:
                continue
            if v in self._learned:
                self._learned.move_to_end(v)
                continue
            self._learned[v] = None
            changed = True
            while len(self._learned) > LEARNED_KEPT:
                self._learned.popitem(last=False)
        if changed:
            self._compile()

    def _compile(self) -> None:
        # Longest first, so a secret containing another is replaced whole.
        secrets = self.secrets
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def text(self, value: str) -> str:
        pattern = self._pattern
        return value if pattern is None else pattern.sub(REDACTED, value)

    def value(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value) if isinstance(value, BaseException) else repr(value))

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self._pattern is None:
            return event_dict
        return {k: self.value(v) for k, v in event_dict.items()}


_active: Redactor | None = None  # the redactor of the pipeline configure_logging installed last


def redact_also(*values: str) -> None:
    """Redact these secrets from every log line from now on: call it the moment a secret is learned.

    Before ``configure_logging`` ran (a library use, a test with its own capture) it does nothing: no pipeline
    of ours renders lines then.
    """
    if _active is not None:
        _active.learn(*values)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so reconfiguring replaces it instead of adding a second one."""


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "info",
    secrets: Sequence[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and stdlib logging for the whole process.

    ``json=None`` picks JSON unless ``stream`` is a tty. ``secrets`` are the
    values to scrub (tokens, auth code, webhook secret, SMTP password): pass
    every secret ``config.load_secrets`` read. ``stream`` defaults to stdout;
    tests pass their own.

    Error handling: an unknown ``level`` raises ``ValueError``.
    """
    if level.lower() not in _LEVELS:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(_LEVELS)})")
    numeric = _LEVELS[level.lower()]
    out = stream if stream is not None else sys.stdout
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    global _active
    redactor = Redactor(secrets)
    if _active is not None:  # reconfigured (the CLI does, then runs the daemon): what was learned stays secret
        redactor.learn(*_active._learned)
    _active = redactor
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Not cached: modules bind loggers at import, before configure_logging runs.
        cache_logger_on_first_use=False,
    )
