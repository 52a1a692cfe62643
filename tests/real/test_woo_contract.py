"""The simulator held to the real store: every WooCommerce behaviour the daemon relies on, one test body each.

Each test runs twice through the ``store`` fixture: against ``sim/woocommerce.py``
(``[sim]``) and against a real WooCommerce 11.0.1 (``[real]``, the realwoo rig).
Where the daemon uses its own code for a call (``io/woocommerce.py``,
``io/preflight.py``, ``core/webhook_parse.py``, ``core/signatures.py``) the
test goes through it; raw HTTP checks the shapes underneath. A difference
between the two stores fails here; the fix belongs in the simulator.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import trio

from cloverwoo_daemon.core import oauth1
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.stock_policy import Change, Presentation
from cloverwoo_daemon.core.webhook_parse import WooDelivery, WooPing
from cloverwoo_daemon.io.preflight import woo_checks
from cloverwoo_daemon.io.woocommerce import VERSION_META_KEY
from cloverwoo_daemon.ports import NotFound
from tests.real.stores import WebhookListener, WooStore, wait_for

MISSING = 999_999_999  # an id no store in a test run reaches
# What the daemon reads from a product or variation (io/woocommerce.py, core/webhook_parse.py).
DAEMON_READS = {"id", "parent_id", "name", "sku", "type", "status", "manage_stock", "stock_quantity", "attributes",
                "date_modified_gmt", "meta_data", "backorders"}


def error(resp: httpx.Response) -> tuple[int, str]:
    body = resp.json()
    assert set(body) >= {"code", "message", "data"}, body
    assert body["data"]["status"] == resp.status_code, body
    return resp.status_code, body["code"]


def gmt(text: str, seconds: int = 0) -> str:
    return (datetime.fromisoformat(text) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


async def next_second() -> None:
    """Sleep into the next wall-clock second (dates have a 1-second resolution)."""
    await trio.sleep(1.05 - (time.time() % 1.0))


# --------------------------------------------------------------------------
# Stock writes


async def test_inventory_delta_returns_the_new_stock_on_products_and_variations(store: WooStore) -> None:
    mug = await store.create_product(stock=10)
    _, (small, medium) = await store.create_variable_product({"S": 5, "M": 3})
    async with store.client() as woo:
        results = await woo.apply_deltas([(mug.ref, -3, "a1.41"), (small.ref, -2, "a2.42"), (medium.ref, 4, "a3.43")])
        assert [(r.ref, r.ok, r.quantity) for r in results] == [
            (mug.ref, True, 7), (small.ref, True, 3), (medium.ref, True, 7)]
        stock = await woo.get_stock(mug.ref)
        assert (stock.manage_stock, stock.quantity, stock.version_marker, stock.sku) == (True, 7, "a1.41", mug.sku)
        stock = await woo.get_stock(small.ref)
        assert (stock.quantity, stock.version_marker, stock.sku) == (3, "a2.42", small.sku)
    for item in (mug, small):
        before = await store.stock(item)
        answer = await store.ok("PUT", item.path, json={"inventory_delta": "-1"})  # a string is accepted
        assert answer["stock_quantity"] == before - 1
        answer = await store.ok("PUT", item.path, json={"inventory_delta": 1.7})  # truncated, like intval
        assert answer["stock_quantity"] == before
        answer = await store.ok("PUT", item.path, json={"inventory_delta": -5, "stock_quantity": 20})
        assert answer["stock_quantity"] == 20  # stock_quantity wins
        resp = await store.request("PUT", item.path, json={"stock_quantity": 5.5})
        assert error(resp) == (400, "rest_invalid_param")
        assert "stock_quantity" in resp.json()["data"]["params"]
        assert await store.stock(item) == 20


async def test_a_variation_is_written_only_through_its_parent(store: WooStore) -> None:
    parent, (small,) = await store.create_variable_product({"S": 5})
    resp = await store.request("PUT", f"/products/{small.id}", json={"inventory_delta": -1})
    assert error(resp) == (404, "woocommerce_rest_invalid_product_id")
    answer = await store.ok("POST", "/products/batch", json={"update": [{"id": small.id, "inventory_delta": -1}]})
    assert answer["update"][0]["error"]["code"] == "woocommerce_rest_invalid_product_id"
    assert answer["update"][0]["error"]["data"]["status"] == 404
    as_product = await store.ok("GET", f"/products/{small.id}")  # reading it as a product works (webhooks do)
    assert (as_product["type"], as_product["parent_id"], as_product["stock_quantity"]) == ("variation", parent.id, 5)
    answer = await store.ok("POST", f"/products/{parent.id}/variations/batch",
                            json={"update": [{"id": small.id, "inventory_delta": -2}]})
    assert answer["update"][0]["stock_quantity"] == 3
    assert (await store.read(parent))["variations"] == [small.id]


async def test_untracked_products_ignore_stock_writes(store: WooStore) -> None:
    loose = await store.create_product(manage_stock=False)
    assert (loose.data["manage_stock"], loose.data["stock_quantity"]) == (False, None)
    async with store.client() as woo:
        (result,) = await woo.apply_deltas([(loose.ref, -1, 1)])
        assert (result.ok, result.quantity) == (True, None)
        stock = await woo.get_stock(loose.ref)
        assert (stock.manage_stock, stock.quantity) == (False, None)
    answer = await store.ok("PUT", loose.path, json={"stock_status": "outofstock"})
    assert answer["stock_status"] == "outofstock"  # the merchant's own status, when stock is not managed
    tracked = await store.create_product(stock=4)
    answer = await store.ok("PUT", tracked.path, json={"stock_status": "outofstock"})
    assert (answer["stock_quantity"], answer["stock_status"]) == (4, "instock")  # ignored with managed stock


async def test_negative_stock_is_accepted_and_sets_stock_status(store: WooStore) -> None:
    item = await store.create_product(stock=1)
    seen = []
    for quantity, backorders in ((-2, "no"), (-2, "notify"), (0, "yes"), (0, "no"), (3, "no"), (1, "notify")):
        answer = await store.ok("PUT", item.path, json={"stock_quantity": quantity, "backorders": backorders})
        seen.append((answer["stock_quantity"], answer["stock_status"], answer["backorders_allowed"],
                     answer["backordered"]))
    assert seen == [(-2, "outofstock", False, False), (-2, "onbackorder", True, True), (0, "onbackorder", True, True),
                    (0, "outofstock", False, False), (3, "instock", False, False), (1, "instock", True, False)]
    answer = await store.ok("PUT", item.path, json={"inventory_delta": -4, "backorders": "no"})
    assert (answer["stock_quantity"], answer["stock_status"]) == (-3, "outofstock")


async def test_batches_take_100_items_refuse_101_and_answer_per_item(store: WooStore) -> None:
    item = await store.create_product(stock=0)
    answer = await store.ok("POST", "/products/batch", json={"update": [{"id": item.id, "inventory_delta": 1}] * 100})
    assert len(answer["update"]) == 100
    assert [u["stock_quantity"] for u in answer["update"]] == list(range(1, 101))  # one after the other
    resp = await store.request("POST", "/products/batch", json={
        "update": [{"id": item.id, "inventory_delta": 1}] * 99, "delete": [MISSING, MISSING]})
    assert error(resp) == (413, "woocommerce_rest_request_entity_too_large")
    assert resp.json()["message"] == "Unable to accept more than 100 items for this request."
    assert await store.stock(item) == 100
    answer = await store.ok("POST", "/products/batch", json={
        "update": [{"id": MISSING, "inventory_delta": 1}, {"id": item.id, "inventory_delta": -1}]})
    bad, good = answer["update"]
    assert bad == {"id": MISSING, "error": {"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.",
                                            "data": {"status": 400}}}
    assert (good["id"], good["stock_quantity"]) == (item.id, 99)
    resp = await store.request("POST", "/products/batch", json={})
    assert resp.status_code == 200  # preflight's write probe: an empty batch changes nothing
    async with store.client() as woo:
        missing, ok = await woo.apply_deltas([(WooRef(MISSING), -1, 1), (item.ref, -9, 2)])
        assert not missing.ok and "woocommerce_rest_product_invalid_id" in (missing.error or "")
        assert (ok.ok, ok.quantity) == (True, 90)


async def test_meta_is_written_read_and_deleted_by_a_null_value(store: WooStore) -> None:
    item = await store.create_product(stock=5)

    def meta(answer: dict[str, Any]) -> dict[str, Any]:
        return {m["key"]: m["value"] for m in answer["meta_data"]}

    answer = await store.ok("PUT", item.path, json={"meta_data": [{"key": "_ct_a", "value": "1"},
                                                                  {"key": "_ct_empty", "value": ""}]})
    assert meta(answer) == {"_ct_a": "1", "_ct_empty": ""}
    assert all(isinstance(m["id"], int) for m in answer["meta_data"])
    answer = await store.ok("PUT", item.path, json={"meta_data": [{"key": "_ct_a", "value": "2"}]})
    assert meta(answer) == {"_ct_a": "2", "_ct_empty": ""}  # updated in place, not added twice
    answer = await store.ok("PUT", item.path, json={"meta_data": [{"key": "_ct_a", "value": None},
                                                                  {"key": "_ct_never", "value": None}]})
    assert meta(answer) == {"_ct_empty": ""}
    assert meta(await store.read(item)) == {"_ct_empty": ""}
    async with store.client() as woo:
        # a zero delta sends the version marker alone: no stock change
        (result,) = await woo.apply_deltas([(item.ref, 0, "c0ffee.7")])
        assert (result.ok, result.quantity) == (True, 5)
        assert (await woo.get_stock(item.ref)).version_marker == "c0ffee.7"
        assert meta(await store.read(item))[VERSION_META_KEY] == "c0ffee.7"
        _, (small,) = await store.create_variable_product({"S": 2})
        for ref, visibility in ((item.ref, "hidden"), (small.ref, None)):
            shown = await woo.set_presentation(ref, Change(catalog_visibility="hidden", backorders="notify",
                                                           contact_message="Call us"))
            assert shown == Presentation(catalog_visibility=visibility, backorders="notify", contact_message="Call us")
            assert await woo.get_presentation(ref) == shown
            shown = await woo.set_presentation(ref, Change(backorders="no", contact_message=""))
            assert (shown.backorders, shown.contact_message) == ("no", "")


# --------------------------------------------------------------------------
# Reading changes


async def test_modified_after_is_strictly_after_at_one_second(store: WooStore) -> None:
    item = await store.create_product(stock=3)
    stamp = (await store.ok("PUT", item.path, json={"inventory_delta": 0}))["date_modified_gmt"]

    async def ids(after: str) -> set[int]:
        rows = await store.ok("GET", "/products", params={"modified_after": after, "dates_are_gmt": "true",
                                                          "per_page": "100", "_fields": "id"})
        return {row["id"] for row in rows}

    assert item.id not in await ids(stamp)
    assert item.id in await ids(gmt(stamp, -1))
    async with store.client() as woo:  # the poller's query overlaps the cursor by a second
        changed, newest = await woo.changed_items(modified_after=stamp)
        assert item.ref in changed and newest >= stamp
        assert changed[item.ref].startswith(f"{stamp}|publish|3")


async def test_a_variation_change_bumps_its_parent_and_only_variations_routes_list_it(store: WooStore) -> None:
    parent, (small,) = await store.create_variable_product({"S": 5})
    created = (await store.read(parent))["date_modified_gmt"]
    await next_second()
    answer = await store.ok("PUT", small.path, json={"inventory_delta": -1})
    changed = answer["date_modified_gmt"]
    assert changed > created
    assert (await store.read(parent))["date_modified_gmt"] == changed
    after = {"modified_after": created, "dates_are_gmt": "true", "per_page": "100", "_fields": "id,type"}
    products = await store.ok("GET", "/products", params=after)
    assert parent.id in {p["id"] for p in products}
    assert all(p["type"] != "variation" for p in products)
    variations = await store.ok("GET", "/variations", params=after)
    assert small.id in {v["id"] for v in variations}
    assert error(await store.request("GET", "/products", params={"type": "variation"})) == (400, "rest_invalid_param")
    per_parent = await store.ok("GET", f"/products/{parent.id}/variations", params=after)
    assert [v["id"] for v in per_parent] == [small.id]
    async with store.client() as woo:
        found, _ = await woo.changed_items(modified_after=created)
        assert {parent.ref, small.ref} <= set(found)


async def test_fields_trims_lists_and_single_answers(store: WooStore) -> None:
    item = await store.create_product(stock=2)
    rows = await store.ok("GET", "/products", params={"sku": item.sku, "_fields": "id,sku"})
    assert rows == [{"id": item.id, "sku": item.sku}]
    one = await store.ok("GET", item.path, params={"_fields": "id,stock_quantity"})
    assert {k: one[k] for k in ("id", "stock_quantity")} == {"id": item.id, "stock_quantity": 2}
    assert set(one) <= {"id", "stock_quantity", "_links"}
    full = await store.read(item)
    assert DAEMON_READS <= set(full)
    parent, (small,) = await store.create_variable_product({"S": 1})
    assert DAEMON_READS <= set(await store.read(small))
    async with store.client() as woo:
        items = {i.ref: i for i in await woo.list_items()}
    assert (items[item.ref].sku, items[item.ref].quantity, items[item.ref].type) == (item.sku, 2, "simple")
    assert items[parent.ref].type == "variable"
    assert (items[small.ref].name, items[small.ref].quantity) == (f"{parent.data['name']} - S", 1)


async def test_sku_lookups_are_exact_case_insensitive_and_include_variations(store: WooStore) -> None:
    item = await store.create_product(stock=1)
    _, (small,) = await store.create_variable_product({"S": 1})

    async def ids(path: str, sku: str) -> list[int]:
        return sorted(r["id"] for r in await store.ok("GET", path, params={"sku": sku, "_fields": "id"}))

    assert await ids("/products", item.sku.lower()) == [item.id]
    assert await ids("/products", f"{item.sku},{small.sku}") == sorted([item.id, small.id])
    assert await ids("/products", f"{item.sku}, {small.sku}") == [item.id]  # a space drops the SKU after it
    assert await ids("/products", item.sku[:-1]) == []  # exact, not a prefix
    assert await ids("/variations", small.sku.lower()) == [small.id]
    assert await ids("/variations", item.sku) == []


async def test_pagination_headers_and_links(store: WooStore) -> None:
    items = [await store.create_product(stock=1) for _ in range(3)]
    query = {"sku": ",".join(i.sku for i in items), "per_page": "2", "orderby": "id", "order": "asc",
             "_fields": "id"}
    pages = []
    for page in (1, 2, 3):
        resp = await store.request("GET", "/products", params={**query, "page": str(page)})
        assert resp.status_code == 200
        assert (resp.headers["x-wp-total"], resp.headers["x-wp-totalpages"]) == ("3", "2")
        links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>;\s*rel="(\w+)"', resp.headers.get("link", "")))
        pages.append(([r["id"] for r in resp.json()], sorted(links)))
        for url in links.values():
            assert "/wp-json/wc/v3/products?" in url and "per_page=2" in url
    assert pages == [([items[0].id, items[1].id], ["next"]), ([items[2].id], ["prev"]), ([], ["prev"])]


# --------------------------------------------------------------------------
# Errors


async def test_errors_for_bad_ids_and_bad_values(store: WooStore) -> None:
    item = await store.create_product(stock=1)
    parent, _ = await store.create_variable_product({"S": 1})
    cases = [
        ("GET", f"/products/{MISSING}", None, (404, "woocommerce_rest_product_invalid_id")),
        ("PUT", f"/products/{MISSING}", {"inventory_delta": 1}, (400, "woocommerce_rest_product_invalid_id")),
        ("GET", f"/products/{parent.id}/variations/{MISSING}", None,
         (404, "woocommerce_rest_product_variation_invalid_id")),
        ("PUT", f"/products/{parent.id}/variations/{MISSING}", {"inventory_delta": 1},
         (404, "woocommerce_rest_product_variation_invalid_id")),
        ("DELETE", f"/products/{MISSING}", None, (404, "woocommerce_rest_product_invalid_id")),
        ("GET", f"/orders/{MISSING}", None, (404, "woocommerce_rest_shop_order_invalid_id")),
        ("PUT", f"/orders/{MISSING}", {"status": "cancelled"}, (400, "woocommerce_rest_shop_order_invalid_id")),
        ("GET", f"/webhooks/{MISSING}", None, (404, "woocommerce_rest_shop_webhook_invalid_id")),
        ("PUT", f"/webhooks/{MISSING}", {"status": "paused"}, (400, "woocommerce_rest_shop_webhook_invalid_id")),
        ("PUT", item.path, {"stock_quantity": "abc"}, (400, "rest_invalid_param")),
        ("PUT", item.path, {"backorders": "maybe"}, (400, "rest_invalid_param")),
        ("GET", "/products?per_page=101", None, (400, "rest_invalid_param")),
        ("GET", "/no-such-route", None, (404, "rest_no_route")),
    ]
    seen = []
    for method, path, body, _ in cases:
        route, _, query = path.partition("?")
        params = dict(p.split("=") for p in query.split("&")) if query else None
        seen.append(error(await store.request(method, route, params=params, json=body)))
    assert seen == [c[3] for c in cases]
    assert await store.stock(item) == 1
    assert await store.ok("GET", f"/products/{MISSING}/variations") == []  # a missing parent has none
    answer = await store.ok("POST", f"/products/{MISSING}/variations/batch",
                            json={"update": [{"id": MISSING, "inventory_delta": 1}]})
    assert answer["update"][0]["error"]["code"] == "woocommerce_rest_product_variation_invalid_id"
    async with store.client() as woo:
        for ref in (WooRef(MISSING), WooRef(parent.id, MISSING)):
            try:
                await woo.get_stock(ref)
            except NotFound:
                pass
            else:
                raise AssertionError(f"get_stock({ref}) did not raise NotFound")


# --------------------------------------------------------------------------
# Orders


async def test_paid_orders_reduce_stock_without_checking_it(store: WooStore) -> None:
    item = await store.create_product(stock=1)
    _, (small,) = await store.create_variable_product({"S": 5})
    order = await store.order({item: 3, small: 2})
    assert order["status"] == "processing"
    assert await store.stock(item) == -2  # an oversell, accepted
    assert (await store.read(item))["stock_status"] == "outofstock"
    assert await store.stock(small) == 3
    reduced = {(li["product_id"], li["variation_id"]): {m["key"]: m["value"] for m in li["meta_data"]}
               for li in order["line_items"]}
    assert reduced[(item.id, 0)]["_reduced_stock"] == "3"
    assert reduced[(small.ref.product_id, small.id)]["_reduced_stock"] == "2"
    async with store.client() as woo:
        assert await woo.order_refs(int(order["id"])) == {item.ref, small.ref}
    unpaid = await store.order({item: 1}, set_paid=False)
    assert unpaid["status"] == "pending"
    assert await store.stock(item) == -2


async def test_refunds_restock_when_asked_and_cancellations_restock_the_rest(store: WooStore) -> None:
    item = await store.create_product(stock=10)
    order = await store.order({item: 3})
    assert await store.stock(item) == 7
    refund = await store.refund(order, {item: 2}, restock=True)
    assert [li["quantity"] for li in refund["line_items"]] == [-2]
    assert await store.stock(item) == 9
    await store.refund(order, {item: 1}, restock=False)
    assert await store.stock(item) == 9
    line = (await store.ok("GET", f"/orders/{order['id']}"))["line_items"][0]
    assert {m["key"]: m["value"] for m in line["meta_data"]}["_reduced_stock"] == "1"
    cancelled = await store.set_order_status(int(order["id"]), "cancelled")
    assert cancelled["status"] == "cancelled"
    assert await store.stock(item) == 10  # the unit still counted as reduced comes back
    again = await store.set_order_status(int(order["id"]), "cancelled")
    assert again["status"] == "cancelled"
    assert await store.stock(item) == 10  # once


# --------------------------------------------------------------------------
# Webhooks


async def test_pings_and_signed_deliveries_with_synchronous_delivery(
    store: WooStore, webhook_listener: WebhookListener
) -> None:
    listener = webhook_listener
    await store.set_sync_webhooks(True)
    item = await store.create_product(stock=5)
    parent, (small,) = await store.create_variable_product({"S": 4})
    hook = await store.create_webhook("product.updated", listener.url, listener.secret)
    assert (hook["status"], hook["topic"], hook["resource"], hook["event"], hook["delivery_url"]) == (
        "active", "product.updated", "product", "updated", listener.url)
    assert "secret" not in hook
    (ping,) = listener.pings()  # sent inside the POST, before its answer
    assert ping.body == f"webhook_id={hook['id']}".encode()
    assert ping.headers["content-type"] == "application/x-www-form-urlencoded"
    assert not [h for h in ping.headers if h.startswith("x-wc-")]
    assert ping.parsed == WooPing(int(hook["id"]))

    await store.ok("PUT", item.path, json={"inventory_delta": -2})
    (got,) = listener.deliveries()  # synchronous: in before the PUT answered
    assert got.verified
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("WooCommerce/11.0.1 Hookshot (WordPress/")
    assert (got.headers["x-wc-webhook-topic"], got.headers["x-wc-webhook-resource"],
            got.headers["x-wc-webhook-event"], got.headers["x-wc-webhook-id"]) == (
        "product.updated", "product", "updated", str(hook["id"]))
    assert re.fullmatch(r"[0-9a-f]{32}", got.headers["x-wc-webhook-delivery-id"])
    assert got.headers["x-wc-webhook-source"].endswith("/")
    assert b"\\/" in got.body  # PHP's json_encode: never re-serialise before checking the signature
    payload = got.json()
    assert (payload["id"], payload["type"], payload["stock_quantity"]) == (item.id, "simple", 3)
    assert DAEMON_READS <= set(payload)
    assert isinstance(got.parsed, WooDelivery)
    assert (got.parsed.change.resource_id, got.parsed.change.parent_id, got.parsed.change.stock_quantity) == (
        item.id, 0, 3)

    listener.received.clear()
    await store.ok("PUT", small.path, json={"inventory_delta": -1})
    (got,) = listener.deliveries()  # the variation only, nothing for its parent
    payload = got.json()
    assert (payload["id"], payload["type"], payload["parent_id"], payload["stock_quantity"]) == (
        small.id, "variation", parent.id, 3)
    assert isinstance(got.parsed, WooDelivery)
    assert (got.parsed.change.resource_id, got.parsed.change.parent_id) == (small.id, parent.id)

    listener.received.clear()
    await store.ok("POST", "/products/batch", json={"update": [{"id": item.id, "stock_quantity": 7},
                                                               {"id": item.id, "stock_quantity": 6}]})
    (got,) = listener.deliveries()  # one per product per request, with the state at send time
    assert got.json()["stock_quantity"] == 6


async def test_order_refund_and_trash_webhooks(store: WooStore, webhook_listener: WebhookListener) -> None:
    listener = webhook_listener
    await store.set_sync_webhooks(True)
    item = await store.create_product(stock=5)
    _, (small,) = await store.create_variable_product({"S": 4})
    for topic in ("order.created", "order.updated", "product.updated", "product.deleted"):
        await store.create_webhook(topic, listener.url, listener.secret)
    listener.received.clear()
    order = await store.order({item: 1, small: 1})
    (created,) = listener.deliveries("order.created")
    assert created.verified and isinstance(created.parsed, WooDelivery)
    assert created.parsed.change.resource_id == order["id"]
    assert set(created.parsed.change.refs) == {item.ref, small.ref}
    assert created.json()["status"] == "processing"
    assert sorted(r.json()["id"] for r in listener.deliveries("product.updated")) == sorted([item.id, small.id])
    assert [r.json()["stock_quantity"] for r in listener.deliveries("product.updated", item.id)] == [4]

    listener.received.clear()
    await store.refund(order, {item: 1}, restock=True)
    assert [r.json()["id"] for r in listener.deliveries("order.updated")] == [order["id"]]
    assert [r.json()["stock_quantity"] for r in listener.deliveries("product.updated", item.id)] == [5]

    listener.received.clear()
    trashed = await store.ok("DELETE", item.path)
    assert trashed["id"] == item.id
    (deleted,) = listener.deliveries("product.deleted")
    assert deleted.json() == {"id": item.id} and deleted.verified
    assert (await store.read(item))["status"] == "trash"
    assert all(r.verified for r in listener.received)


async def test_paused_and_deleted_webhooks_deliver_nothing(store: WooStore, webhook_listener: WebhookListener) -> None:
    listener = webhook_listener
    await store.set_sync_webhooks(True)
    item = await store.create_product(stock=5)
    async with store.client() as woo:  # as `webhooks register` creates them
        made = await woo.create_webhook("product.updated", listener.url, listener.secret, name="cloverwoo-test")
    wid = made.id
    store.adopt_webhook(wid)
    assert (made.topic, made.status, made.delivery_url, made.name) == (
        "product.updated", "active", listener.url, "cloverwoo-test")
    assert [r.body for r in listener.pings()] == [f"webhook_id={wid}".encode()]
    assert (await store.set_webhook_status(wid, "paused"))["status"] == "paused"
    await store.ok("PUT", item.path, json={"inventory_delta": -1})
    assert listener.deliveries() == []
    async with store.client() as woo:
        mine = [h for h in await woo.list_webhooks("all") if h.id == wid]
        assert [(h.topic, h.status, h.delivery_url) for h in mine] == [("product.updated", "paused", listener.url)]
        await woo.update_webhook(wid, status="active")
    await store.ok("PUT", item.path, json={"inventory_delta": -1})
    assert [r.json()["stock_quantity"] for r in listener.deliveries()] == [3]
    listener.secret, old = secrets.token_hex(24), listener.secret  # `webhooks register` re-keys a webhook
    async with store.client() as woo:
        await woo.update_webhook(wid, secret=listener.secret)
    await store.ok("PUT", item.path, json={"inventory_delta": 0})
    assert [r.verified for r in listener.deliveries()] == [True, True]
    assert "secret" not in await store.ok("GET", f"/webhooks/{wid}") and old != listener.secret
    resp = await store.request("DELETE", f"/webhooks/{wid}")
    assert error(resp) == (501, "woocommerce_rest_trash_not_supported")
    await store.delete_webhook(wid)
    assert (await store.request("GET", f"/webhooks/{wid}")).status_code == 404
    listener.received.clear()
    await store.ok("PUT", item.path, json={"inventory_delta": -1})
    assert listener.received == []


async def test_a_no_op_write_still_bumps_the_date_and_fires(
    store: WooStore, webhook_listener: WebhookListener
) -> None:
    listener = webhook_listener
    await store.set_sync_webhooks(True)
    item = await store.create_product(stock=4)
    await store.create_webhook("product.updated", listener.url, listener.secret)
    before = (await store.read(item))["date_modified_gmt"]
    await next_second()
    for body in ({"inventory_delta": 0}, {"stock_quantity": 4}):
        answer = await store.ok("PUT", item.path, json=body)
        assert (answer["stock_quantity"], answer["date_modified_gmt"] > before) == (4, True)
    assert [r.json()["stock_quantity"] for r in listener.deliveries()] == [4, 4]  # so never write what is there


async def test_failed_deliveries_disable_a_webhook_at_the_seventh(
    store: WooStore, webhook_listener: WebhookListener
) -> None:
    listener = webhook_listener
    await store.set_sync_webhooks(True)
    item = await store.create_product(stock=50)
    hook = await store.create_webhook("product.updated", listener.url, listener.secret)
    listener.status = 500
    statuses = []
    for _ in range(8):
        await store.ok("PUT", item.path, json={"inventory_delta": -1})
        statuses.append((await store.ok("GET", f"/webhooks/{hook['id']}"))["status"])
    assert statuses == ["active"] * 6 + ["disabled"] * 2
    assert len(listener.deliveries()) == 7  # the eighth change was not even sent
    async with store.client() as woo:
        assert [h.id for h in await woo.list_webhooks("disabled") if h.id == hook["id"]] == [hook["id"]]
        await woo.update_webhook(hook["id"], status="active")
        await store.ok("PUT", item.path, json={"inventory_delta": -1})
        # re-activating keeps the failure count: one more failure disables it again
        assert (await store.ok("GET", f"/webhooks/{hook['id']}"))["status"] == "disabled"
        assert len(listener.deliveries()) == 8
        listener.status = 200
        await woo.update_webhook(hook["id"], status="active")
        for _ in range(2):  # a success resets the count
            await store.ok("PUT", item.path, json={"inventory_delta": -1})
        listener.status = 500
        await store.ok("PUT", item.path, json={"inventory_delta": -1})
        assert (await store.ok("GET", f"/webhooks/{hook['id']}"))["status"] == "active"


async def test_async_delivery_waits_and_coalesces(store: WooStore, webhook_listener: WebhookListener) -> None:
    listener = webhook_listener
    item = await store.create_product(stock=9)
    await store.create_webhook("product.updated", listener.url, listener.secret)
    await store.set_sync_webhooks(True)  # switched live, both ways
    await store.ok("PUT", item.path, json={"stock_quantity": 8})
    assert [r.json()["stock_quantity"] for r in listener.deliveries()] == [8]
    listener.received.clear()
    await store.set_sync_webhooks(False)
    async with store.deliveries_held():
        await store.ok("PUT", item.path, json={"stock_quantity": 7})
        await store.ok("PUT", item.path, json={"stock_quantity": 6})
        answered = time.monotonic()
        async with store.cron_ticking():  # held even with traffic (a daemon's polls are traffic too)
            await trio.sleep(2.5)
        assert listener.deliveries() == []
    async with store.cron_ticking():
        await wait_for(lambda: bool(listener.deliveries()), timeout=180,
                       what="the async delivery (WP-Cron runs Action Scheduler at most once a minute)")
        await trio.sleep(2.0)  # a second delivery, if there were one, would come in the same queue run
    got = listener.deliveries()
    assert [r.json()["stock_quantity"] for r in got] == [6]  # two changes, one delivery, the state at send time
    assert got[0].verified
    print(f"[{store.kind}] async delivery {got[0].at - answered:.1f} s after the last change was answered")


# --------------------------------------------------------------------------
# Authentication


async def test_auth_failures_answer_401_with_their_codes(store: WooStore) -> None:
    item = await store.create_product(stock=1)

    async def code(method: str, *, auth: bool = True, key: tuple[str, str] | None = None) -> tuple[int, str, str]:
        resp = await store.request(method, item.path, json={"inventory_delta": 0} if method == "PUT" else None,
                                   auth=auth, key=key)
        if resp.is_success:
            return resp.status_code, "", ""
        return (*error(resp), resp.json()["message"])

    assert await code("GET", auth=False) == (
        401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")
    assert (await code("PUT", auth=False))[:2] == (401, "woocommerce_rest_cannot_edit")
    assert await code("GET", key=(store.consumer_key, "cs_wrong")) == (
        401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
    assert (await code("GET", key=("ck_" + secrets.token_hex(20), store.consumer_secret)))[:2] == (
        401, "woocommerce_rest_cannot_view")  # an unknown key is no key at all
    reader = await store.add_key("read")
    assert (await code("GET", key=reader))[0] == 200
    assert await code("PUT", key=reader) == (
        401, "woocommerce_rest_authentication_error", "The API key provided does not have write permissions.")
    writer = await store.add_key("write")
    assert await code("GET", key=writer) == (
        401, "woocommerce_rest_authentication_error", "The API key provided does not have read permissions.")
    async with store.client(key=reader[0], secret=reader[1]) as woo:
        (result,) = await woo.apply_deltas([(item.ref, -1, 1)])
        assert not result.ok and "write permissions" in (result.error or "")
        checks = await woo_checks(woo, store.base_url)
        assert [c.ok for c in checks if c.subject == "WooCommerce key permission"] == [False]
    async with store.client() as woo:
        checks = await woo_checks(woo, store.base_url)
        assert [c.line() for c in checks if not c.ok and not c.advisory] == []
    assert await store.stock(item) == 1


async def test_oauth1_signed_requests(store: WooStore, nursery: trio.Nursery) -> None:
    signed = await store.oauth_twin(nursery)
    try:
        item = await signed.create_product(stock=6)  # created with a signed POST
        for method in ("HMAC-SHA256", "HMAC-SHA1"):
            async with signed.client(auth="oauth1", oauth_method=method) as woo:
                (result,) = await woo.apply_deltas([(item.ref, -1, f"beef.{method}")])
                assert (result.ok, result.quantity) == (True, 5 if method == "HMAC-SHA256" else 4)
                stock = await woo.get_stock(item.ref)
                assert (stock.quantity, stock.version_marker) == (result.quantity, f"beef.{method}")
                changed, _ = await woo.changed_items(modified_after=gmt(item.data["date_modified_gmt"], -5))
                assert item.ref in changed  # a query with ':' and ',' signed right
        url = signed.api_url + item.path

        def params(**override: str) -> dict[str, str]:
            p = oauth1.oauth_params("GET", url, {}, consumer_key=signed.consumer_key,
                                    consumer_secret=signed.consumer_secret, timestamp=int(time.time()),
                                    nonce=secrets.token_hex(16))
            p.update(override)
            return {k: v for k, v in p.items() if v}

        async def get(query: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
            resp = await signed.http.get(url, params=query, headers=headers)
            return (200, "") if resp.status_code == 200 else (resp.status_code, resp.json()["message"])

        good = params()
        assert await get(good) == (200, "")
        assert await get(good) == (401, "Invalid nonce - nonce has already been used.")
        assert await get(params(oauth_signature="AAAA" + good["oauth_signature"][4:])) == (
            401, "Invalid signature - provided signature does not match.")
        assert await get(params(oauth_timestamp=str(int(time.time()) - 3600))) == (
            401, "Invalid signature - provided signature does not match.")  # the timestamp is signed too
        stale = oauth1.oauth_params("GET", url, {}, consumer_key=signed.consumer_key,
                                    consumer_secret=signed.consumer_secret, timestamp=int(time.time()) - 3600,
                                    nonce=secrets.token_hex(16))
        assert await get(stale) == (401, "Invalid timestamp.")
        assert await get(params(oauth_nonce="")) == (401, "Missing OAuth parameter oauth_nonce")
        header = params()
        value = "OAuth " + ", ".join(f'{k}="{oauth1.percent_encode(v)}"' for k, v in header.items())
        assert await get({}, {"Authorization": value}) == (200, "")
    finally:
        await signed.aclose()
