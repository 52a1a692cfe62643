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
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TextIO

import structlog

__all__ = ["REDACTED", "Redactor", "configure_logging"]

REDACTED = "[redacted]"
_QUIET = ("hypercorn", "hypercorn.error", "hypercorn.access", "quart", "quart.app", "quart.serving", "httpx",
          "httpcore")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


class Redactor:
    """A structlog processor that replaces every configured secret value with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

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
        if not self.secrets:
            return event_dict
        return {k: self.value(v) for k, v in event_dict.items()}


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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            Redactor(secrets),
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
