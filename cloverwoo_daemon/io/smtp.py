"""Sending alert emails over SMTP, from trio.

Rules this module keeps:

- ``smtplib`` is blocking: every send runs in a worker thread
  (``trio.to_thread.run_sync``), one connection per email (alerts are few;
  a pooled connection would only add a stale-socket failure mode).
- The URL says how to talk to the server (``alerts.smtp_url``):
  ``smtp://host[:25]`` plain, ``smtp+starttls://host[:587]`` upgraded with
  STARTTLS (refused when the server does not offer it: never a silent
  downgrade), ``smtps://host[:465]`` TLS from the first byte. A user name
  goes in the URL (``smtp+starttls://alerts%40shop.example@mail.example``);
  the password never does: it comes from ``alerts.smtp_password_file``.
  A URL carrying a password is refused.
- Secrets never leave: the password is in no log line, no exception message,
  no ``repr``. Errors are rebuilt from the SMTP reply code and the server's
  text, which never holds our password.
- Every email carries a ``Message-ID`` derived from its outbox id, so a
  resend after a crash between "server accepted" and "marked sent" is
  recognisable as the same message by any mail client.

Error handling: ``RemoteError`` for what may pass (connection refused or
lost, timeouts, 4xx replies), ``PermanentError`` for what will not (5xx
replies, authentication refused, STARTTLS not offered, a TLS certificate
that does not verify).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import structlog
import trio

from cloverwoo_daemon.core.alerts import OutboxEmail
from cloverwoo_daemon.core.smtp_url import SmtpTarget, parse_smtp_url
from cloverwoo_daemon.ports import PermanentError, RemoteError

__all__ = ["SmtpMailer", "SmtpTarget", "build_message", "parse_smtp_url"]

log = structlog.get_logger("cloverwoo.smtp")

def build_message(email: OutboxEmail, sender: str, *, domain: str = "cloverwoo.invalid") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(email.recipients)
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(email.created_at, usegmt=True)
    msg["Message-ID"] = f"<cloverwoo-alert-{email.id}-{int(email.created_at)}@{domain}>"
    msg["X-Cloverwoo-Alert"] = email.kind
    msg.set_content(email.body)
    return msg


class SmtpMailer:
    """A ``ports.Mailer`` over SMTP.

    Resource handling: nothing is held between sends; each ``send`` opens,
    uses and closes one connection in a worker thread. A cancelled send
    abandons its thread (which ends within ``timeout``): the email is then
    not marked sent and goes again later, with the same ``Message-ID``.
    """

    def __init__(
        self,
        url: str,
        *,
        sender: str,
        password: str = "",
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = parse_smtp_url(url)
        self.sender = sender
        self.timeout = timeout
        self._password = password
        self._ssl = ssl_context
        self.sent = 0

    def __repr__(self) -> str:
        return f"SmtpMailer({self.target}, sender={self.sender!r})"

    async def send(self, email: OutboxEmail) -> None:
        if not email.recipients:
            raise PermanentError("the email has no recipients")
        message = build_message(email, self.sender, domain=self.target.host)
        await trio.to_thread.run_sync(self._send_sync, message, list(email.recipients), abandon_on_cancel=True)
        self.sent += 1

    def _context(self) -> ssl.SSLContext:
        return self._ssl if self._ssl is not None else ssl.create_default_context()

    def _send_sync(self, message: EmailMessage, recipients: list[str]) -> None:
        t = self.target
        try:
            client: smtplib.SMTP
            if t.scheme == "smtps":
                client = smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout, context=self._context())
            else:
                client = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
            with client:
                client.ehlo()
                if t.scheme == "smtp+starttls":
                    if not client.has_extn("starttls"):
                        raise PermanentError(f"{t.host}:{t.port} does not offer STARTTLS (the URL asks for it)")
                    client.starttls(context=self._context())
                    client.ehlo()
                if t.username:
                    if not self._password:
                        raise PermanentError("alerts.smtp_url names a user but alerts.smtp_password_file is not set")
                    client.login(t.username, self._password)
                refused = client.send_message(message, from_addr=self.sender, to_addrs=recipients)
                if refused:
                    # Some recipients took it: the email is delivered; the others are reported, not retried.
                    log.warning("alert_recipients_refused", server=str(t),
                                refused={rcpt: code for rcpt, (code, _) in refused.items()})
        except (PermanentError, RemoteError):
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            text = f"{t.host}: every recipient refused ({', '.join(sorted({str(c) for c in codes}))})"
            if codes and all(400 <= c < 500 for c in codes):
                raise RemoteError(text) from None
            raise PermanentError(text) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentError(f"{t.host}: login as {t.username!r} refused ({exc.smtp_code})") from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentError(f"{t.host}: the server does not support what the URL asks (AUTH or STARTTLS)") \
                from None
        except smtplib.SMTPResponseException as exc:
            text = f"{t.host}: {exc.smtp_code} {_reply(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise RemoteError(text) from None
            raise PermanentError(text) from None
        except ssl.SSLCertVerificationError as exc:
            raise PermanentError(f"{t.host}: TLS certificate not trusted ({exc.verify_message})") from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, TLS handshake, disconnected
            kind = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else type(exc).__name__
            detail = str(exc)[:200] if not isinstance(exc, smtplib.SMTPServerDisconnected) else "disconnected"
            raise RemoteError(f"{t.host}:{t.port}: {kind}: {detail}") from None


def _reply(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:200]
