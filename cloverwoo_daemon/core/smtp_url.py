"""``alerts.smtp_url``: which SMTP server, and how to talk to it (no secret ever in here).

Pure, so the config can refuse a bad URL when it is loaded (``cloverwoo check-config``, ``cloverwoo run``
before anything starts) and ``io.smtp`` can connect with the same reading of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["SmtpTarget", "parse_smtp_url"]

_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect (no secret in here: it is safe to log)."""

    scheme: str  # smtp | smtp+starttls | smtps
    host: str
    port: int
    username: str = ""

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpTarget:
    """``alerts.smtp_url`` to a target; ``ValueError`` naming what is wrong (never echoing a password)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"alerts.smtp_url: scheme must be smtp://, smtp+starttls:// or smtps://, not {scheme!r}")
    if parts.password is not None:
        raise ValueError("alerts.smtp_url: put the password in alerts.smtp_password_file, not in the URL")
    if not parts.hostname:
        raise ValueError("alerts.smtp_url: no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("alerts.smtp_url: the port is not a number") from None
    return SmtpTarget(scheme, parts.hostname, port, unquote(parts.username or ""))
