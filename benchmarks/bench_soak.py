"""Soak: signed webhooks at a steady rate against the whole daemon; fails if memory or queues grow without bound.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 600] [--rate 500] [--products 40]
    SOAK_SECONDS=600 SOAK_RATE=500 make soak          # the environment sets the defaults

Rules this script keeps:

- The daemon under test is the one of bench_webhooks.py: ``cloverwoo run``
  with its shipped budgets, the simulators in their own process answering
  every call in 50 ms with Clover's rate limits on. Every delivery is a new
  WooCommerce ``product.updated`` for one of ``--products`` products, so
  each is committed to the inbox, routed, merged and settled. Loopback only.
- Clover's 16 requests/s per token bound merges to ~16/s, so a binding is
  merged every ``products / 16`` s and an event waits up to two such rounds
  before it is settled: the inbox fills to about ``rate x 2 x products / 16``
  and stays there. 40 products make that plateau (~2,500 events) come within
  5 s, so a 20 s run judges a steady state; with 100 products it takes ~13 s.
- Load is open loop: delivery ``i`` is due at ``t0 + i / rate``; its ack
  latency runs from that instant. At most ``MAX_OUTSTANDING`` deliveries
  may be due and unanswered at once; past that a delivery is not sent and
  counted as shed (a stalled daemon ends in a failed run, not in an
  unbounded pile of tasks in this process).
- Every second a sampler records the daemon's RSS (``/proc``), its queues
  over the control socket (``status``: router queue, shard queues, inbox
  events not settled, events held by the router, dirty bindings, store
  writes queued) and the acks of that second (count, p50, p99, max).
- Verdict, over the second half of the samples (the first half is warm-up:
  SQLite's page cache, pymalloc arenas, every binding's first merge), by a
  least-squares slope:
    * memory: fitted growth <= ``RSS_PER_DELIVERY`` (128 B) x deliveries in
      the second half + ``RSS_GRANULE`` (2 MiB). Nothing the daemon keeps per
      event in memory is smaller than 128 B (an ``InboxEvent`` with its
      change is ~400 B), so retaining anything per delivery fails; 2 MiB is
      the granularity of growth that is not a leak (pymalloc arenas are
      1 MiB; SQLite's default page cache is 2,000 KiB), so a short run is
      not failed by one arena.
    * queues: fitted growth rate <= ``QUEUE_SHARE`` (2%) of the delivery
      rate + ``QUEUE_GRANULE`` (the larger of 50 items and twice the queue's
      own spread in the second half) / half the run. A daemon that keeps up
      has no long-run growth; one that does not falls behind by a share of
      the inflow, forever; the granule keeps the noise of a short run (the
      inbox rises and falls with each round of merges) from reading as a
      trend.
  Also failed: any delivery not acknowledged (non-200, connection error,
  shed), a daemon that exited during the run or did not stop cleanly on
  SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_webhooks import (  # noqa: E402 - the sibling benchmark, importable once its folder is on the path
    Conn,
    ConnectionLost,
    DaemonUnderTest,
    Deliveries,
    cpu_seconds,
    load_average,
    machine,
    own_cpu_seconds,
    pct,
    rss_bytes,
    split_url,
)

from cloverwoo_daemon.io.control import DaemonUnreachable  # noqa: E402

MAX_OUTSTANDING = 5_000
MAX_CONNECTIONS = 200
RSS_PER_DELIVERY = 128
RSS_GRANULE = 2 * 2**20
QUEUE_SHARE = 0.02
QUEUE_MIN_GRANULE = 50
QUEUES = ("router_queue", "shard_queues", "pending_inbox", "router_events", "dirty", "store_queued")


@dataclass
class Second:
    """One sample: the daemon's state at the end of a second, and the acks that completed during it."""

    t: float
    rss: int
    queues: dict[str, int]
    acks: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    not_acked: int


@dataclass
class Soak:
    rate: float
    seconds: float
    samples: list[Second] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # latencies of the current second
    window_failed: int = 0
    all_latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    shed: int = 0
    outstanding: int = 0
    status_errors: int = 0

    def fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1
        self.window_failed += 1


def queues_of(status: dict[str, Any]) -> dict[str, int]:
    store = status.get("store") or {}
    return {
        "router_queue": int(status["queues"]["router"]),
        "shard_queues": int(sum(status["queues"]["shards"])),
        "pending_inbox": int(store.get("pending_inbox", 0)),
        "router_events": int(status["router"]["events_in_flight"]),
        "dirty": int(status["shards"]["dirty"]),
        "store_queued": int(store.get("queued", 0)),
    }


async def drive(soak: Soak, url: str, deliveries: Deliveries, t0: float) -> None:
    """The open-loop sender: due times on an absolute schedule, bounded outstanding work."""
    host, port = split_url(url)
    idle: list[Conn] = []
    slots = trio.Semaphore(MAX_CONNECTIONS)
    total = int(soak.seconds * soak.rate)

    async def one(i: int, due: float) -> None:
        try:
            data = deliveries.request(i)
            async with slots:
                conn = idle.pop() if idle else None
                try:
                    if conn is None:
                        conn = await Conn.open(host, port)
                    status = await conn.post(data)
                except (OSError, trio.BrokenResourceError, ConnectionLost, ValueError, IndexError) as exc:
                    soak.fail(type(exc).__name__)
                    return
                if conn.usable:
                    idle.append(conn)
            if status == 200:
                latency = trio.current_time() - due
                soak.window.append(latency)
                soak.all_latencies.append(latency)
            else:
                soak.fail(str(status))
        finally:
            soak.outstanding -= 1

    async with trio.open_nursery() as nursery:
        for i in range(total):
            due = t0 + i / soak.rate
            await trio.sleep_until(due)
            if soak.outstanding >= MAX_OUTSTANDING:
                soak.shed += 1
                soak.fail("shed (too many outstanding)")
                continue
            soak.outstanding += 1
            soak.sent += 1
            nursery.start_soon(one, i, due)
    for conn in idle:
        await conn.aclose()


async def sample(soak: Soak, daemon: DaemonUnderTest, t0: float, print_every: int) -> None:
    """Once a second until cancelled: RSS, queues, and the acks of the second just ended."""
    n = 0
    last: dict[str, int] = dict.fromkeys(QUEUES, 0)
    while True:
        n += 1
        await trio.sleep_until(t0 + n)
        window, soak.window = soak.window, []
        failed, soak.window_failed = soak.window_failed, 0
        try:
            with trio.fail_after(0.9):
                last = queues_of(await daemon.status())
        except (DaemonUnreachable, trio.TooSlowError, RuntimeError, KeyError):
            soak.status_errors += 1  # keep the previous figures; counted, and failed if it persists
        s = Second(t=float(n), rss=rss_bytes(daemon.pid), queues=dict(last), acks=len(window),
                   p50_ms=pct(window, 50) * 1000, p99_ms=pct(window, 99) * 1000,
                   max_ms=max(window, default=float("nan")) * 1000, not_acked=failed)
        soak.samples.append(s)
        if n % print_every == 0:
            q = s.queues
            print(f"  t={n:>4}s  rss {s.rss / 2**20:6.1f} MiB  acks {s.acks:>4}  p50 {s.p50_ms:6.1f}  "
                  f"p99 {s.p99_ms:7.1f}  max {s.max_ms:7.1f} ms  router {q['router_queue']:>4}  shards "
                  f"{q['shard_queues']:>4}  inbox {q['pending_inbox']:>5}  dirty {q['dirty']:>3}  "
                  f"store {q['store_queued']:>3}  not acked {s.not_acked}", flush=True)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def verdict(soak: Soak) -> tuple[bool, list[str]]:
    """Fit the second half; returns (ok, report lines)."""
    half = soak.samples[len(soak.samples) // 2:]
    lines: list[str] = []
    ok = True
    if len(half) < 5:
        return False, [f"too few samples ({len(soak.samples)}) to judge: run at least 10 s"]
    xs = [s.t for s in half]
    span = xs[-1] - xs[0]
    deliveries = soak.rate * span
    rss_slope = slope(xs, [float(s.rss) for s in half])
    rss_limit = (RSS_PER_DELIVERY * deliveries + RSS_GRANULE) / span
    good = rss_slope <= rss_limit
    ok &= good
    lines.append(f"  memory: RSS {half[0].rss / 2**20:.1f} -> {half[-1].rss / 2**20:.1f} MiB over the second half, "
                 f"slope {rss_slope / 1024:+.1f} KiB/s (limit {rss_limit / 1024:.1f} KiB/s = "
                 f"{RSS_PER_DELIVERY} B x {soak.rate:g}/s + {RSS_GRANULE // 2**20} MiB / {span:.0f} s): "
                 f"{'ok' if good else 'GROWING'}")
    for name in QUEUES:
        ys = [float(s.queues[name]) for s in half]
        spread = max(ys) - min(ys)
        granule = max(QUEUE_MIN_GRANULE, 2 * spread) if spread else QUEUE_MIN_GRANULE
        # The spread term would excuse a steady climb (its spread is its growth): only noise around a flat
        # line may widen the granule, so a queue whose fitted growth explains most of its spread gets none.
        s = slope(xs, ys)
        if abs(s) * span >= 0.5 * spread:
            granule = QUEUE_MIN_GRANULE
        limit = QUEUE_SHARE * soak.rate + granule / span
        good = s <= limit
        ok &= good
        lines.append(f"  {name:<14} {ys[0]:>7.0f} -> {ys[-1]:>7.0f}  max {max(ys):>7.0f}  slope {s:+8.2f}/s  "
                     f"(limit {limit:.2f}/s): {'ok' if good else 'GROWING'}")
    return ok, lines


async def run(args: argparse.Namespace, workdir: Path) -> tuple[Soak, dict[str, Any]]:
    daemon = DaemonUnderTest(workdir, args.products)
    soak = Soak(rate=args.rate, seconds=args.seconds)
    extra: dict[str, Any] = {}
    try:
        await daemon.wait_ready()
        deliveries = Deliveries(urllib.parse.urlsplit(daemon.url).netloc, daemon.secret, daemon.woo_ids)
        s0 = await daemon.status()
        cpu0, own0, w0 = cpu_seconds(daemon.pid), own_cpu_seconds(), time.perf_counter()
        t0 = trio.current_time() + 0.1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample, soak, daemon, t0, args.print_every)
            await drive(soak, daemon.url, deliveries, t0)
            nursery.cancel_scope.cancel()
        wall = time.perf_counter() - w0
        s1 = await daemon.status()
        extra["merges"] = s1["shards"]["merges"] - s0["shards"]["merges"]
        extra["failed_merges"] = s1["shards"]["failed_merges"] - s0["shards"]["failed_merges"]
        extra["db_size_mib"] = round(((s1.get("store") or {}).get("db_size_bytes", 0)) / 2**20, 1)
        extra["cpu"] = {"daemon": (cpu_seconds(daemon.pid) - cpu0) / wall,
                        "load generator": (own_cpu_seconds() - own0) / wall}
        extra["exited_early"] = daemon.proc.poll() is not None
    finally:
        code = await trio.to_thread.run_sync(daemon.stop)
    extra["daemon_exit"] = code
    return soak, extra


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")),
                   help="duration of the load (default: $SOAK_SECONDS or 600)")
    p.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "500")),
                   help="deliveries per second (default: $SOAK_RATE or 500)")
    p.add_argument("--products", type=int, default=40, help="products the deliveries are about (see above)")
    p.add_argument("--print-every", type=int, default=0, help="print a sample every N seconds (default: about 20 "
                   "lines in all)")
    p.add_argument("--json", action="store_true", help="also print every sample as JSON lines")
    args = p.parse_args()
    if not 10 <= args.seconds <= 24 * 3600:
        p.error("--seconds must be between 10 and 86400")
    if not 0 < args.rate <= 5000:
        p.error("--rate must be in (0, 5000]")
    if not 1 <= args.products <= 5000:
        p.error("--products must be in [1, 5000]")
    args.print_every = args.print_every or max(1, int(args.seconds // 20))

    print(f"machine: {machine()}")
    print(f"before: {load_average()}")
    print(f"soak: {args.rate:g} deliveries/s for {args.seconds:g} s against `cloverwoo run` (shipped budgets), "
          f"simulators at 50 ms per call with Clover's rate limits, {args.products} products; loopback only",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        try:
            soak, extra = trio.run(run, args, Path(tmp))
        except RuntimeError as exc:
            print(f"soak could not run: {exc}", file=sys.stderr)
            return 2
    ok, lines = verdict(soak)
    lat = soak.all_latencies
    print(f"sent {soak.sent} of {int(args.seconds * args.rate)} due, acked {len(lat)}; ack latency p50 "
          f"{pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, p99.9 {pct(lat, 99.9) * 1000:.1f} ms, "
          f"max {max(lat, default=float('nan')) * 1000:.1f} ms")
    print(f"daemon: {extra['merges']} merges ({extra['failed_merges']} failed), state file {extra['db_size_mib']} "
          f"MiB (dedup keys are kept 24 h: it grows by design), CPU " +
          ", ".join(f"{k} {v * 100:.0f}%" for k, v in extra["cpu"].items()) + f", exit code {extra['daemon_exit']}")
    print("second half, least-squares slope:")
    for line in lines:
        print(line)
    problems = []
    if soak.failures:
        problems.append("not acknowledged: " + ", ".join(f"{k} x{v}" for k, v in soak.failures.items()))
    if soak.status_errors > max(2, len(soak.samples) // 20):
        problems.append(f"control socket unanswered {soak.status_errors} times")
    if extra["exited_early"] or extra["daemon_exit"] != 0:
        problems.append(f"daemon exit code {extra['daemon_exit']}")
    for prob in problems:
        print(f"  FAIL: {prob}")
    ok = ok and not problems
    print(f"after: {load_average()}")
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    if args.json:
        for s in soak.samples:
            print(json.dumps(s.__dict__))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
