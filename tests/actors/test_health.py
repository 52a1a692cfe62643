"""The health actor's watch over Clover silence and reachability: one alert per episode, re-armed after it.

``look()`` reads only the other actors' figures (plain callables here, as
``app.py`` wires them); the Woo client is never called by it.
"""

from __future__ import annotations

import msgspec

from cloverwoo_daemon.actors.health import HealthActor, HealthDeps
from cloverwoo_daemon.core.alerts import AlertKind
from cloverwoo_daemon.io.woocommerce import WooClient


class WebhookRow(msgspec.Struct):
    id: int
    topic: str
    status: str
    delivery_url: str


class World:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.last_clover: float | None = None
        self.found = 0
        self.reach: dict[str, tuple[bool, str]] = {"Clover location downtown": (True, ""), "WooCommerce": (True, "")}
        self.alerts: list[tuple[AlertKind, str, str]] = []

    def actor(self, woo: WooClient) -> HealthActor:
        return HealthActor(HealthDeps(
            woo=woo, alert=lambda k, s, d: self.alerts.append((k, s, d)), clover_silence=600.0,
            last_clover_event=lambda: self.last_clover, clover_found=lambda: self.found,
            reachability=lambda: dict(self.reach), clock=lambda: self.now,
        ))


async def test_clover_silence_alerts_once_while_the_poll_finds_changes_and_rearms_on_a_webhook() -> None:
    w = World()
    async with WooClient("http://127.0.0.1:9", "ck", "cs") as woo:
        a = w.actor(woo)
        w.now += 700
        a.look()
        assert w.alerts == []  # silent, but the poll found nothing either: a quiet shop
        w.found = 3
        a.look()
        assert [k for k, _, _ in w.alerts] == ["webhook_silent"]
        assert "never since the daemon started" in w.alerts[0][2]
        w.found = 5
        w.now += 60
        a.look()
        assert len(w.alerts) == 1  # the same episode
        w.last_clover = w.now  # a webhook arrives
        a.look()
        assert a.status.clover_silent_since is None
        w.now += 700
        w.found = 6
        a.look()
        assert [k for k, _, _ in w.alerts] == ["webhook_silent", "webhook_silent"]
        assert "last one 12 min ago" in w.alerts[1][2]


async def test_unreachable_alerts_once_per_outage() -> None:
    w = World()
    async with WooClient("http://127.0.0.1:9", "ck", "cs") as woo:
        a = w.actor(woo)
        w.reach["Clover location downtown"] = (False, "ConnectError after 4 attempts")
        a.look()
        a.look()
        assert w.alerts == [("unreachable", "Clover location downtown", "ConnectError after 4 attempts")]
        assert a.status.unreachable == ["Clover location downtown"]
        w.reach["Clover location downtown"] = (True, "")
        a.look()
        assert a.status.unreachable == []
        w.reach["Clover location downtown"] = (False, "")
        a.look()
        assert len(w.alerts) == 2 and w.alerts[1][2] == "requests keep failing"


class Hooks:
    """WooCommerce's webhooks as the health check lists them; ``set_webhook_status`` records each re-enable."""

    def __init__(self) -> None:
        self.status = "disabled"
        self.re_enables = 0

    async def list_webhooks(self, status: str = "all") -> list[WebhookRow]:
        return [WebhookRow(id=7, topic="product.updated", status=self.status,
                           delivery_url="https://sync.example.com/webhooks/woocommerce")]

    async def set_webhook_status(self, webhook_id: int, status: str) -> WebhookRow:
        self.status = status
        self.re_enables += 1
        return (await self.list_webhooks())[0]


async def test_a_webhook_disabled_again_without_a_delivery_is_re_enabled_with_backoff_and_alerted_once() -> None:
    w, hooks = World(), Hooks()
    last_woo: list[float | None] = [None]
    a = HealthActor(HealthDeps(woo=hooks, alert=lambda k, s, d: w.alerts.append((k, s, d)), check_every=300.0,
                               last_woo_event=lambda: last_woo[0], clock=lambda: w.now))

    async def check_after(seconds: float) -> None:
        w.now += seconds
        await a.check_webhooks()

    await check_after(0)
    assert (hooks.re_enables, len(w.alerts)) == (1, 1)
    hooks.status = "disabled"  # the next delivery failed too: WooCommerce kept its failure count
    await check_after(300)  # 300 s after: the first wait is one check interval
    assert (hooks.re_enables, len(w.alerts)) == (2, 1)
    hooks.status = "disabled"
    await check_after(300)  # now the wait is 600 s: held back, shown in the status
    assert hooks.re_enables == 2 and a.status.held_back == {7: w.now + 300}
    await check_after(300)
    assert (hooks.re_enables, len(w.alerts)) == (3, 1) and a.status.held_back == {}
    hooks.status = "disabled"
    last_woo[0] = w.now + 1  # a delivery reached us after that re-enable: the episode ended
    await check_after(10)
    assert (hooks.re_enables, len(w.alerts)) == (4, 2)  # a new episode: at once, and alerted
