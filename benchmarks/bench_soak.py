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
  SQLite's page cache, pymalloc arenas, every binding's first merge). Each
  series (RSS, each queue) is cut into ``BLOCKS`` (10) equal blocks and a
  line is fitted to the block means: a block averages many rounds of merges,
  so the inbox's sawtooth (it fills, and a round of merges empties it) does
  not read as a trend, while the blocks' scatter around the line gives the
  standard error of the fitted growth. A series is GROWING when its fitted
  growth over the second half is both
    * above its granule: ``RSS_GRANULE`` (2 MiB: pymalloc arenas are 1 MiB,
      SQLite's default page cache is 2,000 KiB) or ``QUEUE_GRANULE`` (50
      items), so a short run is not failed by one arena; and
    * significant: more than ``T_999[blocks - 2]`` standard errors (Student's
      t at 99.9 %, one-sided: 4.5 for 10 blocks), so a flat series that
      wobbles passes (about 1 run in 1,000 per series fails by chance).
  No growth is excused in proportion to the load: a leak of one small object
  per delivery or a daemon that falls behind by 1 % of the inflow grows
  without bound, and over ten minutes at 500/s shows as such (a leak of 16 B
  per delivery is 2.4 MiB over the second half; a queue growing 2 items/s is
  600). The bound that applied before (128 B per delivery, 2 % of the
  delivery rate) let exactly those pass. A climb confined to the last block
  or two (another process taking the CPU on a shared machine) widens the
  error instead of reading as a trend: judge it with a longer run.
  ``--check-verdict`` runs the verdict on synthetic samples (flat, a 16 B
  leak, queues growing 2/s) without a daemon.
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
RSS_GRANULE = 2 * 2**20
QUEUE_GRANULE = 50
BLOCKS = 10
T_999 = {1: 318.3, 2: 22.33, 3: 10.21, 4: 7.173, 5: 5.893, 6: 5.208, 7: 4.785, 8: 4.501}
"""Student's t, one-sided 99.9 %, by degrees of freedom (blocks - 2)."""
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


def trend(xs: list[float], ys: list[float]) -> tuple[float, float, int]:
    """(fitted growth over the span, its standard error, blocks) from the means of up to ``BLOCKS`` equal blocks.

    Block means, not the raw samples: consecutive seconds are not independent (a queue fills and empties over
    a few seconds), so a fit to raw samples would claim a precision it does not have.
    """
    n = len(xs)
    k = min(BLOCKS, n // 2)
    bx = [sum(xs[i * n // k:(i + 1) * n // k]) / len(xs[i * n // k:(i + 1) * n // k]) for i in range(k)]
    by = [sum(ys[i * n // k:(i + 1) * n // k]) / len(ys[i * n // k:(i + 1) * n // k]) for i in range(k)]
    s = slope(bx, by)
    mx, my = sum(bx) / k, sum(by) / k
    sxx = sum((x - mx) ** 2 for x in bx)
    resid = sum((y - (my + s * (x - mx))) ** 2 for x, y in zip(bx, by, strict=True))
    se = (resid / (k - 2) / sxx) ** 0.5 if k > 2 and sxx else float("inf")
    span = xs[-1] - xs[0]
    return s * span, se * span, k


def growing(growth: float, se: float, blocks: int, granule: float) -> bool:
    return growth > granule and growth > T_999[min(blocks - 2, max(T_999))] * se


def verdict(soak: Soak) -> tuple[bool, list[str]]:
    """Fit the second half; returns (ok, report lines)."""
    half = soak.samples[len(soak.samples) // 2:]
    lines: list[str] = []
    ok = True
    if len(half) < 6:
        return False, [f"too few samples ({len(soak.samples)}) to judge: run at least 12 s"]
    xs = [s.t for s in half]
    span = xs[-1] - xs[0]
    g, se, k = trend(xs, [float(s.rss) for s in half])
    bad = growing(g, se, k, RSS_GRANULE)
    ok &= not bad
    lines.append(f"  memory: RSS {half[0].rss / 2**20:.1f} -> {half[-1].rss / 2**20:.1f} MiB over the second half "
                 f"({span:.0f} s), fitted growth {g / 2**20:+.2f} MiB +- {se / 2**20:.2f} (a fail needs > "
                 f"{RSS_GRANULE // 2**20} MiB and > {T_999[min(k - 2, max(T_999))]:g} standard errors): "
                 f"{'GROWING' if bad else 'ok'}")
    for name in QUEUES:
        ys = [float(s.queues[name]) for s in half]
        g, se, k = trend(xs, ys)
        bad = growing(g, se, k, QUEUE_GRANULE)
        ok &= not bad
        lines.append(f"  {name:<14} {ys[0]:>7.0f} -> {ys[-1]:>7.0f}  max {max(ys):>7.0f}  fitted growth {g:+8.0f} "
                     f"+- {se:.0f}: {'GROWING' if bad else 'ok'}")
    return ok, lines


def check_verdict(seconds: int = 600, rate: float = 500.0) -> int:
    """The verdict on synthetic runs shaped like a real one (the inbox fills and empties every 3 s around 2,000,
    RSS wobbles by 1 MiB): the flat run must pass; a leak of 16 B per delivery, an inbox or a router queue
    growing 2 items/s must each fail. Returns the exit code."""
    import random

    def run_of(leak: float = 0.0, grow: dict[str, float] | None = None) -> Soak:
        rng = random.Random(7)
        soak = Soak(rate=rate, seconds=seconds)
        for t in range(1, seconds + 1):
            q = {name: 0 for name in QUEUES}
            q["pending_inbox"] = int(2000 + 600 * ((t % 3) - 1) + rng.uniform(-150, 150))
            q["router_events"] = int(1900 + 500 * ((t % 3) - 1) + rng.uniform(-150, 150))
            q["dirty"] = rng.choice((38, 39, 40))
            q["store_queued"] = rng.choice((0, 0, 0, 1, 2, 9))
            for name, per_s in (grow or {}).items():
                q[name] += int(per_s * t)
            soak.samples.append(Second(t=float(t), rss=int(78 * 2**20 + rng.uniform(-2**19, 2**19) + leak * rate * t),
                                       queues=q, acks=int(rate), p50_ms=5.0, p99_ms=20.0, max_ms=30.0, not_acked=0))
        return soak

    cases = [("flat", run_of(), True), ("leak 16 B/delivery", run_of(leak=16), False),
             ("inbox +2/s", run_of(grow={"pending_inbox": 2}), False),
             ("router queue +2/s", run_of(grow={"router_queue": 2}), False)]
    good = True
    for name, soak, want in cases:
        ok, lines = verdict(soak)
        good &= ok == want
        print(f"{name}: {'PASS' if ok else 'FAIL'} (expected {'PASS' if want else 'FAIL'})")
        for line in lines:
            if "GROWING" in line or name == "flat":
                print(line)
    print(f"verdict check: {'ok' if good else 'BROKEN'}")
    return 0 if good else 1


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
    p.add_argument("--check-verdict", action="store_true", help="only check, on synthetic samples, that the "
                   "verdict passes a flat run and fails a leak or a growing queue; no daemon is started")
    args = p.parse_args()
    if args.check_verdict:
        return check_verdict()
    if not 12 <= args.seconds <= 24 * 3600:
        p.error("--seconds must be between 12 and 86400")
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
    print(f"second half, {BLOCKS} block means, least-squares fit:")
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
