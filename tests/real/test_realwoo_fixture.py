"""The real-store fixture keeps its promises (what the daemon-in-the-loop tests build on)."""

from __future__ import annotations

import trio

from tests.real.stores import HOLD_PLUGIN, SYNC_PLUGIN, RealStore, WebhookListener


async def test_the_store_is_the_pinned_wordpress_and_woocommerce(realwoo: RealStore) -> None:
    status = await realwoo.ok("GET", "/system_status", params={"_fields": "environment"})
    env = status["environment"]
    assert (env["version"], env["wp_version"]) == ("11.0.1", "7.1")
    settings = await realwoo.ok("GET", "/wp-json/wc/v3/settings/products/woocommerce_manage_stock")  # any namespace
    assert settings["value"] == "yes"


async def test_helpers_build_what_they_say(realwoo: RealStore) -> None:
    parent, (tracked, loose) = await realwoo.create_variable_product({"S": 3, "M": None})
    assert sorted((await realwoo.read(parent))["variations"]) == sorted([tracked.id, loose.id])
    assert (tracked.data["manage_stock"], tracked.data["stock_quantity"], tracked.sku) == (True, 3, f"{parent.sku}-S")
    assert (loose.data["manage_stock"], loose.data["stock_quantity"]) == (False, None)
    edited = await realwoo.set_stock(tracked, 9)
    assert edited["stock_quantity"] == 9
    order = await realwoo.order({tracked: 2})
    assert await realwoo.stock(tracked) == 7
    await realwoo.refund(order, {tracked: 1})
    assert await realwoo.stock(tracked) == 8
    await realwoo.set_order_status(int(order["id"]), "cancelled")
    assert await realwoo.stock(tracked) == 9
    key, secret = await realwoo.add_key("read")
    assert (await realwoo.request("GET", tracked.path, key=(key, secret))).status_code == 200
    await realwoo._forget_keys()
    assert (await realwoo.request("GET", tracked.path, key=(key, secret))).status_code == 401


async def test_delivery_switches_are_files_live_on_the_next_request(
    realwoo: RealStore, webhook_listener: WebhookListener
) -> None:
    listener = webhook_listener
    item = await realwoo.create_product(stock=5)
    await realwoo.create_webhook("product.updated", listener.url, listener.secret)
    await realwoo.set_sync_webhooks(True)
    assert (realwoo.rig.mu_plugins / SYNC_PLUGIN).exists()
    await realwoo.ok("PUT", item.path, json={"inventory_delta": -1})
    assert [r.json()["stock_quantity"] for r in listener.deliveries()] == [4]
    assert await realwoo.pending_deliveries(item.id) == 0  # nothing queued: sent inside the request
    await realwoo.set_sync_webhooks(False)
    async with realwoo.deliveries_held():
        assert (realwoo.rig.mu_plugins / HOLD_PLUGIN).exists()
        await realwoo.ok("PUT", item.path, json={"inventory_delta": -1})
        assert await realwoo.pending_deliveries(item.id) == 1  # queued by the request itself
        async with realwoo.cron_ticking(interval=0.5):
            await trio.sleep(3)
        assert await realwoo.pending_deliveries(item.id) == 1  # WP-Cron ran nothing while held
    assert not (realwoo.rig.mu_plugins / HOLD_PLUGIN).exists()
    assert [r.json()["stock_quantity"] for r in listener.deliveries()] == [4]
