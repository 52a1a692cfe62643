"""The API clients' counters (429s, retries, stock writes) against the simulators over loopback HTTP."""

from __future__ import annotations

import random

import httpx
import pytest
import trio

from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.io.clover import AppGate, CloverClient
from cloverwoo_daemon.io.metrics import Metrics
from cloverwoo_daemon.io.woocommerce import WooClient
from cloverwoo_daemon.ports import NotFound, RemoteError
from cloverwoo_daemon.sim.clover import CloverSim, RateLimits
from cloverwoo_daemon.sim.woocommerce import WooSim

MID = "MERCHANTAAAAA"
TOKEN = "tok-a-secret-0001"


def counts(metrics: Metrics, side: str) -> dict[str, float]:
    def get(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, {"side": side, **labels})
        assert value is not None, name
        return value

    return {"429": get("cloverwoo_remote_rate_limited_total"), "retries": get("cloverwoo_remote_retries_total"),
            "ok": get("cloverwoo_remote_writes_total", result="ok"),
            "error": get("cloverwoo_remote_writes_total", result="error")}


async def test_clover_429s_retries_and_writes_are_counted(nursery: trio.Nursery) -> None:
    sim = CloverSim(seed=1)
    sim.add_merchant("Downtown", merchant_id=MID, token=TOKEN)
    await nursery.start(sim.run)
    sim.limits = RateLimits(token_rate=4, token_burst=4, early_retry_penalty=0.0)  # the client paces at 16/s
    ids = [sim.add_item(MID, f"Item {n}", quantity=0) for n in range(12)]
    metrics = Metrics()
    c = CloverClient(location="downtown", merchant_id=MID, token=TOKEN, base_url=sim.base_url, app_gate=AppGate(),
                     backoff=Backoff(base=0.05, cap=0.5, max_attempts=10), rng=random.Random(0),
                     hooks=metrics.client_hooks("clover"))
    try:
        async with trio.open_nursery() as n:
            for k, iid in enumerate(ids):
                n.start_soon(c.set_stock, iid, k + 1)
        rejected = sim.token_stats(MID).rejected_429
        assert rejected > 0, "the sim's lower limit should have produced 429s"
        # every 429 was retried and every write landed in the end
        assert counts(metrics, "clover") == {"429": rejected, "retries": rejected, "ok": 12, "error": 0}
        assert [sim.stock(MID, i) for i in ids] == [float(k + 1) for k in range(12)]

        sim.limits = RateLimits()
        await trio.sleep(1.5)  # the penalty window of the tight limit passes
        assert (await c.read_then_write(ids[0], -1, lambda target: trio.sleep(0)))[:2] == (1, 0)
        gone = sim.add_item(MID, "Gone", quantity=1)
        sim.delete_item(MID, gone)
        with pytest.raises(NotFound):
            await c.set_stock(gone, 3)
        after = counts(metrics, "clover")
        assert (after["ok"], after["error"]) == (13, 1)
        assert after["429"] == sim.token_stats(MID).rejected_429
        # the Woo side is a separate series, untouched by a Clover client
        assert counts(metrics, "woo") == {"429": 0, "retries": 0, "ok": 0, "error": 0}
    finally:
        await c.aclose()


class ThrottledFirst(httpx.AsyncBaseTransport):
    """Answers the first ``n`` requests with WooCommerce-style 429s, then passes everything to the real sim.

    The Woo simulator has no rate limit of its own (a hosting plugin or a CDN sends a store's 429s).
    """

    def __init__(self, n: int) -> None:
        self.left = n
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left > 0:
            self.left -= 1
            return httpx.Response(429, headers={"retry-after": "0"},
                                  json={"code": "too_many_requests", "message": "Slow down."})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_woo_429s_retries_and_item_writes_are_counted(nursery: trio.Nursery) -> None:
    sim = WooSim()
    await nursery.start(sim.run)
    mug = sim.add_product("Mug", sku="MUG", stock=5)
    cup = sim.add_product("Cup", sku="CUP", stock=5)
    metrics = Metrics()
    transport = ThrottledFirst(2)
    async with WooClient(sim.base_url, sim.consumer_key, sim.consumer_secret, auth="basic",
                         backoff=Backoff(base=0.001, cap=0.01, max_attempts=4), rng=random.Random(0),
                         transport=transport, hooks=metrics.client_hooks("woo")) as woo:
        results = await woo.apply_deltas([(mug, -1, 1), (cup, -2, 1)])
        assert [r.ok for r in results] == [True, True]
        assert (sim.stock(mug), sim.stock(cup)) == (4, 3)
        assert counts(metrics, "woo") == {"429": 2, "retries": 2, "ok": 2, "error": 0}

        # an item the store refuses is one failed write; its neighbour in the batch still counts as written
        results = await woo.apply_deltas([(mug, -1, 2), (WooRef(999_999), -1, 2)])
        assert [r.ok for r in results] == [True, False]
        assert counts(metrics, "woo") == {"429": 2, "retries": 2, "ok": 3, "error": 1}

        # 429 on every attempt: the retries run out and the whole batch failed
        transport.left = 10
        with pytest.raises(RemoteError):
            await woo.apply_deltas([(mug, -1, 3), (cup, -1, 3)])
        assert counts(metrics, "woo") == {"429": 6, "retries": 5, "ok": 3, "error": 3}
        assert sim.stock(mug) == 3  # nothing of the refused batch was applied
    assert counts(metrics, "clover") == {"429": 0, "retries": 0, "ok": 0, "error": 0}
