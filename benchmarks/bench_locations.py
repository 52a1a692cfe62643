"""Propagation latency with 1, 3 and 10 Clover locations, and with one location of three down.

    .venv/bin/python benchmarks/bench_locations.py [--rate 10] [--seconds 15] [--products 200]
                                                   [--down-rate 3] [--down-seconds 20] [--counts 1,3,10]

Built on ``bench_sync.py`` (its ``Daemon``, world start-up, latency setting,
loop-lag sampler and machine line) and on ``demo.Ledger`` / ``demo.Shoppers``,
so the rules of that benchmark hold here too: the daemon runs in its own
process (``cloverwoo run``), the simulators and the shoppers in this one, and
propagation is measured from the outside, from the sale to the first 10 ms
sample where the other store shows it. Besides:

- Aggregate mode (the harness's config), online orders deducted from the
  primary. Every Clover call takes 50-100 ms (``Faults`` latency 75 ms,
  jitter 25 ms, uniform), every WooCommerce call 50 ms; set after the
  daemon's first catalogue listing.
- Steady open-loop load, alternating between a POS sale at a random location
  (so spread evenly over the locations) and an online order; one unit each,
  spread evenly over the products. POS sales sell one half of the catalogue,
  online orders the other: an online order is written to Clover as an
  absolute figure read just before, and a POS sale of the same item inside
  that read-to-write round trip is overwritten (sync-model.md, "The remote
  race"). That residual loss is the concurrency test's figure; here it would
  leave sales that never land, with no propagation time. A short warm-up at
  the same rate comes first and is not counted.
- **Scaling (1, 3, 10 locations)**: rate limits lifted, as in
  ``bench_sync.py`` (the simulator's, and the daemon's client budgets, with
  64 requests in flight per token and per app), so that the figure is the
  daemon's and not Clover's quota. An aggregate merge reads the locations
  its triggers name (a store sale: that store; an online order: the
  primary) and every location only when the split of a WooCommerce change
  depends on them; the Clover calls per sale (printed, catch-up polls of
  every location included) show how that grows with the locations. Until
  94caaf1 every merge read every location: 25.6 calls per sale at ten
  locations, which Clover's per-app 50 req/s capped near 2 sales/s. Same
  rate and products for every count; the ratio 10 locations / 1 location is
  printed.
- **One location down**: 3 locations with Clover's documented rate limits and
  the daemon's default budgets (a location that fails must not eat the
  healthy ones' share of the per-app budget: that is what is measured), at a
  rate they sustain (the primary's token, 16 req/s, is read and written by
  every online order). Phase 1 all
  healthy, phase 2 with ``harbour`` answering every call 503
  (``CloverSim.down_merchants``), measured once the daemon reports it
  unreachable. In both phases the POS sales happen at the healthy
  locations only (a sale at the store that is down reaches WooCommerce when
  it returns, so it has no propagation time to compare), online orders come
  out of the primary (healthy). Goal: each figure within 20 % of the
  all-healthy one. Then ``harbour`` comes back and everything must settle with
  no drift.

Exit code 0 when every run settled with no drift (the latency goal is
printed, as in ``bench_sync.py``, not enforced).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_sync import (  # noqa: E402 - the sibling benchmark, importable once its folder is on the path
    Daemon,
    _world_and_daemon,
    free_port,
    loop_lag,
    machine,
    own_cpu_seconds,
    set_latency,
)

from cloverwoo_daemon.demo import Ledger, Shoppers, latency_figures, sample_forever  # noqa: E402
from cloverwoo_daemon.sim.harness import World, start_world  # noqa: E402

CLOVER_LATENCY, CLOVER_JITTER = 0.075, 0.025  # every Clover call 50-100 ms
WOO_LATENCY = 0.050
DOWN = "harbour"  # the third location (the primary, downtown, takes the online orders)
GOAL_RATIO = 1.20
DIRECTIONS = ("clover_to_woo", "woo_to_clover")


def slow_stores(world: World) -> None:
    set_latency(world, WOO_LATENCY)  # both stores at 50 ms, then Clover spread over 50-100 ms
    world.clover.faults.latency = CLOVER_LATENCY
    world.clover.faults.jitter = CLOVER_JITTER


async def _documented_world(nursery: trio.Nursery, workdir: Path, *, products: int, locations: int,
                            seed: int) -> tuple[World, Daemon]:
    """As ``bench_sync._world_and_daemon`` with Clover's documented limits kept, on both sides."""
    port = free_port()
    world = await start_world(nursery, workdir / "world", products=products, locations=locations, stock=1_000_000,
                              seed=seed, listen=f"127.0.0.1:{port}")
    daemon = Daemon(world, port, workdir / "daemon.log")
    await daemon.start()
    await world.connect(daemon.url)
    await daemon.settle(None)
    return world, daemon


async def measure(world: World, daemon: Daemon, *, rate: float, seconds: float, seed: int,
                  selling: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Steady sales for ``seconds``, settle, and the propagation figures; POS sales at ``selling`` only."""
    ledger = Ledger(world)  # measures against every location's stock, the ones not selling included
    # POS sales and online orders sell disjoint halves of the catalogue (see the module docstring); the
    # shoppers see only their half and the locations that sell (stock checks are off: they never sum).
    half = max(1, len(world.products) // 2)
    locations = world.locations if selling is None else {n: world.locations[n] for n in selling}
    pos = Shoppers(dataclasses.replace(world, products=world.products[:half], locations=locations), ledger,
                   random.Random(seed), refund_rate=0.0, check_stock=False, skew=0.0, sides=("clover",),
                   quantities=(1,))
    online = Shoppers(dataclasses.replace(world, products=world.products[half:] or world.products), ledger,
                      random.Random(seed + 1000), refund_rate=0.0, check_stock=False, skew=0.0, sides=("woo",),
                      quantities=(1,))

    async def online_run() -> None:
        await trio.sleep(1.0 / rate)  # half a period after the POS sales: the two alternate
        await online.run(rate / 2, seconds - 1.0 / rate, steady=True)

    lags: list[float] = []
    calls0 = Counter(world.clover.counts)
    cpu_d0, cpu_b0, t0 = daemon.cpu(), own_cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as inner:
        inner.start_soon(sample_forever, ledger)
        inner.start_soon(loop_lag, lags)
        async with trio.open_nursery() as selling_now:
            selling_now.start_soon(partial(pos.run, rate / 2, seconds, steady=True))
            selling_now.start_soon(online_run)
        sold_for = time.perf_counter() - t0
        cpu_d1, cpu_b1 = daemon.cpu(), own_cpu_seconds()
        settled = await daemon.settle(ledger, timeout=max(30.0, seconds))
        ledger.sample(trio.current_time())
        inner.cancel_scope.cancel()
    calls = Counter(world.clover.counts) - calls0  # (merchant id, endpoint) -> calls, settling included
    name_of = {mid: name for name, mid in world.locations.items()}
    by_location: Counter[str] = Counter()
    for (mid, _), n in calls.items():
        by_location[name_of.get(mid, mid)] += n
    sales = ledger.sales["clover"] + ledger.sales["woo"]
    return {
        "clover_calls": sum(calls.values()),
        "clover_calls_per_sale": round(sum(calls.values()) / max(1, sales), 1),
        "clover_calls_by_location": dict(sorted(by_location.items())),
        "sales": dict(ledger.sales),
        "achieved_rate": round((ledger.sales["clover"] + ledger.sales["woo"]) / sold_for, 1),
        "latency_ms": {d: latency_figures(ledger.latencies_ms[d]) for d in DIRECTIONS},
        "unlanded": ledger.waiting(),
        "settled": settled,
        "drift": len(ledger.drift()),
        "cpu": {"daemon": round((cpu_d1 - cpu_d0) / sold_for, 2),
                "simulators_and_load": round((cpu_b1 - cpu_b0) / sold_for, 2)},
        "loop_lag_ms": latency_figures(lags),
    }


# ----------------------------------------------------------------------- the runs


async def scaling_run(args: argparse.Namespace, workdir: Path, locations: int) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        world, daemon = await _world_and_daemon(
            nursery, workdir, products=args.products, locations=locations, stock=1_000_000, seed=args.seed,
            shards=args.shards, woo_in_flight=args.woo_in_flight, clover_in_flight=args.clover_in_flight)
        try:
            slow_stores(world)
            if args.warmup > 0:
                await measure(world, daemon, rate=args.rate, seconds=args.warmup, seed=args.seed + 1)
            result = await measure(world, daemon, rate=args.rate, seconds=args.seconds, seed=args.seed)
            result["locations"] = locations
        finally:
            result_code = await daemon.stop()
            nursery.cancel_scope.cancel()
    result["daemon_exit"] = result_code
    return result


async def down_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        world, daemon = await _documented_world(nursery, workdir, products=args.down_products, locations=3,
                                                seed=args.seed)
        healthy = tuple(n for n in world.locations if n != DOWN)
        out: dict[str, Any] = {"healthy": list(healthy), "down": DOWN}
        try:
            slow_stores(world)
            if args.warmup > 0:
                await measure(world, daemon, rate=args.down_rate, seconds=args.warmup, seed=args.seed + 1,
                              selling=healthy)
            out["all_healthy"] = await measure(world, daemon, rate=args.down_rate, seconds=args.down_seconds,
                                               seed=args.seed, selling=healthy)
            world.clover.down_merchants.add(world.locations[DOWN])
            t0 = trio.current_time()
            with trio.fail_after(60):
                while (await daemon.status())["locations"][DOWN]["reachable"]:
                    await trio.sleep(0.05)
            out["detected_after_s"] = round(trio.current_time() - t0, 2)
            out["one_down"] = await measure(world, daemon, rate=args.down_rate, seconds=args.down_seconds,
                                            seed=args.seed + 2, selling=healthy)
            # back up: its stale bindings are merged again; nothing may be lost
            world.clover.down_merchants.clear()
            with trio.fail_after(60):
                while not (await daemon.status())["locations"][DOWN]["reachable"]:
                    await trio.sleep(0.05)
            ledger = Ledger(world)
            out["returned_settled"] = await daemon.settle(ledger, timeout=60.0)
            out["returned_drift"] = len(ledger.drift())
        finally:
            out["daemon_exit"] = await daemon.stop()
            nursery.cancel_scope.cancel()
    return out


# ------------------------------------------------------------------------------ main


def _ms(v: float | None) -> str:
    return "    -" if v is None else f"{v:7.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 2)


def _x(r: float | None) -> str:
    return "-" if r is None else f"x{r:.2f}"


def print_rows(label: str, r: dict[str, Any]) -> None:
    for d in DIRECTIONS:
        f = r["latency_ms"][d]
        print(f"  {label:<14}{d:<16}{f['count']:>7}{_ms(f['p50_ms']):>9}{_ms(f['p99_ms']):>9}{_ms(f['max_ms']):>9}")
        label = ""
    print(f"  {'':<14}achieved {r['achieved_rate']}/s; CPU daemon {r['cpu']['daemon'] * 100:.0f}%, simulators + "
          f"load {r['cpu']['simulators_and_load'] * 100:.0f}% of a core; load generator loop lag p99 "
          f"{_ms(r['loop_lag_ms']['p99_ms']).strip()} ms; settled {r['settled']}, drift {r['drift']}")
    print(f"  {'':<14}Clover calls: {r['clover_calls']} ({r['clover_calls_per_sale']} per sale); by location: "
          + ", ".join(f"{k} {v}" for k, v in r["clover_calls_by_location"].items()))


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """a / b per direction and percentile."""
    return {d: {q: _ratio(a["latency_ms"][d][f"{q}_ms"], b["latency_ms"][d][f"{q}_ms"]) for q in ("p50", "p99")}
            for d in DIRECTIONS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1,3,10", help="location counts of the scaling runs (comma-separated)")
    p.add_argument("--rate", type=float, default=10.0, help="scaling: events/s, half POS sales, half online")
    p.add_argument("--seconds", type=float, default=15.0, help="scaling: duration of each steady run (0: skip)")
    p.add_argument("--products", type=int, default=200, help="scaling: products (each at every location)")
    p.add_argument("--shards", type=int, default=16, help="scaling: sync.shards of the daemon under test")
    p.add_argument("--woo-in-flight", type=int, default=10, help="scaling: woocommerce.max_in_flight")
    p.add_argument("--clover-in-flight", type=int, default=64, help="scaling: clover token/app in_flight")
    p.add_argument("--down-rate", type=float, default=3.0,
                   help="one down: events/s (the primary's 16 req/s caps 3 locations near 5/s)")
    p.add_argument("--down-seconds", type=float, default=20.0, help="one down: duration of each phase (0: skip)")
    p.add_argument("--down-products", type=int, default=100)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement, not counted")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="also print every figure as one JSON object")
    args = p.parse_args()
    if args.seconds > 600 or args.down_seconds > 600:
        p.error("keep runs under 10 minutes (--seconds, --down-seconds)")
    try:
        counts = [int(c) for c in args.counts.split(",") if c.strip()]
    except ValueError:
        p.error("--counts: comma-separated integers")
    if any(not 1 <= c <= 64 for c in counts):
        p.error("--counts: between 1 and 64 locations")

    print(machine())
    lo_ms, hi_ms = (CLOVER_LATENCY - CLOVER_JITTER) * 1000, (CLOVER_LATENCY + CLOVER_JITTER) * 1000
    print(f"every Clover call {lo_ms:.0f}-{hi_ms:.0f} ms, every WooCommerce call {WOO_LATENCY * 1000:.0f} ms; "
          "aggregate mode, online orders from the primary")
    workdir = Path(tempfile.mkdtemp(prefix="bench_locations_"))
    out: dict[str, Any] = {"machine": machine()}
    ok = True
    try:
        if args.seconds > 0 and counts:
            print(f"\nscaling: {args.rate:.0f} events/s for {args.seconds:.0f} s (POS sales at random locations and "
                  f"online orders, alternating) over {args.products} products; rate limits lifted, daemon "
                  f"sync.shards={args.shards}, woocommerce.max_in_flight={args.woo_in_flight}, clover "
                  f"in_flight={args.clover_in_flight}")
            print("propagation, sale -> the other store shows it (10 ms sampling):")
            print(f"  {'locations':<14}{'direction':<16}{'sales':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
            runs: dict[int, dict[str, Any]] = {}
            for n in counts:
                r = trio.run(scaling_run, args, workdir / f"scale{n}", n)
                runs[n] = r
                print_rows(str(n), r)
                ok &= r["settled"] and r["drift"] == 0
            out["scaling"] = {str(n): r for n, r in runs.items()}
            lo, hi = min(runs), max(runs)
            if hi != lo:
                rr = ratios(runs[hi], runs[lo])
                out["scaling_ratio"] = {"of": f"{hi}/{lo}", **rr}
                print(f"  ratio {hi} locations / {lo}: " + "; ".join(
                    f"{d} p50 {_x(rr[d]['p50'])}, p99 {_x(rr[d]['p99'])}" for d in DIRECTIONS))
        if args.down_seconds > 0:
            print(f"\none location down: 3 locations, Clover's documented rate limits and the daemon's default "
                  f"budgets, {args.down_rate:.0f} events/s for {args.down_seconds:.0f} s per phase over "
                  f"{args.down_products} products; POS sales at the healthy locations only")
            print(f"  {'phase':<14}{'direction':<16}{'sales':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
            r = trio.run(down_run, args, workdir / "down")
            out["down"] = r
            print_rows("all healthy", r["all_healthy"])
            print_rows(f"{DOWN} down", r["one_down"])
            rr = ratios(r["one_down"], r["all_healthy"])
            r["ratio"] = rr
            met = all(v is not None and v <= GOAL_RATIO for d in DIRECTIONS for v in rr[d].values())
            print(f"  {DOWN} reported unreachable {r['detected_after_s']} s after it went down")
            print("  ratio one down / all healthy at the healthy locations: " + "; ".join(
                f"{d} p50 {_x(rr[d]['p50'])}, p99 {_x(rr[d]['p99'])}" for d in DIRECTIONS))
            print(f"  goal: every figure within {(GOAL_RATIO - 1) * 100:.0f} % of the all-healthy one: "
                  f"{'met' if met else 'NOT met'}")
            print(f"  {DOWN} back: settled {r['returned_settled']}, drift {r['returned_drift']} bindings, daemon exit "
                  f"code {r['daemon_exit']}")
            ok &= all(x["settled"] and x["drift"] == 0 for x in (r["all_healthy"], r["one_down"]))
            ok &= r["returned_settled"] and r["returned_drift"] == 0
        if args.json:
            print(json.dumps(out, sort_keys=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
