"""Webhook health, the dashboard, run-time thresholds and `webhooks register`, against the simulators."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.io.webhook_setup import TOPICS, register_webhooks
from cloverwoo_daemon.io.woocommerce import WooClient
from cloverwoo_daemon.messages import DashboardRequest, ThresholdRequest
from cloverwoo_daemon.sim.harness import World, start_world
from cloverwoo_daemon.sim.woocommerce import webhook_signature
from tests.e2e.conftest import Env, settle, wait_for
from tests.io.test_smtp import smtp_server


@asynccontextmanager
async def env_with(tmp_path: Path, alerts_toml: str, **world_kw: Any) -> AsyncIterator[Env]:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", **world_kw)
        with world.config_path.open("a") as f:
            f.write("\n[alerts]\n" + alerts_toml)
        cfg = world.cfg
        running: Running = await nursery.start(
            lambda task_status: run_daemon(cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                           task_status=task_status))
        await world.connect(running.webhook_url)
        env = Env(world, running, nursery)
        await running.admin.jobs.refreshed.wait()
        await settle(env)
        try:
            yield env
        finally:
            running.stop()
            await running.stopped.wait()
            nursery.cancel_scope.cancel()


async def set_webhook_status(w: World, webhook_id: int, status: str) -> None:
    async with httpx.AsyncClient(auth=(w.woo.consumer_key, w.woo.consumer_secret)) as c:
        r = await c.put(f"{w.woo.api_url}/webhooks/{webhook_id}", json={"status": status})
        r.raise_for_status()


async def test_a_disabled_woo_webhook_is_re_enabled_and_alerted_once(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port):
        toml = (f'email_to = ["owner@shop.example"]\nsmtp_url = "smtp://127.0.0.1:{port}"\n'
                'webhook_check_every = "1s"\n')
        async with env_with(tmp_path, toml, products=1, stock=20) as env:
            w = env.world
            hooks = [w.woo.webhook(i) for i in range(1, 20) if _exists(w, i)]
            product_hook = next(h for h in hooks if h["topic"] == "product.updated")
            paused = next(h for h in hooks if h["topic"] == "order.updated")
            await set_webhook_status(w, paused["id"], "paused")  # the merchant's choice: left alone
            await set_webhook_status(w, product_hook["id"], "disabled")  # what 7 failed deliveries do
            await wait_for(lambda: w.woo.webhook(product_hook["id"])["status"] == "active", timeout=15,
                           what="the webhook re-enabled")
            await wait_for(lambda: len(sink.messages) >= 1, timeout=20, what="the alert email")
            (msg,) = sink.messages  # only this one: nothing else is low
            assert msg.subject == (f"WooCommerce disabled a webhook: WooCommerce webhook #{product_hook['id']} "
                                   "product.updated (re-enabled)")
            assert "re-enabled" in msg.body
            # it works again: a sale in Woo reaches Clover through it
            (p,) = w.products
            w.woo.online_order({p.woo: 1})
            await wait_for(lambda: w.clover_stock(p) == 19, what="clover follows the online sale")
            monitor = env.daemon.admin.health_monitor
            await monitor.checked.wait()
            await monitor.checked.wait()
            assert w.woo.webhook(paused["id"])["status"] == "paused"
            assert monitor.status.re_enabled == 1
            dash = await env.daemon.admin.handle(DashboardRequest())
            ours = {h["topic"]: h["status"] for h in dash.data["webhooks"]["woo"]["webhooks"]}  # type: ignore[union-attr]
            assert ours == {"product.updated": "active", "product.deleted": "active", "order.created": "active",
                            "order.updated": "paused"}
            await wait_for(env.daemon.admin.alerts.idle, what="alerts idle")  # type: ignore[attr-defined]
            assert len(sink.messages) == 1


def _exists(w: World, webhook_id: int) -> bool:
    try:
        w.woo.webhook(webhook_id)
    except KeyError:
        return False
    return True


async def test_dashboard_lists_the_most_urgent_first_with_run_time_thresholds(tmp_path: Path) -> None:
    toml = 'low_stock_threshold = 5\n[alerts.thresholds]\n"SKU-0002" = 5\n'
    async with env_with(tmp_path, toml, products=6, stock=10) as env:
        w, admin = env.world, env.daemon.admin
        loc = w.locations["downtown"]
        p = w.products
        resp = await admin.handle(ThresholdRequest(sku="SKU-0003", threshold=10))
        assert resp.ok and resp.data == {"sku": "SKU-0003", "threshold": 10, "override": 10}  # type: ignore[union-attr]
        w.clover.pos_sale(loc, {p[0].clover["downtown"]: 10})  # out of stock, and selling
        w.woo.online_order({p[1].woo: 6})  # 4 of 5: ratio 0.8
        w.clover.pos_sale(loc, {p[2].clover["downtown"]: 8})  # 2 of 5, sold 8
        w.clover.pos_sale(loc, {p[3].clover["downtown"]: 7})  # 3 of 10 (run-time threshold): ratio 0.3
        w.clover.adjust(loc, p[5].clover["downtown"], 20)  # a restock is not a sale ...
        await wait_for(lambda: w.woo_stock(p[5]) == 20, what="restock synced")
        w.clover.pos_sale(loc, {p[5].clover["downtown"]: 18})  # ... then 2 of 5, sold 18: before SKU-0002
        await wait_for(lambda: [w.woo_stock(x) for x in p] == [0, 4, 2, 3, 10, 2], what="all synced")
        await settle(env)
        dash = (await admin.handle(DashboardRequest())).data  # type: ignore[union-attr]
        rows = dash["products"]
        assert [r["sku"] for r in rows] == ["SKU-0000", "SKU-0003", "SKU-0005", "SKU-0002", "SKU-0001"]
        assert [r["state"] for r in rows] == ["out", "low", "low", "low", "low"]
        assert [r["sold"] for r in rows] == [10, 7, 18, 8, 6]
        assert rows[0]["locations"] == {"downtown": 0}
        assert rows[0]["out_of_stock_action"] == "backorder"
        assert rows[1]["threshold"] == 10
        assert dash["conflicts"] == []
        assert set(dash["webhooks"]["last_event"]) == {"woocommerce", "clover"}
        # clearing the run-time threshold: SKU-0003 (3 of 5) moves behind the 2-of-5 products
        resp = await admin.handle(ThresholdRequest(sku="SKU-0003", threshold=None))
        assert resp.data == {"sku": "SKU-0003", "threshold": 5, "override": None}  # type: ignore[union-attr]
        rows = (await admin.handle(DashboardRequest())).data["products"]  # type: ignore[union-attr]
        assert [r["sku"] for r in rows] == ["SKU-0000", "SKU-0005", "SKU-0002", "SKU-0003", "SKU-0001"]
        assert await admin.store.alert_thresholds() == {}  # type: ignore[attr-defined]


async def test_webhooks_register_creates_once_with_a_private_secret_the_daemon_reads(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        w = await start_world(nursery, tmp_path / "world", products=1, stock=3)
        text = w.config_path.read_text().replace("[server]\n", '[server]\npublic_url = "https://sync.example"\n', 1)
        w.config_path.write_text(text)
        cfg = w.cfg
        configured = Path(cfg.woocommerce.webhook_secret_file)
        configured.unlink()  # first installation: no secret yet
        async with WooClient(cfg.woocommerce.base_url, w.woo.consumer_key, w.woo.consumer_secret,
                             auth=cfg.woocommerce.auth) as woo:
            report = await register_webhooks(cfg, woo)
            assert sorted(report.created) == sorted(TOPICS) and not report.existing
            assert report.clover_url == "https://sync.example/webhooks/clover"
            state_file = Path(report.secret_state_file)
            assert state_file.parent == Path(cfg.state.path).parent
            secret = state_file.read_text().strip()
            assert len(secret) == 48 and secret.isalnum()
            assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
            assert report.secret_config_written and configured.read_text().strip() == secret
            assert stat.S_IMODE(configured.stat().st_mode) == 0o600
            assert secret not in repr(report)
            hooks = await woo.list_webhooks()
            assert sorted(h.topic for h in hooks) == sorted(TOPICS)
            assert {h.delivery_url for h in hooks} == {"https://sync.example/webhooks/woocommerce"}
        # deliveries are signed with the secret the daemon will read
        w.woo.admin_set_stock(w.products[0].woo, 2)
        await wait_for(lambda: any(d.topic == "product.updated" for d in w.woo.deliveries), what="a delivery")
        d = next(d for d in w.woo.deliveries if d.topic == "product.updated")
        assert d.headers["X-WC-Webhook-Signature"] == webhook_signature(d.body, secret)
        # again, through the CLI: nothing duplicated, the secret kept
        result = await trio.run_process(
            [sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(w.config_path), "webhooks", "register"],
            capture_stdout=True, capture_stderr=True, check=False, env={**os.environ, "NO_COLOR": "1"})
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        assert out.count("already registered") == 4 and ": created" not in out
        assert "https://sync.example/webhooks/clover" in out
        assert secret not in out and secret not in result.stderr.decode()
        assert configured.read_text().strip() == secret
        async with WooClient(cfg.woocommerce.base_url, w.woo.consumer_key, w.woo.consumer_secret,
                             auth=cfg.woocommerce.auth) as woo:
            assert len(await woo.list_webhooks()) == 4
        nursery.cancel_scope.cancel()


async def test_webhooks_register_refuses_without_a_public_url(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        w = await start_world(nursery, tmp_path / "world", products=0)
        result = await trio.run_process(
            [sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(w.config_path), "webhooks", "register"],
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 2
        assert "server.public_url" in result.stderr.decode()
        assert w.woo._webhooks == {}  # noqa: SLF001 - nothing was created
        nursery.cancel_scope.cancel()


async def test_healthz_reflects_what_is_configured(env_factory: Any) -> None:
    """With WooCommerce polling off (``poll_every = "off"``) no poller is expected to run: /healthz is 200. Before,
    the poller returned at once, counted as an actor down, and /healthz stayed 503 for as long as the daemon ran.
    An actor that is configured and stops is still reported (by name)."""
    async with env_factory(products=1, poll_every="off") as env:
        url = env.daemon.webhook_url
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{url}/healthz")
            assert r.status_code == 200, r.text
            assert r.json()["detail"]["actors_running"] is True
            assert "woo-poller" not in env.daemon.admin.status()["actors"]
            env.daemon.admin.supervisor.actors["router"].running = False  # as the supervisor marks a crashed one
            try:
                r = await http.get(f"{url}/healthz")
                assert r.status_code == 503 and r.json()["detail"]["actors_down"] == ["router"], r.text
            finally:
                env.daemon.admin.supervisor.actors["router"].running = True
