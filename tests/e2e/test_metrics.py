"""``GET /metrics`` of a running daemon, parsed with prometheus_client's own parser after real traffic."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from cloverwoo_daemon.io.metrics import BINDING_STATES, TRIGGER_KINDS
from tests.e2e.conftest import settle, wait_for

# family name (as the parser reports it: counters without ``_total``) -> type
EXPECTED = {
    "cloverwoo_events_received": "counter",
    "cloverwoo_propagation_seconds": "histogram",
    "cloverwoo_merges": "counter",
    "cloverwoo_merge_backlog": "gauge",
    "cloverwoo_remote_writes": "counter",
    "cloverwoo_remote_rate_limited": "counter",
    "cloverwoo_remote_retries": "counter",
    "cloverwoo_intake_queue_depth": "gauge",
    "cloverwoo_shard_queue_depth": "gauge",
    "cloverwoo_inbox_pending_events": "gauge",
    "cloverwoo_bindings": "gauge",
    "cloverwoo_conflicts": "counter",
    "cloverwoo_conflicts_open": "gauge",
    "cloverwoo_alerts_sent": "counter",
    "cloverwoo_webhook_deliveries": "counter",
    "cloverwoo_webhook_ack_seconds": "histogram",
}


class Scrape:
    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.samples += [(s.name, dict(s.labels), s.value) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        found = [v for n, ls, v in self.samples if n == name and labels.items() <= ls.items()]
        assert found, f"no sample {name}{labels}"
        return sum(found)

    def labels(self, name: str, label: str) -> set[str]:
        return {ls[label] for n, ls, _ in self.samples if n == name and label in ls}


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


async def scrape_when(url: str, idle: Callable[[Scrape], bool], *, timeout: float = 10.0) -> Scrape:
    """Scrape until ``idle`` holds (a late webhook echo may still be on its way); the last scrape either way."""
    with trio.move_on_after(timeout):
        while not idle(m := await scrape(url)):
            await trio.sleep(0.1)
    return m


async def test_metrics_after_sales_a_forged_webhook_and_an_oversell(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=3) as env:
        w = env.world
        url = env.daemon.webhook_url
        before = await scrape(url)
        assert before.value("cloverwoo_bindings", state="synced") == 3
        assert before.value("cloverwoo_remote_writes_total", side="woo", result="ok") == 0

        a, b, c = w.products
        w.clover.pos_sale(w.locations["downtown"], {a.clover["downtown"]: 2})
        w.woo.online_order({b.woo: 3})
        await wait_for(lambda: w.woo_stock(a) == 18 and w.clover_stock(b) == 17, what="both sales synced")
        w.clover.pos_sale(w.locations["downtown"], {c.clover["downtown"]: 25})  # 20 in stock: an oversell
        await wait_for(lambda: w.woo_stock(c) == -5, what="the oversell synced")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = json.dumps({"appId": "APP", "merchants": {w.locations["downtown"]: [
                {"objectId": f"I:{a.clover['downtown']}", "type": "UPDATE", "ts": 1}]}})
            forged = await client.post("/webhooks/clover", content=body, headers={"X-Clover-Auth": "forged"})
            assert forged.status_code == 401
        await settle(env)
        store = env.daemon.admin.store

        def idle(m: Scrape) -> bool:
            return sum(m.value(q) for q in ("cloverwoo_inbox_pending_events", "cloverwoo_merge_backlog",
                                            "cloverwoo_shard_queue_depth", "cloverwoo_intake_queue_depth")) == 0

        m = await scrape_when(url, idle)
        for name, kind in EXPECTED.items():
            assert m.types.get(name) == kind, f"{name}: {m.types.get(name)} instead of {kind}"
        # -- events: both sources accepted through their webhooks, the forged one refused and counted
        assert m.value("cloverwoo_events_received_total", source="clover", result="accepted") >= 2
        assert m.value("cloverwoo_events_received_total", source="woocommerce", result="accepted") >= 1
        assert m.value("cloverwoo_events_received_total", source="clover", result="rejected_auth") == 1
        assert m.value("cloverwoo_events_received_total", source="woocommerce", result="rejected_auth") == 0
        # -- writes reached both sides, none failed; the sims set no rate limit here
        assert m.value("cloverwoo_remote_writes_total", side="woo", result="ok") >= 2
        assert m.value("cloverwoo_remote_writes_total", side="clover", result="ok") >= 1
        assert m.value("cloverwoo_remote_writes_total", result="error") == 0
        assert m.labels("cloverwoo_remote_rate_limited_total", "side") == {"clover", "woo"}
        # -- merges and their latency, labelled by trigger kind only
        assert m.value("cloverwoo_merges_total", result="ok") >= 3
        assert m.value("cloverwoo_merges_total", result="failed") == 0
        assert m.value("cloverwoo_propagation_seconds_count") >= 3
        assert m.labels("cloverwoo_propagation_seconds_count", "trigger") <= set(TRIGGER_KINDS)
        assert m.labels("cloverwoo_propagation_seconds_count", "trigger") & {"webhook_clover", "poll_clover"}
        # -- queues drain once settled (every event settled in the store too), one series per shard
        assert idle(m), [s for s in m.samples if "queue" in s[0] or "backlog" in s[0] or "pending" in s[0]]
        assert m.labels("cloverwoo_shard_queue_depth", "shard") == {"0", "1", "2", "3"}
        assert store.statistics().pending_inbox == 0
        # -- bindings by state: every product exactly once, the oversold one in conflict
        assert m.labels("cloverwoo_bindings", "state") == set(BINDING_STATES)
        assert m.value("cloverwoo_bindings") == len(w.products)
        assert m.value("cloverwoo_bindings", state="conflict") == 1
        assert m.value("cloverwoo_bindings", state="synced") == 2
        assert m.value("cloverwoo_conflicts_open") == 1
        assert m.value("cloverwoo_conflicts_total") >= 1
        # -- no email is configured: nothing sent, every kind still listed at 0
        assert m.value("cloverwoo_alerts_sent_total") == 0
        assert "oversell" in m.labels("cloverwoo_alerts_sent_total", "kind")
        # -- no label carries a SKU or an id
        assert not [ls for _, ls, _ in m.samples if any(p.sku in v for p in w.products for v in ls.values())]

        # resolving the conflict shows at the next scrape
        (conflict,) = await store.list_conflicts()
        assert await store.resolve_conflicts([conflict.id or 0]) == 1
        m = await scrape(url)
        assert m.value("cloverwoo_conflicts_open") == 0
        assert m.value("cloverwoo_bindings", state="conflict") == 0
        assert m.value("cloverwoo_bindings", state="synced") == 3
