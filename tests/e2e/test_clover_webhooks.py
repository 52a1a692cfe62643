"""Clover's inventory webhooks before and after its split of the topic (``I:`` alone, or ``IS:``/``IA:``).

The daemon runs as in production, over HTTP against the simulated stores; polling is off, so only the webhooks
named in each test can carry a change. The simulated Clover is subscribed to one event type at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Env, settle, wait_for

STYLES = [
    pytest.param("legacy", "I", True, id="legacy-I"),
    pytest.param("split", "IS", True, id="split-IS"),
    pytest.param("split", "IS", False, id="split-IS-without-ts"),
]


def _only(env: Env, style: str, kind: str, ts: bool) -> None:
    c = env.world.clover
    c.webhook_style, c.subscribed, c.new_events_ts = style, frozenset({kind}), ts


def _triggers(env: Env) -> dict[str, int]:
    return dict(env.daemon.admin.status()["shards"]["triggers"])


@pytest.mark.parametrize(("style", "kind", "ts"), STYLES)
async def test_a_pos_sale_reaches_woocommerce_through_one_event_type(
        env_factory: Callable[..., Any], style: str, kind: str, ts: bool) -> None:
    """A sale, then a manual recount, each carried by one webhook event type only: ``I`` before Clover's split,
    ``IS`` after it (with and without ``ts``). Before, the router ignored every kind but ``I`` and ``O``: with
    ``IS`` alone the sale never reached WooCommerce."""
    async with env_factory(products=2, poll_every="off", clover_webhooks=style) as env:
        w = env.world
        _only(env, style, kind, ts)
        p, other = w.products
        loc = w.locations["downtown"]
        w.clover.pos_sale(loc, {p.clover["downtown"]: 3})
        await wait_for(lambda: w.woo_stock(p) == 17, timeout=20, what=f"the sale carried by {kind}: to Woo")
        w.clover.adjust(loc, p.clover["downtown"], 12)  # a recount on the dashboard
        await wait_for(lambda: w.woo_stock(p) == 12, timeout=20, what=f"the recount carried by {kind}: to Woo")
        await settle(env)
        assert w.clover_stock(p) == 12 and w.woo_stock(p) == 12
        assert w.woo_stock(other) == 20 and w.woo.stock_writes_for(other.woo) == []
        sent = {ev["objectId"].split(":")[0] for _, ev in w.clover.webhook_events()}
        assert sent == {kind}, sent
        assert _triggers(env).get("webhook:clover", 0) >= 2
        assert env.daemon.admin.status()["store"]["pending_inbox"] == 0  # every event settled


async def test_an_availability_event_triggers_a_merge_of_that_item(env_factory: Callable[..., Any]) -> None:
    """``IA`` (availability) names an item like ``I`` and ``IS``: a merge of that binding runs from fresh reads
    (here it finds the counts agree and writes nothing)."""
    async with env_factory(products=2, poll_every="off", clover_webhooks="split") as env:
        w = env.world
        _only(env, "split", "IA", True)
        p = w.products[0]
        before = _triggers(env).get("webhook:clover", 0)
        w.clover.set_available(w.locations["downtown"], p.clover["downtown"], False)
        await wait_for(lambda: _triggers(env).get("webhook:clover", 0) > before, timeout=20,
                       what="a merge triggered by the IA event")
        await settle(env)
        assert w.woo.stock_writes_for(p.woo) == [] and w.in_sync(p)
        assert env.daemon.admin.status()["store"]["pending_inbox"] == 0


async def test_odd_entries_beside_a_sale_do_not_lose_it(env_factory: Callable[..., Any]) -> None:
    """One POST with a sale's ``IS`` entry between entries the daemon cannot use (no objectId, another shape, a
    payment): acknowledged 200, the sale reaches WooCommerce, the others are counted in ``/metrics``. Before, the
    whole POST was refused 400 and the sale was lost (only a poll could find it; polling is off here)."""
    async with env_factory(products=1, poll_every="off", clover_webhooks="split") as env:
        w = env.world
        p = w.products[0]
        loc = w.locations["downtown"]
        w.clover.faults.webhooks_enabled = False  # the sale happens; its webhook is the one sent by hand below
        w.clover.pos_sale(loc, {p.clover["downtown"]: 2})
        body = json.dumps({"appId": w.clover.app_id, "merchants": {loc: [
            {"type": "UPDATE"},
            {"objectId": f"IS:{p.clover['downtown']}", "type": "UPDATE", "itemStock": {"quantity": 18.0}},
            {"objectId": "P:PAYMENT1", "type": "CREATE", "ts": 1},
            ["not", "an", "entry"],
        ]}}).encode()
        url = env.daemon.webhook_url
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{url}/webhooks/clover", content=body,
                                headers={"X-Clover-Auth": w.clover.auth_code, "Content-Type": "application/json"})
            assert r.status_code == 200 and r.json() == {"ok": True, "events": 1, "skipped": 3}, r.text
            await wait_for(lambda: w.woo_stock(p) == 18, timeout=20, what="the sale in the odd POST: to Woo")
            metrics = (await http.get(f"{url}/metrics")).text
        assert 'cloverwoo_events_received_total{result="skipped",source="clover"} 1.0' in metrics
        assert 'cloverwoo_events_received_total{result="unreadable",source="clover"} 2.0' in metrics
        assert 'cloverwoo_events_received_total{result="accepted",source="clover"} 1.0' in metrics
