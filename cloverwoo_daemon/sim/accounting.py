"""Where every unit went in a simulated run: the races the simulators recorded, what the daemon flagged, ours.

Used by ``benchmarks/bench_sync.py`` and ``tests/e2e/test_concurrency.py``.

Rules:

- Two races are the remote APIs' own, and the simulators record each one
  when it happens: a Clover write that replaced a change made inside its
  read-to-write window (``CloverSim.stock_overwrites``), and a WooCommerce
  ``inventory_delta`` that erased a checkout or a refund inside its request
  (``WooSim.lost_updates``). Once the daemon carries the write across, that
  change is gone from both sides: a product must end at the figure the
  shoppers' sales give, less those changes.
- Whatever differs beyond that, on either side, is the daemon's own loss
  (``ours``): it must be 0.
- Each recorded race must be witnessed by the daemon: a
  ``possible_lost_decrement`` row for that item whose window holds the
  race's time, or (WooCommerce) an ``erased_sale_repaired`` row whose
  evidence does. A repaired race takes its units back off both sides, so
  the figure expected of that product is the ledger's again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from cloverwoo_daemon.sim.harness import SimProduct, World

SKEW = 1.0  # the daemon's witness allows this much clock difference (core.witness)


def _detail(row: Any) -> dict[str, Any]:
    raw = row.get("detail") if isinstance(row, dict) else getattr(row, "detail", "")
    try:
        d = json.loads(raw or "{}")
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _event(row: Any) -> str:
    return str(row.get("event") if isinstance(row, dict) else getattr(row, "event", ""))


def witnessed(rows: Iterable[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(flags, repairs): the witnessed windows the sync log holds, as the witness described them."""
    flags: list[dict[str, Any]] = []
    repairs: list[dict[str, Any]] = []
    for r in rows:
        if _event(r) == "possible_lost_decrement":
            flags.append(_detail(r))
        elif _event(r) == "erased_sale_repaired":
            for ev in _detail(r).get("evidence") or []:
                if isinstance(ev, dict):
                    repairs.append(ev)
    return flags, repairs


def _covers(ev: dict[str, Any], item: str, at: float) -> bool:
    window = ev.get("window") or [0, 0]
    return str(ev.get("item")) == item and window[0] - SKEW <= at <= window[1] + SKEW


def account(world: World, expected: Callable[[SimProduct], int], rows: Iterable[Any]) -> dict[str, Any]:
    """Every unit of ``world``'s products: races recorded, witnessed, repaired, and ours (see the rules)."""
    flags, repairs = witnessed(rows)
    items = {(world.locations[loc], item): p.sku for p in world.products for loc, item in p.clover.items()}
    refs = {p.woo.variation_id or p.woo.product_id: p.sku for p in world.products}
    race: Counter[str] = Counter()  # per SKU: units the races took (a sale erased: positive stock left over)
    overwrites = [o for o in world.clover.stock_overwrites if (o.merchant_id, o.item_id) in items]
    updates = [u for u in world.woo.lost_updates if u.product_id in refs]
    clover_flagged = 0
    for o in overwrites:
        race[items[(o.merchant_id, o.item_id)]] += round(o.lost)
        clover_flagged += any(_covers(f, o.item_id, o.at) for f in flags if f.get("side") == "clover")
    woo_flagged = woo_repaired = 0
    for u in updates:
        sku = refs[u.product_id]
        if any(_covers(r, str(u.product_id), u.at) for r in repairs):
            woo_repaired += 1  # taken back off both sides by the daemon
            continue
        race[sku] += u.lost
        woo_flagged += any(_covers(f, str(u.product_id), u.at) for f in flags if f.get("side") == "woo")
    ours = 0
    wrong: list[dict[str, Any]] = []
    for p in world.products:
        want = expected(p) - race[p.sku]
        clover, woo = world.clover_stock(p), world.woo_stock(p)
        off = max(abs(want - (clover if clover is not None else want)), abs(want - (woo if woo is not None else want)))
        if off or clover is None or woo is None:
            ours += off
            wrong.append({"sku": p.sku, "clover": clover, "woo": woo, "expected": expected(p),
                          "race": race[p.sku]})
    return {
        "clover_overwrites": len(overwrites),
        "clover_overwrites_flagged": clover_flagged,
        "lost_clover_race": -sum(round(o.lost) for o in overwrites),
        "woo_lost_updates": len(updates),
        "woo_lost_updates_flagged": woo_flagged,
        "woo_lost_updates_repaired": woo_repaired,
        "lost_woo_race": -sum(u.lost for u in updates),
        "flags": len(flags),
        "lost_ours": ours,
        "ours_detail": wrong,
    }
