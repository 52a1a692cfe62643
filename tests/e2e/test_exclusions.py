"""Exclusions end to end: `cloverwoo exclude` / `include` over the control socket, simulated stores.

An excluded product is never written on either side, whatever sells and
whatever job runs; an SKU excluded before it is bound is born excluded; both
hold across a restart; including a product recounts it from the source of
truth (Clover here), not from the stale bases.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.io.control import control_call
from cloverwoo_daemon.messages import ExcludeRequest, ExportCsvRequest, StatusRequest, SyncRequest
from cloverwoo_daemon.sim.harness import World, start_world
from tests.e2e.conftest import Env, settle, wait_for
from tests.e2e.test_sync_jobs import run_job


def sync_writes_to_woo(w: World, ref: Any) -> int:
    """Writes the daemon made (REST or batch); orders and admin edits are the store's own."""
    return sum(1 for s in w.woo.stock_writes_for(ref) if s.source in ("rest", "batch"))


async def ctl(env: Env, req: Any) -> Any:
    resp = await control_call(env.daemon.control_socket, req, timeout=10.0)
    assert resp.ok, resp.error
    return resp.data


async def test_excluded_sku_is_never_written_and_include_recounts_it(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=3) as env:
        w = env.world
        mid = w.locations["downtown"]
        p, q, _ = w.products
        out = await ctl(env, ExcludeRequest(skus=(f"  {p.sku} ",)))
        assert out["changed"] == [p.sku] and out["bound"] == {p.sku: 1} and out["not_bound"] == []
        bid = p.woo.key
        await wait_for(lambda: env.daemon.admin.table.get(bid).excluded, what="the binding excluded")  # type: ignore[union-attr]
        woo_writes = sync_writes_to_woo(w, p.woo)
        clover_writes = w.clover.count("POST item_stocks/{id}")

        # Sales on both sides of the excluded product: each side moves on its own.
        w.clover.pos_sale(mid, {p.clover["downtown"]: 2})
        w.woo.online_order({p.woo: 3})
        # A sale of another product still syncs (the daemon is alive and saw the triggers above too).
        w.clover.pos_sale(mid, {q.clover["downtown"]: 1})
        await wait_for(lambda: w.woo_stock(q) == 19, what="the other product synced")
        await settle(env)
        # A reconciliation and an import do not touch it either.
        rec, _ = await run_job(env, SyncRequest(truth="clover"))
        assert rec["state"] == "done"
        await settle(env)
        assert w.clover_stock(p) == 18 and w.woo_stock(p) == 17
        assert sync_writes_to_woo(w, p.woo) == woo_writes
        assert w.clover.count("POST item_stocks/{id}") == clover_writes
        log = await env.daemon.admin.store.query_log(sku=p.sku, limit=50)
        events = [r.event for r in sorted(log, key=lambda r: (r.ts, r.id or 0))]
        assert "excluded" in events and "merge" not in events[events.index("excluded"):]

        status = await ctl(env, StatusRequest())
        assert status["exclusions"]["count"] == 1 and status["exclusions"]["skus"] == [p.sku]
        assert status["exclusions"]["bindings_excluded"] == 1
        exported = await ctl(env, ExportCsvRequest())
        rows = {r["sku"]: r for r in csv.DictReader(io.StringIO(exported["csv"]))}
        assert rows[p.sku]["sync_status"] == "excluded" and rows[q.sku]["sync_status"] != "excluded"

        # Include: Clover is the source of truth, so Woo is recounted to Clover's 18 (a merge from the stale
        # bases would have carried Woo's -3 to Clover as a sale and left both at 15).
        out = await ctl(env, ExcludeRequest(skus=(p.sku,), excluded=False))
        assert out["changed"] == [p.sku] and out["bindings_changed"] == 1
        await wait_for(lambda: w.woo_stock(p) == 18, what="woo recounted from clover")
        await settle(env)
        assert w.clover_stock(p) == 18 and w.woo_stock(p) == 18
        assert w.clover.count("POST item_stocks/{id}") == clover_writes  # the truth was not written
        # and it syncs in real time again
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.clover_stock(p) == 17, what="clover follows woo again")
        await settle(env)
        assert w.woo_stock(p) == 17
        status = await ctl(env, StatusRequest())
        assert status["exclusions"]["count"] == 0


async def _start(nursery: trio.Nursery, world: World) -> Running:
    running: Running = await nursery.start(
        lambda task_status: run_daemon(world.cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                       task_status=task_status))
    await world.connect(running.webhook_url)
    await running.admin.jobs.refreshed.wait()
    return running


async def _stop(running: Running) -> None:
    running.stop()
    await running.stopped.wait()


async def test_unbound_exclusion_sticks_and_everything_survives_a_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=2, poll_every="1s")
        mid = world.locations["downtown"]
        running = await _start(nursery, world)
        env = Env(world, running, nursery)
        await settle(env)
        a = world.products[0]
        out = await ctl(env, ExcludeRequest(skus=(a.sku, "NEW-1")))
        assert out["not_bound"] == ["NEW-1"] and out["bound"] == {a.sku: 1}
        await wait_for(lambda: running.admin.table.get(a.woo.key).excluded,  # type: ignore[union-attr]
                       what="a excluded")
        await settle(env)
        await _stop(running)

        # While the daemon is down, a new product appears on both sides with the excluded SKU, and Woo's
        # figure for it disagrees with Clover's: an initial sync would write one of them.
        item = world.clover.add_item(mid, "New one", sku="NEW-1", quantity=7)
        ref = world.woo.add_product("New one", sku="NEW-1", stock=4)

        running = await _start(nursery, world)
        env = Env(world, running, nursery)
        await settle(env)
        new = running.admin.table.get(ref.key)
        assert new is not None and new.excluded and new.base_woo is None
        assert running.admin.table.get(a.woo.key).excluded  # type: ignore[union-attr]
        status = await ctl(env, StatusRequest())
        assert status["exclusions"]["count"] == 2 and status["exclusions"]["bindings_excluded"] == 2
        assert status["exclusions"]["not_bound"] == []

        world.clover.pos_sale(mid, {item: 1, a.clover["downtown"]: 1})
        world.woo.online_order({ref: 1})
        b = world.products[1]
        world.clover.pos_sale(mid, {b.clover["downtown"]: 1})
        await wait_for(lambda: world.woo_stock(b) == 19, what="the included product synced")
        await settle(env)
        assert (world.clover.stock(mid, item), world.woo.stock(ref)) == (6, 3)
        assert (world.clover_stock(a), world.woo_stock(a)) == (19, 20)
        assert sync_writes_to_woo(world, ref) == 0 and sync_writes_to_woo(world, a.woo) == 0

        # Including the new one makes its first sync happen now, from Clover (the truth).
        await ctl(env, ExcludeRequest(skus=("NEW-1",), excluded=False))
        await wait_for(lambda: world.woo.stock(ref) == 6, what="the new product's first sync")
        await settle(env)
        assert world.clover.stock(mid, item) == 6
        await _stop(running)
        nursery.cancel_scope.cancel()
