"""The webhook server over real loopback HTTP (port 0): authentication, limits, back-pressure, health, metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge
from structlog.testing import capture_logs

from cloverwoo_daemon.actors.intake import Intake, decode_event
from cloverwoo_daemon.actors.router import RouterInput
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.signatures import woo_signature
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.io.webhooks import REFUSALS_LOGGED, Overloaded, WebhookDeps, create_app, serve_webhooks
from cloverwoo_daemon.messages import CloverChange, InboundEvent, WooChange

AUTH = "0307e264-b33a-4913-88aa-37b10014a0b8"
SECRET = "wooSecret0123456789"
MAX = 4096
FUZZ_SCALE = max(1, int(os.environ.get("CLOVERWOO_FUZZ_SCALE", "1")))  # multiplies the fuzz examples

CLOVER_BODY = json.dumps(
    {"appId": "APP", "merchants": {"M1": [{"objectId": "I:ITEM1", "type": "UPDATE", "ts": 1711111111000},
                                          {"objectId": "O:ORD1", "type": "CREATE", "ts": 1711111111001}]}}
).encode()
WOO_BODY = json.dumps(
    {"id": 734, "type": "variation", "parent_id": 733, "date_modified_gmt": "2025-01-10T14:03:22",
     "stock_quantity": 7, "name": "Tee \u00e9", "_links": {"self": [{"href": "https://shop/x"}]}}
).encode()
WOO_ORDER = json.dumps({"id": 90, "line_items": [{"product_id": 5, "variation_id": 0}]}).encode()


@dataclass
class RecordingIntake:
    items: list[tuple[str, InboundEvent]] = field(default_factory=list)
    overloaded: int | None = None
    broken: bool = False

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        await trio.sleep(0)
        if self.overloaded is not None:
            raise Overloaded(self.overloaded)
        if self.broken:
            raise OSError("disk I/O error")
        self.items.extend(items)


@dataclass
class Harness:
    intake: RecordingIntake
    gate: VerificationGate
    healthy: list[bool]
    client: httpx.AsyncClient
    url: str

    @property
    def codes(self) -> list[str]:
        return [c.code for c in self.gate.codes]


def make_deps(intake: RecordingIntake, gate: VerificationGate | None, healthy: list[bool]) -> WebhookDeps:
    return WebhookDeps(
        clover_auth_code=AUTH,
        woo_webhook_secret=SECRET,
        max_body_bytes=MAX,
        intake=intake,
        verification=gate if gate is not None else VerificationGate(configured=True),
        health=lambda: (healthy[0], {"actors": "running" if healthy[0] else "shard 3 down"}),
        registry=CollectorRegistry(),
        queue_depth=lambda: float(len(intake.items)),
    )


@asynccontextmanager
async def running(gate: VerificationGate | None = None) -> AsyncIterator[Harness]:
    intake, healthy = RecordingIntake(), [True]
    gate = gate if gate is not None else VerificationGate(configured=True)
    app = create_app(make_deps(intake, gate, healthy))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield Harness(intake, gate, healthy, client, url)
        stop.set()


def woo_headers(body: bytes, topic: str = "product.updated", secret: str = SECRET) -> dict[str, str]:
    return {"X-WC-Webhook-Topic": topic, "X-WC-Webhook-Signature": woo_signature(body, secret),
            "X-WC-Webhook-Delivery-ID": "039f3155b209b1c591c26f60004d889f", "Content-Type": "application/json"}


async def test_valid_deliveries_are_stored_then_acknowledged() -> None:
    async with running() as h:
        assert h.url.startswith("http://127.0.0.1:") and not h.url.endswith(":0")
        r = await h.client.post("/webhooks/clover", content=CLOVER_BODY, headers={"X-Clover-Auth": AUTH})
        assert r.status_code == 200 and r.json() == {"ok": True, "events": 2}
        r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=woo_headers(WOO_BODY))
        assert r.status_code == 200
        order_headers = woo_headers(WOO_ORDER, "order.created")
        r = await h.client.post("/webhooks/woocommerce", content=WOO_ORDER, headers=order_headers)
        assert r.status_code == 200
        events = [e for _, e in h.intake.items]
        assert events == [
            CloverChange("M1", "I", "ITEM1", "UPDATE", 1711111111000),
            CloverChange("M1", "O", "ORD1", "CREATE", 1711111111001),
            WooChange("product.updated", 734, parent_id=733, date_modified_gmt="2025-01-10T14:03:22",
                      stock_quantity=7),
            WooChange("order.created", 90, refs=(WooRef(5, 0),)),
        ]
        assert h.intake.items[0][0] == '["clover","M1","I:ITEM1","UPDATE",1711111111000]'
        # A topic the sync does not use is acknowledged and not stored.
        body = b'{"id": 3}'
        r = await h.client.post("/webhooks/woocommerce", content=body, headers=woo_headers(body, "coupon.created"))
        assert r.status_code == 200 and len(h.intake.items) == 4


async def test_forged_auth_is_refused_and_nothing_stored() -> None:
    async with running() as h:
        for headers in ({}, {"X-Clover-Auth": AUTH[:-1]}, {"X-Clover-Auth": AUTH + "x"}, {"X-Clover-Auth": ""}):
            r = await h.client.post("/webhooks/clover", content=CLOVER_BODY, headers=headers)
            assert r.status_code == 401
        forged = [
            woo_headers(WOO_BODY, secret="wrong"),
            {"X-WC-Webhook-Topic": "product.updated"},
            woo_headers(WOO_BODY.replace(b"734", b"735")) | {"X-WC-Webhook-Topic": "product.updated"},
        ]
        for headers in forged[:2]:
            r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=headers)
            assert r.status_code == 401
        r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=forged[2])  # signed other body
        assert r.status_code == 401
        # Unauthenticated garbage is 401, not 400: nothing about the parser is revealed.
        r = await h.client.post("/webhooks/clover", content=b"{not json")
        assert r.status_code == 401
        assert h.intake.items == [] and h.codes == []


async def test_malformed_authenticated_bodies_get_400() -> None:
    async with running() as h:
        for body in (b"{not json", b'{"appId": "A", "events": {"M": [{"objectId": "I:1"}]}}', b"[" * 100):
            r = await h.client.post("/webhooks/clover", content=body, headers={"X-Clover-Auth": AUTH})
            assert r.status_code == 400, body
        for body, topic in ((b'{"id": "x"}', "product.updated"), (b'{"id": 1}', ""), (b"\xff", "order.updated")):
            r = await h.client.post("/webhooks/woocommerce", content=body, headers=woo_headers(body, topic))
            assert r.status_code == 400, body
        assert h.intake.items == []


async def test_handshake_and_ping_need_no_auth() -> None:
    async with running(VerificationGate(configured=False)) as h:  # before the Clover auth code exists
        r = await h.client.post("/webhooks/clover", json={"verificationCode": "5220ecf5-7dea-4396"})
        assert r.status_code == 200 and h.codes == ["5220ecf5-7dea-4396"]
        r = await h.client.post("/webhooks/clover", json={"verificationCode": "x", "merchants": {}})
        assert r.status_code == 401 and h.codes == ["5220ecf5-7dea-4396"]
        r = await h.client.post(
            "/webhooks/woocommerce", content=b"webhook_id=12",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
        r = await h.client.post("/webhooks/woocommerce", content=b"webhook_id=12&also=1")
        assert r.status_code == 401
        assert h.intake.items == []


async def test_overloaded_gives_503_with_retry_after() -> None:
    async with running() as h:
        h.intake.overloaded = 7
        r = await h.client.post("/webhooks/clover", content=CLOVER_BODY, headers={"X-Clover-Auth": AUTH})
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=woo_headers(WOO_BODY))
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        h.intake.overloaded = None
        h.intake.broken = True  # a store failure is "not stored, retry", never a 500
        r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=woo_headers(WOO_BODY))
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert h.intake.items == []


async def test_oversized_with_content_length() -> None:
    async with running() as h:
        big = b'{"id": 1, "pad": "' + b"x" * MAX + b'"}'
        r = await h.client.post("/webhooks/woocommerce", content=big, headers=woo_headers(big))
        assert r.status_code == 413
        r = await h.client.post("/webhooks/clover", content=big, headers={"X-Clover-Auth": AUTH})
        assert r.status_code == 413
        # The header alone decides: the server answers before any body byte was sent.
        stream = await trio.open_tcp_stream("127.0.0.1", int(h.url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send_all(
                b"POST /webhooks/clover HTTP/1.1\r\nHost: x\r\nX-Clover-Auth: " + AUTH.encode()
                + b"\r\nContent-Length: 999999999\r\n\r\n"
            )
            assert (await _read_status(stream)) == 413
        assert h.intake.items == []


async def _read_status(stream: trio.SocketStream) -> int:
    data = b""
    with trio.fail_after(10):
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, "connection closed without an answer"
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_oversized_chunked_body_cut_off_before_it_ends() -> None:
    async with running() as h:
        stream = await trio.open_tcp_stream("127.0.0.1", int(h.url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send_all(
                b"POST /webhooks/woocommerce HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"X-WC-Webhook-Topic: product.updated\r\nX-WC-Webhook-Signature: x\r\n\r\n"
            )
            chunk = b"a" * 1000
            for _ in range(6):  # 6000 bytes > MAX, and the body is never terminated
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            assert (await _read_status(stream)) == 413
        # A chunked body within the limit is fine.
        async def chunks() -> AsyncIterator[bytes]:
            yield WOO_BODY[:10]
            yield WOO_BODY[10:]

        r = await h.client.post("/webhooks/woocommerce", content=chunks(), headers=woo_headers(WOO_BODY))
        assert r.status_code == 200 and len(h.intake.items) == 1


async def test_healthz_and_metrics() -> None:
    async with running() as h:
        r = await h.client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"ok": True, "detail": {"actors": "running"}}
        h.healthy[0] = False
        r = await h.client.get("/healthz")
        assert r.status_code == 503 and r.json()["detail"] == {"actors": "shard 3 down"}
        await h.client.post("/webhooks/clover", content=CLOVER_BODY, headers={"X-Clover-Auth": AUTH})
        await h.client.post("/webhooks/clover", content=CLOVER_BODY)
        await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=woo_headers(WOO_BODY))
        r = await h.client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'cloverwoo_webhook_deliveries_total{source="clover",status="200"} 1.0' in text
        assert 'cloverwoo_webhook_deliveries_total{source="clover",status="401"} 1.0' in text
        assert 'cloverwoo_webhook_deliveries_total{source="woocommerce",status="200"} 1.0' in text
        assert 'cloverwoo_webhook_ack_seconds_count{source="clover"} 2.0' in text
        assert "cloverwoo_intake_queue_depth 3.0" in text
        assert AUTH not in text and SECRET not in text
        # Wrong method and path are plain HTTP errors, not 500s.
        assert (await h.client.get("/webhooks/clover")).status_code == 405
        assert (await h.client.post("/nope")).status_code == 404


async def test_graceful_shutdown_returns() -> None:
    intake = RecordingIntake()
    app = create_app(make_deps(intake, None, [True]))
    stop = trio.Event()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/healthz")).status_code == 200
            stop.set()  # serve_webhooks returns by itself, the nursery exits
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def test_a_clover_delivery_keeps_its_good_entries_and_logs_the_others() -> None:
    """One entry without ``ts``, of another shape, or of a kind the sync does not use never costs the rest: before,
    the whole POST was refused (400) and the sale beside it was lost (Clover documents no retry)."""
    body = json.dumps({"appId": "APP", "merchants": {
        "M1": [{"objectId": "IS:ITEM1", "type": "UPDATE", "itemStock": {"quantity": 4.0}},  # new: no ts
               {"objectId": "P:PAY1", "type": "CREATE", "ts": 5},
               {"objectId": "I-ITEM2", "type": "UPDATE", "ts": 5},
               {"objectId": "O:ORD1", "type": "CREATE", "ts": 6}],
        "M2": {"objectId": "I:ITEM3"}}}).encode()
    async with running() as h:
        with capture_logs() as logs:
            r = await h.client.post("/webhooks/clover", content=body, headers={"X-Clover-Auth": AUTH})
        assert r.status_code == 200 and r.json() == {"ok": True, "events": 2, "skipped": 3}
        assert [(c.kind, c.object_id) for _, c in h.intake.items] == [("IS", "ITEM1"), ("O", "ORD1")]
    skipped = [e for e in logs if e["event"] == "clover_entry_skipped"]
    assert [(e["log_level"], e["object_id"], e["reason"]) for e in skipped] == [
        ("info", "P:PAY1", "event type 'P' is not used for stock"),
        ("warning", "I-ITEM2", "objectId is not '<type key>:<id>'"),
        ("warning", "", "the merchant's events are not a list"),
    ]
    assert all(e["merchant_id"] in ("M1", "M2") for e in skipped)


class _StuckRouter:
    """A router queue of one slot that nobody reads: a router stopped by the shutdown, or stuck on a full shard."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[RouterInput](1)

    async def unstick(self) -> None:
        async for _ in self.receive:
            pass


async def test_shutdown_with_a_full_router_queue_is_prompt_and_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Deliveries that pass the queue check together can overfill the router's queue (here: a capacity above the
    queue's size stands for two deliveries checked at once). Before, the hand-off waited for room inside the
    shielded accept: the request could not be cancelled and the shutdown hung until systemd's SIGKILL. Now the
    commit alone is shielded, the event waits in the intake's overflow, and a shutdown ends at once; every event
    answered 200 is in the inbox, where the next start replays it."""
    store = Store(str(tmp_path / "state.sqlite3"))
    router = _StuckRouter()
    intake = Intake(store, router.send, capacity=10)
    deps = replace(make_deps(RecordingIntake(), None, [True]), intake=intake)  # type: ignore[arg-type]
    answers: list[int] = []
    hung = False
    async with trio.open_nursery() as outer:
        await outer.start(store.run)
        outer.start_soon(intake.run)
        stop = trio.Event()
        served = trio.Event()

        async def serve(task_status: trio.TaskStatus[str]) -> None:
            await serve_webhooks(create_app(deps), "127.0.0.1:0", shutdown_trigger=stop.wait,
                                 task_status=task_status)
            served.set()

        url = await outer.start(serve)

        async def deliver(i: int) -> None:
            body = json.dumps({"appId": "A", "merchants": {"M": [
                {"objectId": f"I:ITEM{i}", "type": "UPDATE", "ts": 1000 + i}]}}).encode()
            async with httpx.AsyncClient(timeout=60) as client:
                try:
                    r = await client.post(f"{url}/webhooks/clover", content=body, headers={"X-Clover-Auth": AUTH})
                except httpx.HTTPError:
                    return  # cut by the shutdown: not acknowledged, the sender retries
                answers.append(r.status_code)

        async with trio.open_nursery() as clients:
            clients.start_soon(deliver, 1)
            with trio.move_on_after(15):
                while intake.accepted < 1:
                    await trio.sleep(0.01)
            clients.start_soon(deliver, 2)  # finds the queue full
            with trio.move_on_after(15):
                while intake.accepted < 2:
                    await trio.sleep(0.01)
            assert intake.accepted == 2, "both deliveries reached the store"
            await trio.sleep(0.2)
            stop.set()  # the shutdown: stop intake, then the server's grace (5 s), then cancel
            with trio.move_on_after(20):
                await served.wait()
            if not served.is_set():
                hung = True  # the old code: a request blocked in a shield; unstick it so the test can end
                outer.start_soon(router.unstick)
                await served.wait()
        pending = await store.pending_events()
        outer.cancel_scope.cancel()
    assert not hung, "the webhook server did not stop within 20 s: a request was blocked inside a shield"
    assert answers == [200, 200], answers
    assert len(intake.overflow) == 1  # the second event waited for room; it is durable all the same
    assert sorted(decode_event(raw).object_id for _, raw, _ in pending) == ["ITEM1", "ITEM2"]  # type: ignore[union-attr]


@dataclass
class DedupIntake:
    """Stores each key once and says how many of a delivery's events were new, like ``actors.intake``."""

    keys: set[str] = field(default_factory=set)
    overloaded: bool = False
    broken: bool = False

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> int:
        await trio.sleep(0)
        if self.overloaded:
            raise Overloaded(1)
        if self.broken:
            raise OSError("disk I/O error")
        new = {key for key, _ in items} - self.keys
        self.keys |= new
        return len(new)


@asynccontextmanager
async def serving(deps: WebhookDeps) -> AsyncIterator[httpx.AsyncClient]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_webhooks, create_app(deps), "127.0.0.1:0", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
        stop.set()


async def test_each_delivery_outcome_is_reported_with_its_result() -> None:
    intake = DedupIntake()
    got: list[tuple[str, str, int]] = []
    deps = make_deps(RecordingIntake(), VerificationGate(configured=False), [True])
    deps = replace(deps, intake=intake, on_received=lambda source, result, n: got.append((source, result, n)))
    clover = {"X-Clover-Auth": AUTH}
    async with serving(deps) as client:
        async def post(path: str, body: bytes, headers: dict[str, str], status: int) -> None:
            r = await client.post(path, content=body, headers=headers)
            assert r.status_code == status, (body[:40], r.text)

        await post("/webhooks/clover", CLOVER_BODY, clover, 200)
        await post("/webhooks/clover", CLOVER_BODY, clover, 200)  # the same two events again
        await post("/webhooks/clover", CLOVER_BODY, {"X-Clover-Auth": "forged"}, 401)
        await post("/webhooks/clover", b"{not json", clover, 400)
        await post("/webhooks/clover", b'{"verificationCode": "abc"}', {}, 200)
        await post("/webhooks/woocommerce", WOO_BODY, woo_headers(WOO_BODY), 200)
        await post("/webhooks/woocommerce", b"webhook_id=3", {}, 200)
        big = b'{"id": 1, "pad": "' + b"x" * MAX + b'"}'
        await post("/webhooks/woocommerce", big, woo_headers(big), 413)
        intake.overloaded = True
        await post("/webhooks/woocommerce", WOO_ORDER, woo_headers(WOO_ORDER, "order.created"), 503)
        intake.overloaded, intake.broken = False, True
        await post("/webhooks/woocommerce", WOO_ORDER, woo_headers(WOO_ORDER, "order.created"), 503)
        intake.broken = False
        odd = json.dumps({"appId": "APP", "merchants": {"M1": [
            {"objectId": "IS:ITEM9", "type": "UPDATE"}, {"objectId": "P:PAY1", "type": "CREATE", "ts": 1},
            {"objectId": "C:CUST", "type": "UPDATE", "ts": 1}, {"objectId": "I1"}, "x"]}}).encode()
        await post("/webhooks/clover", odd, clover, 200)
        only_odd = json.dumps({"appId": "APP", "merchants": {"M1": [{"objectId": "P:PAY2", "ts": 2}]}}).encode()
        await post("/webhooks/clover", only_odd, clover, 200)
    # a Clover delivery with entries skipped: the used one stored, the rest counted by kind of skip
    assert got[-4:] == [
        ("clover", "accepted", 1),
        ("clover", "skipped", 2),  # a payment and a customer: kinds the sync does not use
        ("clover", "unreadable", 2),
        ("clover", "skipped", 1),  # a delivery of nothing but skipped entries is not "ignored"
    ]
    del got[-4:]
    assert got == [
        ("clover", "accepted", 2),
        ("clover", "duplicate", 2),
        ("clover", "rejected_auth", 1),
        ("clover", "malformed", 1),
        ("clover", "ignored", 1),
        ("woocommerce", "accepted", 1),
        ("woocommerce", "ignored", 1),
        ("woocommerce", "too_large", 1),
        ("woocommerce", "overloaded", 1),
        ("woocommerce", "failed", 1),
    ]


async def test_a_failing_metrics_hook_changes_no_answer() -> None:
    def broken(source: str, result: str, n: int) -> None:
        raise RuntimeError("metrics are broken")

    intake = DedupIntake()
    async with serving(replace(make_deps(RecordingIntake(), None, [True]), intake=intake, on_received=broken)) as c:
        r = await c.post("/webhooks/clover", content=CLOVER_BODY, headers={"X-Clover-Auth": AUTH})
        assert r.status_code == 200 and len(intake.keys) == 2


async def test_metrics_are_refreshed_before_each_scrape_and_served_when_that_fails() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("test_refreshed", "Set by the refresh.", registry=registry)
    calls: list[int] = []

    async def refresh() -> None:
        calls.append(1)
        await trio.sleep(0)
        if len(calls) == 2:
            raise OSError("the state store is not running")
        gauge.set(len(calls))

    deps = replace(make_deps(RecordingIntake(), None, [True]), registry=registry, before_metrics=refresh)
    async with serving(deps) as client:
        values = []
        for _ in range(3):
            r = await client.get("/metrics")
            assert r.status_code == 200
            values.append(next(line for line in r.text.splitlines() if line.startswith("test_refreshed ")))
    assert values == ["test_refreshed 1.0", "test_refreshed 1.0", "test_refreshed 3.0"]


# ---------------------------------------------------------------- fuzz over real HTTP
# Hypothesis drives a sync client; the server runs in its own trio loop in a thread.


@dataclass
class ThreadServer:
    url: str
    intake: RecordingIntake
    codes: list[str]


@pytest.fixture(scope="module")
def thread_server() -> Iterator[ThreadServer]:
    intake, codes = RecordingIntake(), []
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["stop"] = stop
        box["token"] = trio.lowlevel.current_trio_token()
        app = create_app(make_deps(intake, None, [True]))
        async with trio.open_nursery() as nursery:
            box["url"] = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(15)
    yield ThreadServer(box["url"], intake, codes)
    trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
    thread.join(15)


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)  # h11 rule
bodies = (
    st.binary(max_size=600)
    | st.sampled_from([CLOVER_BODY, WOO_BODY, WOO_ORDER, b"webhook_id=3", b'{"verificationCode": "abc"}', b"{}"])
    | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.none() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["id", "appId", "merchants",
                                                                              "objectId", "ts", "type"]), c),
        max_leaves=15))
    | st.binary(min_size=MAX + 1, max_size=MAX + 50)
)


@settings(max_examples=150 * FUZZ_SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, auth=st.none() | header_text, sig=st.none() | header_text, topic=st.none() | header_text,
       sign=st.booleans(), endpoint=st.sampled_from(["clover", "woocommerce"]))
def test_fuzz_never_500_never_unauthenticated_accept(
    thread_server: ThreadServer, body: bytes, auth: str | None, sig: str | None, topic: str | None,
    sign: bool, endpoint: str,
) -> None:
    headers: dict[str, str] = {}
    if endpoint == "clover":
        authed = sign
        value = AUTH if sign else auth
        if value is not None:
            headers["X-Clover-Auth"] = value
    else:
        authed = sign
        value = woo_signature(body, SECRET) if sign else sig
        if value is not None:
            headers["X-WC-Webhook-Signature"] = value
        if topic is not None:
            headers["X-WC-Webhook-Topic"] = topic
    authed = authed and len(body) <= MAX
    before = len(thread_server.intake.items)
    r = httpx.post(f"{thread_server.url}/webhooks/{endpoint}", content=body, headers=headers, timeout=10)
    assert r.status_code in (200, 400, 401, 413), (r.status_code, r.text)
    if not authed:
        assert len(thread_server.intake.items) == before
        if r.status_code == 200:  # only the two unauthenticated shapes
            assert body.strip().startswith(b"webhook_id=") or b"verificationCode" in body


# ---------------------------------------------------------------- fuzz against the real intake and store
# The same endpoints, now over the daemon's own Intake and SQLite Store (the router's queue drained into a list),
# so "no state change" is read from the state file itself and a replay must find its dedup key there.
# ``CLOVERWOO_FUZZ_SCALE`` multiplies the examples (a long run).

STORE_MAX = 64 * 1024


class StoreServer:
    def __init__(self, url: str, state: Path, intake: Intake, routed: list[object], codes: list[str]) -> None:
        self.url, self.state, self.intake, self.routed, self.codes = url, state, intake, routed, codes

    def __repr__(self) -> str:  # short: hypothesis prints it with every failing case
        return f"StoreServer({self.url}, {self.state})"

    def inbox_rows(self) -> int:
        conn = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    state = tmp_path_factory.mktemp("fuzz") / "state.sqlite3"
    codes: list[str] = []
    routed: list[object] = []
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["stop"], box["token"] = stop, trio.lowlevel.current_trio_token()
        store = Store(str(state))
        send, receive = trio.open_memory_channel[RouterInput](1_000_000)
        intake = Intake(store, send, capacity=1_000_000)
        deps = dataclasses.replace(make_deps(intake, None, [True]), max_body_bytes=STORE_MAX)  # type: ignore[arg-type]

        async def drain() -> None:
            async for msg in receive:
                routed.append(msg)

        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            nursery.start_soon(drain)
            box["url"] = await nursery.start(partial(serve_webhooks, create_app(deps), "127.0.0.1:0",
                                                     shutdown_trigger=stop.wait))
            box["intake"] = intake
            started.set()
            await stop.wait()
            await trio.sleep(0.5)  # let serve_webhooks return
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(15)
    server = StoreServer(box["url"], state, box["intake"], routed, codes)
    yield server
    # Never a crash: after everything the fuzz threw at it, the server still answers.
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
    thread.join(15)


def _json_bytes(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
any_json = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                     max_size=4), max_leaves=20)
json_only = st.recursive(  # no NaN or Infinity: what a well-formed body may carry
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)


@st.composite
def clover_valid(draw: st.DrawFn) -> dict[str, object]:
    """A well-formed Clover delivery; object ids, merchants and types in any script."""
    name = st.text(min_size=1, max_size=30)
    merchants = draw(st.dictionaries(name, st.lists(st.fixed_dictionaries({
        "objectId": st.builds(lambda k, i: f"{k}:{i}", st.sampled_from(["I", "O", "IC"]), name),
        "type": st.sampled_from(["CREATE", "UPDATE", "DELETE"]) | name,
        "ts": st.integers(0, 2**53)}), max_size=4), min_size=1, max_size=3))
    return {"appId": draw(st.text(max_size=20)), "merchants": merchants}


@st.composite
def woo_valid(draw: st.DrawFn) -> tuple[dict[str, object], str]:
    """A well-formed WooCommerce product or order delivery with unicode SKUs and names, and its topic."""
    if draw(st.booleans()):
        return ({"id": draw(st.integers(1, 2**63 - 1)), "sku": draw(st.text(max_size=40)),
                 "name": draw(st.text(max_size=40)), "type": draw(st.sampled_from(["simple", "variation"])),
                 "parent_id": draw(st.integers(0, 10**6)), "stock_quantity": draw(st.none() | st.integers(-9, 10**9)),
                 "date_modified_gmt": draw(st.text(max_size=20)), "meta_data": draw(json_only)},
                draw(st.sampled_from(["product.updated", "product.created", "product.deleted"])))
    lines = st.fixed_dictionaries({"product_id": st.integers(0, 10**6), "variation_id": st.integers(0, 10**6),
                                   "sku": st.text(max_size=20), "name": st.text(max_size=20)})
    return ({"id": draw(st.integers(1, 10**9)), "line_items": draw(st.lists(lines, max_size=5)),
             "date_modified_gmt": draw(st.text(max_size=20))},
            draw(st.sampled_from(["order.created", "order.updated", "order.deleted"])))


def _set_known_field(draw: st.DrawFn, doc: dict[str, Any], clover: bool) -> None:
    """Wrong type in a known field: one field the parser uses, set to any JSON value."""
    if clover:
        updates = [u for ups in doc["merchants"].values() for u in ups]  # type: ignore[union-attr]
        if updates and draw(st.booleans()):
            draw(st.sampled_from(updates))[draw(st.sampled_from(["objectId", "type", "ts"]))] = draw(any_json)
        else:
            doc[draw(st.sampled_from(["appId", "merchants"]))] = draw(any_json)
    else:
        doc[draw(st.sampled_from(["id", "parent_id", "stock_quantity", "date_modified_gmt", "line_items"]))] = \
            draw(any_json)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "lists":
        return b"[" * depth + b"]" * depth
    if kind == "objects":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth  # unbalanced


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    endpoint = draw(st.sampled_from(["clover", "woocommerce"]))
    clover = endpoint == "clover"
    family = draw(st.sampled_from(["valid", "wrong_type", "random_bytes", "deep", "huge", "unicode_bytes",
                                   "unauth_shapes"]))
    topic: str | None = draw(st.none() | st.sampled_from(["product.updated", "order.created", "coupon.updated"])
                             | header_text)
    well_formed = False
    if family in ("valid", "wrong_type"):
        if clover:
            doc: dict[str, Any] = draw(clover_valid())
        else:
            doc, topic = draw(woo_valid())
        if family == "wrong_type":
            _set_known_field(draw, doc, clover)
        body = _json_bytes(doc, draw(st.booleans()))
        well_formed = family == "valid"
    elif family == "random_bytes":
        body = draw(st.binary(max_size=2000))
    elif family == "deep":
        inner = _deep(draw(st.integers(1, 5000)), draw(st.sampled_from(["lists", "objects", "unbalanced"])))
        body = draw(st.sampled_from([inner, b'{"id": 1, "meta_data": ' + inner + b"}",
                                     b'{"appId": "A", "merchants": {"M": ' + inner + b"}}"]))
    elif family == "huge":
        n = draw(st.integers(1, 4000))
        body = draw(st.sampled_from([
            _json_bytes({"appId": "A", "merchants": {"M": [{"objectId": f"I:{i}", "type": "UPDATE", "ts": i}
                                                           for i in range(n)]}}, True),
            b'{"id": 1, "stock_quantity": 1' + b"0" * (n * 2) + b"}",
            b'{"id": 1, "date_modified_gmt": "' + b"\\u00e9" * n + b'"}',
            b'{"id": 1, "pad": "' + b"x" * (STORE_MAX + n) + b'"}',  # over the limit: 413
        ]))
    elif family == "unicode_bytes":  # invalid UTF-8, BOMs, UTF-16: a JSON parser must refuse, not crash
        text = _json_bytes(draw(clover_valid()) if clover else draw(woo_valid())[0], False).decode("utf-8",
                                                                                                  "surrogatepass")
        body = draw(st.sampled_from([b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16"),
                                     text.encode()[:-1] + b"\xff\xfe", text.encode().replace(b'"', b'"\xc3(', 1)]))
    else:
        body = draw(st.sampled_from([b"webhook_id=1", b"webhook_id=1&x=2", b" webhook_id=99 ", b"webhook_id=",
                                     b'{"verificationCode": "abc"}', b'{"verificationCode": "' + b"x" * 200 + b'"}',
                                     b'{"verificationCode": "abc", "merchants": {}}', b'{"verificationCode": 1}']))
    auth = draw(st.sampled_from(["valid", "valid", "none", "wrong", "garbage", "other_body"]))
    headers: dict[str, str] = {}
    content_type = draw(st.none() | st.sampled_from([
        "application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=----x", "application/xml", "", "application/json; charset=utf-16",
        "application/octet-stream"]) | header_text)
    if content_type is not None:
        headers["Content-Type"] = content_type
    secret_header = "X-Clover-Auth" if clover else "X-WC-Webhook-Signature"
    if auth == "valid":
        headers[secret_header] = AUTH if clover else woo_signature(body, SECRET)
    elif auth == "wrong":
        headers[secret_header] = AUTH[:-1] + "0" if clover else woo_signature(body, SECRET + "x")
    elif auth == "garbage":
        headers[secret_header] = draw(header_text)
    elif auth == "other_body":  # a valid signature of another body (a replayed signature on forged content)
        headers[secret_header] = AUTH if clover else woo_signature(body + b" ", SECRET)
        if clover:
            auth = "valid"  # Clover's auth code is static: nothing binds it to a body
    if not clover and topic is not None:
        headers["X-WC-Webhook-Topic"] = topic
        headers["X-WC-Webhook-Delivery-ID"] = draw(header_text)
    return Req({"endpoint": endpoint, "body": body, "headers": headers, "authed": auth == "valid",
                "well_formed": well_formed, "chunked": draw(st.booleans()), "family": family})


class Req(dict[str, Any]):
    """A drawn request; its repr cuts the body, so a failing case of a 200 kB body stays readable."""

    def __repr__(self) -> str:
        body: bytes = self["body"]
        shown = {k: v for k, v in self.items() if k != "body"}
        return f"Req(body={body[:300]!r}{f' ... ({len(body)} bytes)' if len(body) > 300 else ''}, {shown!r})"


def _post(server: StoreServer, req: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    body: bytes = req["body"]
    content: Any = iter([body[: len(body) // 2], body[len(body) // 2:]]) if req["chunked"] else body
    return httpx.post(f"{server.url}/webhooks/{req['endpoint']}", content=content, headers=headers, timeout=30)


@settings(max_examples=150 * FUZZ_SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(req=hostile_requests())
def test_fuzz_real_store_no_500_no_unauthenticated_state_change_replays_stored_once(
    store_server: StoreServer, req: dict[str, Any],
) -> None:
    """Random bytes, wrong content types, deep and huge JSON, wrong types in known fields, unicode SKUs, invalid
    UTF-8, forged or missing auth, chunked or not, each delivery then replayed (with a new Woo delivery id):

    - never a 500 (nor a 503: nothing is overloaded here);
    - without valid auth, or over the size limit, the state file's inbox does not change and nothing is routed;
    - a well-formed authenticated delivery is answered 200 (unicode SKUs included);
    - a replay of an accepted delivery is answered 200 and adds nothing: not a row, not a routed event."""
    server = store_server
    rows0, accepted0, routed0 = server.inbox_rows(), server.intake.accepted, len(server.routed)
    r = _post(server, req, req["headers"])
    assert r.status_code in (200, 400, 401, 413), (r.status_code, r.text[:300])
    authed = req["authed"] and len(req["body"]) <= STORE_MAX
    if not authed:
        assert server.inbox_rows() == rows0 and server.intake.accepted == accepted0, r.text[:200]
        if r.status_code == 200:  # only the two unauthenticated shapes
            body = req["body"].strip()
            assert body.startswith(b"webhook_id=") or body.startswith(b'{"verificationCode"'), body[:100]
        return
    if len(req["body"]) > STORE_MAX:
        assert r.status_code == 413
    if req["well_formed"]:
        assert r.status_code == 200, (r.status_code, r.text[:300], req["body"][:300])
    if r.status_code != 200:
        assert server.inbox_rows() == rows0 and len(server.routed) == routed0
        return
    assert server.intake.accepted - accepted0 == server.inbox_rows() - rows0  # every new row was routed once
    # The replay: same bytes (WooCommerce may resend with another delivery id): acknowledged, stored once.
    rows1, accepted1 = server.inbox_rows(), server.intake.accepted
    headers = dict(req["headers"])
    if "X-WC-Webhook-Delivery-ID" in headers:
        headers["X-WC-Webhook-Delivery-ID"] = "replayed-" + headers["X-WC-Webhook-Delivery-ID"]
    again = _post(server, req, headers)
    assert again.status_code == 200, again.text[:300]
    dated_by_arrival = _arrival_dated(req) if req["endpoint"] == "clover" else 0
    assert server.inbox_rows() - rows1 == server.intake.accepted - accepted1 <= dated_by_arrival


def _arrival_dated(req: dict[str, Any]) -> int:
    """How many stored entries of a Clover body have no usable ``ts``: their key is their arrival, so a replay
    in another millisecond stores them again (one more merge, harmless; two real changes are never merged)."""
    from cloverwoo_daemon.core.webhook_parse import parse_clover

    a, b = parse_clover(req["body"], received_ms=1), parse_clover(req["body"], received_ms=2)
    return len({k for k, _ in getattr(a, "items", ())} - {k for k, _ in getattr(b, "items", ())})


# ---------------------------------------------------------------- Clover's verification handshake, over HTTP

HANDSHAKE = {"verificationCode": "5220ecf5-7dea-4396"}


async def test_handshake_refused_401_once_an_auth_code_is_configured() -> None:
    async with running(VerificationGate(configured=True)) as h:
        with capture_logs() as logs:
            r = await h.client.post("/webhooks/clover", json=HANDSHAKE)
        assert r.status_code == 401 and r.json() == {"ok": False, "error": "authentication failed"}
        assert h.codes == []
        assert not [e for e in logs if e["event"] == "clover_verification_code"]
        refused = [e for e in logs if e["event"] == "webhook_refused"]
        assert refused and "not expected" in refused[0]["reason"] and refused[0]["status"] == 401


async def test_handshake_answered_while_the_admin_window_is_open() -> None:
    gate = VerificationGate(configured=True)
    async with running(gate) as h:
        gate.open_window(time.time(), 600)
        with capture_logs() as logs:
            r = await h.client.post("/webhooks/clover", json=HANDSHAKE)
            assert r.status_code == 200
            r = await h.client.post("/webhooks/clover", json=HANDSHAKE)  # pressed twice: logged once, counted
            assert r.status_code == 200
            r = await h.client.post("/webhooks/clover", json={"verificationCode": "other-code"})
            assert r.status_code == 200
        assert h.codes == ["5220ecf5-7dea-4396", "other-code"]  # the first is not overwritten
        assert gate.codes[0].count == 2
        logged = [e["code"] for e in logs if e["event"] == "clover_verification_code"]
        assert logged == ["5220ecf5-7dea-4396", "other-code"]
        gate.close_window()
        r = await h.client.post("/webhooks/clover", json={"verificationCode": "after"})
        assert r.status_code == 401 and "after" not in h.codes


async def test_handshake_with_the_auth_code_is_answered_even_when_closed() -> None:
    async with running(VerificationGate(configured=True)) as h:
        for i in range(8):  # and not throttled: only Clover and the admin know the code
            r = await h.client.post("/webhooks/clover", json={"verificationCode": f"c{i}"},
                                    headers={"X-Clover-Auth": AUTH})
            assert r.status_code == 200
        assert len(h.codes) == 8 and h.intake.items == []


async def test_handshake_flood_is_throttled_429_with_retry_after() -> None:
    async with running(VerificationGate(configured=False)) as h:
        statuses = []
        for i in range(12):
            r = await h.client.post("/webhooks/clover", json={"verificationCode": f"flood-{i}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 7  # a burst of 5, then 6 a minute
        assert h.codes == [f"flood-{i}" for i in range(5)]


async def test_refused_deliveries_are_logged_without_body_or_secret_and_throttled() -> None:
    body_marker = "BODY-MARKER-" + "x" * 10
    with capture_logs() as logs:
        async with running() as h:
            forged = CLOVER_BODY.replace(b"ITEM1", body_marker.encode())
            for _ in range(30):
                r = await h.client.post("/webhooks/clover", content=forged,
                                        headers={"X-Clover-Auth": AUTH[:-1] + "0", "X-Forwarded-For": "203.0.113.7"})
                assert r.status_code == 401
            bad = b'{"id": "x"}'
            r = await h.client.post("/webhooks/woocommerce", content=bad, headers=woo_headers(bad))
            assert r.status_code == 400
            big = b"x" * (MAX + 1)
            r = await h.client.post("/webhooks/woocommerce", content=big, headers=woo_headers(big))
            assert r.status_code == 413
            h.intake.overloaded = 3
            r = await h.client.post("/webhooks/woocommerce", content=WOO_BODY, headers=woo_headers(WOO_BODY))
            assert r.status_code == 503
        # the server stopped: the count still open was reported
    refused = [e for e in logs if e["event"] == "webhook_refused"]
    clover = [e for e in refused if e["source"] == "clover"]
    assert len(clover) == REFUSALS_LOGGED
    assert clover[0] == {"event": "webhook_refused", "log_level": "warning", "source": "clover", "status": 401,
                         "reason": "authentication failed", "remote": "127.0.0.1", "forwarded_for": "203.0.113.7"}
    woo = {e["status"]: e for e in refused if e["source"] == "woocommerce"}
    assert set(woo) == {400, 413, 503} and woo[503]["reason"] == "overloaded"
    summary = [e for e in logs if e["event"] == "webhook_refused_suppressed"]
    assert [(e["source"], e["status"], e["suppressed"]) for e in summary] == [("clover", 401, 30 - REFUSALS_LOGGED)]
    text = repr(logs)
    assert body_marker not in text and AUTH[:-1] not in text and SECRET not in text
