"""The health actor's watch over Clover silence and reachability: one alert per episode, re-armed after it.

``look()`` reads only the other actors' figures (plain callables here, as
``app.py`` wires them); the Woo client is never called by it.
"""

from __future__ import annotations

from cloverwoo_daemon.actors.health import HealthActor, HealthDeps
from cloverwoo_daemon.core.alerts import AlertKind
from cloverwoo_daemon.io.woocommerce import WooClient


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
