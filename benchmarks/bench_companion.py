"""The WordPress companion against inventory_delta, on a REAL WooCommerce (the realwoo rig).

    .venv/bin/python benchmarks/bench_companion.py --store DIR [--rounds 30] [--seconds 20] [--rate 5]

``DIR`` is a store started with ``../shared/realwoo/up DIR`` (started here if it is not running);
the companion is copied into its mu-plugins first, the one-step install a merchant does.

  (a) latency, one request at a time: one stock change through the companion
      (``POST wc-cloverwoo/v1/stock``) against ``PUT /products/{id}`` with
      ``inventory_delta`` (``--rounds`` each, medians and p90), and a batch of
      100 changes on 100 products against ``POST /products/batch``;
  (b) units lost on one product: stock writes of -1 sent one at a time as the
      daemon sends them, at ``--rate`` per second, while real checkouts
      (``POST /orders`` with ``set_paid``) land at ``--rate`` per second beside
      them, for ``--seconds``; once through the companion, once with
      ``inventory_delta``. Units lost = final stock - (start - writes - orders):
      what the shop shows and does not have.

Every figure depends on the machine (printed first with its load average); the
store is PHP's built-in server with 4 workers, so latencies are the rig's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from cloverwoo_daemon.core.model import StockChange, WooRef
from cloverwoo_daemon.io.logs import configure_logging
from cloverwoo_daemon.io.woocommerce import WooClient

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "wordpress" / "cloverwoo-companion.php"


def start_store(store: Path) -> dict[str, str]:
    rig = Path(os.environ.get("CLOVERWOO_REALWOO_RIG") or REPO.parent / "shared" / "realwoo")
    up = subprocess.run([str(rig / "up"), str(store)], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        sys.exit(f"realwoo up {store} failed:\n{up.stderr[-2000:]}")
    shutil.copyfile(PLUGIN, store / "www" / "wp-content" / "mu-plugins" / PLUGIN.name)
    return json.loads((store / "env.json").read_text())


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):.0f} ms, p90 {1000 * pct(values, 0.9):.0f} ms"


async def main(args: argparse.Namespace) -> None:
    env = start_store(Path(args.store).resolve())
    api = env["REALWOO_API"]
    print(f"machine: {platform.node()} {os.cpu_count()} cpu, load average {os.getloadavg()[0]:.2f}; "
          f"store {env['REALWOO_URL']}")
    async with httpx.AsyncClient(auth=(env["REALWOO_CK"], env["REALWOO_CS"]), timeout=120) as http, \
            WooClient(env["REALWOO_URL"], env["REALWOO_CK"], env["REALWOO_CS"], auth="basic",
                      max_in_flight=8) as woo:
        info = await woo.companion()
        assert info is not None, "the companion did not answer after being copied in"
        print(f"companion v{info.version} on WooCommerce {info.woocommerce} (transactional {info.transactional})")

        async def product(stock: int) -> int:
            r = await http.post(api + "/products", json={"name": f"Bench {secrets.token_hex(3)}",
                                                         "manage_stock": True, "stock_quantity": stock})
            assert r.status_code == 201, r.text
            return int(r.json()["id"])

        tag = secrets.token_hex(4)
        # (a) latency
        pid = await product(10_000)
        comp, delta = [], []
        for i in range(args.rounds):
            t = time.perf_counter()
            [res] = await woo.apply_changes([StockChange(f"lat-{tag}-{i}", WooRef(pid), -1)])
            comp.append(time.perf_counter() - t)
            assert res.ok
            t = time.perf_counter()
            r = await http.put(f"{api}/products/{pid}", json={"inventory_delta": -1})
            delta.append(time.perf_counter() - t)
            assert r.status_code == 200
        print(f"(a) one change, {args.rounds} rounds: companion {ms(comp)}; inventory_delta {ms(delta)}")
        r = await http.post(api + "/products/batch", json={"create": [
            {"name": f"Bench batch {tag} {i}", "manage_stock": True, "stock_quantity": 100} for i in range(100)]})
        ids = [int(p["id"]) for p in r.json()["create"]]
        t = time.perf_counter()
        results = await woo.apply_changes([StockChange(f"b-{tag}-{i}", WooRef(p), -1) for i, p in enumerate(ids)])
        batch_comp = time.perf_counter() - t
        assert all(x.ok for x in results)
        t = time.perf_counter()
        r = await http.post(api + "/products/batch", json={"update": [{"id": p, "inventory_delta": -1} for p in ids]})
        batch_delta = time.perf_counter() - t
        assert r.status_code == 200
        print(f"    a batch of 100 changes on 100 products: companion {1000 * batch_comp:.0f} ms, "
              f"/products/batch with inventory_delta {1000 * batch_delta:.0f} ms")

        # (b) units lost beside checkouts
        async def contest(write: Any, label: str) -> None:
            start = 100_000
            pid = await product(start)
            writes = orders = 0
            deadline = trio.current_time() + args.seconds

            async def writer() -> None:
                nonlocal writes
                next_at = trio.current_time()
                while trio.current_time() < deadline:
                    await write(pid, writes)
                    writes += 1
                    next_at += 1 / args.rate
                    await trio.sleep_until(max(next_at, trio.current_time()))

            async def one_order() -> None:
                nonlocal orders
                r = await http.post(api + "/orders", json={"set_paid": True,
                                                            "line_items": [{"product_id": pid, "quantity": 1}]})
                assert r.status_code == 201, r.text
                orders += 1

            async with trio.open_nursery() as n:
                n.start_soon(writer)
                next_at = trio.current_time()
                while trio.current_time() < deadline:
                    n.start_soon(one_order)
                    next_at += 1 / args.rate
                    await trio.sleep_until(next_at)
            r = await http.get(f"{api}/products/{pid}")
            lost = int(r.json()["stock_quantity"]) - (start - writes - orders)
            print(f"    {label}: {writes} writes + {orders} checkouts, units lost {lost} "
                  f"({100 * lost / max(1, writes + orders):.1f} % of sales)")

        async def via_companion(pid: int, i: int) -> None:
            [res] = await woo.apply_changes([StockChange(f"c-{tag}-{pid}-{i}", WooRef(pid), -1)])
            assert res.ok

        async def via_delta(pid: int, i: int) -> None:
            r = await http.put(f"{api}/products/{pid}", json={"inventory_delta": -1})
            assert r.status_code == 200

        print(f"(b) one product, writes one at a time at {args.rate}/s + checkouts at {args.rate}/s, "
              f"{args.seconds:g} s each:")
        await contest(via_companion, "companion      ")
        await contest(via_delta, "inventory_delta")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="a realwoo store directory (started when it is not running)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=5.0, help="stock writes per second, and checkouts per second")
    configure_logging(level="warning", stream=sys.stderr)  # the client's per-batch info lines are not the figures
    trio.run(main, parser.parse_args())
