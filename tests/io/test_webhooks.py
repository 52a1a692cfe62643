"""The webhook server over real loopback HTTP (port 0): authentication, limits, back-pressure, health, metrics."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.signatures import woo_signature
from cloverwoo_daemon.io.webhooks import Overloaded, WebhookDeps, create_app, serve_webhooks
from cloverwoo_daemon.messages import CloverChange, InboundEvent, WooChange

AUTH = "0307e264-b33a-4913-88aa-37b10014a0b8"
SECRET = "wooSecret0123456789"
MAX = 4096

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
    codes: list[str]
    healthy: list[bool]
    client: httpx.AsyncClient
    url: str


def make_deps(intake: RecordingIntake, codes: list[str], healthy: list[bool]) -> WebhookDeps:
    return WebhookDeps(
        clover_auth_code=AUTH,
        woo_webhook_secret=SECRET,
        max_body_bytes=MAX,
        intake=intake,
        on_verification_code=codes.append,
        health=lambda: (healthy[0], {"actors": "running" if healthy[0] else "shard 3 down"}),
        registry=CollectorRegistry(),
        queue_depth=lambda: float(len(intake.items)),
    )


@asynccontextmanager
async def running() -> AsyncIterator[Harness]:
    intake, codes, healthy = RecordingIntake(), [], [True]
    app = create_app(make_deps(intake, codes, healthy))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield Harness(intake, codes, healthy, client, url)
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
        for body in (b"{not json", b'{"appId": "A", "merchants": {"M": [{"objectId": "I1"}]}}', b"[" * 100):
            r = await h.client.post("/webhooks/clover", content=body, headers={"X-Clover-Auth": AUTH})
            assert r.status_code == 400, body
        for body, topic in ((b'{"id": "x"}', "product.updated"), (b'{"id": 1}', ""), (b"\xff", "order.updated")):
            r = await h.client.post("/webhooks/woocommerce", content=body, headers=woo_headers(body, topic))
            assert r.status_code == 400, body
        assert h.intake.items == []


async def test_handshake_and_ping_need_no_auth() -> None:
    async with running() as h:
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
    app = create_app(make_deps(intake, [], [True]))
    stop = trio.Event()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/healthz")).status_code == 200
            stop.set()  # serve_webhooks returns by itself, the nursery exits
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))


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
        app = create_app(make_deps(intake, codes, [True]))
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
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
