"""Contention on one product, daemon in the loop: POS sales through the Clover simulator and checkouts on a
WooCommerce store (a real one, or the simulator) at the same time; then where every unit went.

Used by ``benchmarks/bench_integrity.py`` and ``tests/real/test_integrity.py``.

Rules this module keeps:

- The daemon runs as systemd runs it: ``cloverwoo run --config`` in a
  subprocess, talked to over its control socket only; the Clover simulator
  and the shoppers run in this process.
- Sales alternate between the two sides on an absolute schedule (a late tick
  catches up), one unit each; a checkout the store refuses is not counted.
- The verdict is computed from outside: each side must end at the initial
  stock less every sale. What differs is attributed: Clover overwrites the
  simulator recorded (a POS sale inside the daemon's read-to-write window:
  Clover's own race, flagged by the witness, never repaired), and the rest on
  WooCommerce: units an ``inventory_delta`` erased that the witness did not
  repair. With the WordPress companion that rest must be 0.
- Whatever the daemon flagged or repaired is read back from its sync log.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from cloverwoo_daemon.io.control import DaemonUnreachable, control_call
from cloverwoo_daemon.messages import LogRequest, StatusRequest
from cloverwoo_daemon.sim.accounting import SKEW, witnessed
from cloverwoo_daemon.sim.clover import CloverSim
from cloverwoo_daemon.sim.common import Faults
from cloverwoo_daemon.sim.harness import write_config
from cloverwoo_daemon.sim.woocommerce import WooSim


@dataclass
class WooTarget:
    """The WooCommerce side: where the daemon points, and how this module shops there."""

    url: str
    key: str
    secret: str
    kind: str  # "real" | "sim"
    create_product: Callable[[str, int], Awaitable[int]]  # (sku, stock) -> product id
    checkout: Callable[[int], Awaitable[bool]]  # one unit; False when the store refused it
    stock: Callable[[int], Awaitable[int | None]]


def real_target(url: str, key: str, secret: str, *, timeout: float = 60.0) -> tuple[WooTarget, httpx.AsyncClient]:
    """A real WooCommerce reached over REST (Basic auth; the rig fakes HTTPS on loopback)."""
    http = httpx.AsyncClient(base_url=url.rstrip("/") + "/wp-json/wc/v3", auth=(key, secret), timeout=timeout)

    async def create_product(sku: str, stock: int) -> int:
        r = await http.post("/products", json={"name": f"Contention {sku}", "sku": sku, "regular_price": "1.00",
                                               "manage_stock": True, "stock_quantity": stock, "backorders": "yes"})
        r.raise_for_status()
        return int(r.json()["id"])

    async def checkout(pid: int) -> bool:
        r = await http.post("/orders", json={"set_paid": True, "line_items": [{"product_id": pid, "quantity": 1}]})
        return r.status_code == 201

    async def stock(pid: int) -> int | None:
        r = await http.get(f"/products/{pid}")
        r.raise_for_status()
        q = r.json().get("stock_quantity")
        return None if q is None else int(q)

    return WooTarget(url, key, secret, "real", create_product, checkout, stock), http


def sim_target(sim: WooSim) -> WooTarget:
    """The WooCommerce simulator (already running): checkouts are its own, in this process."""

    async def create_product(sku: str, stock: int) -> int:
        return sim.add_product(f"Contention {sku}", sku=sku, stock=stock, backorders="yes").product_id

    async def checkout(pid: int) -> bool:
        sim.online_order({pid: 1})
        return True

    async def stock(pid: int) -> int | None:
        return sim.stock(pid)

    return WooTarget(sim.base_url, sim.consumer_key, sim.consumer_secret, "sim", create_product, checkout, stock)


@dataclass
class Contention:
    """What one run did and where every unit went (see the module rules)."""

    companion: bool
    sales_pos: int = 0
    sales_online: int = 0
    refused_online: int = 0
    seconds: float = 0.0
    initial: int = 0
    woo: int | None = None
    clover: int | None = None
    clover_writes: int = 0
    clover_overwrites: int = 0
    clover_overwrites_flagged: int = 0
    clover_race_units: int = 0  # units Clover's overwrites erased (sales: positive, stock left too high)
    woo_flagged_writes: int = 0
    woo_flagged_orders: int = 0  # distinct checkouts some flagged write may have erased
    woo_flagged_units: float = 0.0  # their units: the most the flags say can be gone
    woo_repaired_units: int = 0
    clover_flagged_writes: int = 0
    settled: bool = False
    stock_writes: dict[str, Any] = field(default_factory=dict)
    daemon_exit: int | None = None

    @property
    def sales(self) -> int:
        return self.sales_pos + self.sales_online

    @property
    def expected(self) -> int:
        return self.initial - self.sales

    @property
    def woo_units_lost(self) -> int | None:
        """Units WooCommerce shows beyond the sales and Clover's own race: erased by an inventory_delta, and
        not repaired (0 with the companion)."""
        if self.woo is None:
            return None
        return self.woo - self.expected - self.clover_race_units

    def line(self) -> str:
        lost = self.woo_units_lost
        return (f"{'companion' if self.companion else 'inventory_delta'}: {self.sales} sales in {self.seconds:.0f} s "
                f"({self.sales_pos} POS, {self.sales_online} online, {self.refused_online} refused); end Woo "
                f"{self.woo} / Clover {self.clover}, expected {self.expected}; WooCommerce units lost {lost} "
                f"(repaired {self.woo_repaired_units}; {self.woo_flagged_writes} writes flagged, suspecting "
                f"{self.woo_flagged_orders} checkouts, {self.woo_flagged_units:g} units); Clover writes "
                f"{self.clover_writes}, overwrites recorded {self.clover_overwrites} ({self.clover_race_units} units), "
                f"flagged "
                f"{self.clover_overwrites_flagged} of them ({self.clover_flagged_writes} Clover writes flagged "
                f"in all); settled {self.settled}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Daemon:
    def __init__(self, config: Path, sock: str, log_path: Path) -> None:
        self.config = config
        self.sock = sock
        self.log_path = log_path
        self.proc: trio.Process | None = None

    async def start(self, ready: Callable[[dict[str, Any]], bool], timeout: float = 90.0) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "cloverwoo_daemon.cli", "run", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT)
        with trio.fail_after(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {self.proc.returncode}: see {self.log_path}")
                try:
                    if ready(await self.status()):
                        return
                except DaemonUnreachable:
                    pass
                await trio.sleep(0.2)

    async def status(self) -> dict[str, Any]:
        resp = await control_call(self.sock, StatusRequest(), timeout=15.0)
        if not resp.ok:
            raise RuntimeError(resp.error)
        return dict(resp.data)

    async def sync_log(self, since: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after = 0
        while True:
            resp = await control_call(self.sock, LogRequest(since=since, after_id=after, limit=1000), timeout=30.0)
            if not resp.ok or not resp.data:
                return rows
            rows.extend(resp.data)
            after = max(r["id"] for r in resp.data)

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        self._log.close()
        return self.proc.returncode


async def run_contention(
    woo: WooTarget,
    workdir: Path,
    *,
    companion: bool,
    sales: int,
    rate: float,
    stock: int = 100_000,
    clover_latency: float = 0.05,
    online_in_flight: int = 4,
    settle_timeout: float = 120.0,
    woo_webhooks: bool = False,
    min_clover_writes: int = 0,
) -> Contention:
    """``sales`` sales at ``rate`` a second on one product, half POS, half online; see the module rules.

    With ``min_clover_writes``, sales go on (up to four times ``sales``) until the daemon has written
    Clover that many times: the Clover witness's recall is measured over at least that many writes.

    ``companion`` says whether the store has the WordPress companion (the
    caller installs or removes it): the run checks that the daemon found what
    it was told.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = Contention(companion=companion, initial=stock)
    sku = f"CONT-{secrets.token_hex(4).upper()}"
    async with trio.open_nursery() as nursery:
        clover = CloverSim(auth_code=secrets.token_hex(16), faults=Faults(latency=clover_latency,
                                                                          jitter=clover_latency / 2, seed=1))
        clover_url = await nursery.start(clover.run)
        merchant = clover.add_merchant("Downtown", merchant_id="CONTMERCHANT1")
        item = clover.add_item(merchant.id, f"Contention {sku}", sku=sku, quantity=stock)
        pid = await woo.create_product(sku, stock)
        port = _free_port()
        hook_secret = secrets.token_hex(24)
        config = write_config(workdir, clover_url=clover_url, woo_url=woo.url, locations={"downtown": merchant.id},
                              tokens={"downtown": merchant.token}, woo_key=woo.key, woo_secret=woo.secret,
                              webhook_secret=hook_secret, auth_code=clover.auth_code, poll_every="1s",
                              listen=f"127.0.0.1:{port}")
        daemon = _Daemon(config, str(workdir / "control.sock"), workdir / "daemon.log")
        try:
            await daemon.start(lambda s: s["bindings"] >= 1 and s["queues"]["router"] == 0)
            clover.set_webhook_url(f"http://127.0.0.1:{port}/webhooks/clover")
            if woo_webhooks:  # each checkout a trigger of its own (a store delivering synchronously)
                async with httpx.AsyncClient(auth=(woo.key, woo.secret)) as http:
                    r = await http.post(woo.url.rstrip("/") + "/wp-json/wc/v3/webhooks", json={
                        "name": "contention", "topic": "product.updated", "secret": hook_secret,
                        "delivery_url": f"http://127.0.0.1:{port}/webhooks/woocommerce"})
                    r.raise_for_status()
            status = await daemon.status()
            out.stock_writes = status.get("stock_writes") or {}
            if bool(out.stock_writes.get("atomic")) != companion:
                raise RuntimeError(f"the daemon sees stock writes as {out.stock_writes}, expected companion="
                                   f"{companion}")
            since = time.time()
            t0 = trio.current_time()
            limiter = trio.CapacityLimiter(online_in_flight)

            async def online() -> None:
                async with limiter:
                    if await woo.checkout(pid):
                        out.sales_online += 1
                    else:
                        out.refused_online += 1

            async with trio.open_nursery() as shoppers:
                n = -1
                while True:
                    n += 1
                    if n >= sales and (clover.count("POST item_stocks/{id}", merchant.id) >= min_clover_writes
                                       or n >= 4 * sales):
                        break
                    await trio.sleep_until(t0 + n / rate)
                    if n % 2 == 0:
                        clover.pos_sale(merchant.id, {item: 1})
                        out.sales_pos += 1
                    else:
                        shoppers.start_soon(online)
            out.seconds = trio.current_time() - t0
            out.settled = await _settled(daemon, woo, clover, merchant.id, item, pid, settle_timeout)
            out.woo = await woo.stock(pid)
            q = clover.stock(merchant.id, item)
            out.clover = None if q is None else round(q)
            out.clover_writes = clover.count("POST item_stocks/{id}", merchant.id)
            flags, repairs = witnessed(await daemon.sync_log(since))
            overwrites = [o for o in clover.stock_overwrites if o.item_id == item]
            out.clover_overwrites = len(overwrites)
            out.clover_race_units = -round(sum(o.lost for o in overwrites))
            clover_flags = [f for f in flags if f.get("side") == "clover"]
            out.clover_flagged_writes = len(clover_flags)
            out.clover_overwrites_flagged = sum(
                any(str(f.get("item")) == item and f["window"][0] - SKEW <= o.at <= f["window"][1] + SKEW
                    for f in clover_flags) for o in overwrites)
            woo_flags = [f for f in flags if f.get("side") == "woo"]
            out.woo_flagged_writes = len(woo_flags)
            suspects = {o: float(u) for f in woo_flags for o, u in (f.get("order_units") or {}).items()}
            out.woo_flagged_orders = len(suspects)
            out.woo_flagged_units = sum(u for u in suspects.values() if u > 0)
            out.woo_repaired_units = int(sum(float(r.get("units") or 0) for r in repairs))
        finally:
            out.daemon_exit = await daemon.stop()
            nursery.cancel_scope.cancel()
    return out


async def _settled(daemon: _Daemon, woo: WooTarget, clover: CloverSim, mid: str, item: str, pid: int,
                   timeout: float) -> bool:
    """Both sides equal and the daemon idle, its witness done, for a few seconds running; False on timeout."""
    with trio.move_on_after(timeout):
        quiet_since: float | None = None
        while True:
            s = await daemon.status()
            idle = (s["queues"]["router"] == 0 and sum(s["queues"]["shards"]) == 0 and s["shards"]["in_flight"] == 0
                    and s["shards"]["dirty"] == 0 and (s.get("witness") or {}).get("pending", 0) == 0)
            q = clover.stock(mid, item)
            same = q is not None and await woo.stock(pid) == round(q)
            now = trio.current_time()
            quiet_since = (quiet_since or now) if idle and same else None
            if quiet_since is not None and now - quiet_since >= 5.0:
                return True
            await trio.sleep(0.5)
    return False


def summary_json(results: list[Contention]) -> str:
    return json.dumps([{**r.__dict__, "expected": r.expected, "woo_units_lost": r.woo_units_lost} for r in results],
                      sort_keys=True, default=str)
