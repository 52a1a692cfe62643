"""How fast the webhook server acknowledges deliveries, against the ceiling of the HTTP stack itself.

    python benchmarks/bench_webhooks.py --seconds 10

One run measures, each server in its own subprocess (so the load generator
does not share its core):

  (a) ceiling: a bare hypercorn + quart-trio app that reads the body and answers 200;
  (b) ours:    the real webhook app (signature check, parse, dedup key) with a
               durable intake: SQLite, WAL, synchronous=FULL, one commit per delivery;
  (c) ours at a fixed rate (``--rate``, default 500/s): latency measured from
      each request's *scheduled* send time, so a stall is not hidden by the
      load generator slowing down with it (no coordinated omission).

The closed-loop load is ``--connections`` (50) concurrent senders spread over
``--clients`` httpx clients (one client with 50 in flight degrades badly;
stack.md). Each delivery is a signed WooCommerce ``product.updated`` of about
2 KB with a distinct id, so every one is stored (no dedup shortcut).

The intake is pluggable: ``--intake sqlite`` (default) or ``memory``; add an
entry to ``INTAKES`` to measure another (e.g. the real Store).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import trio
from prometheus_client import CollectorRegistry
from quart import request
from quart_trio import QuartTrio

from cloverwoo_daemon.core.signatures import woo_signature
from cloverwoo_daemon.io.webhooks import WebhookDeps, create_app, serve_webhooks
from cloverwoo_daemon.messages import InboundEvent

SECRET = "benchSecret0123456789abcdef"
AUTH = "bench-clover-auth-code"

# --------------------------------------------------------------------------
# Intakes


class MemoryIntake:
    """No durability at all: isolates the HTTP + auth + parse cost."""

    def __init__(self, path: str) -> None:
        self.count = 0

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        self.count += len(items)


class SQLiteIntake:
    """Stand-in for the Store's inbox: INSERT OR IGNORE on the dedup key, one commit per delivery, fsync'd."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY, key TEXT UNIQUE, event BLOB,"
                        " received_at REAL)")
        self.limiter = trio.CapacityLimiter(1)

    def _write(self, rows: list[tuple[str, bytes, float]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO inbox (key, event, received_at) VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        import msgspec

        now = time.time()
        rows = [(key, msgspec.json.encode(event), now) for key, event in items]
        await trio.to_thread.run_sync(self._write, rows, limiter=self.limiter)


INTAKES: dict[str, Callable[[str], Any]] = {"sqlite": SQLiteIntake, "memory": MemoryIntake}

# --------------------------------------------------------------------------
# Servers (child process)


def bare_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.post("/webhooks/woocommerce")
    async def hook() -> tuple[str, int]:
        await request.get_data()
        return "", 200

    return app


async def serve_child(kind: str, intake_name: str, db: str) -> None:
    if kind == "bare":
        app = bare_app()
    else:
        intake = INTAKES[intake_name](db)
        app = create_app(WebhookDeps(
            clover_auth_code=AUTH, woo_webhook_secret=SECRET, max_body_bytes=1 << 20, intake=intake,
            on_verification_code=lambda code: None, health=lambda: (True, {}), registry=CollectorRegistry(),
        ))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
        print(f"URL {url}", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # parent closes stdin to stop us
        stop.set()


# --------------------------------------------------------------------------
# Load generator (parent process)


def body_for(i: int) -> bytes:
    product = {
        "id": 100_000 + i, "name": f"Bench product {i}", "slug": f"bench-{i}", "type": "simple", "parent_id": 0,
        "status": "publish", "sku": f"BENCH-{i:06d}", "price": "19.99", "regular_price": "19.99",
        "date_modified_gmt": "2025-01-10T14:03:22", "manage_stock": True, "stock_quantity": i % 50,
        "stock_status": "instock", "backorders": "no", "low_stock_amount": None,
        "description": "<p>" + "Lorem ipsum dolor sit amet. " * 30 + "</p>",
        "categories": [{"id": 15, "name": "Shirts", "slug": "shirts"}],
        "meta_data": [{"id": 9000 + i, "key": "_cloverwoo_version", "value": str(i)}],
        "_links": {"self": [{"href": f"https://shop.example.com/wp-json/wc/v3/products/{100_000 + i}"}],
                   "collection": [{"href": "https://shop.example.com/wp-json/wc/v3/products"}]},
    }
    return json.dumps(product, separators=(",", ":")).encode()


def headers_for(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-WC-Webhook-Topic": "product.updated",
            "X-WC-Webhook-Signature": woo_signature(body, SECRET), "X-WC-Webhook-ID": "12"}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Server:
    def __init__(self, kind: str, intake: str, db: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--intake", intake, "--db", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def closed_loop(url: str, seconds: float, connections: int, n_clients: int) -> dict[str, float]:
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections // n_clients + 1)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=30) for _ in range(n_clients)]
    # Pre-build bodies: signing and JSON are the sender's cost, not the server's.
    prepared = [(b, headers_for(b)) for b in (body_for(i) for i in range(2000))]
    deadline = trio.current_time() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while trio.current_time() < deadline:
            i = next(counter)
            body, headers = prepared[i % len(prepared)]
            if i >= len(prepared):  # keep every delivery distinct (no dedup shortcut)
                body = body.replace(b'"id":', b'"id":%d' % (i // len(prepared)), 1)
                headers = headers_for(body)
            t = time.perf_counter()
            try:
                r = await client.post("/webhooks/woocommerce", content=body, headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(connections):
            nursery.start_soon(worker, clients[w % n_clients])
    elapsed = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return {"rate": len(latencies) / elapsed, "p50": pct(latencies, 50), "p99": pct(latencies, 99),
            "errors": errors, "n": len(latencies)}


async def fixed_rate(url: str, seconds: float, rate: float, n_clients: int) -> dict[str, float]:
    clients = [httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=20), timeout=30)
               for _ in range(n_clients)]
    total = int(seconds * rate)
    prepared = [(b, headers_for(b)) for b in (body_for(500_000 + i) for i in range(total))]
    latencies: list[float] = []
    errors = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        body, headers = prepared[i]
        try:
            r = await clients[i % n_clients].post("/webhooks/woocommerce", content=body, headers=headers)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(trio.current_time() - scheduled)
        else:
            errors += 1

    t0 = trio.current_time()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(total):
            scheduled = t0 + i / rate
            await trio.sleep_until(scheduled)
            nursery.start_soon(one, i, scheduled)
    for c in clients:
        await c.aclose()
    elapsed = time.perf_counter() - start
    return {"rate": len(latencies) / elapsed, "p50": pct(latencies, 50), "p99": pct(latencies, 99), "errors": errors,
            "n": len(latencies)}


def machine() -> str:
    model = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} ({platform.system()})"


def fmt(name: str, r: dict[str, float]) -> str:
    return (f"{name:<34} {r['rate']:>9.0f}/s   p50 {r['p50'] * 1000:7.1f} ms   p99 {r['p99'] * 1000:7.1f} ms"
            f"   ok {int(r['n'])}  errors {int(r['errors'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rate", type=float, default=500.0, help="fixed-rate phase, deliveries/s (0: skip)")
    p.add_argument("--intake", choices=sorted(INTAKES), default="sqlite")
    p.add_argument("--serve", choices=["bare", "app"], help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        trio.run(serve_child, args.serve, args.intake, args.db)
        return

    print(f"machine: {machine()}")
    print(f"load: {args.connections} connections over {args.clients} httpx clients, {args.seconds:g} s per phase,"
          f" intake={args.intake}")
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, dict[str, float]] = {}
        for kind in ("bare", "app"):
            server = Server(kind, args.intake, os.path.join(tmp, f"{kind}.sqlite3"))
            try:
                results[kind] = trio.run(closed_loop, server.url, args.seconds, args.connections, args.clients)
                if kind == "app" and args.rate > 0:
                    results["fixed"] = trio.run(fixed_rate, server.url, args.seconds, args.rate, args.clients)
            finally:
                server.stop()
    print(fmt("(a) ceiling: bare hypercorn+quart", results["bare"]))
    print(fmt(f"(b) webhook app + {args.intake} intake", results["app"]))
    if "fixed" in results:
        print(fmt(f"(c) same at a fixed {args.rate:g}/s", results["fixed"]))
    print(f"ratio b/a: {results['app']['rate'] / results['bare']['rate']:.2f}")


if __name__ == "__main__":
    main()
