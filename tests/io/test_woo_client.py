"""WooClient against the simulated WooCommerce over real loopback HTTP."""

from __future__ import annotations

import random

import pytest
import trio
from structlog.testing import capture_logs

from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.io.woocommerce import VERSION_META_KEY, WooClient, WriteOutcomeUnknown
from cloverwoo_daemon.ports import NotFound, PermanentError, RemoteError
from cloverwoo_daemon.sim.common import Faults
from cloverwoo_daemon.sim.woocommerce import WooSim

FAST = Backoff(base=0.001, cap=0.01, max_attempts=4)


class Clock:
    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def start(nursery: trio.Nursery, **kwargs: object) -> WooSim:
    sim = WooSim(**kwargs)  # type: ignore[arg-type]
    await nursery.start(sim.run)
    return sim


def client(sim: WooSim, *, key: str | None = None, secret: str | None = None, **kwargs: object) -> WooClient:
    kwargs.setdefault("auth", "basic" if sim.https else "auto")
    kwargs.setdefault("backoff", FAST)
    return WooClient(sim.base_url, key or sim.consumer_key, secret or sim.consumer_secret,
                     rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def batch_posts(sim: WooSim) -> int:
    return sum(n for (m, rule), n in sim.requests.items() if m == "POST" and rule.endswith("/batch"))


async def test_get_stock_reads_products_and_variations_with_the_marker(nursery):
    sim = await start(nursery)
    mug = sim.add_product("Mug", sku="MUG", stock=5)
    loose = sim.add_product("Loose", stock=None, manage_stock=False)
    small = sim.add_variable_product("Tee", {"S": 3}, sku="TEE")[0]
    async with client(sim) as woo:
        s = await woo.get_stock(mug)
        assert (s.manage_stock, s.quantity, s.version_marker, s.sku) == (True, 5, None, "MUG")
        await woo.apply_deltas([(mug, -1, "c0ffee.7")])
        assert (await woo.get_stock(mug)).version_marker == "c0ffee.7"
        await woo.apply_deltas([(mug, 0, None, {"_other": "x"})])  # no marker: the last one stays
        assert (await woo.get_stock(mug)).version_marker == "c0ffee.7"
        s = await woo.get_stock(small)
        assert (s.ref, s.quantity, s.sku) == (small, 3, "TEE-S")
        s = await woo.get_stock(loose)
        assert (s.manage_stock, s.quantity) == (False, None)
    assert sim.requests[("GET", "/wp-json/wc/v3/products/<int:pid>/variations/<int:vid>")] == 1


async def test_apply_deltas_writes_delta_and_marker_per_endpoint(nursery):
    sim = await start(nursery)
    mug = sim.add_product("Mug", stock=5)
    cup = sim.add_product("Cup", stock=5)
    small, medium = sim.add_variable_product("Tee", {"S": 3, "M": 4})
    async with client(sim) as woo:
        results = await woo.apply_deltas([(mug, -2, 3), (small, 2, 4), (cup, 1, 5), (medium, -4, 6)])
    assert [(r.ref, r.ok, r.quantity) for r in results] == [
        (mug, True, 3), (small, True, 5), (cup, True, 6), (medium, True, 0)]
    meta = {m["key"]: m["value"] for m in sim.product(small)["meta_data"]}
    assert meta[VERSION_META_KEY] == "4"
    assert sim.requests[("POST", "/wp-json/wc/v3/products/batch")] == 1
    assert sim.requests[("POST", "/wp-json/wc/v3/products/<int:pid>/variations/batch")] == 1


async def test_150_writes_go_out_in_two_batches(nursery):
    sim = await start(nursery)
    refs = [sim.add_product(f"P{i}", stock=10) for i in range(150)]
    async with client(sim) as woo:
        results = await woo.apply_deltas([(r, -1, 1) for r in refs])
    assert all(r.ok and r.quantity == 9 for r in results)
    assert [r.ref for r in results] == refs
    assert batch_posts(sim) == 2


async def test_per_item_errors_come_back_as_results(nursery):
    sim = await start(nursery)
    mug = sim.add_product("Mug", stock=5)
    small = sim.add_variable_product("Tee", {"S": 3})[0]
    ghost = WooRef(424242)
    wrong_parent = WooRef(mug.product_id, small.variation_id)
    async with client(sim) as woo:
        results = await woo.apply_deltas([(ghost, -1, 1), (mug, -1, 1), (wrong_parent, -1, 1)])
    assert [r.ok for r in results] == [False, True, False]
    assert "woocommerce_rest_product_invalid_id" in (results[0].error or "")
    assert results[1].quantity == 4
    assert sim.stock(small) == 3


async def test_wrong_key_and_read_only_key_are_permanent(nursery):
    sim = await start(nursery)
    mug = sim.add_product("Mug", stock=5)
    async with client(sim, secret="cs_wrong") as woo:
        with pytest.raises(PermanentError, match="401"):
            await woo.get_stock(mug)
    ro_key, ro_secret = sim.add_key("read")
    async with client(sim, key=ro_key, secret=ro_secret) as woo:
        assert (await woo.get_stock(mug)).quantity == 5
        [result] = await woo.apply_deltas([(mug, -1, 1)])
    assert not result.ok and "write permissions" in (result.error or "")
    assert sim.stock_writes == []


async def test_5xx_is_retried_on_reads(nursery):
    sim = await start(nursery, faults=Faults(error_rate=0.5, seed=3))
    mug = sim.add_product("Mug", stock=5)
    async with client(sim, backoff=Backoff(base=0.001, cap=0.01, max_attempts=12)) as woo:
        for _ in range(10):
            assert (await woo.get_stock(mug)).quantity == 5
    assert sim.requests[("GET", "/wp-json/wc/v3/products/<int:pid>")] > 10


async def test_gives_up_after_the_last_attempt(nursery):
    sim = await start(nursery, faults=Faults(down=True))
    mug = sim.add_product("Mug", stock=5)
    async with client(sim) as woo:
        with pytest.raises(RemoteError) as info:
            await woo.get_stock(mug)
        assert not isinstance(info.value, PermanentError)
        # a 503 may come from a proxy after PHP ran: an inventory_delta is never sent twice on one
        with pytest.raises(WriteOutcomeUnknown):
            await woo.apply_deltas([(mug, -1, 1)])
    assert sim.requests[("GET", "/wp-json/wc/v3/products/<int:pid>")] == FAST.max_attempts
    assert sim.requests[("POST", "/wp-json/wc/v3/products/batch")] == 1


async def test_a_write_that_timed_out_is_not_sent_again(nursery):
    sim = await start(nursery, faults=Faults(hang_rate=1.0, hang_seconds=30))
    mug = sim.add_product("Mug", stock=5)
    async with client(sim, timeout=0.3) as woo:
        with pytest.raises(WriteOutcomeUnknown):
            await woo.apply_deltas([(mug, -1, 1)])
    assert sim.requests[("POST", "/wp-json/wc/v3/products/batch")] == 1


async def test_invalid_ids_are_not_found(nursery):
    sim = await start(nursery)
    small = sim.add_variable_product("Tee", {"S": 3})[0]
    async with client(sim) as woo:
        with pytest.raises(NotFound):
            await woo.get_stock(WooRef(99999))
        with pytest.raises(NotFound):
            await woo.get_stock(WooRef(small.product_id, 99999))
        with pytest.raises(NotFound):
            await woo.order_refs(5)


async def test_changed_refs_overlaps_the_strict_cursor(nursery):
    clock = Clock()
    sim = await start(nursery, clock=clock)
    a = sim.add_product("A", stock=1)
    small = sim.add_variable_product("Tee", {"S": 3})[0]
    clock.now += 60
    async with client(sim) as woo:
        sim.admin_set_stock(a, 2)
        refs, cursor = await woo.changed_refs(modified_after="2026-01-01T00:00:30")
        assert refs == {a}
        assert cursor == sim.product(a)["date_modified_gmt"]
        clock.now += 0.5  # a change within the same second as the cursor
        sim.admin_set_stock(small, 1)
        refs, cursor2 = await woo.changed_refs(modified_after=cursor)
        assert small in refs and WooRef(small.product_id) in refs  # the parent is bumped too
        assert cursor2 == cursor
        clock.now += 5
        refs, cursor3 = await woo.changed_refs(modified_after=cursor2)
        assert cursor3 == cursor2  # nothing new: the cursor stays
        assert refs <= {a, small, WooRef(small.product_id)}  # only the overlap second comes back


async def test_list_items_names_variations_and_marks_variable_parents(nursery):
    for store_wide in (True, False):
        async with trio.open_nursery() as n:
            sim = await start(n, store_wide_variations=store_wide)
            mug = sim.add_product("Mug", sku="MUG", stock=5)
            small, medium = sim.add_variable_product("Tee", {"S": 3, "M": None}, sku="TEE")
            for i in range(120):
                sim.add_product(f"Filler {i}", stock=i)
            async with client(sim) as woo:
                items = {i.ref: i for i in await woo.list_items()}
                clock_refs, _ = await woo.changed_refs(modified_after="2000-01-01T00:00:00")
            n.cancel_scope.cancel()
        assert len(items) == 124
        assert (items[mug].type, items[mug].sku, items[mug].quantity) == ("simple", "MUG", 5)
        parent = items[WooRef(small.product_id)]
        assert (parent.type, parent.manage_stock) == ("variable", False)
        assert (items[small].name, items[small].type, items[small].quantity) == ("Tee - S", "variation", 3)
        assert (items[medium].manage_stock, items[medium].quantity) == (False, None)
        assert {small, medium} <= clock_refs
        assert sim.requests[("GET", "/wp-json/wc/v3/products")] == 2 * 2  # two pages, two calls
        per_parent = sim.requests[("GET", "/wp-json/wc/v3/products/<int:pid>/variations")]
        assert per_parent == (0 if store_wide else 2)


async def test_order_refs(nursery):
    sim = await start(nursery)
    mug = sim.add_product("Mug", stock=5)
    small = sim.add_variable_product("Tee", {"S": 3})[0]
    oid = sim.online_order({mug: 1, small: 2})
    async with client(sim) as woo:
        assert await woo.order_refs(oid) == {mug, small}


async def test_oauth1_over_plain_http(nursery):
    sim = await start(nursery, https=False)
    mug = sim.add_product("Mug", stock=5)
    async with client(sim) as woo:
        assert woo.auth == "oauth1"
        assert (await woo.get_stock(mug)).quantity == 5
        [r] = await woo.apply_deltas([(mug, -2, 9)])
        assert r.quantity == 3
        refs, _ = await woo.changed_refs(modified_after="2000-01-01T00:00:00")
        assert mug in refs
    async with client(sim, auth="basic") as woo:
        with pytest.raises(PermanentError, match="401"):
            await woo.get_stock(mug)
    async with client(sim, auth="oauth1", oauth_method="HMAC-SHA1") as woo:
        assert (await woo.get_stock(mug)).quantity == 3


async def test_webhook_and_settings_helpers(nursery):
    sim = await start(nursery)
    async with client(sim) as woo:
        wh = await woo.create_webhook("product.updated", "http://127.0.0.1:1/hook", "abc123")
        assert (wh.topic, wh.status) == ("product.updated", "active")
        assert await woo.list_webhooks("disabled") == []
        assert (await woo.set_webhook_status(wh.id, "disabled")).status == "disabled"
        assert [w.id for w in await woo.list_webhooks("disabled")] == [wh.id]
        assert await woo.get_setting("products", "woocommerce_manage_stock") == "yes"


async def test_in_flight_cap(nursery):
    sim = await start(nursery, latency=None)
    sim.latency.get_one = 0.05
    mug = sim.add_product("Mug", stock=5)
    async with client(sim, max_in_flight=2) as woo:
        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(woo.get_stock, mug)
    assert 1 <= sim.max_in_flight_seen <= 2


async def test_secrets_stay_out_of_logs_and_errors(nursery):
    sim = await start(nursery, faults=Faults(down=True))
    mug = sim.add_product("Mug", stock=5)
    for auth in ("basic", "oauth1"):
        async with client(sim, auth=auth) as woo:
            with capture_logs() as logs:
                with pytest.raises(RemoteError) as info:
                    await woo.get_stock(mug)
        text = repr(logs) + str(info.value)
        assert logs and sim.consumer_secret not in text and sim.consumer_key not in text


@pytest.mark.parametrize("store_honours_fields", [True, False])
async def test_list_reads_ask_for_and_keep_only_the_fields_the_sync_reads(nursery, monkeypatch, store_honours_fields):
    """``_fields`` keeps a 50,000-product catalogue small; a store that ignores it still costs no memory."""
    from cloverwoo_daemon.io import woocommerce as woo_io
    from cloverwoo_daemon.sim import woocommerce as woo_sim

    asked: list[set[str] | None] = []
    real = woo_sim._requested_fields

    def store_side(args: object) -> set[str] | None:
        asked.append(real(args))
        return asked[-1] if store_honours_fields else None

    monkeypatch.setattr(woo_sim, "_requested_fields", store_side)
    sim = await start(nursery)
    mug = sim.add_product("Mug", sku="MUG", stock=5)
    small, _ = sim.add_variable_product("Tee", {"S": 3, "M": 4}, sku="TEE")
    async with client(sim) as woo:
        rows = await woo._get_all("/products", {}, woo_io._CATALOGUE_FIELDS)
        items = {i.ref: i for i in await woo.list_items()}
        changed, _ = await woo.changed_items(modified_after="2000-01-01T00:00:00")
    assert set(woo_io._CATALOGUE_FIELDS) in asked and set(woo_io._CHANGE_FIELDS) in asked
    assert rows and all(set(r) <= set(woo_io._CATALOGUE_FIELDS) for r in rows)
    assert "description" not in rows[0] and "meta_data" not in rows[0]
    assert (items[mug].sku, items[mug].quantity, items[mug].status) == ("MUG", 5, "publish")
    assert (items[small].name, items[small].quantity, items[small].type) == ("Tee - S", 3, "variation")
    assert changed[small].endswith("|3") and changed[mug].endswith("|5")
