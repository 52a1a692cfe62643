"""The daemon in the loop against a REAL WooCommerce and the Clover simulator, as a merchant runs it.

One world for the module (``daemon_world``: tests/real/daemon_world.py): the daemon is a subprocess
started as the units start it, driven over HTTP and its control socket; WooCommerce is the realwoo
rig's WordPress 7.1 + WooCommerce 11.0.1. Each test makes its own products (unique SKUs and names)
and binds them. Figures are printed (``pytest -s`` shows them), never asserted.
"""

from __future__ import annotations

import time

import pytest

from tests.real.daemon_world import DaemonWorld
from tests.real.stores import RealStore

pytestmark = pytest.mark.realwoo


@pytest.mark.parametrize("delivery", ["sync", "async"])
async def test_a_sale_each_way(daemon_world: DaemonWorld, realwoo: RealStore, delivery: str) -> None:
    world = daemon_world
    await realwoo.set_sync_webhooks(delivery == "sync")
    p = await world.pair(realwoo, stock=20)
    await world.bind(p)
    t0 = time.time()
    await world.clover_sale(p.clover, 2)
    pos = await world.wait_woo(realwoo, p.woo, 18, since=t0, what="after a POS sale of 2 ")
    t1 = time.time()
    await realwoo.order({p.woo: 3})
    answered = time.time()
    online = await world.wait_clover(p.clover, 15, since=t1, what="after an online order of 3 ")
    print(f"\n[{delivery}] POS sale -> WooCommerce {pos.seconds:.2f} s; online order -> Clover "
          f"{online.seconds:.2f} s after POST /orders was sent ({time.time() - answered:.2f} s after its answer)")
    await world.wait_idle()
    assert await realwoo.stock(p.woo) == 15 and await world.clover_stock(p.clover) == 15
