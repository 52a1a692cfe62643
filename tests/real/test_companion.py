"""The WordPress companion's contract, against the simulator and against a REAL WooCommerce.

Each test runs twice: ``sim`` (``WooSim(companion=True)``) and ``real`` (the session's WordPress 7.1 +
WooCommerce 11.0.1 from tests/real/conftest.py, with ``wordpress/cloverwoo-companion.php`` copied
into its mu-plugins for the test and removed after it), driven over HTTP by the daemon's own client
(``io.woocommerce.WooClient``) or, for input the client refuses to send, by raw requests. The
``real`` side is skipped, with the reason, when the rig is not there.

What it proves: stock changes are atomic against concurrent checkouts (where ``inventory_delta``
loses units; both figures printed), exactly-once by write id (a resend, a lost answer, a proxy's 503
after PHP ran), per-item refusals, variations, authentication, the synchronous-webhook setting, the
echo (product.updated still fires, with the new stock), and the write-id cleanup.
"""

from __future__ import annotations

import http.server
import json
import random
import secrets
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import StockChange, WooRef
from cloverwoo_daemon.io.woocommerce import WooClient, WriteOutcomeUnknown
from cloverwoo_daemon.ports import CompanionMissing
from cloverwoo_daemon.sim.woocommerce import COMPANION_VERSION, WooSim
from tests.real.stores import Item, RealStore, Rig, SimStore, WooStore

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "wordpress" / "cloverwoo-companion.php"
COMPANION = "/wp-json/wc-cloverwoo/v1"
RETRY = Backoff(base=0.05, cap=0.5, max_attempts=5)


# --------------------------------------------------------------------------------------------------
# One interface over both stores: what a test needs to arrange and observe, built on the tier's shared
# helpers (tests/real/stores.py) and the session's one real store (tests/real/conftest.py).


class Store:
    """The companion's view of one store (``stores.WooStore``): refs in, figures out."""

    def __init__(self, woo: WooStore) -> None:
        self.woo = woo
        self.kind = woo.kind
        self.base_url, self.key, self.secret = woo.base_url, woo.consumer_key, woo.consumer_secret
        # the simulator plays an HTTPS store (is_ssl()), where WooCommerce takes Basic only; the real store
        # is plain http: OAuth 1.0a (Basic works too, the rig fakes HTTPS)
        self.auth = "basic" if woo.kind == "sim" else "auto"

    def client(self, *, key: str | None = None, secret: str | None = None, **kw: Any) -> WooClient:
        kw.setdefault("auth", self.auth)
        kw.setdefault("backoff", RETRY)
        kw.setdefault("rng", random.Random(0))
        return WooClient(self.base_url, key or self.key, secret or self.secret, **kw)

    def raw(self) -> httpx.AsyncClient:
        """Basic auth (the rig fakes HTTPS for non-OAuth requests; the simulator serves https-mode)."""
        return httpx.AsyncClient(auth=(self.key, self.secret), timeout=60)

    async def product(self, stock: int | None, *, manage: bool = True) -> WooRef:
        return (await self.woo.create_product(stock=stock, manage_stock=manage, price="5.00")).ref

    async def variable(self, stocks: dict[str, int | None], *, parent_stock: int | None = None) -> list[WooRef]:
        _, variations = await self.woo.create_variable_product(stocks, parent_stock=parent_stock)
        return [v.ref for v in variations]

    async def rest(self, ref: WooRef) -> dict[str, Any]:
        return await self.woo.read(Item(ref, "", {}))

    async def stock(self, ref: WooRef) -> int | None:
        return (await self.rest(ref))["stock_quantity"]

    async def checkout(self, ref: WooRef, qty: int = 1) -> None:
        await self.woo.order({Item(ref, "", {}): qty})

    async def trash(self, ref: WooRef) -> None:
        await self.woo.ok("DELETE", f"/products/{ref.product_id}")

    async def read_only_key(self) -> tuple[str, str]:
        return await self.woo.add_key("read")

    async def customer_key(self) -> tuple[str, str]:
        """A read_write key whose user is a customer (real store only: the simulator has no users)."""
        assert isinstance(self.woo, RealStore)
        tag = secrets.token_hex(4)
        user = await self.woo.ok("POST", "/customers", json={"email": f"c{tag}@example.com", "username": f"c{tag}"})
        return await self.woo.add_key("read_write", user_id=int(user["id"]))

    async def age_write_id(self, write_id: str, days: int) -> None:
        if isinstance(self.woo, SimStore):
            self.woo.sim.companion_writes[write_id]["ts"] -= days * 86400
            return
        assert isinstance(self.woo, RealStore)
        for query in (f"UPDATE wp_cloverwoo_writes SET created_gmt = UTC_TIMESTAMP() - INTERVAL {days} DAY "
                      f"WHERE write_id = '{write_id}'",
                      "UPDATE wp_options SET option_value = '0' "
                      "WHERE option_name = 'cloverwoo_companion_last_cleanup'"):
            await trio.to_thread.run_sync(self.woo.rig.sql, query)


async def _set_sync_webhooks(store: Store, on: bool) -> None:
    async with store.raw() as http:
        r = await http.post(store.base_url + COMPANION + "/settings", json={"sync_webhooks": on})
        assert r.status_code == 200, r.text


@pytest.fixture
async def store(store_rig: Rig | None, nursery: trio.Nursery) -> AsyncIterator[Store]:
    """This module's ``store``, over conftest's parametrization (``[sim]`` / ``[real]``, one real store per session).

    ``[sim]``: ``WooSim(companion=True)``, its stock writes slowed to make races visible.
    ``[real]``: the session's store with ``wordpress/cloverwoo-companion.php`` copied into its
    mu-plugins for THIS TEST ONLY (the whole install: one file); the file is removed when the test
    ends, whatever happened, so no other test of the session sees a companion it did not ask for.
    Every test starts from the companion's default settings (asynchronous webhooks).
    """
    if store_rig is None:
        sim = await SimStore.start(nursery, companion=True, write_window=0.03)
        sim.sim.latency.other = 0.01
        try:
            yield Store(sim)
        finally:
            await sim.aclose()
        return
    installed = store_rig.mu_plugins / PLUGIN.name
    shutil.copyfile(PLUGIN, installed)
    real = RealStore(store_rig)
    try:
        chosen = Store(real)
        await _set_sync_webhooks(chosen, False)
        yield chosen
    finally:
        with trio.CancelScope(shield=True):
            try:
                await _set_sync_webhooks(Store(real), False)  # the option outlives the file: leave it off
            finally:
                installed.unlink(missing_ok=True)
                await real.aclose()


def ids(prefix: str, n: int) -> list[str]:
    tag = secrets.token_hex(4)
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


async def in_parallel(jobs: list[Callable[[], Any]], limit: int) -> None:
    gate = trio.CapacityLimiter(limit)

    async def one(job: Callable[[], Any]) -> None:
        async with gate:
            await job()

    async with trio.open_nursery() as n:
        for job in jobs:
            n.start_soon(one, job)


# --------------------------------------------------------------------------------------------------


async def test_status_is_found_by_the_client(store: Store) -> None:
    async with store.client() as woo:
        info = await woo.companion()
    assert info is not None
    assert info.version == COMPANION_VERSION
    assert info.woocommerce.startswith("11.") and info.transactional and info.max_changes == 100
    assert info.sync_webhooks is False and info.write_ids_kept_days >= 1


async def test_the_plugin_and_the_simulator_report_the_same_version() -> None:
    assert f"define( 'CLOVERWOO_COMPANION_VERSION', '{COMPANION_VERSION}' )" in PLUGIN.read_text()
    assert f"Version:     {COMPANION_VERSION}" in PLUGIN.read_text()


async def test_atomic_under_concurrency_where_inventory_delta_loses_units(store: Store) -> None:
    """200 concurrent -1s through the companion beside real checkouts end exactly right."""
    writes, orders, start = 200, 60, 1000

    async def run(ref: WooRef, write: Callable[[int], Any]) -> int:
        jobs: list[Callable[[], Any]] = [lambda i=i: write(i) for i in range(writes)]
        jobs += [lambda: store.checkout(ref)] * orders
        random.Random(7).shuffle(jobs)
        await in_parallel(jobs, limit=8)
        final = await store.stock(ref)
        assert final is not None
        return final - (start - writes - orders)  # units the shop shows but does not have

    atomic = await store.product(start)
    write_ids = ids("conc", writes)
    answers: list[Any] = []
    async with store.client(max_in_flight=8) as woo:
        async def via_companion(i: int) -> None:
            answers.extend(await woo.apply_changes([StockChange(write_ids[i], atomic, -1)]))

        lost_companion = await run(atomic, via_companion)

    racy = await store.product(start)
    async with store.raw() as http:
        base = store.base_url + "/wp-json/wc/v3"

        async def via_inventory_delta(i: int) -> None:
            r = await http.put(f"{base}/products/{racy.product_id}", json={"inventory_delta": -1})
            assert r.status_code == 200, r.text

        lost_delta = await run(racy, via_inventory_delta)
    print(f"\n[{store.kind}] {writes} stock writes of -1 + {orders} checkouts on one product, 8 at a time: "
          f"units lost with the companion {lost_companion}, with inventory_delta {lost_delta}")
    assert lost_companion == 0
    assert len(answers) == writes and all(a.ok and a.new for a in answers)
    # each change answers the stock it left, exactly: under the row lock no two can see the same figure
    assert len({a.quantity for a in answers}) == writes
    assert all(a.stock_product_id == atomic.product_id for a in answers)


async def test_exactly_once_by_write_id(store: Store) -> None:
    ref = await store.product(50)
    other = await store.product(20)
    batch = [StockChange(w, r, d) for w, r, d in zip(ids("once", 3), [ref, other, ref], [-3, 5, -1], strict=True)]
    async with store.client() as woo:
        first = await woo.apply_changes(batch)
        assert [(r.ok, r.new, r.quantity) for r in first] == [(True, True, 47), (True, True, 25), (True, True, 46)]
        await store.checkout(ref, 2)  # a sale in between: a replay answers what the write left, then
        again = await woo.apply_changes(batch)
        assert [(r.ok, r.new, r.quantity) for r in again] == [(True, False, 47), (True, False, 25),
                                                              (True, False, 46)]
        assert (await store.stock(ref), await store.stock(other)) == (44, 25)
        # the same id for another change is refused, and changes nothing
        [reused] = await woo.apply_changes([StockChange(batch[0].write_id, ref, -4)])
        assert (reused.ok, reused.code) == (False, "cloverwoo_write_id_reused")
    assert await store.stock(ref) == 44


class LoseAnswers(httpx.AsyncHTTPTransport):
    """The request reaches the store and runs; its answer is then lost (a proxy's 503, a reset)."""

    def __init__(self, path: str, failures: list[Callable[[httpx.Request], httpx.Response]]) -> None:
        super().__init__()
        self.path = path
        self.failures = failures
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if not request.url.path.endswith(self.path):
            return response
        self.sent += 1
        await response.aread()
        await response.aclose()
        if self.failures:
            return self.failures.pop(0)(request)
        return response


def proxy_503(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, text="<html>503 Service Unavailable</html>", request=request)


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


async def test_a_lost_answer_is_resent_and_applied_once(store: Store) -> None:
    ref = await store.product(30)
    transport = LoseAnswers("/wc-cloverwoo/v1/stock", [proxy_503, reset, read_timeout])
    [change] = [StockChange(w, ref, -2) for w in ids("lost", 1)]
    async with store.client(transport=transport) as woo:
        [result] = await woo.apply_changes([change])
    assert transport.sent == 4  # three answers lost after the store ran it, then the fourth came back
    assert (result.ok, result.new, result.quantity) == (True, False, 28)
    assert await store.stock(ref) == 28


async def test_inventory_delta_is_not_resent_after_an_ambiguous_503(store: Store) -> None:
    ref = await store.product(30)
    transport = LoseAnswers("/products/batch", [proxy_503])
    async with store.client(transport=transport) as woo:
        with pytest.raises(WriteOutcomeUnknown):
            await woo.apply_deltas([(ref, -2, 1)])
    assert transport.sent == 1
    assert await store.stock(ref) == 28  # it ran once; resending it would have made it 26


async def test_per_item_refusals_change_nothing_else(store: Store) -> None:
    ref = await store.product(10)
    unmanaged = await store.product(None, manage=False)
    trashed = await store.product(5)
    await store.trash(trashed)
    wid = ids("items", 12)
    body = {"changes": [
        {"write_id": wid[0], "product_id": ref.product_id, "delta": -1},
        {"write_id": wid[1], "product_id": 99_999_999, "delta": -1},
        {"write_id": wid[2], "product_id": unmanaged.product_id, "delta": -1},
        {"write_id": wid[3], "product_id": ref.product_id, "delta": 1.5},
        {"write_id": wid[4], "product_id": ref.product_id, "delta": "-1"},
        {"write_id": wid[5], "product_id": ref.product_id, "delta": 0},
        {"write_id": "no spaces allowed", "product_id": ref.product_id, "delta": -1},
        {"write_id": wid[6], "product_id": "12", "delta": -1},
        {"write_id": wid[7], "product_id": trashed.product_id, "delta": -1},
        "not an object",
        {"write_id": wid[8], "product_id": ref.product_id, "delta": -2.0},  # a whole number written as 2.0
        {"write_id": wid[9], "product_id": ref.product_id},
    ]}
    async with store.raw() as http:
        r = await http.post(store.base_url + COMPANION + "/stock", json=body)
    assert r.status_code == 200, r.text
    got = [(x["ok"], x.get("error", {}).get("code")) for x in r.json()["results"]]
    assert got == [(True, None), (False, "cloverwoo_unknown_product"), (False, "cloverwoo_stock_not_managed"),
                   (False, "cloverwoo_decimal_delta"), (False, "cloverwoo_invalid_delta"),
                   (False, "cloverwoo_zero_delta"), (False, "cloverwoo_invalid_write_id"),
                   (False, "cloverwoo_invalid_product_id"), (False, "cloverwoo_product_trashed"),
                   (False, "cloverwoo_invalid_change"), (True, None), (False, "cloverwoo_invalid_delta")]
    assert r.json()["results"][10]["stock"] == 7
    assert await store.stock(ref) == 7
    # a refused change left no write id behind: once fixed, the same id applies
    async with store.client() as woo:
        [fixed] = await woo.apply_changes([StockChange(wid[3], ref, 1)])
    assert (fixed.ok, fixed.new, fixed.quantity) == (True, True, 8)


async def test_whole_request_errors(store: Store) -> None:
    ref = await store.product(10)
    too_many = {"changes": [{"write_id": w, "product_id": ref.product_id, "delta": -1} for w in ids("big", 101)]}
    async with store.raw() as http:
        r = await http.post(store.base_url + COMPANION + "/stock", json=too_many)
        assert r.status_code == 413 and r.json()["code"] == "woocommerce_rest_request_entity_too_large"
        for bad in ({"changes": {"a": 1}}, {"change": []}, [1, 2]):
            r = await http.post(store.base_url + COMPANION + "/stock", json=bad)
            assert r.status_code == 400, (bad, r.text)
    assert await store.stock(ref) == 10
    async with store.client() as woo:  # the client splits 150 changes into two requests of <= 100
        results = await woo.apply_changes([StockChange(w, ref, 1) for w in ids("split", 150)])
    assert all(r.ok and r.new for r in results) and results[-1].quantity == 160


async def test_variations(store: Store) -> None:
    small, large = await store.variable({"S": 7, "L": None}, parent_stock=40)
    async with store.client() as woo:
        own, by_parent = await woo.apply_changes([StockChange(w, r, -2) for w, r in
                                                  zip(ids("var", 2), [small, large], strict=True)])
    assert (own.ok, own.quantity, own.stock_product_id) == (True, 5, small.variation_id)
    # a variation without its own stock: the parent's changes, as a checkout of it does
    assert (by_parent.ok, by_parent.quantity, by_parent.stock_product_id) == (True, 38, small.product_id)
    assert await store.stock(small) == 5
    assert await store.stock(WooRef(small.product_id)) == 38


async def test_authentication(store: Store) -> None:
    ref = await store.product(10)
    change = {"changes": [{"write_id": ids("auth", 1)[0], "product_id": ref.product_id, "delta": -1}]}
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.get(store.base_url + COMPANION + "/status")).status_code == 401
        assert (await http.post(store.base_url + COMPANION + "/stock", json=change)).status_code == 401
        r = await http.post(store.base_url + COMPANION + "/stock", json=change, auth=(store.key, "cs_wrong"))
        assert r.status_code == 401
    ro_key, ro_secret = await store.read_only_key()
    async with httpx.AsyncClient(timeout=60, auth=(ro_key, ro_secret)) as http:
        assert (await http.get(store.base_url + COMPANION + "/status")).status_code == 200
        r = await http.post(store.base_url + COMPANION + "/stock", json=change)
        assert r.status_code == 401 and "write permission" in r.json()["message"], r.text
        r = await http.post(store.base_url + COMPANION + "/settings", json={"sync_webhooks": True})
        assert r.status_code == 401
    if store.kind == "real":  # a read_write key whose user is a customer: no edit_products
        c_key, c_secret = await store.customer_key()
        async with httpx.AsyncClient(timeout=60, auth=(c_key, c_secret)) as http:
            r = await http.post(store.base_url + COMPANION + "/stock", json=change)
            assert r.status_code == 403 and r.json()["code"] == "cloverwoo_forbidden", r.text
    schemes = ("basic", "oauth1") if store.kind == "real" else ("basic",)  # the sim plays HTTPS
    for auth in schemes:  # the daemon's client, with each of WooCommerce's key schemes
        async with store.client(auth=auth) as woo:
            assert (await woo.companion()) is not None
            [r2] = await woo.apply_changes([StockChange(ids(auth, 1)[0], ref, -1)])
            assert r2.ok
    assert await store.stock(ref) == 10 - len(schemes)


async def test_sync_webhook_setting_and_the_echo(store: Store) -> None:
    """product.updated still fires for a companion change, carrying the new stock; sync delivers it in-request."""
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("X-WC-Webhook-Topic") == "product.updated":
                received.append(json.loads(raw))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ref = await store.product(3)
    async with store.raw() as http_, store.client() as woo:
        api = store.base_url + "/wp-json/wc/v3"
        r = await http_.post(api + "/webhooks", json={"topic": "product.updated", "name": "companion test",
                                                      "delivery_url": f"http://127.0.0.1:{server.server_port}/h",
                                                      "secret": "s3cret"})
        assert r.status_code == 201, r.text
        hook_id = r.json()["id"]
        try:
            bad = await http_.post(store.base_url + COMPANION + "/settings", json={"sync_webhooks": "yes"})
            assert bad.status_code == 400
            assert (await woo.companion()).sync_webhooks is False  # type: ignore[union-attr]
            info = await woo.set_companion_settings(sync_webhooks=True)
            assert info.sync_webhooks is True
            before = (await store.rest(ref))["date_modified_gmt"]
            await trio.sleep(1.1)  # date_modified has a 1-second resolution
            [res] = await woo.apply_changes([StockChange(ids("echo", 1)[0], ref, -3)])
            # synchronous: delivered before the answer came back
            mine = [p for p in received if p.get("id") == ref.product_id]
            assert mine and mine[-1]["stock_quantity"] == 0 == res.quantity, received
            assert mine[-1]["stock_status"] == "outofstock"  # the save after the change synced the status
            after = await store.rest(ref)
            assert after["date_modified_gmt"] > before and after["stock_status"] == "outofstock"
            info = await woo.set_companion_settings(sync_webhooks=False)
            assert info.sync_webhooks is False
        finally:
            await http_.delete(f"{api}/webhooks/{hook_id}", params={"force": "true"})
            server.shutdown()
            server.server_close()


async def test_old_write_ids_are_cleaned_up(store: Store) -> None:
    ref = await store.product(10)
    old, fresh = ids("old", 2)
    async with store.client() as woo:
        await woo.apply_changes([StockChange(old, ref, -1)])
        await store.age_write_id(old, 40)  # older than the 30 days kept
        await woo.apply_changes([StockChange(fresh, ref, -1)])  # a request runs the cleanup
        again = await woo.apply_changes([StockChange(old, ref, -1), StockChange(fresh, ref, -1)])
    # the old id was forgotten, so it applies again: why the daemon must never resend past the kept days
    assert [(r.new, r.quantity) for r in again] == [(True, 7), (False, 8)]


async def test_without_the_companion_the_client_says_so(nursery: trio.Nursery) -> None:
    sim = WooSim()
    await nursery.start(sim.run)
    ref = sim.add_product("Mug", stock=3)
    async with WooClient(sim.base_url, sim.consumer_key, sim.consumer_secret, auth="basic", backoff=RETRY) as woo:
        assert await woo.companion() is None
        with pytest.raises(CompanionMissing):
            await woo.apply_changes([StockChange("x-1", ref, -1)])
    assert sim.stock(ref) == 3


@pytest.mark.skipif(shutil.which("php") is None, reason="no php binary to lint the companion with")
def test_the_plugin_parses() -> None:
    """``php -l`` with the PHP at hand (the rig's 8.2); 7.4 compatibility is kept by hand (see the file)."""
    out = subprocess.run(["php", "-l", str(PLUGIN)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "No syntax errors" in out.stdout, out.stdout + out.stderr


async def test_the_client_refuses_bad_changes_before_sending() -> None:
    async with WooClient("http://127.0.0.1:9", "ck", "cs", backoff=RETRY) as woo:  # nothing listens there
        for bad in ([StockChange("a", WooRef(1), 0)], [StockChange("a b", WooRef(1), 1)],
                    [StockChange("a", WooRef(1), 1), StockChange("a", WooRef(2), 1)],
                    [StockChange("a", WooRef(1), 1.5)]):  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await woo.apply_changes(bad)
