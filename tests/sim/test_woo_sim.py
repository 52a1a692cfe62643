"""The simulated WooCommerce behaves like section 9 of woocommerce-api.md says the real one does.

Everything goes over real loopback HTTP; webhooks go to a real receiver on port 0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from functools import partial

import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from cloverwoo_daemon.core import oauth1
from cloverwoo_daemon.sim.common import Faults, serve_app
from cloverwoo_daemon.sim.woocommerce import WooSim, php_json

SECRET = "s3cr3tAlnumWebhookKey"


class Clock:
    """The sim's clock, held still so two changes land in the same second without sleeping."""

    def __init__(self, now: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = now

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A webhook endpoint on port 0 that records what it gets and answers ``status``."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.url = ""
        app = QuartTrio("receiver")

        @app.route("/hook", methods=["POST"])
        async def hook() -> tuple[str, int]:
            body = await request.get_data()
            self.got.append(({k.lower(): v for k, v in request.headers.items()}, body))
            return "", self.status

        self.app = app

    async def start(self, nursery: trio.Nursery) -> str:
        base = await nursery.start(serve_app, self.app)
        self.url = f"{base}/hook"
        return self.url

    def pings(self) -> list[bytes]:
        return [b for h, b in self.got if "x-wc-webhook-topic" not in h]

    def deliveries(self, topic: str | None = None) -> list[tuple[dict[str, str], dict]]:
        return [
            (h, json.loads(b))
            for h, b in self.got
            if "x-wc-webhook-topic" in h and (topic is None or h["x-wc-webhook-topic"] == topic)
        ]


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def start(nursery: trio.Nursery, **kwargs: object) -> tuple[WooSim, httpx.AsyncClient]:
    sim = WooSim(**kwargs)  # type: ignore[arg-type]
    await nursery.start(sim.run)
    client = httpx.AsyncClient(base_url=sim.api_url, auth=(sim.consumer_key, sim.consumer_secret))
    return sim, client


async def hook(client: httpx.AsyncClient, url: str, topic: str = "product.updated") -> int:
    r = await client.post("/webhooks", json={"topic": topic, "delivery_url": url, "secret": SECRET})
    assert r.status_code == 201
    return int(r.json()["id"])


# --------------------------------------------------------------------------
# Stock write rules


async def test_delta_is_relative_and_stock_quantity_wins(nursery):
    sim, c = await start(nursery)
    ref = sim.add_product("Mug", sku="MUG", stock=10)
    async with c:
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -3})
        assert r.json()["stock_quantity"] == 7
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": "-1"})
        assert r.json()["stock_quantity"] == 6
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": 1.7})
        assert r.json()["stock_quantity"] == 7
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -5, "stock_quantity": 20})
        assert r.json()["stock_quantity"] == 20
        r = await c.put(f"/products/{ref.product_id}", json={"stock_quantity": 5.5})
        assert r.status_code == 400
        assert r.json()["code"] == "rest_invalid_param"
        assert sim.stock(ref) == 20


async def test_delta_ignored_without_manage_stock_and_negative_stock_accepted(nursery):
    sim, c = await start(nursery)
    loose = sim.add_product("Loose", stock=None, manage_stock=False)
    strict = sim.add_product("Strict", stock=1)
    back = sim.add_product("Back", stock=1, backorders="notify")
    async with c:
        r = await c.put(f"/products/{loose.product_id}", json={"inventory_delta": -1})
        assert r.json()["stock_quantity"] is None
        r = await c.put(f"/products/{strict.product_id}", json={"inventory_delta": -3})
        assert (r.json()["stock_quantity"], r.json()["stock_status"]) == (-2, "outofstock")
        r = await c.put(f"/products/{back.product_id}", json={"inventory_delta": -1})
        assert (r.json()["stock_quantity"], r.json()["stock_status"]) == (0, "onbackorder")


async def test_concurrent_deltas_lose_an_update_like_php(nursery):
    """Two -1 deltas whose read-modify-write windows overlap end at stock - 1, not stock - 2."""
    sim, c = await start(nursery, write_window=0.3)
    ref = sim.add_product("Mug", stock=10)
    async with c:
        async with trio.open_nursery() as n:
            for _ in range(2):
                n.start_soon(partial(c.put, f"/products/{ref.product_id}", json={"inventory_delta": -1}))
        assert sim.stock(ref) == 9
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert sim.stock(ref) == 7  # sequential writes both land
    assert len(sim.stock_writes_for(ref)) == 4


async def test_noop_write_bumps_date_and_fires_product_updated(nursery):
    clock = Clock()
    sim, c = await start(nursery, clock=clock, async_webhooks=False)
    recv = Receiver()
    await recv.start(nursery)
    ref = sim.add_product("Mug", stock=4)
    async with c:
        await hook(c, recv.url)
        before = sim.product(ref)["date_modified_gmt"]
        clock.now += 5
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": 0})
        assert r.json()["stock_quantity"] == 4
        assert r.json()["date_modified_gmt"] > before
        assert [p["id"] for _, p in recv.deliveries("product.updated")] == [ref.product_id]


async def test_meta_data_upserts_by_key(nursery):
    sim, c = await start(nursery)
    ref = sim.add_product("Mug", stock=4)
    async with c:
        await c.put(f"/products/{ref.product_id}", json={"meta_data": [{"key": "_v", "value": "1"}]})
        r = await c.put(f"/products/{ref.product_id}", json={"meta_data": [{"key": "_v", "value": "2"}]})
        assert [(m["key"], m["value"]) for m in r.json()["meta_data"]] == [("_v", "2")]


# --------------------------------------------------------------------------
# Routes, errors, listing


async def test_invalid_ids_and_variation_routes(nursery):
    sim, c = await start(nursery)
    small, medium = sim.add_variable_product("Tee", {"S": 3, "M": 4}, sku="TEE")
    async with c:
        r = await c.get("/products/99999")  # 404 to a read, 400 to an update (as a real WooCommerce 11 answers)
        assert (r.status_code, r.json()["code"]) == (404, "woocommerce_rest_product_invalid_id")
        r = await c.put("/products/99999", json={"inventory_delta": 1})
        assert (r.status_code, r.json()["code"]) == (400, "woocommerce_rest_product_invalid_id")
        r = await c.put(f"/products/{small.variation_id}", json={"inventory_delta": -1})
        assert (r.status_code, r.json()["code"]) == (404, "woocommerce_rest_invalid_product_id")
        r = await c.get(f"/products/{small.variation_id}")  # reads work: this is the webhook payload shape
        assert (r.json()["type"], r.json()["parent_id"]) == ("variation", small.product_id)
        r = await c.put(f"/products/{small.product_id}/variations/{small.variation_id}", json={"inventory_delta": -1})
        assert r.json()["stock_quantity"] == 2
        r = await c.get("/products", params={"type": "variation"})
        assert r.status_code == 400
        r = await c.get("/products", params={"sku": "tee-s,TEE-M"})
        assert sorted(p["id"] for p in r.json()) == [small.variation_id, medium.variation_id]
        r = await c.get("/products", params={"sku": "TEE-S, TEE-M"})  # a space after the comma drops that SKU
        assert [p["id"] for p in r.json()] == [small.variation_id]
        r = await c.get("/variations", params={"sku": "TEE-M"})
        assert [v["id"] for v in r.json()] == [medium.variation_id]
        r = await c.get("/products")
        assert [p["type"] for p in r.json()] == ["variable"]


async def test_paging_headers_and_per_page_limit(nursery):
    sim, c = await start(nursery)
    for i in range(5):
        sim.add_product(f"P{i}", sku=f"P{i}")
    async with c:
        r = await c.get("/products", params={"per_page": 2, "page": 2, "orderby": "id", "order": "asc"})
        assert (r.headers["x-wp-total"], r.headers["x-wp-totalpages"]) == ("5", "3")
        assert 'rel="next"' in r.headers["link"] and "page=3" in r.headers["link"]
        assert [p["name"] for p in r.json()] == ["P2", "P3"]
        r = await c.get("/products", params={"per_page": 101})
        assert r.status_code == 400


async def test_orderby_id_and_variations_list_in_id_order_both_ways(nursery):
    sim, c = await start(nursery)
    refs = [sim.add_product(f"P{i}", sku=f"P{i}") for i in range(4)]
    tee = sim.add_variable_product("Tee", {"S": 1, "M": 2, "L": 3}, sku="TEE")
    async with c:
        await c.delete(f"/products/{refs[1].product_id}", params={"force": "true"})
        await c.delete(f"/products/{refs[2].product_id}")  # trashed: out of status=any
        want = [refs[0].product_id, refs[3].product_id, tee[0].product_id]
        r = await c.get("/products", params={"orderby": "id", "order": "asc"})
        assert [p["id"] for p in r.json()] == want
        r = await c.get("/products", params={"orderby": "id"})  # order defaults to desc
        assert [p["id"] for p in r.json()] == want[::-1]
        r = await c.get("/products", params={"orderby": "include", "order": "asc", "include": f"{want[2]},{want[0]}"})
        assert [p["id"] for p in r.json()] == [want[0], want[2]]
        r = await c.get("/variations", params={"orderby": "id", "order": "desc"})
        assert [v["id"] for v in r.json()] == [t.variation_id for t in reversed(tee)]
        r = await c.get(f"/products/{tee[0].product_id}/variations", params={"orderby": "id", "order": "asc"})
        assert [v["id"] for v in r.json()] == [t.variation_id for t in tee]


async def test_duplicate_sku_refused_on_every_write_path(nursery):
    """The SKU index (one dict probe per check) refuses what the full scan did, and forgets what is gone."""
    sim, c = await start(nursery)
    mug = sim.add_product("Mug", sku="MUG", stock=1)
    cup = sim.add_product("Cup", sku="CUP", stock=1)
    small, medium = sim.add_variable_product("Tee", {"S": 1, "M": 1}, sku="TEE")

    def refused(body: dict, holder: int) -> None:
        assert body["code"] == "product_invalid_sku", body
        assert body["data"] == {"status": 400, "resource_id": holder}

    async with c:
        r = await c.post("/products", json={"name": "Mug 2", "sku": "mug"})  # case-insensitive
        assert r.status_code == 400
        refused(r.json(), mug.product_id)
        r = await c.post("/products", json={"name": "Tee S", "sku": "TEE-S"})  # a variation's SKU counts
        refused(r.json(), small.variation_id)
        r = await c.post(f"/products/{small.product_id}/variations", json={"sku": "CUP"})
        refused(r.json(), cup.product_id)
        r = await c.put(f"/products/{cup.product_id}", json={"sku": "MUG"})
        assert r.status_code == 400
        refused(r.json(), mug.product_id)
        assert sim.product(cup)["sku"] == "CUP"
        r = await c.put(f"/products/{small.product_id}/variations/{small.variation_id}", json={"sku": "TEE-M"})
        refused(r.json(), medium.variation_id)
        r = await c.post("/products/batch", json={"create": [{"name": "X", "sku": "CUP"}],
                                                   "update": [{"id": mug.product_id, "sku": "TEE-M"}]})
        assert r.status_code == 200
        refused(r.json()["create"][0]["error"], cup.product_id)
        refused(r.json()["update"][0]["error"], medium.variation_id)

        # a changed SKU frees the old one and takes the new one
        r = await c.put(f"/products/{mug.product_id}", json={"sku": "MUG-OLD"})
        assert (r.status_code, r.json()["sku"]) == (200, "MUG-OLD")
        r = await c.post("/products", json={"name": "New mug", "sku": "MUG"})
        assert r.status_code == 201
        new_mug = r.json()["id"]
        r = await c.post("/products", json={"name": "Mug 3", "sku": "MUG-OLD"})
        refused(r.json(), mug.product_id)
        r = await c.put(f"/products/{new_mug}", json={"sku": "MUG"})  # its own SKU again: no conflict
        assert r.status_code == 200
        r = await c.post(f"/products/{small.product_id}/variations/batch",
                         json={"update": [{"id": small.variation_id, "sku": "TEE-SMALL"}]})
        assert r.json()["update"][0]["sku"] == "TEE-SMALL"
        r = await c.post("/products", json={"name": "Tee S", "sku": "TEE-S"})
        assert r.status_code == 201
        r = await c.post("/products", json={"name": "Tee S", "sku": "tee-small"})
        refused(r.json(), small.variation_id)
        assert sim.stock("MUG") == sim.product(new_mug)["stock_quantity"]
        r = await c.get("/products", params={"sku": "MUG,MUG-OLD"})
        assert sorted(p["id"] for p in r.json()) == [mug.product_id, new_mug]

        # deleted for good (route, batch, a variable product with its variations): the SKU is free
        r = await c.delete(f"/products/{cup.product_id}", params={"force": "true"})
        assert r.status_code == 200
        assert (await c.post("/products", json={"name": "Cup", "sku": "CUP"})).status_code == 201
        r = await c.post("/products/batch", json={"delete": [new_mug]})
        assert r.json()["delete"][0]["id"] == new_mug
        assert (await c.post("/products", json={"name": "Mug", "sku": "MUG"})).status_code == 201
        r = await c.delete(f"/products/{small.product_id}", params={"force": "true"})
        assert r.status_code == 200
        assert (await c.post("/products", json={"name": "M", "sku": "TEE-M"})).status_code == 201
        assert (await c.post("/products", json={"name": "Tee", "sku": "TEE"})).status_code == 201
        assert (await c.get("/products", params={"sku": "TEE-SMALL"})).json() == []
        with pytest.raises(KeyError):
            sim.stock("TEE-SMALL")

        # trashed: its SKU may be taken again (wc_product_has_unique_sku skips the trash)
        r = await c.delete(f"/products/{mug.product_id}")
        assert r.json()["status"] == "publish"  # the answer is prepared before the trashing
        assert (await c.get(f"/products/{mug.product_id}")).json()["status"] == "trash"
        assert (await c.post("/products", json={"name": "Mug 4", "sku": "MUG-OLD"})).status_code == 201
        r = await c.put(f"/products/{mug.product_id}", json={"sku": "CUP"})  # the trashed one is still checked
        assert r.status_code == 400
    assert_sku_index_matches(sim)


def assert_sku_index_matches(sim: WooSim) -> None:
    """The index holds exactly what a scan of the catalogue finds."""
    scanned: dict[str, set[int]] = {}
    for p in sim._products.values():
        if p.sku:
            scanned.setdefault(p.sku.lower(), set()).add(p.id)
    assert sim._skus == scanned


async def test_sku_index_stays_equal_to_a_scan_under_random_writes(nursery):
    rng = random.Random(4)
    sim, c = await start(nursery)
    skus = [f"S{i}" for i in range(12)]
    async with c:
        for _ in range(300):
            ids = [p.id for p in sim._products.values() if p.type != "variation"]
            variable = [p for p in sim._products.values() if p.type == "variable"]
            op = rng.choice(["create", "variable", "variation", "rename", "batch", "delete", "trash"])
            sku = rng.choice(skus + [""])
            if op == "create":
                r = await c.post("/products", json={"name": "P", "sku": sku})
            elif op == "variable":
                r = await c.post("/products", json={"name": "V", "type": "variable", "sku": sku})
            elif op == "variation" and variable:
                r = await c.post(f"/products/{rng.choice(variable).id}/variations", json={"sku": sku})
            elif op == "rename" and ids:
                r = await c.put(f"/products/{rng.choice(ids)}", json={"sku": sku})
            elif op == "batch" and ids:
                r = await c.post("/products/batch", json={"create": [{"name": "B", "sku": sku}],
                                                           "update": [{"id": rng.choice(ids), "sku": rng.choice(skus)}],
                                                           "delete": [rng.choice(ids)]})
            elif op == "delete" and ids:
                r = await c.delete(f"/products/{rng.choice(ids)}", params={"force": "true"})
            elif op == "trash" and ids:
                r = await c.delete(f"/products/{rng.choice(ids)}")
            else:
                continue
            assert r.status_code in (200, 201, 400), r.text
            if r.status_code == 400:
                assert r.json()["code"] in ("product_invalid_sku", "woocommerce_rest_product_invalid_id")
            assert_sku_index_matches(sim)
            live: dict[str, list[int]] = {}
            for p in sim._products.values():
                if p.sku and p.status != "trash":
                    live.setdefault(p.sku.lower(), []).append(p.id)
            assert all(len(v) == 1 for v in live.values()), live  # never two live holders of one SKU


async def test_modified_after_is_strict_at_one_second(nursery):
    clock = Clock()
    sim, c = await start(nursery, clock=clock)
    a = sim.add_product("A", stock=1)
    clock.now += 0.6  # same second
    b = sim.add_product("B", stock=1)
    stamp = sim.product(a)["date_modified_gmt"]
    async with c:
        r = await c.get("/products", params={"modified_after": stamp, "dates_are_gmt": "true"})
        assert r.json() == []
        clock.now += 1
        sim.admin_set_stock(b, 5)
        r = await c.get("/products", params={"modified_after": stamp, "dates_are_gmt": "true"})
        assert [p["id"] for p in r.json()] == [b.product_id]


async def test_batch_limit_and_per_item_errors(nursery):
    sim, c = await start(nursery)
    ref = sim.add_product("Mug", stock=5)
    var = sim.add_variable_product("Tee", {"S": 1})[0]
    async with c:
        r = await c.post("/products/batch", json={"update": [{"id": ref.product_id, "inventory_delta": 0}] * 60,
                                                   "delete": [1] * 41})
        assert (r.status_code, r.json()["code"]) == (413, "woocommerce_rest_request_entity_too_large")
        r = await c.post("/products/batch", json={"update": [
            {"id": ref.product_id, "inventory_delta": -2},
            {"id": 424242, "inventory_delta": -1},
            {"id": var.variation_id, "inventory_delta": -1},
        ]})
        assert r.status_code == 200
        ok, missing, variation = r.json()["update"]
        assert ok["stock_quantity"] == 3
        assert missing["error"]["code"] == "woocommerce_rest_product_invalid_id"
        assert variation["error"]["code"] == "woocommerce_rest_invalid_product_id"
        r = await c.post(f"/products/{var.product_id}/variations/batch",
                         json={"update": [{"id": var.variation_id, "inventory_delta": 4}]})
        assert r.json()["update"][0]["stock_quantity"] == 5


async def test_settings(nursery):
    sim, c = await start(nursery)
    async with c:
        r = await c.get("/settings/products/woocommerce_manage_stock")
        assert r.json()["value"] == "yes"
        r = await c.get("/settings/products")
        assert "woocommerce_notify_low_stock_amount" in {s["id"] for s in r.json()}


# --------------------------------------------------------------------------
# Auth


async def test_auth_basic_query_and_permissions(nursery):
    sim, c = await start(nursery)
    ref = sim.add_product("Mug", stock=5)
    ro_key, ro_secret = sim.add_key("read")
    async with httpx.AsyncClient(base_url=sim.api_url) as anon:
        r = await anon.get("/products")
        assert (r.status_code, r.json()["code"]) == (401, "woocommerce_rest_cannot_view")
        r = await anon.get("/products", params={"consumer_key": sim.consumer_key,
                                                 "consumer_secret": sim.consumer_secret})
        assert r.status_code == 200
        r = await anon.get("/products", auth=(sim.consumer_key, "cs_wrong"))
        assert (r.status_code, r.json()["message"]) == (401, "Consumer secret is invalid.")
        r = await anon.get("/products", auth=("ck_nope", "cs_wrong"))  # an unknown key is no key at all
        assert (r.status_code, r.json()["code"]) == (401, "woocommerce_rest_cannot_view")
        r = await anon.get(f"/products/{ref.product_id}", auth=(ro_key, ro_secret))
        assert r.status_code == 200
        r = await anon.put(f"/products/{ref.product_id}", json={"inventory_delta": -1}, auth=(ro_key, ro_secret))
        assert (r.status_code, r.json()["message"]) == (401, "The API key provided does not have write permissions.")
    assert sim.stock(ref) == 5
    assert sim.stock_writes == []


async def test_https_still_takes_oauth1_signed_against_the_https_url(nursery):
    sim, _ = await start(nursery)
    ref = sim.add_product("Mug", stock=5)
    path = f"/products/{ref.product_id}"
    async with httpx.AsyncClient(base_url=sim.api_url) as anon:
        r = await anon.get(path, params=_signed(sim, "GET", path, {}, scheme="https", nonce="n1"))
        assert r.status_code == 200, r.text
        r = await anon.get(path, params=_signed(sim, "GET", path, {}, nonce="n2"))  # signed for http://
        assert (r.status_code, r.json()["message"]) == (401, "Invalid signature - provided signature does not match.")


def _signed(sim: WooSim, method: str, path: str, query: dict[str, str], *, ts: int | None = None,
            nonce: str = "n1", scheme: str = "http") -> dict[str, str]:
    url = sim.api_url.replace("http://", f"{scheme}://", 1) + path
    return {**query, **oauth1.oauth_params(method, url, query, consumer_key=sim.consumer_key,
                                           consumer_secret=sim.consumer_secret,
                                           timestamp=int(time.time()) if ts is None else ts, nonce=nonce)}


async def test_plain_http_refuses_basic_and_takes_oauth1(nursery):
    sim, c = await start(nursery, https=False)
    ref = sim.add_product("Mug", stock=5)
    async with c:
        r = await c.get("/products")  # Basic is not even attempted when is_ssl() is false
        assert r.status_code == 401
    async with httpx.AsyncClient(base_url=sim.api_url) as anon:
        r = await anon.get("/products", params=_signed(sim, "GET", "/products", {"per_page": "5"}))
        assert r.status_code == 200, r.text
        r = await anon.get("/products", params=_signed(sim, "GET", "/products", {"per_page": "5"}))
        assert r.json()["message"] == "Invalid nonce - nonce has already been used."
        stale = _signed(sim, "GET", "/products", {}, ts=int(time.time()) - 16 * 60, nonce="n2")
        r = await anon.get("/products", params=stale)
        assert r.json()["message"] == "Invalid timestamp."
        tampered = _signed(sim, "GET", "/products", {"per_page": "5"}, nonce="n3") | {"per_page": "6"}
        r = await anon.get("/products", params=tampered)
        assert r.json()["message"] == "Invalid signature - provided signature does not match."
        path = f"/products/{ref.product_id}"
        r = await anon.put(path, params=_signed(sim, "PUT", path, {}, nonce="n4"), json={"inventory_delta": -1})
        assert r.json()["stock_quantity"] == 4


# --------------------------------------------------------------------------
# Webhooks


async def test_ping_then_signed_delivery_of_the_full_resource(nursery):
    sim, c = await start(nursery, async_webhooks=False)
    recv = Receiver()
    await recv.start(nursery)
    ref = sim.add_product("Mug/Cup", sku="MUG", stock=5)
    async with c:
        wid = await hook(c, recv.url)
        assert recv.pings() == [f"webhook_id={wid}".encode()]
        ping_headers = recv.got[0][0]
        assert ping_headers["content-type"] == "application/x-www-form-urlencoded"
        assert not any(k.startswith("x-wc-") for k in ping_headers)
        r = await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert r.status_code == 200
        # synchronous mode: the delivery went out before the REST response
        [(headers, body)] = [(h, b) for h, b in recv.got if "x-wc-webhook-topic" in h]
    expected = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    assert headers["x-wc-webhook-signature"] == expected
    assert (headers["x-wc-webhook-topic"], headers["x-wc-webhook-resource"], headers["x-wc-webhook-event"]) == (
        "product.updated", "product", "updated")
    assert headers["x-wc-webhook-id"] == str(wid)
    assert headers["x-wc-webhook-source"] == sim.base_url + "/"
    assert b"Mug\\/Cup" in body  # PHP json_encode escapes slashes: hash the raw bytes, never re-serialize
    payload = json.loads(body)
    assert (payload["id"], payload["stock_quantity"], payload["sku"]) == (ref.product_id, 4, "MUG")
    assert body == php_json(payload)


async def test_variation_change_delivers_only_the_variation_and_bumps_the_parent(nursery):
    clock = Clock()
    sim, c = await start(nursery, async_webhooks=False, clock=clock)
    recv = Receiver()
    await recv.start(nursery)
    small = sim.add_variable_product("Tee", {"S": 3})[0]
    async with c:
        await hook(c, recv.url)
        clock.now += 10
        await c.put(f"/products/{small.product_id}/variations/{small.variation_id}", json={"inventory_delta": -1})
    [(_, payload)] = recv.deliveries()
    assert (payload["id"], payload["type"], payload["parent_id"]) == (small.variation_id, "variation",
                                                                      small.product_id)
    assert sim.product(small.product_id)["date_modified_gmt"] == payload["date_modified_gmt"]


async def test_async_deliveries_coalesce_and_carry_send_time_state(nursery):
    sim, c = await start(nursery, faults=Faults(webhook_delay=0.3))
    recv = Receiver()
    await recv.start(nursery)
    ref = sim.add_product("Mug", stock=8)
    async with c:
        await hook(c, recv.url)
        await c.put(f"/products/{ref.product_id}", json={"stock_quantity": 7})
        await c.put(f"/products/{ref.product_id}", json={"stock_quantity": 6})
        await wait_for(lambda: len(recv.deliveries()) >= 1)
        await trio.sleep(0.5)  # room for a second delivery, which must not come
    assert [p["stock_quantity"] for _, p in recv.deliveries()] == [6]


async def test_seventh_consecutive_failure_disables_the_webhook(nursery):
    sim, c = await start(nursery, async_webhooks=False)
    recv = Receiver()
    await recv.start(nursery)
    recv.status = 500
    ref = sim.add_product("Mug", stock=50)
    async with c:
        wid = await hook(c, recv.url)
        for n in range(1, 8):
            await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
            status = (await c.get(f"/webhooks/{wid}")).json()["status"]
            assert status == ("disabled" if n == 7 else "active"), n
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert len(recv.deliveries()) == 7  # nothing is sent once disabled, and nothing was retried
        assert [w["id"] for w in (await c.get("/webhooks", params={"status": "disabled"})).json()] == [wid]
        recv.status = 200
        r = await c.put(f"/webhooks/{wid}", json={"status": "active"})
        assert r.json()["status"] == "active"
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert len(recv.deliveries()) == 8


async def test_webhook_faults_drop_and_duplicate(nursery):
    sim, c = await start(nursery, async_webhooks=False, faults=Faults(webhooks_enabled=False))
    recv = Receiver()
    await recv.start(nursery)
    ref = sim.add_product("Mug", stock=50)
    async with c:
        await hook(c, recv.url)
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert recv.deliveries() == []
        sim.faults.webhooks_enabled = True
        sim.faults.webhook_duplicate_rate = 1.0
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert len(recv.deliveries()) == 2
        sim.faults.webhook_duplicate_rate = 0.0
        sim.faults.webhook_drop_rate = 1.0
        await c.put(f"/products/{ref.product_id}", json={"inventory_delta": -1})
        assert len(recv.deliveries()) == 2
        assert sim.deliveries_dropped == 1


async def test_webhook_crud(nursery):
    sim, c = await start(nursery)
    async with c:
        r = await c.post("/webhooks", json={"topic": "product.exploded", "delivery_url": "http://127.0.0.1:1/x"})
        assert r.json()["code"] == "woocommerce_rest_shop_webhook_invalid_topic"
        wid = await hook(c, "http://127.0.0.1:1/unreachable")  # the failed ping does not fail the create
        assert "secret" not in (await c.get(f"/webhooks/{wid}")).json()
        r = await c.delete(f"/webhooks/{wid}")
        assert r.status_code == 501
        r = await c.delete(f"/webhooks/{wid}", params={"force": "true"})
        assert r.status_code == 200
        assert (await c.get("/webhooks")).json() == []


# --------------------------------------------------------------------------
# Orders and refunds


async def test_paid_order_reduces_stock_and_fires_order_and_product_webhooks(nursery):
    sim, c = await start(nursery, async_webhooks=False)
    recv = Receiver()
    await recv.start(nursery)
    mug = sim.add_product("Mug", sku="MUG", stock=5)
    small = sim.add_variable_product("Tee", {"S": 3}, sku="TEE")[0]
    async with c:
        await hook(c, recv.url, "order.created")
        await hook(c, recv.url, "product.updated")
        r = await c.post("/orders", json={"set_paid": True, "line_items": [
            {"product_id": mug.product_id, "quantity": 2},
            {"product_id": small.product_id, "variation_id": small.variation_id, "quantity": 1}]})
        assert r.status_code == 201
        order = r.json()
    assert order["status"] == "processing"
    assert (sim.stock(mug), sim.stock(small)) == (3, 2)
    assert [m["value"] for li in order["line_items"] for m in li["meta_data"] if m["key"] == "_reduced_stock"] == [
        "2", "1"]
    assert [p["id"] for _, p in recv.deliveries("order.created")] == [order["id"]]
    assert sorted(p["id"] for _, p in recv.deliveries("product.updated")) == [mug.product_id, small.variation_id]


async def test_refund_restocks_and_cancel_restores(nursery):
    sim, c = await start(nursery, async_webhooks=False)
    recv = Receiver()
    await recv.start(nursery)
    mug = sim.add_product("Mug", stock=5)
    cup = sim.add_product("Cup", stock=5)
    oid = sim.online_order({mug: 3, cup: 1})
    assert (sim.stock(mug), sim.stock(cup)) == (2, 4)
    async with c:
        await hook(c, recv.url, "order.updated")
        await hook(c, recv.url, "product.updated")
        order = (await c.get(f"/orders/{oid}")).json()
        line = next(li for li in order["line_items"] if li["product_id"] == mug.product_id)
        r = await c.post(f"/orders/{oid}/refunds", json={"line_items": [{"id": line["id"], "quantity": 1}]})
        assert r.status_code == 201
        assert sim.stock(mug) == 3
        assert [p["id"] for _, p in recv.deliveries("order.updated")] == [oid]
        assert [p["id"] for _, p in recv.deliveries("product.updated")] == [mug.product_id]
        r = await c.post(f"/orders/{oid}/refunds",
                         json={"api_restock": False, "line_items": [{"id": line["id"], "quantity": 1}]})
        assert sim.stock(mug) == 3
        r = await c.put(f"/orders/{oid}", json={"status": "cancelled"})
        assert r.json()["status"] == "cancelled"
    assert (sim.stock(mug), sim.stock(cup)) == (5, 5)  # 2 left reduced on the mug, 1 on the cup


async def test_sim_admin_routes(nursery):
    sim, _ = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.base_url) as admin:
        ref = (await admin.post("/_sim/products", json={"name": "Mug", "sku": "MUG", "stock": 4})).json()["ref"]
        await admin.put(f"/_sim/stock/{ref}", json={"quantity": 9})
        assert (await admin.get("/_sim/stock/MUG")).json()["stock"] == 9
        await admin.post("/_sim/orders", json={"items": {"MUG": 2}})
        assert sim.stock("MUG") == 7
        pid = ref.split(":")[1] if ":" in ref else ref  # by product id too, as the rehearsal in docs/SETUP.md does
        assert (await admin.post("/_sim/orders", json={"items": {pid: 1}})).status_code == 200
        assert sim.stock("MUG") == 6
        r = await admin.post("/_sim/orders", json={"items": {"NO-SUCH-SKU": 1}})
        assert r.status_code == 404 and "NO-SUCH-SKU" in r.json()["message"]
        assert (await admin.post("/_sim/orders", json={"items": []})).status_code == 400
        r = await admin.put("/_sim/faults", json={"latency": 0.0, "down": True})
        assert r.json()["down"] is True
        async with httpx.AsyncClient(base_url=sim.api_url, auth=(sim.consumer_key, sim.consumer_secret)) as c:
            assert (await c.get("/products")).status_code == 503
        stats = (await admin.get("/_sim/stats")).json()
        assert stats["requests"]["GET /wp-json/wc/v3/products"] == 1
    assert [w.source for w in sim.stock_writes] == ["admin", "order", "order"]


@pytest.mark.parametrize("kind", ["get_one", "put"])
def test_realistic_preset_uses_section_9_medians(kind):
    sim = WooSim.realistic()
    assert {"get_one": 0.050, "put": 0.072}[kind] == getattr(sim.latency, kind)
    assert sim.latency.list_page == 0.257 and sim.latency.batch_item == 0.020
    assert 0 < sim.write_window <= sim.latency.put


# --------------------------------------------------------------------------
# Companion mode (its contract, shared with a real store: tests/real/test_companion.py)


async def test_companion_routes_exist_only_in_companion_mode_and_the_admin_route_switches_it(nursery):
    sim, c = await start(nursery)
    ref = sim.add_product("Mug", stock=10)
    root = sim.base_url + "/wp-json/wc-cloverwoo/v1"
    change = {"changes": [{"write_id": "w-1", "product_id": ref.product_id, "delta": -1}]}
    async with c, httpx.AsyncClient(base_url=sim.base_url) as admin:
        r = await c.post(root + "/stock", json=change)
        assert (r.status_code, r.json()["code"]) == (404, "rest_no_route")
        assert (await c.post(root + "/stock", json=change, auth=(sim.consumer_key, "cs_bad"))).status_code == 401
        assert (await admin.put("/_sim/companion", json={"on": "yes"})).status_code == 400
        assert (await admin.put("/_sim/companion", json={"on": True})).json() == {"on": True, "write_ids": 0}
        r = await c.post(root + "/stock", json=change)
        assert r.json()["results"][0] | {} == {"write_id": "w-1", "product_id": ref.product_id, "ok": True,
                                              "new": True, "delta": -1, "stock": 9,
                                              "stock_product_id": ref.product_id}
        assert [w.source for w in sim.stock_writes_for(ref)] == ["companion"]
    assert sim.stock(ref) == 9


async def test_companion_changes_are_atomic_against_a_rest_write_window_but_rest_writes_are_not(nursery):
    """A REST delta overwrites what lands in its window (the real store does); a companion change never does."""
    sim, c = await start(nursery, companion=True, write_window=0.2)
    ref = sim.add_product("Mug", stock=10)
    async with c:
        async with trio.open_nursery() as n:
            n.start_soon(partial(c.put, f"/products/{ref.product_id}", json={"inventory_delta": -1}))
            await trio.sleep(0.05)  # inside the REST write's window: an order, then a companion change
            sim.online_order({ref: 1})
            r = await c.post(sim.base_url + "/wp-json/wc-cloverwoo/v1/stock",
                             json={"changes": [{"write_id": "w", "product_id": ref.product_id, "delta": -1}]})
            assert r.json()["results"][0]["stock"] == 8
        assert sim.stock(ref) == 9  # the REST write saved 10 - 1 over both: two units lost
        r = await c.post(sim.base_url + "/wp-json/wc-cloverwoo/v1/stock",
                         json={"changes": [{"write_id": "x", "product_id": ref.product_id, "delta": -1}]})
        sim.online_order({ref: 1})
    assert sim.stock(ref) == 7
