"""CloverSim behaves like Clover per the reference: auth, limits, shapes, sales, webhooks."""

from __future__ import annotations

import httpx
import msgspec
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from cloverwoo_daemon.sim.clover import CloverSim, RateLimits
from cloverwoo_daemon.sim.common import serve_app

A, TA = "MERCHANTAAAAA", "token-a"
B, TB = "MERCHANTBBBBB", "token-b"


class Receiver:
    """A small webhook endpoint on port 0 that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.deliveries: list[tuple[dict[str, str], dict]] = []
        self.app = QuartTrio("receiver")

        @self.app.post("/hook")
        async def hook():
            self.deliveries.append((dict(request.headers), msgspec.json.decode(await request.get_data())))
            return "", self.status

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while len(self.deliveries) < n:
                await trio.sleep(0.005)

    def events(self) -> list[tuple[str, str, str]]:
        return [(mid, ev["objectId"], ev["type"]) for _, body in self.deliveries
                for mid, evs in body.get("merchants", {}).items() for ev in evs]


@pytest.fixture
async def sim(nursery):
    s = CloverSim(seed=3)
    s.add_merchant("Downtown", merchant_id=A, token=TA)
    s.add_merchant("Airport", merchant_id=B, token=TB, update_stock=False)
    await nursery.start(s.run)
    return s


@pytest.fixture
async def receiver(nursery, sim):
    r = Receiver()
    url = await nursery.start(serve_app, r.app)
    sim.set_webhook_url(url + "/hook")
    return r


@pytest.fixture
async def http(sim):
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def quiet(sim: CloverSim) -> None:
    """Wait until the webhook sender has sent (or dropped) everything emitted so far."""
    with trio.fail_after(5):
        await sim.webhooks_idle()


# ------------------------------------------------------------------ auth and errors


@pytest.mark.parametrize("headers", [{}, auth("nope"), auth(TB), {"Authorization": TA}, {"Authorization": "Basic x"}])
async def test_wrong_or_missing_token_is_401(sim, http, headers):
    r = await http.get(f"/v3/merchants/{A}/items", headers=headers)
    assert r.status_code == 401
    assert "message" in r.json()
    assert sim.token_stats(A).requests == 0


async def test_unknown_merchant_is_401_and_unknown_item_404(sim, http):
    assert (await http.get("/v3/merchants/NOSUCHMERCHNT/items", headers=auth(TA))).status_code == 401
    r = await http.get(f"/v3/merchants/{A}/items/NOSUCHITEM000", headers=auth(TA))
    assert r.status_code == 404 and "message" in r.json()
    r = await http.get(f"/v3/merchants/{A}/nothing_here", headers=auth(TA))
    assert r.status_code == 404 and "message" in r.json()


async def test_item_stock_record_semantics(sim, http):
    tracked = sim.add_item(A, "Mug", quantity=5)
    untracked = sim.add_item(A, "Gift card")
    base = f"/v3/merchants/{A}/item_stocks"
    r = await http.get(f"{base}/{tracked}", headers=auth(TA))
    assert r.json() == {"item": {"id": tracked}, "stockCount": 5, "quantity": 5.0,
                        "modifiedTime": r.json()["modifiedTime"]}
    assert (await http.get(f"{base}/{untracked}", headers=auth(TA))).status_code == 404
    r = await http.post(f"{base}/{untracked}", headers=auth(TA), json={"quantity": 160.5})
    assert r.json() == {"item": {"id": untracked}, "stockCount": 161, "quantity": 160.5}
    assert sim.stock(A, untracked) == 160.5
    for bad in (b"{}", b"not json", b'{"quantity": "3"}', b'{"quantity": true}'):
        r = await http.post(f"{base}/{tracked}", headers=auth(TA), content=bad)
        assert r.status_code == 400 and "message" in r.json()
    listing = (await http.get(base, headers=auth(TA))).json()
    assert {e["item"]["id"] for e in listing["elements"]} == {tracked, untracked}
    assert sim.count("POST item_stocks/{id}", A) == 5
    assert sim.count("GET item_stocks/{id}", A) == 2


async def test_items_listing_paging_filters_and_expand(sim, http):
    ids = [sim.add_item(A, f"Item {n}", sku=f"S{n}", quantity=n) for n in range(1200)]
    url = f"/v3/merchants/{A}/items"
    r = await http.get(url, headers=auth(TA))
    body = r.json()
    assert len(body["elements"]) == 100 and "href" in body  # default limit
    assert "itemStock" not in body["elements"][0]
    assert body["elements"][0]["stockCount"] == 0  # the deprecated field is not the stock
    assert "modifiedTime" in r.headers["X-Clover-Allowed-Filter-Fields"]
    r = await http.get(url, headers=auth(TA), params={"limit": 5000, "offset": 1000, "expand": "itemStock"})
    els = r.json()["elements"]
    assert len(els) == 200  # clamped to 1000 per page, offset honoured
    assert els[0]["id"] == ids[1000] and els[0]["itemStock"]["quantity"] == 1000.0
    r = await http.get(url, headers=auth(TA), params=[("filter", "sku=S7"), ("expand", "itemStock")])
    assert [e["id"] for e in r.json()["elements"]] == [ids[7]]
    t = sim.now_ms() + 1
    await trio.sleep(0.01)
    sim.adjust(A, ids[3], 42)
    sim.delete_item(A, ids[4])
    r = await http.get(url, headers=auth(TA), params=[("filter", f"modifiedTime>={t}")])
    assert [e["id"] for e in r.json()["elements"]] == [ids[3]]  # deleted items leave the list
    r = await http.get(url, headers=auth(TA), params=[("filter", f"modifiedTime>={t}"), ("filter", "deleted=true")])
    assert [e["id"] for e in r.json()["elements"]] == [ids[4]]
    r = await http.get(url, headers=auth(TA), params=[("filter", f"modifiedTime<={t}"), ("filter", f"id={ids[3]}")])
    assert r.json()["elements"] == []  # repeated filters are ANDed
    r = await http.get(url, headers=auth(TA), params={"filter": "colour=red"})
    assert r.status_code == 400 and "colour" in r.json()["message"]


async def test_item_groups_and_variant_names(sim, http):
    gid, (small, large) = sim.add_item_group(A, "Tee", [{"options": {"Size": "S"}, "sku": "TEE-S", "quantity": 1},
                                                {"options": {"Size": "L"}, "sku": "TEE-L"}])
    item = (await http.get(f"/v3/merchants/{A}/items/{large}", headers=auth(TA),
                           params={"expand": "itemStock,itemGroup"})).json()
    assert item["name"] == "Tee L" and item["itemGroup"] == {"id": gid, "name": "Tee"}
    assert "itemStock" not in item  # no stock record
    groups = (await http.get(f"/v3/merchants/{A}/item_groups", headers=auth(TA),
                             params={"expand": "items,attributes"})).json()["elements"]
    assert groups[0]["items"]["elements"] == [{"id": small}, {"id": large}]
    assert groups[0]["attributes"]["elements"][0]["name"] == "Size"


async def test_merchant_and_properties(sim, http):
    assert (await http.get(f"/v3/merchants/{A}", headers=auth(TA))).json()["name"] == "Downtown"
    props = (await http.get(f"/v3/merchants/{B}/properties", headers=auth(TB))).json()
    assert props["trackStock"] is True and props["updateStock"] is False


# ------------------------------------------------------------------ sales, refunds, webhooks


async def test_pos_sale_line_items_per_unit_stock_and_webhooks(sim, http, receiver):
    x = sim.add_item(A, "Apple", quantity=10, price=50)
    y = sim.add_item(A, "Orange", quantity=3.5, price=70)
    await quiet(sim)
    receiver.deliveries.clear()
    before = (await http.get(f"/v3/merchants/{A}/items/{x}", headers=auth(TA))).json()["modifiedTime"]
    await trio.sleep(0.01)
    oid = sim.pos_sale(A, {x: 2, y: 3})
    assert sim.stock(A, x) == 8.0 and sim.stock(A, y) == 0.5
    order = (await http.get(f"/v3/merchants/{A}/orders/{oid}", headers=auth(TA),
                            params={"expand": "lineItems,payments,refunds"})).json()
    lines = order["lineItems"]["elements"]
    assert len(lines) == 5  # FIXED price: one line item per unit, no quantity field
    assert sorted(li["item"]["id"] for li in lines) == sorted([x, x, y, y, y])
    assert order["paymentState"] == "PAID" and order["total"] == 2 * 50 + 3 * 70
    assert order["payments"]["elements"][0]["amount"] == order["total"]
    assert order["refunds"]["elements"] == []
    item = (await http.get(f"/v3/merchants/{A}/items/{x}", headers=auth(TA), params={"expand": "itemStock"})).json()
    assert item["modifiedTime"] > before and item["itemStock"]["modifiedTime"] == item["modifiedTime"]

    await receiver.wait_for(1)
    await quiet(sim)
    assert len(receiver.deliveries) == 1  # events of one sale share one POST
    headers, body = receiver.deliveries[0]
    assert headers["X-Clover-Auth"] == sim.auth_code
    assert body["appId"] == sim.app_id
    assert receiver.events() == [(A, f"O:{oid}", "CREATE"), (A, f"I:{x}", "UPDATE"), (A, f"I:{y}", "UPDATE")]
    assert all(isinstance(ev["ts"], int) and ev["ts"] > 1_600_000_000_000 for ev in body["merchants"][A])


async def test_refund_restocks_and_notifies(sim, receiver, http):
    x = sim.add_item(A, "Apple", quantity=10)
    oid = sim.pos_sale(A, {x: 4})
    await quiet(sim)
    receiver.deliveries.clear()
    sim.refund(A, oid)
    assert sim.stock(A, x) == 10.0
    order = (await http.get(f"/v3/merchants/{A}/orders/{oid}", headers=auth(TA),
                            params={"expand": "lineItems,refunds"})).json()
    assert order["paymentState"] == "REFUNDED"
    assert all(li["refunded"] for li in order["lineItems"]["elements"])
    assert len(order["refunds"]["elements"][0]["lineItems"]["elements"]) == 4
    await receiver.wait_for(1)
    await quiet(sim)
    assert receiver.events() == [(A, f"O:{oid}", "UPDATE"), (A, f"I:{x}", "UPDATE")]


async def test_update_stock_off_leaves_stock_alone(sim, receiver):
    x = sim.add_item(B, "Apple", quantity=10)
    await quiet(sim)
    receiver.deliveries.clear()
    oid = sim.pos_sale(B, {x: 2})
    await receiver.wait_for(1)
    await quiet(sim)
    assert sim.stock(B, x) == 10.0
    assert receiver.events() == [(B, f"O:{oid}", "CREATE")]


async def test_orders_feed_filters_on_modified_time(sim, http):
    x = sim.add_item(A, "Apple", quantity=10)
    o1 = sim.pos_sale(A, {x: 1})
    t = sim.now_ms() + 1
    await trio.sleep(0.01)
    o2 = sim.pos_sale(A, {x: 1})
    r = await http.get(f"/v3/merchants/{A}/orders", headers=auth(TA),
                       params=[("filter", f"modifiedTime>={t}"), ("expand", "lineItems")])
    assert [o["id"] for o in r.json()["elements"]] == [o2]
    await trio.sleep(0.01)
    sim.refund(A, o1)  # a refund moves the order's modifiedTime
    r = await http.get(f"/v3/merchants/{A}/orders", headers=auth(TA), params=[("filter", f"modifiedTime>={t}")])
    assert {o["id"] for o in r.json()["elements"]} == {o1, o2}


async def test_nested_line_items_truncated_at_100_and_pageable(sim, http):
    x = sim.add_item(A, "Screw", quantity=1000)
    oid = sim.pos_sale(A, {x: 150})
    order = (await http.get(f"/v3/merchants/{A}/orders/{oid}", headers=auth(TA),
                            params={"expand": "lineItems"})).json()
    assert len(order["lineItems"]["elements"]) == 100
    r = await http.get(f"/v3/merchants/{A}/orders/{oid}/line_items", headers=auth(TA),
                       params={"limit": 1000})
    assert len(r.json()["elements"]) == 150


async def test_api_write_emits_item_update_unless_turned_off(sim, http, receiver):
    x = sim.add_item(A, "Apple", quantity=10)
    await quiet(sim)
    receiver.deliveries.clear()
    await http.post(f"/v3/merchants/{A}/item_stocks/{x}", headers=auth(TA), json={"quantity": 4})
    await receiver.wait_for(1)
    assert receiver.events() == [(A, f"I:{x}", "UPDATE")]
    sim.emit_on_api_write = False
    await http.post(f"/v3/merchants/{A}/item_stocks/{x}", headers=auth(TA), json={"quantity": 5})
    sim.adjust(A, x, 6)  # a marker that does emit, so we know the sender has run
    await receiver.wait_for(2)
    await quiet(sim)
    assert receiver.events()[1:] == [(A, f"I:{x}", "UPDATE")]
    assert len(receiver.deliveries) == 2


async def test_split_style_sends_is_and_ia_with_the_object_they_are_about(sim, http, receiver):
    """After Clover's split of the inventory topic: stock changes (a sale, a recount, an API write, a refund) send
    ``IS`` with the item stock object, availability changes ``IA``; ``I`` is left for the item itself."""
    sim.webhook_style = "split"
    x = sim.add_item(A, "Apple", quantity=2, price=50)
    sim._item(A, x).auto_manage = True
    await receiver.wait_for(1)
    await quiet(sim)
    receiver.deliveries.clear()
    oid = sim.pos_sale(A, {x: 2})  # sells out: an auto-managed item becomes unavailable
    await receiver.wait_for(1)
    await quiet(sim)
    assert receiver.events() == [(A, f"O:{oid}", "CREATE"), (A, f"IS:{x}", "UPDATE"), (A, f"IA:{x}", "UPDATE")]
    entries = receiver.deliveries[-1][1]["merchants"][A]
    assert entries[1]["itemStock"] == {"item": {"id": x}, "stockCount": 0, "quantity": 0.0,
                                       "modifiedTime": entries[1]["itemStock"]["modifiedTime"]}
    assert entries[2]["item"] == {"id": x, "available": False, "autoManage": True}
    assert all(isinstance(e["ts"], int) for e in entries)
    receiver.deliveries.clear()
    await http.post(f"/v3/merchants/{A}/item_stocks/{x}", headers=auth(TA), json={"quantity": 4})  # back: available
    sim.adjust(A, x, 3)
    sim.set_available(A, x, False)
    sim.delete_item(A, x)
    await receiver.wait_for(1)
    await quiet(sim)
    assert receiver.events() == [(A, f"IS:{x}", "UPDATE"), (A, f"IA:{x}", "UPDATE"), (A, f"IS:{x}", "UPDATE"),
                                 (A, f"IA:{x}", "UPDATE"), (A, f"I:{x}", "DELETE")]


async def test_subscriptions_and_entries_without_ts(sim, receiver):
    """Only the subscribed event types are sent; ``new_events_ts=False`` drops ``ts`` from IS and IA (Clover's
    schema for them is not known past ``objectId`` and ``type``)."""
    sim.webhook_style, sim.subscribed, sim.new_events_ts = "split", frozenset({"IS"}), False
    x = sim.add_item(A, "Apple", quantity=5)  # I: CREATE, not subscribed
    sim.pos_sale(A, {x: 1})  # O: CREATE, not subscribed; IS: UPDATE
    await receiver.wait_for(1)
    await quiet(sim)
    assert receiver.events() == [(A, f"IS:{x}", "UPDATE")]
    (entry,) = receiver.deliveries[0][1]["merchants"][A]
    assert "ts" not in entry and entry["itemStock"]["quantity"] == 4.0


async def test_legacy_style_sends_i_for_availability_too(sim, http, receiver):
    x = sim.add_item(A, "Apple", quantity=5)
    await receiver.wait_for(1)
    await quiet(sim)
    receiver.deliveries.clear()
    sim.set_available(A, x, False)
    sim.set_available(A, x, False)  # no change: nothing sent
    await receiver.wait_for(1)
    await quiet(sim)
    assert receiver.events() == [(A, f"I:{x}", "UPDATE")]
    item = (await http.get(f"/v3/merchants/{A}/items/{x}", headers=auth(TA))).json()
    assert item["available"] is False
    assert (await http.post("/_sim/webhook_style", json={"style": "split"})).json() == {"style": "split"}
    assert (await http.post("/_sim/webhook_style", json={"style": "x"})).status_code == 400
    r = await http.post(f"/_sim/merchants/{A}/items/{x}/available", json={"available": True})
    assert r.json() == {"id": x, "available": True}
    await receiver.wait_for(2)
    await quiet(sim)
    assert receiver.events()[-1] == (A, f"IA:{x}", "UPDATE")
    with pytest.raises(ValueError):
        CloverSim(webhook_style="v2")


async def test_one_post_can_carry_several_merchants(sim, receiver):
    x = sim.add_item(A, "Apple", quantity=1)
    y = sim.add_item(B, "Pear", quantity=1)
    await receiver.wait_for(1)
    await quiet(sim)
    assert sorted(receiver.events()) == sorted([(A, f"I:{x}", "CREATE"), (B, f"I:{y}", "CREATE")])
    assert len(receiver.deliveries) == 1


async def test_webhook_drops_duplicates_and_off_switch(sim, receiver):
    x = sim.add_item(A, "Apple", quantity=10)
    await quiet(sim)
    receiver.deliveries.clear()
    sim.faults.webhook_drop_rate = 1.0
    sim.adjust(A, x, 1)
    await quiet(sim)
    assert receiver.deliveries == []
    assert [a.outcome for a in sim.webhook_log][-1] == "dropped"

    sim.faults.webhook_drop_rate = 0.0
    sim.faults.webhook_duplicate_rate = 1.0
    sim.adjust(A, x, 2)
    await receiver.wait_for(2)
    assert receiver.deliveries[0][1] == receiver.deliveries[1][1]

    sim.faults.webhook_duplicate_rate = 0.0
    sim.faults.webhooks_enabled = False
    sim.adjust(A, x, 3)
    await quiet(sim)
    assert len(receiver.deliveries) == 2
    sim.faults.webhooks_enabled = True
    sim.adjust(A, x, 4)
    await receiver.wait_for(3)
    assert receiver.events()[-1] == (A, f"I:{x}", "UPDATE")


async def test_webhook_failures_are_recorded_not_retried(sim, nursery):
    r = Receiver(status=500)
    url = await nursery.start(serve_app, r.app)
    sim.set_webhook_url(url + "/hook")
    sim.add_item(A, "Apple", quantity=1)
    await r.wait_for(1)
    await quiet(sim)
    assert len(r.deliveries) == 1
    assert sim.webhook_log[-1].outcome == "failed" and sim.webhook_log[-1].status == 500


async def test_verification_code_handshake(sim, receiver):
    code, status = await sim.send_verification_code()
    assert status == 200
    headers, body = receiver.deliveries[-1]
    assert body == {"verificationCode": code}
    assert "X-Clover-Auth" not in headers
    assert len(code) == 36


# ------------------------------------------------------------------ rate limits


async def test_token_rate_limit_429_names_the_limit_and_penalty_grows(sim, http):
    sim.limits = RateLimits(token_rate=0.01, token_burst=2, early_retry_penalty=5.0)
    url = f"/v3/merchants/{A}/properties"
    assert [(await http.get(url, headers=auth(TA))).status_code for _ in range(2)] == [200, 200]
    r = await http.get(url, headers=auth(TA))
    assert r.status_code == 429
    assert r.headers["X-RateLimit-tokenLimit"] == "0.01"
    first = int(r.headers["retry-after"])
    assert first >= 1 and "message" in r.json()
    r = await http.get(url, headers=auth(TA))  # came back early: the wait grows
    assert r.status_code == 429 and int(r.headers["retry-after"]) > first
    assert (await http.get(f"/v3/merchants/{B}/properties", headers=auth(TB))).status_code == 200  # other token
    assert sim.token_stats(A).rejected_429 == 2 and sim.token_stats(B).rejected_429 == 0


async def test_app_rate_limit_is_shared_by_all_tokens(sim, http):
    sim.limits = RateLimits(app_rate=0.01, app_burst=2, early_retry_penalty=0.0)
    assert (await http.get(f"/v3/merchants/{A}/properties", headers=auth(TA))).status_code == 200
    assert (await http.get(f"/v3/merchants/{B}/properties", headers=auth(TB))).status_code == 200
    r = await http.get(f"/v3/merchants/{A}/properties", headers=auth(TA))
    assert r.status_code == 429 and r.headers["X-RateLimit-crossTokenLimit"] == "0.01"
    assert "X-RateLimit-tokenLimit" not in r.headers
    assert int(r.headers["retry-after"]) >= 1


async def test_concurrency_limit_429(sim, nursery):
    sim.limits = RateLimits(token_concurrent=1)
    x = sim.add_item(A, "Apple", quantity=1)
    sim.faults.hang_rate = 1.0  # the first request stays in the server until cancelled
    sim.faults.hang_seconds = 60.0
    async with httpx.AsyncClient(base_url=sim.base_url, headers=auth(TA)) as c:
        async with trio.open_nursery() as n:
            n.start_soon(c.get, f"/v3/merchants/{A}/items/{x}")
            with trio.fail_after(5):
                while sim.token_stats(A).max_concurrency < 1:
                    await trio.sleep(0.005)
            refused = await c.get(f"/v3/merchants/{A}/items/{x}")
            n.cancel_scope.cancel()
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-tokenConcurrentLimit"] == "1"
    assert refused.headers["retry-after"] == "1"
    assert sim.token_stats(A).max_concurrency == 2


async def test_faults_down_and_5xx(sim, http):
    sim.faults.down = True
    r = await http.get(f"/v3/merchants/{A}/properties", headers=auth(TA))
    assert r.status_code == 503 and "message" in r.json()
    sim.faults.down = False
    sim.faults.error_rate = 1.0
    assert (await http.get(f"/v3/merchants/{A}/properties", headers=auth(TA))).status_code in (500, 502, 503)


async def test_stats_count_requests_and_rates(sim, http):
    for _ in range(3):
        await http.get(f"/v3/merchants/{A}/properties", headers=auth(TA))
    st = sim.token_stats(A)
    assert st.requests == 3 and 1 <= st.max_rate_1s <= 3 and st.max_concurrency == 1
    assert sim.count("GET properties") == 3 and sim.count("GET properties", B) == 0


# ------------------------------------------------------------------ /_sim admin routes


async def test_admin_routes_drive_the_simulation(sim, http, receiver):
    r = await http.post(f"/_sim/merchants/{A}/items", json={"name": "Cap", "sku": "CAP", "quantity": 5})
    iid = r.json()["id"]
    oid = (await http.post(f"/_sim/merchants/{A}/sales", json={"items": {iid: 2}})).json()["orderId"]
    assert (await http.get(f"/_sim/merchants/{A}/items/{iid}/stock")).json()["quantity"] == 3.0
    await http.post(f"/_sim/merchants/{A}/orders/{oid}/refund")
    assert sim.stock(A, iid) == 5.0
    await http.post(f"/_sim/merchants/{A}/items/{iid}/stock", json={"quantity": 9})
    assert sim.stock(A, iid) == 9.0
    await http.post(f"/_sim/merchants/{A}/sales", json={"items": {"cap": 1}})  # by SKU, as `cloverwoo simulate` shows
    assert sim.stock(A, iid) == 8.0
    await http.post(f"/_sim/merchants/{A}/items/{iid}/stock", json={"quantity": 9})
    r = await http.post("/_sim/faults", json={"latency": 0.001, "webhook_drop_rate": 0.0})
    assert r.json()["latency"] == 0.001 and sim.faults.latency == 0.001
    assert (await http.post("/_sim/faults", json={"latency": "slow"})).status_code == 400
    assert (await http.post(f"/_sim/merchants/{A}/sales", json={"items": {"NOPE": 1}})).status_code == 404
    merchants = (await http.get("/_sim/merchants")).json()
    assert {m["id"] for m in merchants} == {A, B}
    stats = (await http.get("/_sim/stats")).json()
    assert stats["app"]["requests"] == 0  # admin routes are not Clover API calls
    await http.delete(f"/_sim/merchants/{A}/items/{iid}")
    assert (await http.get(f"/v3/merchants/{A}/items/{iid}", headers=auth(TA))).status_code == 404
    r = await http.post("/_sim/webhook_url", json={"url": None})
    assert r.json() == {"url": None} and sim.webhook_url is None


async def test_webhook_delay_still_delivers(sim, receiver):
    sim.faults.webhook_delay = 0.05
    x = sim.add_item(A, "Apple", quantity=1)
    assert receiver.deliveries == []  # nothing can have gone yet: the sender has not even run
    await receiver.wait_for(1)
    assert receiver.events() == [(A, f"I:{x}", "CREATE")]
