"""No count is ever clamped: an oversell stays negative on both sides and is flagged; a decimal Clover
quantity keeps its fraction, and WooCommerce shows its whole part, rounded down (never more than Clover
holds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import settle, wait_for


async def test_an_oversell_stays_negative_on_both_sides(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1, stock=20) as env:
        w = env.world
        (p,) = w.products
        mid, item = w.locations["downtown"], p.clover["downtown"]
        w.clover.pos_sale(mid, {item: 25})  # 20 in stock
        await wait_for(lambda: w.woo_stock(p) == -5, what="the oversell carried to WooCommerce as -5")
        w.woo.online_order({p.woo: 2})  # WooCommerce takes the order anyway (backorders or not)
        await wait_for(lambda: w.clover_stock(p) == w.woo_stock(p) == -7, what="both sides at -7")
        await settle(env)
        assert w.clover.stock(mid, item) == -7.0 and w.woo.stock(p.woo) == -7
        conflicts = await env.daemon.admin.store.list_conflicts()
        assert [c.kind for c in conflicts] == ["oversell"]


async def test_a_decimal_clover_quantity_keeps_its_fraction(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1, stock=20) as env:
        w = env.world
        (p,) = w.products
        mid, item = w.locations["downtown"], p.clover["downtown"]
        w.clover.adjust(mid, item, 2.5)  # sold by weight: 2.5 left
        await wait_for(lambda: w.woo_stock(p) == 2, what="WooCommerce showing the whole part, 2")
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.clover.stock(mid, item) == 1.5, what="Clover at 1.5 (2.5 less 1, fraction kept)")
        w.woo.online_order({p.woo: 2})
        await wait_for(lambda: w.clover.stock(mid, item) == -0.5, what="Clover at -0.5")
        await settle(env)
        assert w.woo.stock(p.woo) == -1  # the whole part of -0.5, rounded down: never more than Clover holds
