"""The sync, end to end: simulated Clover and WooCommerce over HTTP, the daemon in between.

Each test asserts the final stock on both sides, and that nothing loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from tests.e2e.conftest import settle, wait_for


async def test_pos_sale_reaches_woocommerce(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=3) as env:
        w = env.world
        p = w.products[0]
        assert w.woo_stock(p) == 20
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
        await wait_for(lambda: w.woo_stock(p) == 18, what="woo stock 18")
        await settle(env)
        assert w.clover_stock(p) == 18 and w.woo_stock(p) == 18
        # the other products were never written
        for other in w.products[1:]:
            assert w.woo.stock_writes_for(other.woo) == []


async def test_online_order_reaches_clover(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=2) as env:
        w = env.world
        p = w.products[1]
        w.woo.online_order({p.woo: 3})
        await wait_for(lambda: w.clover_stock(p) == 17, what="clover stock 17")
        await settle(env)
        assert w.woo_stock(p) == 17 and w.clover_stock(p) == 17


async def test_simultaneous_last_unit_sales_both_count_and_flag(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1, stock=1) as env:
        w = env.world
        p = w.products[0]
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.woo_stock(p) == -1 and w.clover_stock(p) == -1, what="-1 on both sides")
        await settle(env)
        assert w.woo_stock(p) == -1 and w.clover_stock(p) == -1
        conflicts = await env.daemon.admin.store.list_conflicts()
        assert [c.kind for c in conflicts] == ["oversell"]
        assert conflicts[0].sku == p.sku


async def test_no_loop_after_a_sale_settles(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1) as env:
        w = env.world
        p = w.products[0]
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
        await wait_for(lambda: w.woo_stock(p) == 19, what="woo 19")
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.clover_stock(p) == 18, what="clover 18")
        await settle(env)
        woo_writes = len(w.woo.stock_writes_for(p.woo))
        clover_writes = w.clover.count("POST item_stocks/{id}")
        assert woo_writes >= 2 and clover_writes == 1  # the sync wrote each side: the check below is not vacuous
        await trio.sleep(2.5)  # several poll intervals and every webhook echo
        await settle(env)
        assert len(w.woo.stock_writes_for(p.woo)) == woo_writes
        assert w.clover.count("POST item_stocks/{id}") == clover_writes
        assert w.woo_stock(p) == 18 and w.clover_stock(p) == 18


async def test_dropped_webhooks_are_caught_by_the_polls(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=2) as env:
        w = env.world
        w.clover.faults.webhooks_enabled = False
        w.woo.faults.webhooks_enabled = False
        a, b = w.products
        w.clover.pos_sale(w.locations["downtown"], {a.clover["downtown"]: 4})
        w.woo.online_order({b.woo: 5})
        await wait_for(lambda: w.woo_stock(a) == 16 and w.clover_stock(b) == 15, timeout=15,
                       what="both changes via poll")
        await settle(env)
        assert (w.clover_stock(a), w.woo_stock(a), w.clover_stock(b), w.woo_stock(b)) == (16, 16, 15, 15)


async def test_untracked_product_is_never_written(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1, untracked=1) as env:
        w = env.world
        mid = w.locations["downtown"]
        gift = next(i for i, it in w.clover.merchants[mid].items.items() if it.sku == "UNTRACKED-000")
        binding = next(b for b in env.daemon.admin.table.all() if b.sku == "UNTRACKED-000")
        assert binding.tracked is False
        w.clover.pos_sale(mid, {gift: 1})
        w.clover.pos_sale(mid, {w.products[0].clover["downtown"]: 1})  # a tracked sale in the same window
        await wait_for(lambda: w.woo_stock(w.products[0]) == 19, what="tracked product synced")
        await settle(env)
        untracked_id = binding.woo.product_id
        assert [s for s in w.woo.stock_writes if s.product_id == untracked_id and s.source in ("rest", "batch")] == []
        assert w.woo.stock(binding.woo) is None
        assert w.clover.stock(mid, gift) == 19  # the Clover sale itself stands; nothing was written back
        assert w.clover.count("POST item_stocks/{id}") == 0


async def test_trashed_product_and_deleted_item_unbind_with_a_log_entry(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=2) as env:
        w = env.world
        a, b = w.products
        table = env.daemon.admin.table
        assert table.by_woo_ref(a.woo) is not None and table.by_woo_ref(b.woo) is not None
        w.woo.trash_product(a.woo)
        w.clover.delete_item(w.locations["downtown"], b.clover["downtown"])
        await wait_for(lambda: table.by_woo_ref(a.woo) is None and table.by_woo_ref(b.woo) is None,
                       what="both bindings dropped")
        await settle(env)
        rows = await env.daemon.admin.store.query_log(level="warning")
        unbound = {r.sku: r.detail for r in rows if r.event == "unbound"}
        assert "trashed" in unbound[a.sku]
        assert "Clover item deleted" in unbound[b.sku]
        assert {bd.binding_id for bd in await env.daemon.admin.store.load_bindings()}.isdisjoint(
            {a.woo.key, b.woo.key})


async def test_sales_during_a_failing_stretch_are_all_merged_once_it_heals(env_factory: Callable[..., Any]) -> None:
    """A trigger that arrives while a failed merge waits out its retry delay is kept, not dropped.

    WooCommerce fails every call for a while, and POS sales keep coming: each merge fails and waits longer.
    Before the fix a new sale started a second merge beside the waiting one; when that one failed too it took
    the waiting one's place, both retries then found the other's and stopped, and the sales were merged only
    at the next reconcile or restart (no poll here), their webhooks never settled.
    """
    async with env_factory(products=1, poll_every="1h", stock=120) as env:
        w = env.world
        (p,) = w.products
        w.woo.faults.down = True
        for _ in range(40):  # ~24 s: long enough for the retry delay to outgrow a failing merge (~3 s)
            w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
            await trio.sleep(0.6)
        w.woo.faults.down = False
        await wait_for(lambda: w.woo_stock(p) == 80, timeout=60, what="every sale on woo")
        await wait_for(lambda: env.daemon.admin.status()["router"]["events_in_flight"] == 0, timeout=30,
                       what="every webhook settled")
        await settle(env)
        assert w.clover_stock(p) == 80 and w.woo_stock(p) == 80
