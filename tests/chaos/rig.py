"""The chaos rig: simulators behind fault proxies, the daemon as a subprocess, and a ledger of every sale.

Rules this helper keeps:

- The daemon is a real ``cloverwoo run`` subprocess (tests/e2e/daemon_proc.py) on a real config file; the only
  change to the config the harness writes is that both ``base_url`` point at a ``FaultProxy`` (and the client
  timeouts may be shortened so a hang costs seconds, not minutes). Webhooks from both stores reach the daemon
  through a third proxy, so a test can hold an acknowledgement.
- The ledger counts what the shoppers sold; the stock both sides must end at is initial minus sold, never
  "side equals side" only (a sale applied twice would propagate and agree on a wrong number).
- Clover sells only even products and WooCommerce only odd ones (as in tests/e2e/test_crash.py): a Clover write
  racing a register sale on the same item is the documented remote race, measured in test_concurrency.py, not a
  crash-safety failure.
- ``CLOVERWOO_CHAOS_SCALE`` (default 1; ``make chaos`` sets more) multiplies trials and durations.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.sim.harness import SimProduct, World, start_world
from tests.chaos.faultproxy import FaultProxy
from tests.e2e.daemon_proc import DaemonProc, free_port

SCALE = max(1, int(os.environ.get("CLOVERWOO_CHAOS_SCALE", "1")))


@dataclass
class Rig:
    world: World
    daemon: DaemonProc
    woo: FaultProxy
    clover: FaultProxy
    hooks: FaultProxy
    nursery: trio.Nursery
    initial: int
    sold: dict[str, int] = field(default_factory=dict)
    sales: int = 0

    @property
    def state(self) -> str:
        return str(self.world.cfg.state.path)

    def expected(self, p: SimProduct) -> int:
        return self.initial - self.sold.get(p.sku, 0)

    def converged(self) -> bool:
        return all(self.world.woo_stock(p) == self.expected(p) == self.world.clover_stock(p)
                   for p in self.world.products)

    def table(self) -> dict[str, tuple[int | None, int | None, int]]:
        return {p.sku: (self.world.clover_stock(p), self.world.woo_stock(p), self.expected(p))
                for p in self.world.products}

    # ------------------------------------------------------------ shoppers

    def pos_sale(self, p: SimProduct, qty: int = 1, loc: str | None = None) -> None:
        loc = loc or next(iter(p.clover))
        self.world.clover.pos_sale(self.world.locations[loc], {p.clover[loc]: qty})
        self._sold(p, qty)

    def web_sale(self, p: SimProduct, qty: int = 1) -> None:
        self.world.woo.online_order({p.woo: qty})
        self._sold(p, qty)

    def _sold(self, p: SimProduct, qty: int) -> None:
        self.sold[p.sku] = self.sold.get(p.sku, 0) + qty
        self.sales += 1

    def random_sale(self, rng: random.Random) -> None:
        prods = self.world.products
        if rng.random() < 0.5:
            p = rng.choice(prods[0::2])
            self.pos_sale(p, rng.randint(1, 2), rng.choice(list(p.clover)))
        else:
            self.web_sale(rng.choice(prods[1::2]), rng.randint(1, 2))

    async def burst(self, rng: random.Random, stop: trio.Event, gap: float = 0.03) -> None:
        while not stop.is_set():
            self.random_sale(rng)
            await trio.sleep(rng.uniform(0.2 * gap, 1.8 * gap))

    # ------------------------------------------------------------ waiting

    async def wait_converged(self, *, timeout: float = 60.0, what: str = "both sides at initial - sales") -> None:
        with trio.move_on_after(timeout):
            while not self.converged():
                await trio.sleep(0.05)
            return
        (self.world.dir / "daemon.log").write_text(self.daemon.output_text())
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; (clover, woo, expected): "
                             f"{self.table()}\n{self.daemon.tail()}")


def _point_config_at(path: Path, woo_from: str, woo_to: str, clover_from: str, clover_to: str,
                     timeout: str | None) -> None:
    text = path.read_text()
    text = text.replace(f'base_url = "{woo_from}"', f'base_url = "{woo_to}"')
    text = text.replace(f'base_url = "{clover_from}"', f'base_url = "{clover_to}"')
    if timeout is not None:
        text = re.sub(r'^timeout = "[^"]*"$', f'timeout = "{timeout}"', text, flags=re.M)
    path.write_text(text)


async def start_rig(nursery: trio.Nursery, tmp: Path, *, seed: int, products: int = 6, locations: int = 1,
                    stock: int = 200, timeout: str | None = None, connect: bool = True, start: bool = True,
                    **world_kw: Any) -> Rig:
    """Simulators, proxies, config; then (unless ``start=False``) the daemon, ready and idle."""
    port = free_port()
    world = await start_world(nursery, tmp / "world", products=products, locations=locations, stock=stock,
                              listen=f"127.0.0.1:{port}", seed=seed, **world_kw)
    cfg_text = world.config_path.read_text()
    urls = re.findall(r'^base_url = "([^"]*)"$', cfg_text, flags=re.M)
    assert len(urls) == 2, urls
    woo_url, clover_url = urls  # [woocommerce] comes before [clover] in the harness's config
    woo = FaultProxy(woo_url, seed=seed, name="woo")
    clover = FaultProxy(clover_url, seed=seed + 1, name="clover")
    hooks = FaultProxy(f"http://127.0.0.1:{port}", seed=seed + 2, name="webhooks")
    for proxy in (woo, clover, hooks):
        await nursery.start(proxy.run)
    _point_config_at(world.config_path, woo_url, woo.url, clover_url, clover.url, timeout)
    daemon = DaemonProc(world.config_path)
    rig = Rig(world, daemon, woo, clover, hooks, nursery, initial=stock * locations)
    if start:
        await daemon.start(nursery)
        if connect:
            await world.connect(hooks.url)
        n = len(world.products)
        await daemon.wait_status(lambda s: s["bindings"] == n, what=f"{n} bindings", timeout=60)
        await daemon.wait_idle(timeout=60)
    elif connect:
        await world.connect(hooks.url)
    return rig
