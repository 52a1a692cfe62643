"""Initial sync and reconciliation at the speed the APIs allow (issue 4's benchmark).

Three measurements, each against the simulators with the latency measured on
a real WooCommerce (reference section 9: list page 257 ms, one product 50 ms,
PUT 72 ms, batch 20 ms per item) and Clover at 100 ms per call, WooCommerce
concurrency 4, the daemon as `cloverwoo run` in its own process:

- import: `sync import` of N products (1 location, every one differing);
- push: `sync push` of N changed items to one Clover location (16 req/s per
  token: the floor is N / 16 s), with the share of calls answered 429;
- reconcile: `reconcile` of N bindings with nothing to fix.

Each prints wall time, API calls counted at the simulators, the minimum
number of calls, the floor those latencies and that concurrency allow, and
the ratios. Floors:

- import: Woo lists (ceil(N/100) pages, 4 at a time, 257 ms each) + Clover
  list (ceil(N/1000) pages, 100 ms, sequential) + Woo batches (ceil(N/100)
  batches of 100 x 20 ms, 4 at a time);
- push: Clover list + Woo lists as above, then N / 16 s of writes;
- reconcile: the lists only.

Usage: python benchmarks/bench_jobs.py [--import-products 5000] [--push-products 5000] [--reconcile-products 10000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_sync import Daemon, free_port, machine  # noqa: E402

from cloverwoo_daemon.io.control import control_stream  # noqa: E402
from cloverwoo_daemon.messages import ReconcileRequest, SyncRequest  # noqa: E402
from cloverwoo_daemon.sim.harness import start_world  # noqa: E402
from cloverwoo_daemon.sim.woocommerce import Latency  # noqa: E402

WOO = Latency(get_one=0.050, list_page=0.257, put=0.072, batch_item=0.020, other=0.050)
CLOVER_LATENCY = 0.100
WOO_CONCURRENCY = 4


async def run_job(daemon: Daemon, req: Any) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    async with control_stream(daemon.socket, req, timeout=60.0, idle_timeout=900.0) as stream:
        async for resp in stream:
            if resp.data and "result" in resp.data:
                result = resp.data["result"]
            elif not resp.ok:
                raise RuntimeError(resp.error)
    return time.monotonic() - t0, result


async def scenario(kind: str, n: int, workdir: Path) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        port = free_port()
        world = await start_world(nursery, workdir / kind, products=n, locations=1, stock=20,
                                  listen=f"127.0.0.1:{port}", poll_every="1h", shards=8)
        text = world.config_path.read_text()
        world.config_path.write_text(text.replace("[woocommerce]\n", f"[woocommerce]\nmax_in_flight = "
                                                                    f"{WOO_CONCURRENCY}\n", 1))
        daemon = Daemon(world, port, workdir / f"{kind}.log")
        await daemon.start(timeout=600.0)
        await daemon.settle(None, timeout=600.0)
        mid = next(iter(world.locations.values()))
        # make the sides differ without telling the daemon (no webhooks are registered, polls are hourly)
        if kind == "import":
            for i, p in enumerate(world.products):
                world.clover.adjust(mid, p.clover["downtown"], 5 + i % 7)
        elif kind == "push":
            for i, p in enumerate(world.products):
                world.woo.admin_set_stock(p.woo, 3 + i % 11)
        world.woo.latency = WOO
        world.clover.faults.latency = CLOVER_LATENCY
        world.clover.reset_stats()
        woo0 = sum(world.woo.requests.values())
        clover0 = sum(world.clover.counts.values())
        req = (SyncRequest(truth="clover") if kind == "import" else SyncRequest(truth="woo") if kind == "push"
               else ReconcileRequest())
        rss0 = daemon_rss(daemon)
        wall, result = await run_job(daemon, req)
        woo_calls = sum(world.woo.requests.values()) - woo0
        clover_calls = sum(world.clover.counts.values()) - clover0
        stats = world.clover.token_stats(mid)
        rejected = stats.rejected_429
        ok = all(world.in_sync(p) for p in world.products)
        rss1 = daemon_rss(daemon)
        await daemon.stop()
        nursery.cancel_scope.cancel()
    woo_pages = math.ceil(n / 100) + 1  # products + the (empty) store-wide variations list
    clover_pages = n // 1000 + 1
    lists_floor = math.ceil(woo_pages / WOO_CONCURRENCY) * WOO.list_page + clover_pages * CLOVER_LATENCY
    if kind == "import":
        batches = math.ceil(n / 100)
        min_calls = woo_pages + clover_pages + batches
        floor = lists_floor + math.ceil(batches / WOO_CONCURRENCY) * 100 * WOO.batch_item
    elif kind == "push":
        min_calls = woo_pages + clover_pages + n
        floor = lists_floor + n / 16.0
    else:
        min_calls = woo_pages + clover_pages
        floor = lists_floor
    return {
        "kind": kind, "n": n, "wall_s": round(wall, 2), "floor_s": round(floor, 2),
        "wall_over_floor": round(wall / floor, 2), "calls": woo_calls + clover_calls, "min_calls": min_calls,
        "calls_over_min": round((woo_calls + clover_calls) / min_calls, 2), "woo_calls": woo_calls,
        "clover_calls": clover_calls, "clover_429": rejected, "in_sync": ok, "state": result.get("state"),
        "writes_planned": result.get("writes_planned"), "report": result.get("report"),
        "daemon_rss_mb": [rss0, rss1],
    }


def daemon_rss(daemon: Daemon) -> float | None:
    if daemon.proc is None:
        return None
    try:
        for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--import-products", type=int, default=5000)
    p.add_argument("--push-products", type=int, default=500, help="5000 for the issue's figure (~5.5 min)")
    p.add_argument("--reconcile-products", type=int, default=10000)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"latency: Woo list {WOO.list_page * 1000:.0f} ms, GET {WOO.get_one * 1000:.0f} ms, "
          f"PUT {WOO.put * 1000:.0f} ms, batch {WOO.batch_item * 1000:.0f} ms/item; Clover {CLOVER_LATENCY * 1000:.0f}"
          f" ms/call; Woo concurrency {WOO_CONCURRENCY}")
    results = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-jobs-", dir="/tmp") as d:
        for kind, n in (("import", args.import_products), ("push", args.push_products),
                        ("reconcile", args.reconcile_products)):
            if n <= 0:
                continue
            r = trio.run(scenario, kind, n, Path(d))
            results.append(r)
            print(f"{kind:<10} n={n:<6} wall {r['wall_s']:>7.2f} s  floor {r['floor_s']:>7.2f} s  "
                  f"ratio {r['wall_over_floor']:.2f}  calls {r['calls']} (min {r['min_calls']}, "
                  f"ratio {r['calls_over_min']:.2f})  clover 429s {r['clover_429']}  in sync {r['in_sync']}  "
                  f"daemon RSS {r['daemon_rss_mb']} MB", flush=True)
    bad = [r for r in results if not r["in_sync"] or r["state"] != "done"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
