"""Initial sync and reconciliation at the speed the APIs allow.

    .venv/bin/python benchmarks/bench_jobs.py                    # the short run `make bench` does (~2 min)
    .venv/bin/python benchmarks/bench_jobs.py import:50000       # one figure of the issue (~7 min)
    .venv/bin/python benchmarks/bench_jobs.py push:5000          # (~6 min)
    .venv/bin/python benchmarks/bench_jobs.py push:5000 push2:5000   # and two locations, the ratio two/one (~12 min)
    .venv/bin/python benchmarks/bench_jobs.py --full             # every figure of the issue (~20 min)

Each positional argument is KIND:N, run in the order given, each in a world of
its own (simulators seeded, `cloverwoo run` started and settled, then the
sides made to differ without telling the daemon):

- ``import:N``: `sync import` of N products (1 location, every one differing);
- ``push:N``: `sync push` of N changed items to one Clover location, each read
  right before it is written (a figure from the list read, possibly minutes
  old, would overwrite the POS sales made since): two calls per item at 16
  req/s per token, so the floor is 2N / 16 s; with the share of calls
  answered 429;
- ``push2:N``: the same push with two locations (two merchants, each its own
  token, sharing the per-app limit of 50 req/s and 10 in flight), N items
  written at *each* (deduct ``most_stock``: every item's new WooCommerce
  figure is below each location's stock, so both locations are written). The
  floor is still 2N / 16 s: the locations are written in parallel. When a
  ``push`` of the same N ran before it, the ratio two/one is printed;
- ``reconcile:N``: `reconcile` of N bindings with nothing to fix.

Without positional arguments the ``--*-products`` options say what runs
(0 skips a kind); their defaults are the short run.

Everything runs against the simulators with the latency measured on a real
WooCommerce (reference section 9: list page 257 ms, one product 50 ms, PUT
72 ms, batch 20 ms per item), Clover at 100 ms per call with its documented
rate limits, WooCommerce concurrency 4, the daemon in its own process.

Each prints wall time, API calls counted at the simulators, the minimum
number of calls, the floor those latencies and that concurrency allow, the
ratios, the share of Clover calls answered 429 and the daemon's peak RSS
(VmRSS sampled every 0.2 s during the job; the kernel's lifetime high-water
mark VmHWM beside it, which includes the start-up). Floors:

- lists: the Woo products (ceil(N/100) pages) and the (empty) store-wide
  variations list, 4 at a time, 257 ms each; at the same time (the daemon
  reads both catalogues in parallel) each Clover location's items
  (N // 1000 + 1 pages: the last one short, 100 ms each, sequential):
  the longer of the two;
- import: lists + the Woo batch writes, 20 ms per item, 4 batches at a time
  (ceil(N/4) x 20 ms: the items spread evenly over the 4 lanes); the
  minimum calls count ceil(N/100) batches;
- push / push2: lists + N / 16 s of Clover writes (per location, in parallel);
- reconcile: the lists only.
"""

from __future__ import annotations

import argparse
import json
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
from cloverwoo_daemon.sim.harness import World, start_world  # noqa: E402
from cloverwoo_daemon.sim.woocommerce import Latency  # noqa: E402

WOO = Latency(get_one=0.050, list_page=0.257, put=0.072, batch_item=0.020, other=0.050)
CLOVER_LATENCY = 0.100
CLOVER_TOKEN_RATE = 16.0
WOO_CONCURRENCY = 4
KINDS = ("import", "push", "push2", "reconcile")
SHORT = {"import": 5000, "push": 300, "push2": 300, "reconcile": 10000}
FULL = [("import", 5000), ("import", 50000), ("push", 5000), ("push2", 5000), ("reconcile", 10000)]


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


def proc_status(pid: int, field: str) -> float | None:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class RssSampler:
    """The daemon's VmRSS every ``every`` seconds while it runs; ``peak`` is the highest sample."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.every = every
        self.peak: float | None = None
        self.first: float | None = None
        self.samples = 0

    async def run(self) -> None:
        while True:
            rss = proc_status(self.pid, "VmRSS")
            if rss is not None:
                self.samples += 1
                self.first = rss if self.first is None else self.first
                self.peak = rss if self.peak is None else max(self.peak, rss)
            await trio.sleep(self.every)


async def start_daemon(world: World, port: int, log: Path, attempts: int = 3) -> Daemon:
    """``cloverwoo run``; a listen port taken between ``free_port()`` and the daemon's bind gets another try."""
    for attempt in range(attempts):
        daemon = Daemon(world, port, log)
        try:
            await daemon.start(timeout=900.0)
            return daemon
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            await daemon.stop()
            new = free_port()
            text = world.config_path.read_text()
            world.config_path.write_text(text.replace(f'listen = "127.0.0.1:{port}"', f'listen = "127.0.0.1:{new}"'))
            print(f"(listen port {port} was taken: the daemon starts again on {new})", flush=True)
            port = new
    raise AssertionError("unreachable")


async def wait_no_job(daemon: Daemon, timeout: float) -> None:
    """Until the start-up jobs (initial sync, start-up reconcile) are over: a job request would be refused."""
    with trio.fail_after(timeout):
        while True:
            jobs = (await daemon.status())["jobs"]
            if jobs["current"] is None and "reconcile" in jobs["last"]:
                return
            await trio.sleep(0.2)


def floors(kind: str, n: int) -> tuple[float, int]:
    """(the wall-time floor in seconds, the minimum number of API calls) of one run."""
    locations = 2 if kind == "push2" else 1
    woo_pages = math.ceil(n / 100) + 1  # products + the (empty) store-wide variations list
    clover_pages = n // 1000 + 1  # per location, the last one short
    lists_floor = max(math.ceil(woo_pages / WOO_CONCURRENCY) * WOO.list_page, clover_pages * CLOVER_LATENCY)
    list_calls = woo_pages + locations * clover_pages
    if kind == "import":
        # every item costs 20 ms inside some batch and 4 batches run at once: the items spread evenly
        # over the 4 lanes is the least any batching can take (full batches of 100 are the fewest calls)
        lanes = math.ceil(n / WOO_CONCURRENCY) * WOO.batch_item
        return lists_floor + lanes, list_calls + math.ceil(n / 100)
    if kind in ("push", "push2"):
        return lists_floor + 2 * n / CLOVER_TOKEN_RATE, list_calls + 2 * locations * n  # a read, then the write
    return lists_floor, list_calls


async def scenario(kind: str, n: int, workdir: Path) -> dict[str, Any]:
    t_setup = time.monotonic()
    locations = 2 if kind == "push2" else 1
    async with trio.open_nursery() as nursery:
        port = free_port()
        world = await start_world(nursery, workdir / f"{kind}-{n}", products=n, locations=locations, stock=20,
                                  listen=f"127.0.0.1:{port}", poll_every="1h", shards=8,
                                  deduct="most_stock" if locations > 1 else "primary")
        text = world.config_path.read_text()
        world.config_path.write_text(text.replace("[woocommerce]\n", f"[woocommerce]\nmax_in_flight = "
                                                                    f"{WOO_CONCURRENCY}\n", 1))
        daemon = await start_daemon(world, port, workdir / f"{kind}-{n}.log")
        await daemon.settle(None, timeout=900.0)
        await wait_no_job(daemon, timeout=900.0)
        mids = list(world.locations.values())
        first_loc = next(iter(world.locations))
        # make the sides differ without telling the daemon (no webhooks are registered, polls are hourly)
        if kind == "import":
            for i, p in enumerate(world.products):
                world.clover.adjust(mids[0], p.clover[first_loc], 5 + i % 7)
        elif kind in ("push", "push2"):
            # push2: below each location's 20, so most_stock empties the first location and sets the second
            for i, p in enumerate(world.products):
                world.woo.admin_set_stock(p.woo, 3 + i % 11)
        await trio.sleep(0.5)  # the sims' webhook senders flush what the changes queued (to no URL)
        world.woo.latency = WOO
        world.clover.faults.latency = CLOVER_LATENCY
        world.clover.reset_stats()
        woo0 = sum(world.woo.requests.values())
        clover0 = sum(world.clover.counts.values())
        setup_s = time.monotonic() - t_setup
        assert daemon.proc is not None
        sampler = RssSampler(daemon.proc.pid)
        req = (SyncRequest(truth="clover") if kind == "import" else SyncRequest(truth="woo")
               if kind in ("push", "push2") else ReconcileRequest())
        async with trio.open_nursery() as sampling:
            sampling.start_soon(sampler.run)
            wall, result = await run_job(daemon, req)
            sampling.cancel_scope.cancel()
        hwm = proc_status(daemon.proc.pid, "VmHWM")
        woo_calls = sum(world.woo.requests.values()) - woo0
        clover_calls = sum(world.clover.counts.values()) - clover0
        app = world.clover.app_stats()
        per_token = {name: world.clover.token_stats(mid) for name, mid in world.locations.items()}
        writes = {name: world.clover.count("POST item_stocks/{id}", mid) for name, mid in world.locations.items()}
        ok = all(world.in_sync(p) for p in world.products)
        await daemon.stop()
        nursery.cancel_scope.cancel()
    floor, min_calls = floors(kind, n)
    calls = woo_calls + clover_calls
    return {
        "kind": kind, "n": n, "locations": locations, "wall_s": round(wall, 2), "floor_s": round(floor, 2),
        "wall_over_floor": round(wall / floor, 3), "calls": calls, "min_calls": min_calls,
        "calls_over_min": round(calls / min_calls, 3), "woo_calls": woo_calls, "clover_calls": clover_calls,
        "clover_429": app.rejected_429, "clover_429_share": round(app.rejected_429 / max(1, app.requests), 4),
        "clover_writes": writes,
        "clover_max_rate_1s": {name: s.max_rate_1s for name, s in per_token.items()},
        "clover_app_max_in_flight": app.max_concurrency,
        "in_sync": ok, "state": result.get("state"), "writes_planned": result.get("writes_planned"),
        "report": result.get("report"), "rss_start_mb": sampler.first, "rss_peak_mb": sampler.peak,
        "rss_samples": sampler.samples, "vm_hwm_mb": hwm, "setup_s": round(setup_s, 1),
    }


def line(r: dict[str, Any]) -> str:
    return (f"{r['kind']:<9} n={r['n']:<6} wall {r['wall_s']:>7.2f} s  floor {r['floor_s']:>7.2f} s  "
            f"ratio {r['wall_over_floor']:.2f}  calls {r['calls']} (min {r['min_calls']}, "
            f"ratio {r['calls_over_min']:.2f})  clover 429s {r['clover_429']} "
            f"({100 * r['clover_429_share']:.2f} % of {r['clover_calls']})  "
            f"daemon RSS peak {r['rss_peak_mb']} MB (start {r['rss_start_mb']}, VmHWM {r['vm_hwm_mb']})  "
            f"in sync {r['in_sync']}  [setup {r['setup_s']} s]")


def parse_runs(specs: list[str], p: argparse.ArgumentParser) -> list[tuple[str, int]]:
    runs = []
    for spec in specs:
        kind, _, count = spec.partition(":")
        if kind not in KINDS or not count.isdigit() or int(count) <= 0:
            p.error(f"{spec!r}: expected KIND:N with KIND one of {', '.join(KINDS)} and N > 0")
        runs.append((kind, int(count)))
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Without KIND:N arguments the --*-products options say what runs.")
    p.add_argument("runs", nargs="*", metavar="KIND:N", help=f"KIND one of {', '.join(KINDS)}, e.g. import:50000")
    p.add_argument("--full", action="store_true",
                   help="the issue's figures: " + " ".join(f"{k}:{n}" for k, n in FULL) + " (~20 min)")
    for kind in KINDS:
        p.add_argument(f"--{kind}-products", type=int, default=None if kind == "push2" else SHORT[kind], metavar="N",
                       help=f"N for {kind} (0: skip; default "
                            + ("as --push-products, so the ratio two/one is printed)" if kind == "push2"
                               else f"{SHORT[kind]})"))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.push2_products is None:
        args.push2_products = args.push_products
    runs = FULL if args.full else parse_runs(args.runs, p) if args.runs else [
        (kind, n) for kind in KINDS if (n := getattr(args, f"{kind}_products")) > 0]
    print(f"machine: {machine()}")
    print(f"latency: Woo list {WOO.list_page * 1000:.0f} ms, GET {WOO.get_one * 1000:.0f} ms, "
          f"PUT {WOO.put * 1000:.0f} ms, batch {WOO.batch_item * 1000:.0f} ms/item; Clover {CLOVER_LATENCY * 1000:.0f}"
          f" ms/call, {CLOVER_TOKEN_RATE:.0f} req/s per token; Woo concurrency {WOO_CONCURRENCY}")
    print("runs: " + " ".join(f"{k}:{n}" for k, n in runs), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-jobs-", dir="/tmp") as d:
        for kind, n in runs:
            r = trio.run(scenario, kind, n, Path(d))
            one = next((x for x in results if x["kind"] == "push" and x["n"] == n), None)
            if kind == "push2" and one is not None:
                r["two_over_one"] = round(r["wall_s"] / one["wall_s"], 3)
            results.append(r)
            print(line(r), flush=True)
            if "two_over_one" in r:
                print(f"{'':<9} two locations / one: {r['two_over_one']:.2f} "
                      f"(writes {r['clover_writes']}, most per 1 s per token {r['clover_max_rate_1s']}, "
                      f"app in flight max {r['clover_app_max_in_flight']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    bad = [r for r in results if not r["in_sync"] or r["state"] != "done"]
    for r in bad:
        print(f"FAILED: {r['kind']}:{r['n']} state {r['state']}, in sync {r['in_sync']}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
