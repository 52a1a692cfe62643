"""An inventory_delta whose answer never came (the client timed out) may still land afterwards: the store
was busy, not dead, and PHP goes on with a request whose client hung up. The daemon must count it once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from tests.e2e.conftest import settle, wait_for


async def test_a_write_that_lands_after_its_timeout_is_counted_once(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=1, stock=20) as env:
        w = env.world
        (p,) = w.products
        w.woo.batch_queue_delays = [12.0]  # the write waits 12 s for a PHP worker: past the daemon's 10 s timeout
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
        await wait_for(lambda: w.woo.stock(p.woo) == 18, timeout=30, what="the slow write to land, late")
        await trio.sleep(3)
        await settle(env, timeout=60)
        await wait_for(lambda: w.woo_stock(p) == w.clover_stock(p) == 18, timeout=60,
                       what="both sides at 18: the sale once")
        await trio.sleep(2)
        assert w.woo_stock(p) == w.clover_stock(p) == 18
        assert [(x.before, x.after) for x in w.woo.stock_writes if x.source == "batch"] == [(20, 18)]
