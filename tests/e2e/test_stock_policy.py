"""Out-of-stock behaviour, end to end: sales on the simulated Clover, the daemon, and what WooCommerce shows.

Each behaviour is applied when the shop's stock reaches zero and undone when
stock comes back; the product's other fields are left as they were, and the
writes do not feed themselves (one write to apply, one to undo).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.core.stock_policy import CONTACT_META_KEY
from cloverwoo_daemon.messages import OutOfStockRequest
from cloverwoo_daemon.sim.harness import World, start_world
from tests.e2e.conftest import Env, settle, wait_for


@asynccontextmanager
async def env_with(tmp_path: Path, alerts_toml: str, **world_kw: Any) -> AsyncIterator[Env]:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", **world_kw)
        with world.config_path.open("a") as f:
            f.write("\n[alerts]\n" + alerts_toml)
        cfg = world.cfg
        running: Running = await nursery.start(
            lambda task_status: run_daemon(cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                           task_status=task_status))
        await world.connect(running.webhook_url)
        env = Env(world, running, nursery)
        await running.admin.jobs.refreshed.wait()
        await settle(env)
        try:
            yield env
        finally:
            running.stop()
            await running.stopped.wait()
            nursery.cancel_scope.cancel()


async def quiet(env: Env) -> None:
    await settle(env)
    await wait_for(env.daemon.admin.stock_policy.idle, what="stock policy idle")
    await settle(env)


async def merchant_put(w: World, product_id: int, body: dict[str, Any]) -> None:
    """What the merchant does in wp-admin, through the REST API."""
    async with httpx.AsyncClient(auth=(w.woo.consumer_key, w.woo.consumer_secret)) as c:
        r = await c.put(f"{w.woo.api_url}/products/{product_id}", json=body)
        r.raise_for_status()


def meta(w: World, ref: Any, key: str) -> Any:
    for m in w.woo.product(ref)["meta_data"]:
        if m["key"] == key:
            return m["value"]
    return None


async def test_hide_hides_at_zero_and_restores_the_previous_visibility(tmp_path: Path) -> None:
    async with env_with(tmp_path, 'out_of_stock = "hide"\n', products=2, stock=2) as env:
        w = env.world
        p, other = w.products
        await merchant_put(w, p.woo.product_id, {"catalog_visibility": "catalog"})
        await quiet(env)
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
        await wait_for(lambda: w.woo.product(p.woo)["catalog_visibility"] == "hidden", what="hidden at zero")
        assert w.woo_stock(p) == 0
        await quiet(env)
        assert w.woo.product(other.woo)["catalog_visibility"] == "visible"
        # back in stock: the merchant's "catalog" comes back, not the default
        w.clover.adjust(w.locations["downtown"], p.clover["downtown"], 5)
        await wait_for(lambda: w.woo.product(p.woo)["catalog_visibility"] == "catalog", what="visibility restored")
        assert w.woo_stock(p) == 5
        await quiet(env)
        assert env.daemon.admin.stock_policy.writes == 2  # no feedback loop through our own webhooks
        assert w.woo.product(p.woo)["backorders"] == "no"


async def test_backorder_allows_backorders_at_zero_and_undoes_it(tmp_path: Path) -> None:
    async with env_with(tmp_path, 'out_of_stock = "backorder"\n', products=1, stock=3, untracked=1) as env:
        w = env.world
        (p,) = w.products
        w.woo.online_order({p.woo: 3})
        await wait_for(lambda: w.woo.product(p.woo)["backorders"] == "notify", what="backorders notify")
        assert w.woo.product(p.woo)["stock_status"] == "onbackorder"
        assert w.woo.product(p.woo)["catalog_visibility"] == "visible"
        w.clover.adjust(w.locations["downtown"], p.clover["downtown"], 4)
        await wait_for(lambda: w.woo.product(p.woo)["backorders"] == "no", what="backorders back to no")
        assert w.woo.product(p.woo)["stock_status"] == "instock"
        await quiet(env)
        assert env.daemon.admin.stock_policy.writes == 2
        untracked = w.woo.product("UNTRACKED-000")  # no managed stock: never touched
        assert untracked["backorders"] == "no" and untracked["date_modified_gmt"] == untracked["date_created_gmt"]


async def test_contact_keeps_the_product_visible_with_a_message_and_clears_it(tmp_path: Path) -> None:
    toml = 'out_of_stock = "contact"\ncontact_message = "Ring us on 555-0100 to order"\n'
    async with env_with(tmp_path, toml, products=1, stock=1) as env:
        w = env.world
        (p,) = w.products
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
        await wait_for(lambda: meta(w, p.woo, CONTACT_META_KEY) == "Ring us on 555-0100 to order",
                       what="the contact message")
        shown = w.woo.product(p.woo)
        assert shown["catalog_visibility"] == "visible" and shown["stock_status"] == "outofstock"
        assert shown["backorders"] == "no"
        w.clover.adjust(w.locations["downtown"], p.clover["downtown"], 2)
        await wait_for(lambda: meta(w, p.woo, CONTACT_META_KEY) == "", what="the message cleared")
        await quiet(env)
        assert env.daemon.admin.stock_policy.writes == 2


async def test_a_per_sku_override_wins_and_survives_a_restart_of_the_actor_state(tmp_path: Path) -> None:
    async with env_with(tmp_path, 'out_of_stock = "backorder"\n', products=2, stock=1) as env:
        w = env.world
        p, q = w.products
        resp = await env.daemon.admin.handle(OutOfStockRequest(sku=p.sku, action="hide"))
        assert resp.ok and resp.data["action"] == "hide"  # type: ignore[union-attr]
        bad = await env.daemon.admin.handle(OutOfStockRequest(sku=p.sku, action="explode"))
        assert not bad.ok  # type: ignore[union-attr]
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1, q.clover["downtown"]: 1})
        await wait_for(lambda: w.woo.product(p.woo)["catalog_visibility"] == "hidden", what="p hidden")
        await wait_for(lambda: w.woo.product(q.woo)["backorders"] == "notify", what="q on backorder")
        assert w.woo.product(p.woo)["backorders"] == "no"
        assert await env.daemon.admin.store.get_kv("stock_policy.overrides") == '{"SKU-0000": "hide"}'
