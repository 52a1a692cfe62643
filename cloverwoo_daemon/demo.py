"""``cloverwoo demo``: the daemon between simulated stores, random sales on both sides, a live view, a verdict.

Rules this module keeps:

- One process, one ``trio.run``: both simulators, the daemon, the shoppers,
  the latency sampler and the view share one event loop. No credentials, no
  network beyond loopback; everything on disk (config, secrets, state, the
  daemon's log) lives in a temp dir that is removed at the end, unless
  bindings drifted: then it is kept, and named, for inspection.
- Logs never scribble over the live view: structlog is configured (through
  ``io.logs.configure_logging``, with the world's secrets to redact) to write
  JSON lines to a file in the temp dir.
- Shoppers behave like a register and a checkout: neither sells what its own
  side shows as out of stock, so an oversell only happens when both sides
  sell the last units before the daemon carried either sale across; the
  daemon must then flag it (the summary counts the flags).
- Latency is measured from the outside, by what the other store shows, never
  from the daemon's own bookkeeping (see ``Ledger``).
- The exit code is 0 only when no binding drifted at the end: Clover's total
  equals WooCommerce's, and both equal the initial stock minus the net sales
  of both sides.

``Ledger`` and ``Shoppers`` are public because ``benchmarks/bench_sync.py``
drives the same simulated world the same way.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from cloverwoo_daemon.sim.harness import SimProduct, World

SIDES = ("clover", "woo")
OTHER = {"clover": "woo", "woo": "clover"}
DIRECTION = {"clover": "clover_to_woo", "woo": "woo_to_clover"}  # a sale on the key side goes this way
SIDE_NAME = {"clover": "Clover", "woo": "WooCommerce"}
SAMPLE_EVERY = 0.010  # seconds between looks at the simulators' in-memory stock


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values, so "no sample" never reads as 0 ms."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_figures(values: list[float]) -> dict[str, Any]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return {
        "count": len(values),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "max_ms": round(max(values), 1) if values else None,
    }


# --------------------------------------------------------------------------- ledger


class Ledger:
    """Every unit each side sold or took back, and how long each sale took to show on the other side.

    Why per side: the other side's stock also moves with its own sales, so
    "the other side is at or below initial minus all sales so far" can come
    true early (its own sale) or late (its own refund). What the other side
    has *imported* from this one cannot: imported = initial - stock - its own
    net sales, exact because the simulators apply a side's own sales
    synchronously, in this process. A sale has landed when the other side has
    imported at least this side's cumulative net units up to and including
    that sale. A refund lowers the cumulative count, so it drops the pending
    measurements of that side and product (counted as ``unmeasured``).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.products = {p.sku: p for p in world.products}
        self.initial: dict[str, dict[str, int]] = {
            "clover": {p.sku: world.clover_stock(p) or 0 for p in world.products},
            "woo": {p.sku: world.woo_stock(p) or 0 for p in world.products},
        }
        self.net: dict[str, Counter[str]] = {side: Counter() for side in SIDES}  # sold minus refunded
        self.pending: dict[str, dict[str, deque[tuple[float, int]]]] = {side: {} for side in SIDES}
        self.latencies_ms: dict[str, list[float]] = {d: [] for d in DIRECTION.values()}
        self.sales: Counter[str] = Counter()
        self.units: Counter[str] = Counter()
        self.refunds: Counter[str] = Counter()
        self.unmeasured = 0
        self.touched: dict[str, float] = {}  # sku -> last local change (trio clock), for the view

    # -- what the shoppers report

    def sold(self, side: str, p: SimProduct, qty: int, at: float) -> None:
        self.net[side][p.sku] += qty
        self.sales[side] += 1
        self.units[side] += qty
        self.touched[p.sku] = at
        self.pending[side].setdefault(p.sku, deque()).append((at, self.net[side][p.sku]))

    def refunded(self, side: str, p: SimProduct, qty: int, at: float) -> None:
        self.net[side][p.sku] -= qty
        self.refunds[side] += 1
        self.touched[p.sku] = at
        dropped = self.pending[side].pop(p.sku, None)
        self.unmeasured += len(dropped or ())

    # -- what the stores show

    def stock(self, side: str, p: SimProduct) -> int | None:
        return self.world.clover_stock(p) if side == "clover" else self.world.woo_stock(p)

    def imported(self, into: str, p: SimProduct) -> int | None:
        """Net units ``into`` has taken over from the other side (its stock less its own doing)."""
        stock = self.stock(into, p)
        if stock is None:
            return None
        return self.initial[into][p.sku] - stock - self.net[into][p.sku]

    def sample(self, now: float) -> None:
        for side in SIDES:
            waiting = self.pending[side]
            for sku in list(waiting):
                imported = self.imported(OTHER[side], self.products[sku])
                if imported is None:
                    continue
                queue = waiting[sku]
                while queue and queue[0][1] <= imported:
                    at, _ = queue.popleft()
                    self.latencies_ms[DIRECTION[side]].append((now - at) * 1000)
                if not queue:
                    del waiting[sku]

    def waiting(self) -> int:
        return sum(len(q) for side in SIDES for q in self.pending[side].values())

    # -- the verdict

    def expected(self, p: SimProduct) -> int:
        """Both sides started equal; each must end at that less the net sales of both."""
        return self.initial["clover"][p.sku] - self.net["clover"][p.sku] - self.net["woo"][p.sku]

    def drift(self) -> list[dict[str, Any]]:
        out = []
        for p in self.world.products:
            clover, woo, expected = self.world.clover_stock(p), self.world.woo_stock(p), self.expected(p)
            if clover != woo or clover != expected:
                out.append({"sku": p.sku, "clover": clover, "woo": woo, "expected": expected})
        return out


# ------------------------------------------------------------------------- shoppers


@dataclass
class _Order:
    side: str
    product: SimProduct
    qty: int
    order_id: str | int
    location: str | None = None


class Shoppers:
    """Random sales on both sides: POS sales at a random location, online orders, now and then a refund.

    ``check_stock``: sell only what the selling side shows (a register or a
    checkout would refuse more); off for benchmarks that seed huge stocks.
    ``skew`` > 0 makes a few products popular (Zipf weights), so some sell out.
    """

    def __init__(
        self,
        world: World,
        ledger: Ledger,
        rng: random.Random,
        *,
        refund_rate: float = 0.04,
        check_stock: bool = True,
        skew: float = 0.8,
        sides: tuple[str, ...] = SIDES,
        quantities: tuple[int, ...] = (1, 1, 1, 1, 2, 2, 3),
    ) -> None:
        self.world = world
        self.ledger = ledger
        self.rng = rng
        self.refund_rate = refund_rate
        self.check_stock = check_stock
        self.sides = sides
        self.quantities = quantities
        order = list(world.products)
        rng.shuffle(order)
        self.products = order
        self.weights = [1.0 / (i + 1) ** skew for i in range(len(order))]
        self.refundable: deque[_Order] = deque(maxlen=500)
        self.skipped = 0  # picks that found nothing in stock

    def one(self, now: float, side: str | None = None) -> bool:
        """One sale (or refund) on ``side`` (random when None); False when nothing could be sold."""
        side = side or self.rng.choice(self.sides)
        if self.refund_rate and self.refundable and self.rng.random() < self.refund_rate:
            self._refund(self.refundable.pop(), now)
            return True
        for _ in range(6):
            p = self.rng.choices(self.products, self.weights)[0]
            qty = self.rng.choice(self.quantities)
            if side == "clover":
                location = self.rng.choice(list(self.world.locations))
                if self.check_stock:
                    qty = min(qty, self.world.clover_stock(p, location) or 0)
                if qty <= 0:
                    continue
                oid: str | int = self.world.clover.pos_sale(self.world.locations[location], {p.clover[location]: qty})
                self.ledger.sold("clover", p, qty, now)
                self.refundable.append(_Order("clover", p, qty, oid, location))
            else:
                if self.check_stock:
                    qty = min(qty, self.world.woo_stock(p) or 0)
                if qty <= 0:
                    continue
                oid = self.world.woo.online_order({p.woo: qty})
                self.ledger.sold("woo", p, qty, now)
                self.refundable.append(_Order("woo", p, qty, oid))
            return True
        self.skipped += 1
        return False

    def _refund(self, order: _Order, now: float) -> None:
        if order.side == "clover":
            assert order.location is not None and isinstance(order.order_id, str)
            self.world.clover.refund(self.world.locations[order.location], order.order_id)
        else:
            assert isinstance(order.order_id, int)
            self.world.woo.refund(order.order_id)
        self.ledger.refunded(order.side, order.product, order.qty, now)

    async def run(self, rate: float, seconds: float, stop: trio.Event | None = None, *, steady: bool = False) -> None:
        """Sell at ``rate`` per second for ``seconds`` (Poisson arrivals, or evenly spaced when ``steady``).

        The schedule is absolute: a late wake-up catches up instead of
        lowering the rate.
        """
        if rate <= 0:
            return
        start = trio.current_time()
        end = start + seconds
        t = start
        sides = list(self.sides)
        n = 0
        while True:
            t += (1.0 / rate) if steady else self.rng.expovariate(rate)
            if t >= end or (stop is not None and stop.is_set()):
                return
            await trio.sleep_until(t)
            # steady: alternate sides, so both carry exactly half of the load
            self.one(trio.current_time(), sides[n % len(sides)] if steady else None)
            n += 1


async def sample_forever(ledger: Ledger, every: float = SAMPLE_EVERY) -> None:
    while True:
        ledger.sample(trio.current_time())
        await trio.sleep(every)


def events_accepted(world: World) -> dict[str, int]:
    """Webhook events the daemon answered 2xx, counted at the senders (the simulators)."""
    clover = sum(
        sum(len(evs) for evs in a.payload.get("merchants", {}).values())
        for a in world.clover.webhook_log if a.outcome == "sent"
    )
    woo = sum(1 for d in world.woo.deliveries if d.status is not None and 200 <= d.status < 300)
    return {"clover": clover, "woo": woo, "total": clover + woo}


# ----------------------------------------------------------------------------- view


@dataclass
class _Progress:
    phase: str = "starting"
    started: float | None = None  # trio clock when the sales began
    merges: int = 0
    failed_merges: int = 0
    conflicts: int = 0
    events: dict[str, int] = field(default_factory=lambda: {"clover": 0, "woo": 0, "total": 0})


class LiveView:
    """The table and counters, sized to the terminal (two or more columns of products when they fit)."""

    def __init__(self, console: Any, world: World, ledger: Ledger | None, progress: _Progress, seconds: float) -> None:
        self.console = console
        self.world = world
        self.ledger = ledger
        self.progress = progress
        self.seconds = seconds

    def __rich__(self) -> Any:
        return self.render()

    def render(self) -> Any:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        pr = self.progress
        now = trio.current_time()
        elapsed = 0.0 if pr.started is None else now - pr.started
        head = Text.assemble(("cloverwoo demo", "bold cyan"), f"  {pr.phase:<9}",
                             f"{min(elapsed, self.seconds):5.1f} / {self.seconds:.0f} s")
        led = self.ledger
        if led is None:
            return Group(head, Text("starting the simulated stores and the daemon..."))
        counters = Text(
            f"sales Clover {led.sales['clover']}  Woo {led.sales['woo']}  refunds "
            f"{led.refunds['clover'] + led.refunds['woo']}  events {pr.events['total']}  merges {pr.merges}  "
        )
        counters.append(f"conflicts {pr.conflicts}", style="yellow" if pr.conflicts else "")
        lat = Text("latency p50/p99 ")
        for side in SIDES:
            vals = led.latencies_ms[DIRECTION[side]]
            p50, p99 = percentile(vals, 50), percentile(vals, 99)
            arrow = "Clover→Woo" if side == "clover" else "Woo→Clover"
            lat.append(f" {arrow} " + ("-" if p50 is None else f"{p50:.0f}/{p99:.0f} ms") + " ")

        width, height = self.console.size
        locs = list(self.world.locations) if len(self.world.locations) > 1 else []
        if len(locs) > 3:
            locs = []  # too many to show: the total only
        col_width = 9 + 9 * len(locs) + 7 + 6 + 3 + 2
        rows = max(3, height - 7)
        ncols = max(1, min(width // col_width, math.ceil(len(self.world.products) / rows)))
        shown = list(self.world.products)
        hidden = 0
        if len(shown) > rows * ncols:
            # the interesting ones: out of sync first, then the most recently sold
            shown.sort(key=lambda p: (self.world.in_sync(p), -led.touched.get(p.sku, 0.0)))
            hidden = len(shown) - rows * ncols
            shown = sorted(shown[: rows * ncols], key=lambda p: p.sku)
        per_col = math.ceil(len(shown) / ncols)
        grid = Table.grid(padding=(0, 2))
        tables = []
        for c in range(ncols):
            t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
            t.add_column("SKU", no_wrap=True)
            for loc in locs:
                t.add_column(loc[:8], justify="right")
            t.add_column("Clover", justify="right")
            t.add_column("Woo", justify="right")
            t.add_column("ok", justify="center")
            for p in shown[c * per_col:(c + 1) * per_col]:
                clover, woo = self.world.clover_stock(p), self.world.woo_stock(p)
                fresh = now - led.touched.get(p.sku, -math.inf) < 1.0
                cells = [Text(p.sku, style="bold" if fresh else "")]
                cells += [_qty(self.world.clover_stock(p, loc)) for loc in locs]
                cells += [_qty(clover), _qty(woo)]
                cells.append(Text("✓", style="green") if clover == woo else Text("✗", style="bold red"))
                t.add_row(*cells)
            tables.append(t)
        grid.add_row(*tables)
        foot = Text(f"... and {hidden} more products  " if hidden else "", style="dim")
        foot.append("Ctrl-C: stop selling, settle and summarise", style="dim")
        return Group(head, counters, lat, grid, foot)


def _qty(q: int | None) -> Any:
    from rich.text import Text

    if q is None:
        return Text("-", style="dim")
    return Text(str(q), style="red" if q < 0 else "yellow" if q == 0 else "")


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 60.0
    products: int = 20
    locations: int = 1
    rate: float = 4.0
    seed: int = 1
    settle_timeout: float = 20.0


def initial_stock(opts: DemoOptions) -> int:
    """Per location: about twice the average demand, so the popular products sell out and the rest do not."""
    units = opts.rate * opts.seconds * 1.6  # mean of the quantities drawn
    per_product = units / max(1, opts.products)
    return max(10, math.ceil(2 * per_product / max(1, opts.locations)))


async def wait_settled(running: Any, ledger: Ledger | None, *, quiet: float = 0.5, busy_ok: float = 3.0,
                       give_up: float = 5.0, timeout: float = 20.0) -> bool:
    """Until every sale shows on the other side and nothing drifts; True when that happened.

    Clean and idle for ``quiet`` s ends the wait, and so does clean for
    ``busy_ok`` s while the daemon keeps merging (polls find nothing new: the
    stores are right, the summary says the daemon was still busy). Idle for
    ``give_up`` s (several poll periods) while unclean ends it with False:
    nothing more is coming. ``timeout`` bounds it all.
    """
    with trio.move_on_after(timeout):
        idle_since: float | None = None
        clean_since: float | None = None
        while True:
            now = trio.current_time()
            clean = ledger is None or (ledger.waiting() == 0 and not ledger.drift())
            clean_since = (clean_since if clean_since is not None else now) if clean else None
            idle_since = (idle_since if idle_since is not None else now) if running.admin.idle() else None
            if clean and idle_since is not None and now - idle_since >= quiet:
                return True
            if clean_since is not None and now - clean_since >= busy_ok:
                return True
            if not clean and idle_since is not None and now - idle_since >= give_up:
                return False
            await trio.sleep(0.02)
    return False


async def wait_bound(running: Any, world: World, timeout: float = 60.0) -> None:
    """Until the daemon's catalogue has bound every product (its first full listing)."""
    refreshed = running.admin.jobs.refreshed
    with trio.fail_after(timeout):
        if refreshed is not None:
            await refreshed.wait()
        while len(running.admin.table) < len(world.products):
            await trio.sleep(0.05)


async def _watch_interrupts(stop: trio.Event, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """First Ctrl-C: stop selling and go to the summary. Second: give up at once."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()


async def demo_main(opts: DemoOptions, workdir: Path, console: Any | None, log_to: Callable[[list[str]], None],
                    ) -> dict[str, Any]:
    """The whole demo inside one trio run; returns the summary (see ``run_demo``)."""
    from cloverwoo_daemon.app import run_daemon
    from cloverwoo_daemon.sim.harness import start_world

    stop = trio.Event()
    progress = _Progress()
    async with trio.open_nursery() as nursery:
        if threading.current_thread() is threading.main_thread():
            await nursery.start(_watch_interrupts, stop)
        world = await start_world(nursery, workdir / "world", products=opts.products, locations=opts.locations,
                                  stock=initial_stock(opts), seed=opts.seed)
        secrets = world.secrets()
        log_to(secrets.values())
        view = LiveView(console, world, None, progress, opts.seconds) if console is not None else None
        live = _start_live(console, view)

        async def repaint() -> None:
            while live is not None:
                live.refresh()
                await trio.sleep(0.25)

        nursery.start_soon(repaint)
        try:
            running = await nursery.start(partial(run_daemon, world.cfg, secrets, handle_signals=False,
                                                  drain_seconds=2.0))
            await world.connect(running.webhook_url)
            await wait_bound(running, world)
            await wait_settled(running, None, timeout=opts.settle_timeout)
            ledger = Ledger(world)
            if view is not None:
                view.ledger = ledger
            shoppers = Shoppers(world, ledger, random.Random(opts.seed))
            base_events = events_accepted(world)

            async def refresh_counters() -> None:
                while True:
                    status = running.admin.status()
                    progress.merges = status["shards"]["merges"] - base_merges
                    progress.failed_merges = status["shards"]["failed_merges"]
                    progress.events = {k: v - base_events[k] for k, v in events_accepted(world).items()}
                    progress.conflicts = len(await running.admin.store.list_conflicts())
                    if console is not None and live is None and progress.started is not None:
                        _print_progress(console, progress, ledger, opts)
                    await trio.sleep(0.25 if live is not None else 5.0)

            base_merges = running.admin.status()["shards"]["merges"]
            async with trio.open_nursery() as inner:
                inner.start_soon(sample_forever, ledger)
                inner.start_soon(refresh_counters)
                progress.phase, progress.started = "selling", trio.current_time()
                await shoppers.run(opts.rate, opts.seconds, stop)
                sold_for = trio.current_time() - progress.started
                progress.phase = "settling"
                settled = await wait_settled(running, ledger, timeout=opts.settle_timeout)
                ledger.sample(trio.current_time())
                inner.cancel_scope.cancel()
            progress.phase = "done"
            status = running.admin.status()
            conflicts = await running.admin.store.list_conflicts()
            drift = ledger.drift()
            summary = {
                "seconds": round(sold_for, 1),
                "products": opts.products,
                "locations": opts.locations,
                "rate": opts.rate,
                "seed": opts.seed,
                "initial_stock_per_location": initial_stock(opts),
                "sales": {side: ledger.sales[side] for side in SIDES},
                "units": {side: ledger.units[side] for side in SIDES},
                "refunds": {side: ledger.refunds[side] for side in SIDES},
                "events_accepted": {k: v - base_events[k] for k, v in events_accepted(world).items()},
                "merges": status["shards"]["merges"] - base_merges,
                "failed_merges": status["shards"]["failed_merges"],
                "latency_ms": {d: latency_figures(v) for d, v in ledger.latencies_ms.items()},
                "unmeasured": ledger.unmeasured + ledger.waiting(),
                "settled": settled,
                "daemon_idle": running.admin.idle(),
                "drift": len(drift),
                "drifting": drift[:10],
                "conflicts": len(conflicts),
                "conflict_kinds": dict(Counter(c.kind for c in conflicts)),
                "interrupted": stop.is_set(),
            }
        finally:
            if live is not None:
                live.stop()
        running.stop()
        with trio.move_on_after(10):
            await running.stopped.wait()
        nursery.cancel_scope.cancel()
    return summary


def _start_live(console: Any | None, view: LiveView | None) -> Any:
    if console is None or view is None or not console.is_terminal:
        return None
    from rich.live import Live

    # auto_refresh off: rich would render from its own thread, and the view reads trio's clock
    live = Live(view, console=console, auto_refresh=False, transient=False, redirect_stdout=False,
                redirect_stderr=False)
    live.start()
    return live


def _print_progress(console: Any, progress: _Progress, ledger: Ledger, opts: DemoOptions) -> None:
    """Off a terminal (make demo | tee): one plain line every few seconds instead of the live view."""
    elapsed = trio.current_time() - (progress.started or trio.current_time())
    console.print(f"{elapsed:5.1f}/{opts.seconds:.0f} s  sales Clover {ledger.sales['clover']} "
                  f"Woo {ledger.sales['woo']}  events {progress.events['total']}  merges {progress.merges}  "
                  f"conflicts {progress.conflicts}", highlight=False)


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def print_summary(console: Any, s: dict[str, Any], kept: Path | None) -> None:
    """The closing summary, kept within 80 columns."""
    ok = s["drift"] == 0
    out = partial(console.print, highlight=False)
    console.print()
    early = " (stopped early)" if s["interrupted"] else ""
    out(f"[bold]cloverwoo demo[/bold]: {s['seconds']} s of sales, {s['products']} products, "
        f"{s['locations']} location(s), {s['rate']}/s, seed {s['seed']}{early}")
    for i, side in enumerate(SIDES):
        out(f"  {'sales' if i == 0 else '':<11}{SIDE_NAME[side]:<12} {s['sales'][side]:>5} sales, "
            f"{s['units'][side]} units, {s['refunds'][side]} refunds")
    ev = s["events_accepted"]
    out(f"  events     {ev['total']} accepted by the daemon (Clover {ev['clover']}, Woo {ev['woo']}); "
        f"{s['merges']} merges")
    out("  latency    from a sale to the other store showing it:")
    for direction, label in (("clover_to_woo", "Clover → Woo"), ("woo_to_clover", "Woo → Clover")):
        lat = s["latency_ms"][direction]
        out(f"             {label}  p50 {_fmt_ms(lat['p50_ms']):>8}  p99 {_fmt_ms(lat['p99_ms']):>8}  "
            f"max {_fmt_ms(lat['max_ms']):>8}  ({lat['count']} sales)")
    if s["unmeasured"]:
        out(f"             {s['unmeasured']} unmeasured (overtaken by a refund, or never shown)")
    verdict = "[green]✓ 0[/green]" if ok else f"[bold red]✗ {s['drift']}[/bold red]"
    out(f"  drift      {verdict} of {s['products']} bindings (Clover total = Woo = initial - net sales)")
    for d in s["drifting"]:
        out(f"             {d['sku']}: Clover {d['clover']}, Woo {d['woo']}, expected {d['expected']}")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["conflict_kinds"].items()))
    out(f"  conflicts  {s['conflicts']} flagged" + (f" ({kinds})" if kinds else ""))
    if s["failed_merges"]:
        out(f"  [yellow]{s['failed_merges']} merges failed and were retried[/yellow]")
    if not s["settled"]:
        out("  [yellow]the stores did not settle in the time allowed[/yellow]")
    elif not s["daemon_idle"]:
        out("  [yellow]the stores agree, but the daemon was still merging at the end[/yellow]")
    if kept is not None:
        out(f"  state, config and the daemon's log kept in {kept}")


def run_demo(*, seconds: float, products: int, locations: int, rate: float, seed: int, as_json: bool) -> int:
    """``cloverwoo demo``: returns the exit code (0 only when no binding drifted)."""
    from cloverwoo_daemon.io.logs import configure_logging

    if seconds <= 0 or products < 1 or locations < 1 or rate < 0:
        print("cloverwoo demo: --seconds and --products must be positive, --locations >= 1, --rate >= 0",
              file=sys.stderr)
        return 2
    opts = DemoOptions(seconds=seconds, products=products, locations=locations, rate=rate, seed=seed)
    workdir = Path(tempfile.mkdtemp(prefix="cloverwoo-demo-"))
    if len(str(workdir / "world" / "control.sock")) > 100:  # AF_UNIX paths are short; TMPDIR may not be
        workdir.rmdir()
        workdir = Path(tempfile.mkdtemp(prefix="cloverwoo-demo-", dir="/tmp"))
    log_file: TextIO = open(workdir / "daemon.log", "w")  # noqa: SIM115 - closed in the finally below
    configure_logging(json=True, level="info", stream=log_file)

    def log_to(secret_values: list[str]) -> None:
        configure_logging(json=True, level="info", stream=log_file, secrets=secret_values)

    console = None
    if not as_json:
        from rich.console import Console

        console = Console()
    keep = False
    summary: dict[str, Any] | None = None
    code = 1
    try:
        try:
            summary = trio.run(demo_main, opts, workdir, console, log_to)
        except* KeyboardInterrupt:
            code = 130
        except* Exception as group:
            print(f"cloverwoo demo: failed: {group.exceptions[0]!r} (log: {workdir / 'daemon.log'})",
                  file=sys.stderr)
            keep = True
        if summary is not None:
            keep = summary["drift"] > 0
            code = 0 if summary["drift"] == 0 else 1
            if as_json:
                print(json.dumps(summary, sort_keys=True))
            else:
                print_summary(console, summary, workdir if keep else None)
    finally:
        configure_logging(json=True, level="critical", stream=sys.stderr)
        log_file.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
