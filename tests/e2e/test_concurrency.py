"""Randomized concurrency: sales and returns on both sides at once, while webhooks are dropped, delayed and
duplicated, then a heal and a settle. Every unit must be accounted for.

The sequence of actions comes from a fixed seed (the interleaving with the daemon depends on the
machine's timing, which is the point). ``CLOVERWOO_CHAOS_SECONDS`` sets the total time of chaos, split
into runs of at most ``RUN_SECONDS`` with 3, 1 and 2 locations in turn; the default keeps this file
part of ``make test``. A longer run: ``CLOVERWOO_CHAOS_SECONDS=120 .venv/bin/pytest -s
tests/e2e/test_concurrency.py``.

Every lost unit is attributed (``sim/accounting.py``): to a race the simulators recorded (a Clover
change landing between the daemon's fresh read of an item and its absolute write,
``CloverSim.stock_overwrites``; a checkout or refund landing inside the daemon's ``inventory_delta``,
``WooSim.lost_updates``), or to the daemon. The daemon's part must be 0; every recorded race must have
been witnessed by the daemon (flagged ``possible_lost_decrement``, or repaired); and in the runs with the
WordPress companion in the WooCommerce simulator (every other run) no WooCommerce race happens at all.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cloverwoo_daemon.sim.accounting import account
from cloverwoo_daemon.sim.harness import SimProduct, World
from tests.e2e.conftest import running_env, settle

SEED = 20_261_127
RUN_SECONDS = 5.0
CHAOS_SECONDS = float(os.environ.get("CLOVERWOO_CHAOS_SECONDS", "10"))
STOCK = 40  # per location
MEAN_GAP = 0.06  # seconds between shopper actions, on average (about 16 a second)


@dataclass
class Ledger:
    """What the shoppers did, per SKU: the stock both sides must end with (before the Clover race)."""

    expected: dict[str, int]
    counts: Counter[str] = field(default_factory=Counter)
    clover_orders: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)  # mId, order, sku -> units
    woo_orders: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # order, sku -> units refundable


class Shoppers:
    """Random sales and returns on both sides, from one seeded RNG."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.w = world
        self.rng = rng
        self.by_sku = {p.sku: p for p in world.products}
        self.ledger = Ledger({p.sku: STOCK * len(world.locations) for p in world.products})

    def _basket(self) -> dict[str, int]:
        picked = self.rng.sample(sorted(self.by_sku), self.rng.choice((1, 1, 2)))
        return {sku: self.rng.randint(1, 3) for sku in picked}

    def act(self) -> None:
        r = self.rng.random()
        if r < 0.40:
            self.pos_sale()
        elif r < 0.78:
            self.online_order()
        elif r < 0.89:
            self.pos_refund()
        else:
            self.online_refund()

    def pos_sale(self) -> None:
        loc = self.rng.choice(sorted(self.w.locations))
        mid = self.w.locations[loc]
        basket = self._basket()
        order = self.w.clover.pos_sale(mid, {self.by_sku[sku].clover[loc]: n for sku, n in basket.items()})
        self.ledger.clover_orders.append((mid, order, basket))
        self._sold(basket, "pos")

    def online_order(self) -> None:
        basket = self._basket()
        order = self.w.woo.online_order({self.by_sku[sku].woo: n for sku, n in basket.items()})
        self.ledger.woo_orders.append((order, dict(basket)))
        self._sold(basket, "online")

    def pos_refund(self) -> None:
        if not self.ledger.clover_orders:
            return
        mid, order, basket = self.ledger.clover_orders.pop(self.rng.randrange(len(self.ledger.clover_orders)))
        self.w.clover.refund(mid, order)  # the register puts every unit of the order back
        self._returned(basket, "pos")

    def online_refund(self) -> None:
        open_orders = [(o, b) for o, b in self.ledger.woo_orders if any(b.values())]
        if not open_orders:
            return
        order, basket = self.rng.choice(open_orders)
        sku = self.rng.choice([s for s, n in basket.items() if n])
        qty = self.rng.randint(1, basket[sku])
        self.w.woo.refund(order, {self.by_sku[sku].woo: qty}, restock=True)
        basket[sku] -= qty
        self._returned({sku: qty}, "online")

    def _sold(self, basket: dict[str, int], side: str) -> None:
        for sku, n in basket.items():
            self.ledger.expected[sku] -= n
        self.ledger.counts[f"{side}_sales"] += 1
        self.ledger.counts["units_sold"] += sum(basket.values())

    def _returned(self, basket: dict[str, int], side: str) -> None:
        for sku, n in basket.items():
            self.ledger.expected[sku] += n
        self.ledger.counts[f"{side}_returns"] += 1
        self.ledger.counts["units_returned"] += sum(basket.values())


def _chaos_on(world: World, rng: random.Random) -> None:
    for faults in (world.clover.faults, world.woo.faults):
        faults.webhook_drop_rate = rng.uniform(0.1, 0.3)
        faults.webhook_delay = rng.uniform(0.0, 0.4)
        faults.webhook_duplicate_rate = rng.uniform(0.1, 0.3)
    world.clover.faults.latency = 0.004  # a round trip that takes some time: the Clover window is real
    world.clover.faults.jitter = 0.003


def _heal(world: World) -> None:
    for faults in (world.clover.faults, world.woo.faults):
        faults.webhook_drop_rate = faults.webhook_delay = faults.webhook_duplicate_rate = 0.0
    world.clover.faults.latency = world.clover.faults.jitter = 0.0


async def _one_run(tmp: Path, run: int, seconds: float) -> dict[str, object]:
    rng = random.Random(SEED + run)
    locations = (3, 1, 2)[run % 3]
    companion = run % 2 == 1
    async with running_env(tmp, products=6, variable_products=1, locations=locations, stock=STOCK,
                           seed=SEED + run, woo_companion=companion) as env:
        w = env.world
        shoppers = Shoppers(w, rng)
        _chaos_on(w, rng)
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            shoppers.act()
            await trio.sleep(rng.expovariate(1 / MEAN_GAP))
        _heal(w)

        ledger = shoppers.ledger

        def expected(p: SimProduct) -> int:
            return ledger.expected[p.sku]

        # Dropped webhooks are found by the polls (every second); give them and the retries room. The
        # witness judges each write's window a few seconds after it closed, and a repair it finds is merged.
        witness = env.daemon.admin.witness
        with trio.move_on_after(60):
            while not (all(w.in_sync(p) for p in w.products) and witness.pending() == 0 and env.daemon.admin.idle()):
                await trio.sleep(0.05)
        await settle(env, timeout=30)
        rows = await env.daemon.admin.store.query_log(limit=100_000)
        acc = account(w, expected, rows)
        assert acc["lost_ours"] == 0, f"run {run} ({locations} locations): units lost by the daemon: {acc}"
        assert acc["clover_overwrites_flagged"] == acc["clover_overwrites"], f"run {run}: unwitnessed: {acc}"
        woo_seen = acc["woo_lost_updates_flagged"] + acc["woo_lost_updates_repaired"]
        assert woo_seen == acc["woo_lost_updates"], f"run {run}: unwitnessed: {acc}"
        if companion:
            assert acc["woo_lost_updates"] == 0, f"run {run}: an inventory_delta race with the companion: {acc}"
        dropped = sum(1 for a in w.clover.webhook_log if a.outcome == "dropped") + w.woo.deliveries_dropped
        assert dropped > 0, "no webhook was dropped: the polls were never needed"
        sales = ledger.counts["pos_sales"] + ledger.counts["online_sales"]
        return {
            "run": run,
            "locations": locations,
            "companion": companion,
            "sales": sales,
            "returns": ledger.counts["pos_returns"] + ledger.counts["online_returns"],
            "units": ledger.counts["units_sold"] + ledger.counts["units_returned"],
            "clover_writes": w.clover.count("POST item_stocks/{id}"),
            "overwrites": acc["clover_overwrites"],
            "lost_units": abs(acc["lost_clover_race"]) + abs(acc["lost_woo_race"]),
            "woo_lost_updates": acc["woo_lost_updates"],
            "woo_repaired": acc["woo_lost_updates_repaired"],
            "flags": acc["flags"],
            "windows": list(w.clover.stock_write_windows),
            "webhooks_dropped": dropped,
        }


def _spread(seconds: list[float]) -> str:
    if not seconds:
        return "n/a"
    s = sorted(seconds)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):.0f} ms, p90 {pick(0.9):.0f} ms, max {s[-1] * 1000:.0f} ms"


async def test_random_sales_and_returns_on_both_sides_add_up(tmp_path: Path) -> None:
    runs = max(1, math.ceil(CHAOS_SECONDS / RUN_SECONDS))
    results = [await _one_run(tmp_path / f"run{i}", i, CHAOS_SECONDS / runs) for i in range(runs)]
    for r in results:
        print(f"chaos run {r['run']}{' (companion)' if r['companion'] else ''}: {r['locations']} location(s), "
              f"{r['sales']} sales, {r['returns']} returns ({r['units']} units), {r['webhooks_dropped']} webhooks "
              f"dropped, {r['clover_writes']} Clover writes, {r['overwrites']} overwritten in the read-write "
              f"window, {r['woo_lost_updates']} inventory_delta lost updates ({r['woo_repaired']} repaired), "
              f"lost {r['lost_units']} units, every race witnessed ({r['flags']} writes flagged), ours 0")
    total: Counter[str] = Counter()
    for r in results:
        total.update({k: r[k] for k in ("sales", "returns", "units", "clover_writes", "overwrites", "lost_units",
                                        "woo_lost_updates", "woo_repaired", "flags")})
    windows = sorted(ms for r in results for ms in r["windows"])  # type: ignore[attr-defined]
    print(f"chaos: runs {len(results)}, sales {total['sales']}, returns {total['returns']}, "
          f"units {total['units']}, Clover writes {total['clover_writes']}, lost {total['lost_units']} units "
          f"in {total['overwrites']} overwrites; Clover read-to-write window {_spread(windows)}")
    assert total["sales"] > 0 and total["clover_writes"] > 0

