"""Multi-location inventory, end to end: three simulated Clover stores, one WooCommerce, the daemon between.

Each test asserts final stock on every side; the mode tests also count the
requests each simulated merchant received (single mode must call no other).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.core import routing
from cloverwoo_daemon.io.clover_oauth import CloverOAuth, connect
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.messages import DashboardRequest, ExportCsvRequest, ModeRequest, ThresholdRequest
from cloverwoo_daemon.sim.harness import SimProduct, World, start_world
from tests.e2e.conftest import Env, settle, wait_for

LOCS = ("downtown", "airport", "harbour")


@asynccontextmanager
async def three_stores(tmp_path: Path, *, deduct: str | list[str] = "primary", mode: str = "aggregate",
                       products: int = 2, **world_kw: Any) -> AsyncIterator[Env]:
    """Like ``env_factory``, with a ``deduct`` list (the harness writes strings only)."""
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=products, locations=3, mode=mode,
                                  **world_kw)
        if not isinstance(deduct, str):
            text = world.config_path.read_text().replace('deduct = "primary"', f"deduct = {json.dumps(deduct)}")
            world.config_path.write_text(text)
        elif deduct != "primary":
            text = world.config_path.read_text().replace('deduct = "primary"', f'deduct = "{deduct}"')
            world.config_path.write_text(text)
        env = await _start_daemon(nursery, world)
        try:
            yield env
        finally:
            env.daemon.stop()
            await env.daemon.stopped.wait()
            nursery.cancel_scope.cancel()


async def _start_daemon(nursery: trio.Nursery, world: World) -> Env:
    running: Running = await nursery.start(
        lambda task_status: run_daemon(world.cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                       task_status=task_status)
    )
    await world.connect(running.webhook_url)
    env = Env(world, running, nursery)
    await running.admin.jobs.refreshed.wait()
    await settle(env)
    return env


def stock(w: World, p: SimProduct, loc: str) -> int:
    q = w.clover_stock(p, loc)
    assert q is not None
    return int(q)


def calls_to(w: World, loc: str) -> int:
    mid = w.locations[loc]
    return sum(n for (m, _), n in w.clover.counts.items() if m == mid)


def location_meta(w: World, p: SimProduct) -> dict[str, int] | None:
    for m in w.woo.product(p.woo).get("meta_data", []):
        if m["key"] == "_cloverwoo_location_stock":
            return dict(json.loads(m["value"]))
    return None


def has_location_meta(w: World, p: SimProduct) -> bool:
    """The key is on the product at all (whatever its value: an emptied one would still show)."""
    return any(m["key"] == "_cloverwoo_location_stock" for m in w.woo.product(p.woo).get("meta_data", []))


async def switch(env: Env, mode: str) -> dict[str, Any]:
    """`cloverwoo mode X` over the admin handler (what the control socket serves), followed to its result."""
    resp = await env.daemon.admin.handle(ModeRequest(mode=mode))
    last: Any = None
    async for last in resp:  # type: ignore[union-attr]
        assert last.ok, last.error
    assert last is not None and "result" in last.data
    return dict(last.data["result"])


# ---------------------------------------------------------------- aggregate


async def test_aggregate_sales_at_two_stores_and_online_all_land(tmp_path: Path) -> None:
    async with three_stores(tmp_path) as env:
        w = env.world
        p, q = w.products
        assert w.woo_stock(p) == 60
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
        w.clover.pos_sale(w.locations["airport"], {p.clover["airport"]: 3, q.clover["airport"]: 1})
        w.woo.online_order({p.woo: 4, q.woo: 2})
        await wait_for(lambda: w.woo_stock(p) == 51 and w.woo_stock(q) == 57, what="every sale on woo")
        await settle(env)
        # primary rule: the online order came out of downtown
        assert [stock(w, p, loc) for loc in LOCS] == [14, 17, 20]
        assert [stock(w, q, loc) for loc in LOCS] == [18, 19, 20]
        assert w.woo_stock(p) == 51 and w.woo_stock(q) == 57


async def _online_order_by_rule(tmp_path: Path, deduct: str | list[str], sold: dict[str, int], order: int) -> None:
    async with three_stores(tmp_path, deduct=deduct, products=1) as env:
        w = env.world
        (p,) = w.products
        for loc, n in sold.items():
            w.clover.pos_sale(w.locations[loc], {p.clover[loc]: n})
        total = 60 - sum(sold.values())
        await wait_for(lambda: w.woo_stock(p) == total, what="store sales on woo")
        await settle(env)
        before = {loc: stock(w, p, loc) for loc in LOCS}
        rule = deduct if isinstance(deduct, str) else tuple(deduct)
        expected = routing.route(-order, before, rule=rule, primary="downtown", order=LOCS)
        assert sum(expected.values()) == -order
        w.woo.online_order({p.woo: order})
        await wait_for(lambda: sum(stock(w, p, loc) for loc in LOCS) == total - order, what="order deducted")
        await settle(env)
        after = {loc: stock(w, p, loc) for loc in LOCS}
        assert after == {loc: before[loc] + expected.get(loc, 0) for loc in LOCS}, (before, after, expected)
        assert w.woo_stock(p) == total - order
        assert min(after.values()) >= 0


async def test_online_order_deducted_from_the_primary(tmp_path: Path) -> None:
    await _online_order_by_rule(tmp_path, "primary", {"downtown": 5}, 4)


async def test_online_order_deducted_from_the_location_with_most_stock(tmp_path: Path) -> None:
    await _online_order_by_rule(tmp_path, "most_stock", {"downtown": 5, "harbour": 2}, 4)


async def test_online_order_deducted_by_the_fallback_list(tmp_path: Path) -> None:
    # airport has 2 left: the list takes what it has, then the next location
    await _online_order_by_rule(tmp_path, ["airport", "harbour"], {"airport": 18}, 5)


def reads_at(w: World) -> dict[str, int]:
    return {loc: w.clover.count("GET item_stocks/{id}", w.locations[loc]) for loc in LOCS}


async def test_aggregate_reads_only_the_locations_that_moved(tmp_path: Path) -> None:
    """A sale at one store reads that store; an online order the primary; nothing else is called per sale."""
    async with three_stores(tmp_path, products=1) as env:
        w = env.world
        (p,) = w.products
        before = reads_at(w)
        w.clover.pos_sale(w.locations["airport"], {p.clover["airport"]: 2})
        await wait_for(lambda: w.woo_stock(p) == 58, what="the airport sale on woo")
        await settle(env)
        after_sale = reads_at(w)
        # the sale's merge and the echo of its Woo write: airport alone, never the other two stores
        assert after_sale["airport"] > before["airport"]
        assert after_sale["downtown"] == before["downtown"] and after_sale["harbour"] == before["harbour"]

        w.woo.online_order({p.woo: 3})
        await wait_for(lambda: stock(w, p, "downtown") == 17, what="the online order at the primary")
        await settle(env)
        after_order = reads_at(w)
        assert after_order["downtown"] > after_sale["downtown"]  # the primary: read, then written
        assert after_order["harbour"] == before["harbour"]
        assert after_order["airport"] == after_sale["airport"]
        assert [stock(w, p, loc) for loc in LOCS] == [17, 18, 20] and w.woo_stock(p) == 55


async def test_aggregate_reads_every_location_when_a_woo_change_must_be_split(tmp_path: Path) -> None:
    """A store sale whose merge finds an unannounced online order too: with most_stock, every store is read
    before Woo's change is split, and both sales count exactly once."""
    async with three_stores(tmp_path, deduct="most_stock", products=1, poll_every="1h") as env:
        w = env.world
        (p,) = w.products
        for loc, n in (("downtown", 5), ("airport", 2)):
            w.clover.pos_sale(w.locations[loc], {p.clover[loc]: n})
        await wait_for(lambda: w.woo_stock(p) == 53, what="store sales on woo")
        await settle(env)
        w.woo.faults.webhooks_enabled = False  # the online order's webhook is lost (no poll for an hour)
        w.woo.online_order({p.woo: 4})
        before = reads_at(w)
        w.clover.pos_sale(w.locations["airport"], {p.clover["airport"]: 1})
        await wait_for(lambda: w.woo_stock(p) == 48 and sum(stock(w, p, loc) for loc in LOCS) == 48,
                       what="both sales on both sides")
        await settle(env)
        after = reads_at(w)
        assert all(after[loc] > before[loc] for loc in LOCS), (before, after)
        # most stock was harbour (20): the online order came out of it, the store sales out of their stores
        assert [stock(w, p, loc) for loc in LOCS] == [15, 17, 16]
        w.woo.faults.webhooks_enabled = True
        await settle(env)
        assert w.woo_stock(p) == 48 and [stock(w, p, loc) for loc in LOCS] == [15, 17, 16]


# ---------------------------------------------------------------- single


async def test_single_mode_never_calls_the_other_locations(tmp_path: Path) -> None:
    async with three_stores(tmp_path, mode="single") as env:
        w = env.world
        p, _ = w.products
        await wait_for(lambda: w.woo_stock(p) == 20, what="woo shows the primary's stock only")
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
        w.clover.pos_sale(w.locations["airport"], {p.clover["airport"]: 5})  # ignored: not read in single mode
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.woo_stock(p) == 17 and stock(w, p, "downtown") == 17, what="primary synced")
        await trio.sleep(2.5)  # several poll intervals: an idle poller would have called by now
        await settle(env)
        assert calls_to(w, "downtown") > 0
        assert calls_to(w, "airport") == 0 and calls_to(w, "harbour") == 0
        assert stock(w, p, "airport") == 15 and stock(w, p, "harbour") == 20
        status = env.daemon.admin.status()
        assert status["mode"] == "single"
        assert not status["locations"]["airport"]["active"]


# ---------------------------------------------------------------- per-location


async def test_per_location_meta_follows_each_store(tmp_path: Path) -> None:
    async with three_stores(tmp_path, mode="per-location") as env:
        w = env.world
        p, q = w.products
        await wait_for(lambda: location_meta(w, p) is not None, what="meta written by the initial sync")
        assert location_meta(w, p) == {"airport": 20, "downtown": 20, "harbour": 20}
        assert w.woo_stock(p) == 60  # the total, as in aggregate mode
        w.clover.pos_sale(w.locations["harbour"], {p.clover["harbour"]: 3})
        w.woo.online_order({p.woo: 2})  # from the primary
        await wait_for(lambda: location_meta(w, p) == {"airport": 20, "downtown": 18, "harbour": 17},
                       what="meta follows both sales")
        await settle(env)
        assert w.woo_stock(p) == 55 and location_meta(w, q) == {"airport": 20, "downtown": 20, "harbour": 20}
        # `cloverwoo dashboard` (p made "low" by a threshold above its stock) and the CSV export: per location
        assert (await env.daemon.admin.handle(ThresholdRequest(sku=p.sku, threshold=100))).ok  # type: ignore[union-attr]
        board = await env.daemon.admin.handle(DashboardRequest())
        rows = {r["sku"]: r for r in board.data["products"]}  # type: ignore[union-attr]
        assert rows[p.sku]["locations"] == {"airport": 20, "downtown": 18, "harbour": 17}
        assert rows[p.sku]["stock"] == 55
        export = await env.daemon.admin.handle(ExportCsvRequest())
        lines = [r for r in csv.DictReader(io.StringIO(export.data["csv"])) if r["sku"] == p.sku]  # type: ignore[union-attr]
        assert {r["location"]: int(r["clover_stock"]) for r in lines} == {"airport": 20, "downtown": 18,
                                                                         "harbour": 17}
        assert {r["woo_stock"] for r in lines} == {"55"}
        saves = w.woo.product(p.woo)["date_modified_gmt"]
        await trio.sleep(2.0)  # polls and echoes: an unchanged figure must not be written again
        await settle(env)
        assert w.woo.product(p.woo)["date_modified_gmt"] == saves


async def test_leaving_per_location_mode_removes_the_meta_for_good(tmp_path: Path) -> None:
    async with three_stores(tmp_path, mode="per-location", products=1, variable_products=1) as env:
        w = env.world
        p, v = w.products[0], w.products[1]  # a simple product and a variation (Tee 0, size S)
        assert v.woo.variation_id
        await wait_for(lambda: location_meta(w, p) is not None and location_meta(w, v) is not None,
                       what="meta on the product and the variation")
        assert location_meta(w, v) == {"airport": 20, "downtown": 20, "harbour": 20}
        result = await switch(env, "aggregate")
        assert result["state"] == "done" and result["report"].get("location_meta") == "removed", result
        assert not has_location_meta(w, p) and not has_location_meta(w, v)
        # stays gone through merges that write Woo (the store sale) and Clover (the order), polls and echoes
        w.clover.pos_sale(w.locations["harbour"], {p.clover["harbour"]: 3, v.clover["harbour"]: 1})
        w.woo.online_order({p.woo: 2, v.woo: 1})
        await wait_for(lambda: w.woo_stock(p) == 55 and w.woo_stock(v) == 58, what="sales on woo")
        await wait_for(lambda: stock(w, p, "downtown") == 18 and stock(w, v, "downtown") == 19,
                       what="online order at the primary")
        await trio.sleep(2.0)  # several poll intervals
        await settle(env)
        assert not has_location_meta(w, p) and not has_location_meta(w, v)
        assert all(not has_location_meta(w, x) for x in w.products)
        # back to per-location: written again, with the current figures
        await switch(env, "per-location")
        await settle(env)
        assert location_meta(w, p) == {"airport": 20, "downtown": 18, "harbour": 17}
        assert location_meta(w, v) == {"airport": 20, "downtown": 19, "harbour": 19}


# ---------------------------------------------------------------- OAuth locations


async def test_an_oauth_location_idle_in_single_mode_syncs_once_switched_to_aggregate(tmp_path: Path) -> None:
    """Every OAuth location gets a token provider and a client, active or not: a switch can need it."""
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, locations=3, mode="single")
        (p,) = world.products
        mid = world.locations["airport"]
        # airport: OAuth instead of a static token, connected as `cloverwoo clover connect` would
        text = re.sub(r'token_file = "[^"]*airport_token"', f'oauth = true\nclient_id = "{world.clover.app_id}"',
                      world.config_path.read_text())
        world.config_path.write_text(text)
        assert world.cfg.clover.locations[1].oauth
        async with trio.open_nursery() as n:
            store = Store(world.cfg.state.path)
            await n.start(store.run)
            oauth = CloverOAuth(base_url=world.clover.base_url or "", client_id=world.clover.app_id,
                                client_secret=world.clover.oauth.settings.client_secret)
            try:
                await connect(oauth, store, location="airport", merchant_id=mid,
                              code=world.clover.oauth.code_for(mid))
            finally:
                await oauth.aclose()
                n.cancel_scope.cancel()
        env = await _start_daemon(nursery, world)
        try:
            await wait_for(lambda: world.woo_stock(p) == 20, what="woo shows the primary's stock only")
            assert calls_to(world, "airport") == 0
            result = await switch(env, "aggregate")
            assert result["state"] == "done", result
            await wait_for(lambda: world.woo_stock(p) == 60, what="woo shows the sum of the three")
            world.clover.pos_sale(mid, {p.clover["airport"]: 2})
            await wait_for(lambda: world.woo_stock(p) == 58, what="a sale at the OAuth location on woo")
            await settle(env)
            assert calls_to(world, "airport") > 0
            assert env.daemon.admin.status()["locations"]["airport"]["active"]
        finally:
            env.daemon.stop()
            await env.daemon.stopped.wait()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- switching


async def test_switching_modes_in_the_middle_of_sales_loses_nothing(tmp_path: Path) -> None:
    async with three_stores(tmp_path, products=2) as env:
        w = env.world
        p, q = w.products
        sold = 0

        async def sales(rounds: int) -> None:
            nonlocal sold
            for i in range(rounds):
                loc = LOCS[i % 3]
                w.clover.pos_sale(w.locations[loc], {p.clover[loc]: 1, q.clover[loc]: 1})
                w.woo.online_order({p.woo: 1})
                sold += 3
                await trio.sleep(0.15)

        for mode in ("single", "per-location", "aggregate"):
            async with trio.open_nursery() as n:
                n.start_soon(sales, 6)
                result = await switch(env, mode)
            assert result["kind"] == "mode" and result["state"] == "done", result
            await settle(env)
            assert env.daemon.admin.status()["mode"] == mode
            assert has_location_meta(w, p) == (mode == "per-location")  # written by it, removed on leaving
        await settle(env)
        await wait_for(lambda: all(w.woo_stock(x) == w.clover_stock(x) for x in (p, q)), what="in sync")
        # every online order left Clover, every store sale is still in Clover, Woo shows the sum
        assert sum(stock(w, p, loc) + stock(w, q, loc) for loc in LOCS) == 120 - sold
        assert w.woo_stock(p) == sum(stock(w, p, loc) for loc in LOCS)
        assert not has_location_meta(w, p) and not has_location_meta(w, q)


async def test_config_mode_change_at_restart_recounts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, locations=3, mode="per-location")
        env = await _start_daemon(nursery, world)
        (p,) = world.products
        await wait_for(lambda: has_location_meta(world, p), what="per-location meta")
        assert world.woo_stock(p) == 60
        env.daemon.stop()
        await env.daemon.stopped.wait()
        text = world.config_path.read_text().replace('mode = "per-location"', 'mode = "single"')
        world.config_path.write_text(text)
        env = await _start_daemon(nursery, world)
        await wait_for(lambda: "mode" in env.daemon.admin.jobs.last, what="mode recount at start")
        await settle(env)
        assert world.woo_stock(p) == 20 and env.daemon.admin.status()["mode"] == "single"
        assert not has_location_meta(world, p)  # left per-location mode by the config: its meta went too
        env.daemon.stop()
        await env.daemon.stopped.wait()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- one location down


async def _propagation(w: World, locs: tuple[str, ...], rounds: int) -> list[float]:
    """Seconds from a POS sale at one of ``locs`` until WooCommerce shows it, one sale at a time."""
    p = w.products[0]
    out = []
    for i in range(rounds):
        loc = locs[i % len(locs)]
        want = (w.woo_stock(p) or 0) - 1
        t0 = trio.current_time()
        w.clover.pos_sale(w.locations[loc], {p.clover[loc]: 1})
        await wait_for(lambda want=want: w.woo_stock(p) == want, what=f"sale at {loc} on woo")  # type: ignore[misc]
        out.append(trio.current_time() - t0)
    return out


async def test_one_location_down_does_not_slow_the_others(tmp_path: Path) -> None:
    async with three_stores(tmp_path, products=1) as env:
        w = env.world
        (p,) = w.products
        healthy = ("downtown", "airport")
        all_up = await _propagation(w, healthy, 6)
        w.clover.down_merchants.add(w.locations["harbour"])
        await wait_for(lambda: not env.daemon.admin.status()["locations"]["harbour"]["reachable"],
                       what="harbour reported unreachable")
        w.clover.pos_sale(w.locations["harbour"], {p.clover["harbour"]: 4})  # caught up when it returns
        one_down = await _propagation(w, healthy, 6)
        print(f"\npropagation at healthy locations: all up median {statistics.median(all_up) * 1000:.0f} ms "
              f"(max {max(all_up) * 1000:.0f}); one down median {statistics.median(one_down) * 1000:.0f} ms "
              f"(max {max(one_down) * 1000:.0f})")
        # a loose bound (the 20 % figure, under steady load, is benchmarks/bench_locations.py's): waiting on the
        # store that is down, even for one retry of its 503s, would add half a second or more to every sale
        assert statistics.median(one_down) <= 2 * statistics.median(all_up) + 0.2
        assert w.woo_stock(p) == 48  # 12 healthy sales landed; harbour's 4 not yet
        assert env.daemon.admin.status()["stale_bindings"] == 1  # merged without harbour: `cloverwoo status`
        w.clover.down_merchants.clear()
        await wait_for(lambda: w.woo_stock(p) == 44, timeout=20.0, what="harbour's sale caught up")
        await settle(env)
        assert env.daemon.admin.status()["locations"]["harbour"]["reachable"]
        assert env.daemon.admin.status()["stale_bindings"] == 0
        assert [stock(w, p, loc) for loc in LOCS] == [14, 14, 16]
