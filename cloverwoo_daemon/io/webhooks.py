"""The embedded HTTP server: webhook intake for Clover and WooCommerce, health and metrics.

Rules this module keeps:

- Authenticate before anything is stored. A body that fails authentication
  gets 401 and changes nothing; the two exceptions are Clover's
  ``{"verificationCode": ...}`` handshake (sent before the auth code exists)
  and WooCommerce's ``webhook_id=N`` ping (sent unsigned), both recognised by
  narrow shapes in ``core.webhook_parse`` and answered 200 without storing.
  The handshake is answered only while ``core.verification`` says one is
  expected (no auth code yet, or a window the admin opened), rate-limited
  (429), and otherwise refused 401 like any unauthenticated body.
  An unauthenticated body is never parsed beyond those shapes, so a hostile
  sender only ever costs a size-limited read and one regex.
- 200 means durably stored: a delivery is acknowledged only after
  ``intake.accept`` returned. The server does not shield ``accept``: the
  intake shields its store commit itself (a client hanging up must not cut
  it in half) and nothing else, and never waits for room in a queue
  (``Overloaded`` instead, or a hand-off that does not block), so a
  shutdown can always cancel a request that is still being answered.
- One Clover delivery carries many entries: an entry the sync does not use
  (a payment, a category) or cannot read is skipped, logged
  (``clover_entry_skipped``, throttled like refusals) and counted, and the
  rest of the delivery is stored and acknowledged; only a body that is not
  a delivery at all is refused (400).
- Back-pressure reaches the sender: ``Overloaded`` becomes 503 with
  ``Retry-After``; any other intake failure also becomes 503 (not stored, try
  again), logged with its error.
- Bodies are bounded: 413 when ``Content-Length`` exceeds ``max_body_bytes``,
  and the body stream is counted while it is read, so a chunked body is cut
  off at the limit, never buffered whole.
- Never a 500: every route catches what it can raise and answers 400, 401,
  413, 429 or 503; app-wide handlers map anything that escapes anyway
  (including ``msgspec.ValidationError``) to 400/503.
- Every refusal is logged (``webhook_refused``: source, status, reason,
  remote address and ``X-Forwarded-For``; never the body nor a header
  value that could be a secret), throttled per source and status by
  ``core.log_throttle``: the first ``REFUSALS_LOGGED`` a minute, then one
  ``webhook_refused_suppressed`` line with the count.

Status codes: 200 stored or duplicate (the store dedups on the key), or ping,
handshake, or a topic we ignore (a Clover delivery with entries skipped too);
400 malformed; 401 authentication failed (or a handshake nobody expects);
405/404 wrong method or path; 408 body too slow; 413 too large; 429 too many
handshakes; 503 overloaded or not stored. Each delivery's outcome is also reported to ``on_received`` with a result from
``io.metrics.EVENT_RESULTS`` (accepted and duplicate count events, skipped and
unreadable count Clover entries, every other result counts the delivery once; a
refused handshake counts as rejected_auth).
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import structlog
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cloverwoo_daemon.core.log_throttle import LogThrottle, Suppressed
from cloverwoo_daemon.core.signatures import verify_clover_auth, verify_woo_signature
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.core.webhook_parse import (
    CloverVerification,
    MalformedPayload,
    SkippedEntry,
    WooDelivery,
    WooIgnored,
    WooPing,
    parse_clover,
    parse_woo,
)
from cloverwoo_daemon.messages import InboundEvent
from cloverwoo_daemon.ports import Overloaded

__all__ = ["Intake", "ListenUnavailable", "Overloaded", "WebhookDeps", "check_listen", "create_app", "serve_webhooks"]

log = structlog.get_logger("cloverwoo.webhooks")

HANDSHAKE_MAX_BYTES = 1024
"""An unauthenticated Clover body larger than this cannot be the handshake; refused unparsed."""
PING_MAX_BYTES = 64
BODY_TIMEOUT = 30.0
"""Seconds to receive a whole body; a sender trickling bytes gets 408 (hypercorn's own timeouts cover headers)."""
_REFUSALS = "cloverwoo.refusals"
METRICS_REFRESH_TIMEOUT = 2.0
"""Seconds ``before_metrics`` may take; past that the scrape is answered with the values it had."""
_REFUSED = {400: "malformed", 401: "rejected_auth", 408: "timeout", 413: "too_large", 429: "rejected_auth"}
REFUSALS_LOGGED = 5
"""Refused deliveries (and skipped Clover entries, per kind of skip) logged each minute; the rest are counted."""
REFUSAL_WINDOW = 60.0


class Intake(Protocol):
    """Where accepted deliveries go (implemented by the actors over the store)."""

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> int | None:
        """Durably store ``(dedup_key, event)`` pairs (a known key is a duplicate: ignored), then enqueue.

        Returns how many were new (None: not known, all are counted as accepted).
        Raises ``Overloaded`` when the queues are full; nothing is stored then.
        Must protect its own commit from cancellation and wait for nothing else
        (the server cancels a request that outlives the shutdown's grace).
        """
        ...


@dataclass(frozen=True, kw_only=True)
class WebhookDeps:
    """Everything the HTTP app needs from the rest of the daemon."""

    clover_auth_code: str  # empty: Clover deliveries are all refused (401), the handshake is expected
    woo_webhook_secret: str  # empty: Woo deliveries are all refused (401), the ping still works
    max_body_bytes: int
    intake: Intake
    verification: VerificationGate  # the handshake's gate; its codes are shown by `cloverwoo status`
    health: Callable[[], tuple[bool, dict[str, Any]]]  # (healthy, detail) for /healthz
    registry: CollectorRegistry  # metrics are registered here: use one registry per app
    queue_depth: Callable[[], float] | None = None  # intake queue depth, read at scrape time
    on_received: Callable[[str, str, int], None] | None = None  # (source, result, count) of each delivery
    before_metrics: Callable[[], Awaitable[None]] | None = None  # refreshes what /metrics reads from the store


class _Metrics:
    def __init__(self, deps: WebhookDeps) -> None:
        r = deps.registry
        self.deliveries = Counter(
            "cloverwoo_webhook_deliveries",
            "Webhook deliveries by source and answered HTTP status.",
            ["source", "status"],
            registry=r,
        )
        self.ack = Histogram(
            "cloverwoo_webhook_ack_seconds",
            "Time from request start to the answer (stored deliveries and refusals alike).",
            ["source"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.events = Counter(
            "cloverwoo_webhook_events", "Inbound events handed to the intake, by source.", ["source"], registry=r
        )
        self.queue = Gauge("cloverwoo_intake_queue_depth", "Events waiting for the actors.", registry=r)
        if deps.queue_depth is not None:
            self.queue.set_function(deps.queue_depth)


@dataclass
class _Outcome:
    """What one delivery's events became (filled in by ``store``, and by the Clover route for skipped entries)."""

    accepted: int = 0
    duplicate: int = 0
    skipped: int = 0  # Clover entries of a kind the sync does not use
    unreadable: int = 0  # Clover entries whose shape could not be read


class _Answer(Exception):
    """Ends a request early with a status; raised inside the handlers, never out of them.

    ``why`` is what the log says when it must say more than the sender is told.
    """

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None, *, why: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers or {}
        self.why = why or error


class _RefusalLog:
    """``webhook_refused`` and ``clover_entry_skipped`` lines, throttled per kind; the counts left are logged when due.

    Keys: ``(source, status)`` for a refusal, ``("clover", "unused" | "unreadable")`` for a skipped entry.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.throttle = LogThrottle(limit=REFUSALS_LOGGED, window=REFUSAL_WINDOW)
        self.clock = clock

    def refused(self, source: str, status: int, reason: str, remote: str | None, forwarded: str | None) -> None:
        admitted, ended = self.throttle.admit((source, status), self.clock())
        self._report(ended)
        if admitted:
            fields: dict[str, Any] = {"source": source, "status": status, "reason": reason[:200],
                                      "remote": remote or "unknown"}
            if forwarded:
                fields["forwarded_for"] = forwarded[:100]
            log.warning("webhook_refused", **fields)

    def skipped(self, entries: tuple[SkippedEntry, ...]) -> None:
        """One line per skipped entry (an unused kind at info, an unreadable one at warning), throttled per kind."""
        for e in entries:
            what = "unused" if e.unused else "unreadable"
            admitted, ended = self.throttle.admit(("clover", what), self.clock())
            self._report(ended)
            if admitted:
                (log.info if e.unused else log.warning)(
                    "clover_entry_skipped", merchant_id=e.merchant_id[:64], object_id=e.object_id, reason=e.reason,
                    hint="the rest of the delivery was stored")

    def _report(self, counts: list[Suppressed]) -> None:
        for c in counts:
            key: tuple[str, int | str] = c.key  # type: ignore[assignment]
            source, status = key
            if isinstance(status, str):
                log.warning("clover_entry_skipped_suppressed", skipped=status, suppressed=c.count,
                            seconds=round(c.seconds, 1), hint="see cloverwoo_events_received_total in /metrics")
                continue
            log.warning("webhook_refused_suppressed", source=source, status=status, suppressed=c.count,
                        seconds=round(c.seconds, 1), hint="see cloverwoo_webhook_deliveries in /metrics")

    async def run(self) -> None:
        """Report the counts of windows that ended, while the server runs."""
        while True:
            await trio.sleep(REFUSAL_WINDOW / 6)
            self._report(self.throttle.expire(self.clock()))

    def close(self) -> None:
        self._report(self.throttle.drain(self.clock()))


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, content_type="application/json", headers=headers)


# An answer given before the whole body was read must close the connection: the unread rest of the body
# would otherwise be taken for the next request, and a proxy that reuses its upstream connections
# (Caddy does) waits on it for ever, so the next delivery, a real one, hangs and is lost.
_CLOSE = {"Connection": "close"}


async def _read_body(limit: int) -> bytes:
    """The whole body, or ``_Answer(413)`` as soon as more than ``limit`` bytes arrived."""
    length = request.content_length
    if length is not None and length > limit:
        raise _Answer(413, f"body larger than {limit} bytes", _CLOSE)
    chunks: list[bytes] = []
    size = 0
    try:
        with trio.fail_after(BODY_TIMEOUT):
            async for chunk in request.body:
                size += len(chunk)
                if size > limit:
                    raise _Answer(413, f"body larger than {limit} bytes", _CLOSE)
                chunks.append(chunk)
    except RequestEntityTooLarge:
        raise _Answer(413, f"body larger than {limit} bytes", _CLOSE) from None
    except trio.TooSlowError:
        raise _Answer(408, "body not received in time", _CLOSE) from None
    return b"".join(chunks)


def create_app(deps: WebhookDeps) -> QuartTrio:
    """The quart-trio app serving ``/webhooks/clover``, ``/webhooks/woocommerce``, ``/healthz``, ``/metrics``."""
    app = QuartTrio("cloverwoo_daemon.webhooks")
    # quart's own guard, belt and braces with the counting in _read_body.
    app.config["MAX_CONTENT_LENGTH"] = deps.max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    metrics = _Metrics(deps)
    refusals = _RefusalLog()
    app.extensions[_REFUSALS] = refusals  # serve_webhooks runs its timer and flushes it at the end

    async def store(source: str, items: list[tuple[str, InboundEvent]], out: _Outcome) -> None:
        if not items:
            return
        try:
            new = await deps.intake.accept(items)
        except Overloaded as exc:
            retry = max(1, int(exc.retry_after))
            raise _Answer(503, "overloaded", {"Retry-After": str(retry)}) from None
        except Exception as exc:  # noqa: BLE001 - a store failure must not become a 500
            log.error("intake_failed", source=source, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            raise _Answer(503, "not stored", {"Retry-After": "5"}) from None
        metrics.events.labels(source).inc(len(items))
        out.accepted += len(items) if new is None else new
        out.duplicate += 0 if new is None else len(items) - new

    async def clover(out: _Outcome) -> dict[str, Any]:
        body = await _read_body(deps.max_body_bytes)
        received_ms = int(time.time() * 1000)
        if not verify_clover_auth(request.headers.get("X-Clover-Auth"), deps.clover_auth_code):
            if len(body) <= HANDSHAKE_MAX_BYTES:
                try:
                    parsed = parse_clover(body, received_ms=received_ms)
                except MalformedPayload:
                    parsed = None
                if isinstance(parsed, CloverVerification):
                    return verification(parsed.code, authenticated=False)
            raise _Answer(401, "authentication failed")
        try:
            parsed = parse_clover(body, received_ms=received_ms)
        except MalformedPayload as exc:
            raise _Answer(400, exc.reason) from None
        if isinstance(parsed, CloverVerification):
            return verification(parsed.code, authenticated=True)
        await store("clover", [(key, change) for key, change in parsed.items], out)
        answer: dict[str, Any] = {"ok": True, "events": len(parsed.items)}
        if parsed.skipped:  # only once stored: a 503 above means the sender retries, and is logged then
            out.skipped = sum(1 for e in parsed.skipped if e.unused)
            out.unreadable = len(parsed.skipped) - out.skipped
            refusals.skipped(parsed.skipped)
            answer["skipped"] = len(parsed.skipped)
        return answer

    def verification(code: str, *, authenticated: bool) -> dict[str, Any]:
        decision = deps.verification.offer(code, time.time(), authenticated=authenticated)
        match decision.answer:
            case "closed":
                raise _Answer(401, "authentication failed",
                              why="Clover verification not expected (open a window: cloverwoo clover verify)")
            case "throttled":
                retry = str(max(1, math.ceil(decision.retry_after)))
                raise _Answer(429, "too many verification attempts", {"Retry-After": retry})
            case "new":  # once per code; a repeat only counts (status shows it)
                log.warning("clover_verification_code", code=code, remote=request.remote_addr,
                            hint="paste it into the Clover developer dashboard, then Verify; "
                                 "`cloverwoo status` lists every code received")
        return {"ok": True}

    async def woo(out: _Outcome) -> dict[str, Any]:
        body = await _read_body(deps.max_body_bytes)
        topic = request.headers.get("X-WC-Webhook-Topic")
        if not verify_woo_signature(body, request.headers.get("X-WC-Webhook-Signature"), deps.woo_webhook_secret):
            if len(body) <= PING_MAX_BYTES:
                try:
                    ping = parse_woo(body, None)
                except MalformedPayload:
                    ping = None
                if isinstance(ping, WooPing):
                    log.info("woo_ping", webhook_id=ping.webhook_id)
                    return {"ok": True}
            raise _Answer(401, "authentication failed")
        try:
            parsed = parse_woo(body, topic)
        except MalformedPayload as exc:
            raise _Answer(400, exc.reason) from None
        match parsed:
            case WooPing(webhook_id=webhook_id):
                log.info("woo_ping", webhook_id=webhook_id)
            case WooIgnored(topic=ignored):
                log.info("woo_topic_ignored", topic=ignored)
            case WooDelivery(key=key, change=change):
                await store("woocommerce", [(key, change)], out)
        return {"ok": True}

    def received(source: str, status: int, error: str, out: _Outcome) -> None:
        if deps.on_received is None:
            return
        if status == 200:
            counts = {"accepted": out.accepted, "duplicate": out.duplicate, "skipped": out.skipped,
                      "unreadable": out.unreadable}
            if not any(counts.values()):
                counts = {"ignored": 1}  # ping, handshake, a topic we do not use, an empty delivery
        else:
            counts = {_REFUSED.get(status) or ("overloaded" if error == "overloaded" else "failed"): 1}
        try:
            for result, n in counts.items():
                if n:
                    deps.on_received(source, result, n)
        except Exception as exc:  # noqa: BLE001 - a metrics hook must not turn an answer into an error
            log.error("on_received_failed", error=f"{type(exc).__name__}: {exc}")

    def route(source: str, handler: Callable[[_Outcome], Any]) -> Callable[[], Any]:
        async def endpoint() -> Response:
            start = time.perf_counter()
            out = _Outcome()
            error = why = ""
            try:
                response = _json(200, await handler(out))
            except _Answer as answer:
                error, why = answer.error, answer.why
                response = _json(answer.status, {"ok": False, "error": answer.error}, answer.headers)
            except msgspec.ValidationError as exc:
                error = why = str(exc)
                response = _json(400, {"ok": False, "error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - never a 500 for any input
                log.error("webhook_handler_failed", source=source, error=f"{type(exc).__name__}: {exc}",
                          exc_info=exc)
                error = why = "internal error"
                response = _json(503, {"ok": False, "error": "internal error"}, {"Retry-After": "5"})
            metrics.deliveries.labels(source, str(response.status_code)).inc()
            metrics.ack.labels(source).observe(time.perf_counter() - start)
            received(source, response.status_code, error, out)
            if response.status_code != 200:
                refusals.refused(source, response.status_code, why, request.remote_addr,
                                 request.headers.get("X-Forwarded-For"))
            return response

        endpoint.__name__ = f"webhook_{source}"
        return endpoint

    app.add_url_rule("/webhooks/clover", view_func=route("clover", clover), methods=["POST"])
    app.add_url_rule("/webhooks/woocommerce", view_func=route("woocommerce", woo), methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            ok, detail = deps.health()
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, {"error": f"health check failed: {type(exc).__name__}"}
        try:
            return _json(200 if ok else 503, {"ok": ok, "detail": detail})
        except (TypeError, msgspec.EncodeError):
            return _json(200 if ok else 503, {"ok": ok, "detail": repr(detail)})

    @app.get("/metrics")
    async def metrics_view() -> Response:
        if deps.before_metrics is not None:
            try:
                with trio.move_on_after(METRICS_REFRESH_TIMEOUT) as scope:
                    await deps.before_metrics()
                if scope.cancelled_caught:
                    log.warning("metrics_refresh_slow", timeout_s=METRICS_REFRESH_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - serve what we have
                log.warning("metrics_refresh_failed", error=f"{type(exc).__name__}: {exc}")
        return Response(generate_latest(deps.registry), status=200, content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(msgspec.ValidationError)
    async def on_validation(exc: msgspec.ValidationError) -> Response:
        return _json(400, {"ok": False, "error": str(exc)})

    @app.errorhandler(HTTPException)
    async def on_http(exc: HTTPException) -> Response:
        return _json(exc.code or 400, {"ok": False, "error": exc.name})

    @app.errorhandler(Exception)
    async def on_error(exc: Exception) -> Response:
        log.error("http_unhandled", error=f"{type(exc).__name__}: {exc}")
        return _json(503, {"ok": False, "error": "internal error"}, {"Retry-After": "5"})

    return app


def _hyper_config(listen: str) -> HyperConfig:
    cfg = HyperConfig()
    cfg.bind = [listen]
    cfg.accesslog = None  # the deliveries counter and our own log lines say what the access log would
    cfg.errorlog = logging.getLogger("hypercorn.error")  # through the structlog pipeline (io.logs)
    cfg.keep_alive_timeout = 30
    cfg.graceful_timeout = 5.0
    return cfg


class ListenUnavailable(Exception):
    """The webhook address cannot be listened on (taken, or not an address of this machine)."""


def check_listen(listen: str) -> None:
    """Bind ``listen`` once and let it go, so that a taken port is one line at start, before the store opens
    and the actors run (not a traceback from deep inside the server once they do). Hypercorn binds it again
    a moment later with the same options; a process taking the port in between is told the same way."""
    try:
        for sock in _hyper_config(listen).create_sockets().insecure_sockets:
            sock.close()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ListenUnavailable(
            f"cannot listen on {listen} ([server] listen): {why.lower()}"
            + (" (is another cloverwoo, or another program, running on it?)" if exc.errno == errno.EADDRINUSE
               else "")) from None


async def serve_webhooks(
    app: QuartTrio,
    listen: str,
    *,
    shutdown_trigger: Callable[[], Any] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listen`` (``host:port``; port 0 picks one) until ``shutdown_trigger`` returns.

    Reports the bound URL (``http://127.0.0.1:PORT``) through ``task_status``.

    Resource handling: pass ``shutdown_trigger`` (e.g. ``stop_event.wait``)
    for a graceful stop: in-flight requests finish and Quart's shutdown hooks
    run; cancelling this task instead cuts them (stack.md), so keep
    cancellation for the deadline after the trigger.
    """

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            task_status.started(binds[0] if binds else f"http://{listen}")

    kwargs: dict[str, Any] = {}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    refusals: _RefusalLog | None = app.extensions.get(_REFUSALS)
    try:
        async with trio.open_nursery() as nursery:
            if refusals is not None:
                nursery.start_soon(refusals.run)
            check_listen(listen)
            await serve(app, _hyper_config(listen), task_status=_Status(), **kwargs)
            nursery.cancel_scope.cancel()
    finally:
        if refusals is not None:
            refusals.close()  # the counts still open: nothing refused goes unreported
