"""Multi-location inventory, end to end: three simulated Clover stores, one WooCommerce, the daemon between.

Each test asserts final stock on every side; the mode tests also count the
requests each simulated merchant received (single mode must call no other).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.core import routing
from cloverwoo_daemon.messages import ModeRequest
from cloverwoo_daemon.sim.harness import SimProduct, World, start_world
from tests.e2e.conftest import Env, settle, wait_for

LOCS = ("downtown", "airport", "harbour")


@asynccontextmanager
async def three_stores(tmp_path: Path, *, deduct: str | list[str] = "primary", mode: str = "aggregate",
                       products: int = 2) -> AsyncIterator[Env]:
    """Like ``env_factory``, with a ``deduct`` list (the harness writes strings only)."""
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=products, locations=3, mode=mode)
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
        saves = w.woo.product(p.woo)["date_modified_gmt"]
        await trio.sleep(2.0)  # polls and echoes: an unchanged figure must not be written again
        await settle(env)
        assert w.woo.product(p.woo)["date_modified_gmt"] == saves


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
        await settle(env)
        await wait_for(lambda: all(w.woo_stock(x) == w.clover_stock(x) for x in (p, q)), what="in sync")
        # every online order left Clover, every store sale is still in Clover, Woo shows the sum
        assert sum(stock(w, p, loc) + stock(w, q, loc) for loc in LOCS) == 120 - sold
        assert w.woo_stock(p) == sum(stock(w, p, loc) for loc in LOCS)
        assert location_meta(w, p) is not None  # the per-location stint wrote it


async def test_config_mode_change_at_restart_recounts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, locations=3)
        env = await _start_daemon(nursery, world)
        (p,) = world.products
        assert world.woo_stock(p) == 60
        env.daemon.stop()
        await env.daemon.stopped.wait()
        text = world.config_path.read_text().replace('mode = "aggregate"', 'mode = "single"')
        world.config_path.write_text(text)
        env = await _start_daemon(nursery, world)
        await wait_for(lambda: "mode" in env.daemon.admin.jobs.last, what="mode recount at start")
        await settle(env)
        assert world.woo_stock(p) == 20 and env.daemon.admin.status()["mode"] == "single"
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
        assert w.woo_stock(p) == 48  # 12 healthy sales landed; harbour's 4 not yet
        w.clover.down_merchants.clear()
        await wait_for(lambda: w.woo_stock(p) == 44, timeout=20.0, what="harbour's sale caught up")
        await settle(env)
        assert env.daemon.admin.status()["locations"]["harbour"]["reachable"]
        assert [stock(w, p, loc) for loc in LOCS] == [14, 14, 16]
