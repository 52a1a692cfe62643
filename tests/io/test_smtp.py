"""The SMTP mailer against a real SMTP server (aiosmtpd) on loopback: plain, STARTTLS, TLS, auth, failures.

``SmtpSink`` and ``smtp_server`` are reused by the alert actor and e2e tests.
aiosmtpd's ``Controller`` cannot bind port 0 as is (its readiness probe
connects to the port it was given): ``_LoopbackController`` binds port 0 and
records the port the kernel chose (stack.md, pitfalls).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cloverwoo_daemon.core.alerts import OutboxEmail
from cloverwoo_daemon.io.smtp import SmtpMailer, build_message, parse_smtp_url
from cloverwoo_daemon.ports import PermanentError, RemoteError

USER = "alerts@shop.example"
PASSWORD = "s3cret-Smtp-Pa55word"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


@dataclass
class SmtpSink:
    """An aiosmtpd handler that keeps what it accepts; ``refuse`` makes DATA answer with that reply."""

    messages: list[Received] = field(default_factory=list)
    refuse: str | None = None
    attempts: int = 0
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        with self.lock:
            self.attempts += 1
            if self.refuse:
                return self.refuse
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def authenticator(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER
              and auth_data.password.decode() == PASSWORD)
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)


class _LoopbackController(Controller):
    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=self.port,
                                                   ssl=self.ssl_context)
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


@asynccontextmanager
async def smtp_server(sink: SmtpSink | None = None, **kw: Any) -> AsyncIterator[tuple[SmtpSink, int]]:
    """A real SMTP server on 127.0.0.1, on a port the kernel chose; yields (sink, port)."""
    sink = sink or SmtpSink()
    controller = _LoopbackController(sink, hostname="127.0.0.1", port=0, **kw)
    await trio.to_thread.run_sync(controller.start)
    try:
        yield sink, controller.port
    finally:
        await trio.to_thread.run_sync(controller.stop)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it): a self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def outbox_email(recipients: tuple[str, ...] = ("owner@shop.example", "ops@shop.example")) -> OutboxEmail:
    return OutboxEmail(id=42, kind="low_stock", subject="Low stock: Blue mug (MUG), 3 left (threshold 5)",
                       body="SKU  Name      Location  Stock  Threshold\nMUG  Blue mug  downtown      3          5\n",
                       recipients=recipients, created_at=1_700_000_000.0)


# ---------------------------------------------------------------- URLs


def test_parse_smtp_url_defaults_and_refusals() -> None:
    assert str(parse_smtp_url("smtp://localhost")) == "smtp://localhost:25"
    assert str(parse_smtp_url("smtps://mail.example")) == "smtps://mail.example:465"
    t = parse_smtp_url("smtp+starttls://alerts%40shop.example@mail.example")
    assert (t.scheme, t.host, t.port, t.username) == ("smtp+starttls", "mail.example", 587, "alerts@shop.example")
    with pytest.raises(ValueError, match="smtp_password_file") as exc:
        parse_smtp_url(f"smtp://user:{PASSWORD}@mail.example")
    assert PASSWORD not in str(exc.value)
    for bad in ("http://mail.example", "smtp://", "smtp://mail.example:port"):
        with pytest.raises(ValueError, match="alerts.smtp_url"):
            parse_smtp_url(bad)


def test_mailer_repr_and_message_never_show_the_password() -> None:
    mailer = SmtpMailer("smtp+starttls://u@mail.example", sender="shop@example.com", password=PASSWORD)
    assert PASSWORD not in repr(mailer) and PASSWORD not in str(mailer.__dict__.get("target"))
    msg = build_message(outbox_email(), "shop@example.com")
    assert msg["Message-ID"] == "<cloverwoo-alert-42-1700000000@cloverwoo.invalid>"
    assert PASSWORD not in msg.as_string()


# ---------------------------------------------------------------- delivery


async def test_plain_smtp_delivers_subject_recipients_and_body() -> None:
    async with smtp_server() as (sink, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", sender="cloverwoo@shop.example", timeout=10)
        await mailer.send(outbox_email())
    (got,) = sink.messages
    assert got.mail_from == "cloverwoo@shop.example"
    assert got.rcpt_tos == ["owner@shop.example", "ops@shop.example"]
    assert got.subject == "Low stock: Blue mug (MUG), 3 left (threshold 5)"
    assert got.message["To"] == "owner@shop.example, ops@shop.example"
    assert got.message["X-Cloverwoo-Alert"] == "low_stock"
    assert "MUG  Blue mug  downtown      3          5" in got.body


async def test_starttls_with_auth(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    sink = SmtpSink()
    async with smtp_server(sink, tls_context=server_ctx, require_starttls=True, auth_required=True,
                           authenticator=sink.authenticator) as (_, port):
        url = f"smtp+starttls://alerts%40shop.example@127.0.0.1:{port}"
        await SmtpMailer(url, sender="c@shop.example", password=PASSWORD, ssl_context=client_ctx).send(outbox_email())
        assert sink.logins == [USER] and len(sink.messages) == 1
        with pytest.raises(PermanentError) as exc:
            await SmtpMailer(url, sender="c@shop.example", password="wrong-" + PASSWORD,
                             ssl_context=client_ctx).send(outbox_email())
        assert "refused" in str(exc.value) and PASSWORD not in str(exc.value)
        assert PASSWORD not in repr(exc.value) and exc.value.__cause__ is None
        # STARTTLS with an untrusted certificate: refused for good, nothing sent in the clear
        with pytest.raises(PermanentError, match="certificate"):
            await SmtpMailer(url, sender="c@shop.example", password=PASSWORD).send(outbox_email())
    assert len(sink.messages) == 1


async def test_smtps_implicit_tls_with_auth(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    sink = SmtpSink()
    # aiosmtpd only counts STARTTLS as TLS for its AUTH rule; this socket is TLS from the first byte.
    async with smtp_server(sink, ssl_context=server_ctx, auth_require_tls=False,
                           authenticator=sink.authenticator) as (_, port):
        url = f"smtps://alerts%40shop.example@127.0.0.1:{port}"
        await SmtpMailer(url, sender="c@shop.example", password=PASSWORD, ssl_context=client_ctx).send(outbox_email())
    assert sink.logins == [USER] and sink.messages[0].subject.startswith("Low stock")


async def test_starttls_not_offered_is_refused_not_downgraded() -> None:
    async with smtp_server() as (sink, port):
        with pytest.raises(PermanentError, match="STARTTLS"):
            await SmtpMailer(f"smtp+starttls://127.0.0.1:{port}", sender="c@shop.example").send(outbox_email())
    assert sink.attempts == 0


async def test_user_without_password_is_refused() -> None:
    async with smtp_server() as (sink, port):
        with pytest.raises(PermanentError, match="smtp_password_file"):
            await SmtpMailer(f"smtp://u@127.0.0.1:{port}", sender="c@shop.example").send(outbox_email())
    assert sink.attempts == 0


async def test_server_down_is_worth_retrying() -> None:
    with pytest.raises(RemoteError) as exc:
        await SmtpMailer(f"smtp://127.0.0.1:{closed_port()}", sender="c@shop.example", timeout=5).send(outbox_email())
    assert not isinstance(exc.value, PermanentError)


async def test_reply_codes_decide_retry_or_not() -> None:
    async with smtp_server() as (sink, port):
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", sender="c@shop.example", timeout=10)
        sink.refuse = "451 4.3.0 try again later"
        with pytest.raises(RemoteError) as exc:
            await mailer.send(outbox_email())
        assert not isinstance(exc.value, PermanentError) and "451" in str(exc.value)
        sink.refuse = "554 5.7.1 rejected"
        with pytest.raises(PermanentError, match="554"):
            await mailer.send(outbox_email())
        sink.refuse = None
        await mailer.send(outbox_email())
    assert sink.attempts == 3 and len(sink.messages) == 1


async def test_no_recipients_is_refused_before_connecting() -> None:
    with pytest.raises(PermanentError):
        await SmtpMailer(f"smtp://127.0.0.1:{closed_port()}", sender="c@shop.example").send(outbox_email(()))

