"""The daemon in the loop against a REAL WooCommerce and the Clover simulator, as a merchant runs it.

One world for the module (``daemon_world``: tests/real/daemon_world.py): the daemon is a subprocess
started as the units start it (``cloverwoo run --config``), driven over HTTP, its control socket and
the ``cloverwoo`` command; WooCommerce is the realwoo rig's WordPress 7.1 + WooCommerce 11.0.1, its
webhooks created by ``cloverwoo webhooks register``. Each test makes its own products (unique SKUs
and names) and binds them, so the tests share the world without interfering. Figures the run
measures (latencies, writes, deliveries) are printed (``pytest -s`` shows them), never asserted.

Webhook delivery: ``sync`` is the one-line mu-plugin the README recommends (WooCommerce delivers
inside the request that fires); ``async`` is WooCommerce's default (Action Scheduler run by WP-Cron,
20-60 s late). Where a test must prove that the catch-up poll carried a change, WP-Cron is HELD
(``realwoo.deliveries_held()``: no async delivery can go out), because the daemon's own polling is
the traffic that would otherwise run WP-Cron and let the late delivery race the poll.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloverwoo_daemon.sim.clover import CloverSim
from tests.real.daemon_world import LOCATION, DaemonWorld, open_world
from tests.real.stores import Item, RealStore

pytestmark = pytest.mark.realwoo

REPO = Path(__file__).resolve().parents[2]
COMPANION = REPO / "wordpress" / "cloverwoo-companion.php"
ACCEPTED = {"source": "woocommerce", "result": "accepted"}


@asynccontextmanager
async def delivery_mode(woo: RealStore, delivery: str) -> AsyncIterator[None]:
    """``sync``: WooCommerce delivers in-request; ``held``: the default async delivery with WP-Cron held,
    so only the daemon's poll can see a change; ``async``: the default, WP-Cron left to the traffic."""
    await woo.set_sync_webhooks(delivery == "sync")
    if delivery == "held":
        async with woo.deliveries_held():
            yield
    else:
        yield


async def woo_modified(woo: RealStore, item: Item) -> str:
    return str((await woo.read(item))["date_modified_gmt"])


def triggers(merges: list[dict[str, Any]]) -> list[str]:
    return [m["trigger"] for m in merges]


# --------------------------------------------------------------------------------------------------
# check-config


@pytest.mark.parametrize("auth", ["basic", "oauth1"])
async def test_check_config_passes_against_the_real_store(daemon_world: DaemonWorld, realwoo: RealStore,
                                                          auth: str, tmp_path: Path) -> None:
    """Every check ✓ with both WooCommerce key schemes; the atomic-writes line says whether the companion is there."""
    world = daemon_world
    config = tmp_path / f"{auth}.toml"
    text = world.config_path.read_text()
    assert 'auth = "basic"' in text
    config.write_text(text.replace('auth = "basic"', f'auth = "{auth}"'))

    async def check() -> list[str]:
        done = await world.cli("check-config", "--config", str(config))
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("✓", "✗"))]
        assert done.returncode == 0, f"check-config ({auth}) exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return lines

    installed = realwoo.rig.mu_plugins / COMPANION.name
    assert not installed.exists(), "the companion was left installed by another test"
    without = await check()
    shutil.copyfile(COMPANION, installed)
    try:
        with_companion = await check()
    finally:
        installed.unlink()
    print(f"\n[{auth}] check-config without the companion:\n  " + "\n  ".join(without))
    print(f"[{auth}] with the companion, the line that changes:\n  "
          + "\n  ".join(sorted(set(with_companion) - set(without))))
    atomic = [ln for ln in without if "stock writes:" in ln]
    assert atomic and atomic[0].startswith("✗ stock writes: not atomic") and "mu-plugins" in atomic[0]
    assert all(ln.startswith("✓") for ln in without if ln not in atomic), without
    assert all(ln.startswith("✓") for ln in with_companion), with_companion
    assert any(ln.startswith("✓ stock writes: atomic (companion v") for ln in with_companion)
    for needed in ("WooCommerce", "WooCommerce stock management", "WooCommerce key permission", "Clover downtown",
                   "Clover webhooks"):
        assert any(ln.startswith(f"✓ {needed}") for ln in without), (needed, without)


# --------------------------------------------------------------------------------------------------
# initial sync


async def drift_woo(woo: RealStore, item: Item, quantity: int) -> None:
    """The stock changed in the store's database behind everyone's back (another app, a restored backup):
    no webhook and no ``date_modified``, so no poll sees it; only a recount can.

    The poll's query overlaps its cursor by a second and re-lists what was modified then, fresh stock
    included: the caller first makes sure the cursor is past ``item`` (``world.move_poll_cursor``).
    """
    for query in (f"UPDATE wp_postmeta SET meta_value = '{quantity}' WHERE post_id = {item.id} AND meta_key = '_stock'",
                  f"UPDATE wp_wc_product_meta_lookup SET stock_quantity = {quantity} WHERE product_id = {item.id}"):
        await trio.to_thread.run_sync(woo.rig.sql, query)
    assert await woo.stock(item) == quantity


async def test_sync_import_push_and_their_dry_runs(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """A dry run writes nothing on either side (not even WooCommerce's date_modified) and shows the diff;
    import makes WooCommerce follow Clover, push makes Clover follow WooCommerce, each writing only the
    other side. The drift they correct is one no webhook or poll reported (a direct database edit)."""
    world = daemon_world
    a = await world.pair(realwoo, stock=5, label="IMP")
    b = await world.pair(realwoo, stock=6, label="PSH")
    await world.bind(a, b)

    async def dry_run(direction: str, expect: dict[str, Any]) -> dict[str, Any]:
        """``sync DIRECTION --dry-run``: the diff of our products is ``expect``; nothing written for 3 s."""
        modified = {p.sku: await woo_modified(realwoo, p.woo) for p in (a, b)}
        # both were last saved seconds ago, so a write now would move date_modified (one-second resolution)
        stocks = [(await realwoo.stock(p.woo), await world.clover_stock(p.clover)) for p in (a, b)]
        since, mark = time.time(), world.access_mark()
        result = await world.cli_job("sync", direction, "--dry-run")
        side = "woo" if direction == "import" else "clover"
        assert result["dry_run"] and {r["sku"]: r[side] for r in result["diff"] if r["sku"] in (a.sku, b.sku)} \
            == expect, result["diff"]
        await trio.sleep(2.5)  # a poll of each side at least
        assert world.store_writes(mark) == [], f"the daemon wrote to WooCommerce after sync {direction} --dry-run"
        assert await world.clover_writes(since) == [], f"the daemon wrote to Clover after sync {direction} --dry-run"
        for p in (a, b):
            assert await woo_modified(realwoo, p.woo) == modified[p.sku], f"{p.sku} modified by a dry run"
        assert [(await realwoo.stock(p.woo), await world.clover_stock(p.clover)) for p in (a, b)] == stocks
        return result

    await world.move_poll_cursor(realwoo)
    await drift_woo(realwoo, a.woo, 2)
    dry_import = await dry_run("import", {a.sku: [2, 5]})
    await dry_run("push", {a.sku: {LOCATION: [5, 2]}})
    since, mark = time.time(), world.access_mark()
    t0 = time.monotonic()
    imported = await world.cli_job("sync", "import")
    took_import = time.monotonic() - t0
    await world.wait_idle()
    assert imported["kind"] == "import" and not imported["dry_run"] and imported["changed"] >= 1, imported
    assert (await realwoo.stock(a.woo), await world.clover_stock(a.clover)) == (5, 5)
    assert await world.clover_writes(since) == [], "an import wrote Clover, the truth"
    import_writes = world.store_writes(mark)
    assert import_writes, "the import wrote nothing to WooCommerce"

    await world.wait_polls(2)  # the import's write to `a` moved the cursor well past `b`, made before it
    await drift_woo(realwoo, b.woo, 9)
    await dry_run("push", {b.sku: {LOCATION: [6, 9]}})
    since, mark = time.time(), world.access_mark()
    pushed = await world.cli_job("sync", "push")
    await world.wait_idle()
    assert pushed["kind"] == "push" and pushed["changed"] >= 1, pushed
    assert (await realwoo.stock(b.woo), await world.clover_stock(b.clover)) == (9, 9)
    assert world.store_writes(mark) == [], "a push wrote WooCommerce, the truth"
    assert [w.item_id for w in await world.clover_writes(since)] == [b.clover]
    print(f"\nsync import --dry-run then import ({took_import:.1f} s) of {dry_import['total']} binding(s): "
          f"{len(import_writes)} WooCommerce request(s); push: 1 Clover write")


@pytest.mark.xfail(strict=True, reason="the first start recounts every product found on both sides by "
                                       "sync.source_of_truth at once, before docs/SETUP.md's 'The first sync' "
                                       "(sync import --dry-run, then sync import) can show or choose anything; "
                                       "no setting makes a first start wait for it")
async def test_the_first_start_writes_nothing_until_the_first_sync(realwoo: RealStore, tmp_path: Path) -> None:
    """The day of the installation: the shop and the register disagree. The daemon's first start writes
    nothing, so the merchant can look at the diff first and pick the side that is right, as
    docs/SETUP.md's "The first sync" has them do after the start."""
    item = await realwoo.create_product(stock=5, name=f"Daemon first start {secrets.token_hex(3)}")
    modified = await woo_modified(realwoo, item)
    clover: list[str] = []

    def seed(sim: CloverSim, merchant_id: str) -> None:
        clover.append(sim.add_item(merchant_id, str(item.data["name"]), sku=item.sku, quantity=9))

    await trio.sleep(1.1)  # date_modified has a one-second resolution
    async with open_world(realwoo.rig, tmp_path / "first-start", seed=seed) as world:
        await world.wait_idle()
        stocks = (await realwoo.stock(item), await world.clover_stock(clover[0]))
        print(f"\nfirst start: WooCommerce {stocks[0]} (was 5), Clover {stocks[1]} (was 9)")
        assert stocks == (5, 9), "the first start wrote before any sync import or push"
        assert await woo_modified(realwoo, item) == modified
        assert await world.clover_writes() == []
        dry = await world.cli_job("sync", "import", "--dry-run")
        assert [r["woo"] for r in dry["diff"] if r["sku"] == item.sku] == [[5, 9]]
        await world.cli_job("sync", "import")
        await world.wait_idle()
        assert (await realwoo.stock(item), await world.clover_stock(clover[0])) == (9, 9)


# --------------------------------------------------------------------------------------------------
# sales each way


@pytest.mark.parametrize("delivery", ["sync", "held"])
async def test_a_sale_each_way(daemon_world: DaemonWorld, realwoo: RealStore, delivery: str) -> None:
    """A POS sale reaches WooCommerce; a real paid order reaches Clover: by its webhook when WooCommerce
    delivers synchronously, by the catch-up poll when the (default, late) delivery cannot come."""
    world = daemon_world
    p = await world.pair(realwoo, stock=20)
    await world.bind(p)
    async with delivery_mode(realwoo, delivery):
        before = await world.metrics()
        t0 = time.time()
        await world.clover_sale(p.clover, 2)
        pos = await world.wait_woo(realwoo, p.woo, 18, since=t0, what="after a POS sale of 2 ")
        t1 = time.time()
        await realwoo.order({p.woo: 3})
        answered = time.time() - t1
        online = await world.wait_clover(p.clover, 15, since=t1, what="after an online order of 3 ")
        after = await world.metrics()
        await world.wait_idle()
    accepted = world.metric(after, "cloverwoo_events_received_total", **ACCEPTED) - \
        world.metric(before, "cloverwoo_events_received_total", **ACCEPTED)
    merges = await world.merges(p.sku)
    print(f"\n[{delivery}] POS sale -> WooCommerce {pos.seconds:.2f} s; online order -> Clover {online.seconds:.2f} s "
          f"after POST /orders was sent ({online.seconds - answered:.2f} s after its answer); WooCommerce deliveries "
          f"accepted meanwhile: {accepted:g}; merge triggers: {triggers(merges)}")
    assert await realwoo.stock(p.woo) == 15 and await world.clover_stock(p.clover) == 15
    online_merge = [m for m in merges if m["detail"]["write"]["clover"]]
    assert len(online_merge) == 1, [(m["trigger"], m["detail"]) for m in merges]
    if delivery == "sync":
        assert online_merge[0]["trigger"].startswith("webhook:woo"), online_merge
        assert accepted >= 1
    else:
        assert online_merge[0]["trigger"] == "poll:woo", online_merge
        assert accepted == 0, "a WooCommerce delivery arrived while WP-Cron was held"


async def test_a_sale_each_way_with_oauth1(realwoo: RealStore, tmp_path: Path) -> None:
    """The daemon signing every WooCommerce request with OAuth 1.0a (``woocommerce.auth = "oauth1"``, what
    ``auto`` picks for a plain-http store): its reads, its stock writes and ``webhooks register``."""
    async with open_world(realwoo.rig, tmp_path / "oauth1", auth="oauth1") as world:
        p = await world.pair(realwoo, stock=10)
        await world.bind(p)
        mark = world.access_mark()
        async with delivery_mode(realwoo, "sync"):
            t0 = time.time()
            await world.clover_sale(p.clover, 1)
            pos = await world.wait_woo(realwoo, p.woo, 9, since=t0, what="(OAuth 1.0a) after a POS sale ")
            t1 = time.time()
            await realwoo.order({p.woo: 2})
            online = await world.wait_clover(p.clover, 7, since=t1, what="(OAuth 1.0a) after an online order ")
            await world.wait_idle()
        writes = world.store_writes(mark)
        print(f"\n[oauth1] POS sale -> WooCommerce {pos.seconds:.2f} s, online order -> Clover {online.seconds:.2f} s")
        assert len(await world.webhooks()) == 4
    assert writes and all("oauth_signature_method=" in w for w in writes), writes
    assert await realwoo.stock(p.woo) == 7


async def test_a_variation_each_way(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    world = daemon_world
    small, medium = await world.variable_pair(realwoo, {"S": 6, "M": 4})
    await world.bind(small, medium)
    async with delivery_mode(realwoo, "sync"):
        t0 = time.time()
        await world.clover_sale(small.clover, 1)
        pos = await world.wait_woo(realwoo, small.woo, 5, since=t0, what="(variation S) after a POS sale ")
        t1 = time.time()
        await realwoo.order({medium.woo: 2})
        online = await world.wait_clover(medium.clover, 2, since=t1, what="(variant M) after an online order ")
        await world.wait_idle()
    print(f"\nvariation: POS sale -> WooCommerce {pos.seconds:.2f} s, online order -> Clover {online.seconds:.2f} s")
    assert (await realwoo.stock(small.woo), await world.clover_stock(small.clover)) == (5, 5)
    assert (await realwoo.stock(medium.woo), await world.clover_stock(medium.clover)) == (2, 2)


async def test_a_hand_edit_in_woocommerce_reaches_clover(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """An absolute figure typed in WooCommerce (the poll's path is the sale test's ``held`` case)."""
    world = daemon_world
    delivery = "sync"
    p = await world.pair(realwoo, stock=12)
    await world.bind(p)
    async with delivery_mode(realwoo, delivery):
        t0 = time.time()
        await realwoo.set_stock(p.woo, 30)  # an absolute figure, as the product page in wp-admin saves it
        got = await world.wait_clover(p.clover, 30, since=t0, what="after a hand edit to 30 ")
        await world.wait_idle()
    print(f"\n[{delivery}] hand edit -> Clover {got.seconds:.2f} s")
    assert await realwoo.stock(p.woo) == 30


@pytest.mark.parametrize("delivery", ["sync", "held"])
async def test_a_refund_and_a_cancellation_restock_clover(daemon_world: DaemonWorld, realwoo: RealStore,
                                                          delivery: str) -> None:
    world = daemon_world
    p = await world.pair(realwoo, stock=10)
    await world.bind(p)
    async with delivery_mode(realwoo, delivery):
        order = await realwoo.order({p.woo: 3})
        await world.wait_clover(p.clover, 7, since=time.time(), what="after an order of 3 ")
        t0 = time.time()
        await realwoo.refund(order, {p.woo: 2}, restock=True)
        refund = await world.wait_clover(p.clover, 9, since=t0, what="after a refund of 2 with restock ")
        other = await realwoo.order({p.woo: 4})
        await world.wait_clover(p.clover, 5, since=time.time(), what="after an order of 4 ")
        t1 = time.time()
        await realwoo.set_order_status(int(other["id"]), "cancelled")
        cancel = await world.wait_clover(p.clover, 9, since=t1, what="after the order of 4 was cancelled ")
        await world.wait_idle()
    print(f"\n[{delivery}] refund with restock -> Clover {refund.seconds:.2f} s; cancellation -> Clover "
          f"{cancel.seconds:.2f} s")
    assert await realwoo.stock(p.woo) == 9 and await world.clover_stock(p.clover) == 9


# --------------------------------------------------------------------------------------------------
# matching


async def test_the_name_match(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """No SKU on either side: bound by name, reported as such, and synced both ways."""
    world = daemon_world
    p = await world.pair(realwoo, stock=9, by_name=True)
    assert p.woo.data["sku"] == ""
    result = await world.bind(p)
    print(f"\nname match: reconcile report {result['report']}")
    bound = [r for r in await world.sync_log(p.name) if r["event"] == "bound"]
    assert bound and '"matched_by": "name"' in bound[0]["detail"], bound
    assert any(ln.get("matched_by") == "name" and ln.get("product") == p.name
               and ln.get("woo_id") == str(p.woo.ref.product_id) for ln in await world.log_events("bound"))
    row = await world.row_of(p)
    assert row is not None and row["name"] == p.name and row["clover_item_id"] == p.clover
    async with delivery_mode(realwoo, "sync"):
        await world.clover_sale(p.clover, 2)
        await world.wait_woo(realwoo, p.woo, 7, since=time.time(), what="(name match) after a POS sale ")
        await realwoo.order({p.woo: 1})
        await world.wait_clover(p.clover, 6, since=time.time(), what="(name match) after an online order ")
        await world.wait_idle()
    assert len(await world.merges(p.name)) >= 3  # found in the log by its name


async def test_the_untracked_product_is_never_written(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """manage_stock off in WooCommerce: bound as untracked; sales on either side write nothing anywhere."""
    world = daemon_world
    p = await world.pair(realwoo, stock=None, clover_stock=7, manage_stock=False, label="UNT")
    await world.bind(p)
    before = await woo_modified(realwoo, p.woo)
    await trio.sleep(1.1)  # date_modified has a one-second resolution
    since, mark = time.time(), world.access_mark()
    async with delivery_mode(realwoo, "sync"):
        await world.clover_sale(p.clover, 2)
        await realwoo.order({p.woo: 1})
        await trio.sleep(3.0)  # webhooks each way, then a poll of each side
        await world.reconcile()
        await world.wait_idle()
    row = await world.row_of(p)
    assert row is not None and row["sync_status"] == "untracked", row
    data = await realwoo.read(p.woo)
    assert data["manage_stock"] is False and data["stock_quantity"] is None
    assert str(data["date_modified_gmt"]) == before, "the untracked product was written"
    assert await world.clover_writes(since, [p.clover]) == []
    assert world.store_writes(mark) == [], "the daemon wrote to WooCommerce"
    assert await world.clover_stock(p.clover) == 5  # the POS sale, nothing else


# --------------------------------------------------------------------------------------------------
# webhooks


async def test_webhooks_register_once_and_real_deliveries_are_verified(daemon_world: DaemonWorld,
                                                                       realwoo: RealStore) -> None:
    world = daemon_world
    assert "created" in world.register_output  # the world's own first run created them
    hooks = await world.webhooks()
    assert sorted(h["topic"] for h in hooks) == ["order.created", "order.updated", "product.deleted",
                                                 "product.updated"]
    assert all(h["status"] == "active" for h in hooks), hooks
    again = await world.cli("webhooks", "register", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert report["created"] == [] and sorted(report["existing"]) == sorted(h["topic"] for h in hooks)
    assert report["secret_reused"] is True
    assert sorted(h["id"] for h in await world.webhooks()) == sorted(h["id"] for h in hooks)  # nothing twice

    p = await world.pair(realwoo, stock=8)
    await world.bind(p)
    before = await world.metrics()
    async with delivery_mode(realwoo, "sync"):
        await realwoo.order({p.woo: 1})  # order.created, order.updated, product.updated: signed by the store
        await world.wait_clover(p.clover, 7, since=time.time(), what="after an online order ")
        # someone without the secret
        async with httpx.AsyncClient(timeout=30) as http:
            forged = await http.post(world.listen_url + "/webhooks/woocommerce", content=b'{"id": 1}',
                                     headers={"X-WC-Webhook-Topic": "product.updated",
                                              "X-WC-Webhook-Signature": "bm90IHRoZSBzaWduYXR1cmU=",
                                              "Content-Type": "application/json"})
        await world.wait_idle()
    after = await world.metrics()

    def delta(**labels: str) -> float:
        return world.metric(after, "cloverwoo_events_received_total", **labels) - \
            world.metric(before, "cloverwoo_events_received_total", **labels)

    print(f"\nwebhooks: {len(hooks)} registered once; deliveries accepted {delta(**ACCEPTED):g}, "
          f"refused {delta(source='woocommerce', result='rejected_auth'):g} (the forged one)")
    assert forged.status_code == 401
    assert delta(**ACCEPTED) >= 2  # the order's own deliveries, each signature checked
    assert delta(source="woocommerce", result="rejected_auth") == 1
    assert await world.clover_stock(p.clover) == 7


# --------------------------------------------------------------------------------------------------
# no loop


async def test_no_write_loop(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """After a sale each way (synchronous delivery: every write of ours comes straight back as a webhook),
    each side is written once, and over the next 10 s nothing more is written anywhere."""
    world = daemon_world
    p = await world.pair(realwoo, stock=25)
    await world.bind(p)
    async with delivery_mode(realwoo, "sync"):
        since, mark = time.time(), world.access_mark()
        before = await world.metrics()
        await world.clover_sale(p.clover, 1)
        await world.wait_woo(realwoo, p.woo, 24, since=since)
        await realwoo.order({p.woo: 2})
        await world.wait_clover(p.clover, 22, since=since)
        await world.wait_idle()
        sale_writes = (world.store_writes(mark), await world.clover_writes(since))
        quiet_since, quiet_mark = time.time(), world.access_mark()
        await trio.sleep(10.0)
        after = await world.metrics()
    woo_after, clover_after = world.store_writes(quiet_mark), await world.clover_writes(quiet_since)
    echoes = world.metric(after, "cloverwoo_events_received_total", **ACCEPTED) - \
        world.metric(before, "cloverwoo_events_received_total", **ACCEPTED)
    print(f"\nno loop: the sales wrote WooCommerce {len(sale_writes[0])} time(s), Clover {len(sale_writes[1])} "
          f"time(s); WooCommerce deliveries accepted {echoes:g}; in the 10 s after: WooCommerce writes "
          f"{len(woo_after)}, Clover writes {len(clover_after)}")
    assert len(sale_writes[0]) == 1 and [w.item_id for w in sale_writes[1]] == [p.clover], sale_writes
    assert woo_after == [] and clover_after == []
    assert await realwoo.stock(p.woo) == 22 and await world.clover_stock(p.clover) == 22


# --------------------------------------------------------------------------------------------------
# the race left open without the companion (measured on demand)

RACE_SECONDS = float(os.environ.get("CLOVERWOO_REALWOO_RACE_SECONDS") or 0)
RACE_RATE = 5.0  # sales per second on each side, as the figure the companion was built for was measured


@pytest.mark.skipif(RACE_SECONDS <= 0, reason="measured on demand (CLOVERWOO_REALWOO_RACE_SECONDS=120): units lost "
                                              "when POS sales and checkouts hit one product at 5/s each")
async def test_units_lost_without_the_companion(daemon_world: DaemonWorld, realwoo: RealStore) -> None:
    """POS sales (Clover) and real paid checkouts (WooCommerce) on ONE product, 5/s each, synchronous
    delivery: the daemon writes WooCommerce with ``inventory_delta``, which overwrites a checkout landing
    inside its request, and Clover with read-then-write, which overwrites a POS sale landing between the
    two. The units lost are printed; the sides must agree at the end."""
    world = daemon_world
    start = int(RACE_SECONDS * RACE_RATE * 2 * 2) + 100
    p = await world.pair(realwoo, stock=start, label="RACE")
    await world.bind(p)
    sold = {"pos": 0, "online": 0}
    overwrites_before = len(await world.loop.acall(lambda: list(world.clover.stock_overwrites)))

    async def sell(side: str, period: float) -> None:
        deadline = trio.current_time() + RACE_SECONDS
        while trio.current_time() < deadline:
            t0 = trio.current_time()
            if side == "pos":
                await world.clover_sale(p.clover, 1)
            else:
                await realwoo.order({p.woo: 1})
            sold[side] += 1
            await trio.sleep(max(0.0, period - (trio.current_time() - t0)))

    async with delivery_mode(realwoo, "sync"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sell, "pos", 1 / RACE_RATE)
            for _ in range(4):  # a checkout takes 0.2-1 s on a busy 2-core box: four buyers to keep up
                nursery.start_soon(sell, "online", 4 / RACE_RATE)
        await world.wait_idle(quiet=3.0)
    woo, clover = await realwoo.stock(p.woo), await world.clover_stock(p.clover)
    expected = start - sold["pos"] - sold["online"]
    overwrites = (await world.loop.acall(lambda: list(world.clover.stock_overwrites)))[overwrites_before:]
    total = sold["pos"] + sold["online"]
    print(f"\nrace without the companion, {RACE_SECONDS:g} s: {sold['pos']} POS sales + {sold['online']} checkouts "
          f"on one product; WooCommerce {woo}, Clover {clover}, expected {expected}: "
          f"{(woo or 0) - expected} unit(s) lost ({((woo or 0) - expected) / total:.1%} of sales); "
          f"Clover overwrites seen by the simulator: {len(overwrites)} ({-sum(o.lost for o in overwrites):g} units)")
    assert woo == clover, "the two sides do not agree after the race"


# --------------------------------------------------------------------------------------------------
# a product added mid-run


@pytest.mark.xfail(strict=True, reason="new products bind at the next catalogue refresh (a reconcile, every "
                                       "reconcile_every, or a restart), not within seconds of appearing on both "
                                       "sides, as a merchant adding a product expects")
async def test_a_product_added_on_both_sides_binds_within_seconds(daemon_world: DaemonWorld,
                                                                  realwoo: RealStore) -> None:
    """Added on both sides while the daemon runs, with a sale on each side before and after it binds:
    bound within 10 s, and all four sales kept on both sides."""
    world = daemon_world
    async with delivery_mode(realwoo, "sync"):
        p = await world.pair(realwoo, stock=10, label="NEW")
        await world.clover_sale(p.clover, 1)  # before it is bound
        await realwoo.order({p.woo: 2})
        t0 = time.monotonic()

        async def bound() -> bool:
            row = await world.row_of(p)
            return row is not None and row["sync_status"] != "never synced"

        with trio.move_on_after(10.0):
            while not await bound():
                await trio.sleep(0.25)
        assert await bound(), "not bound within 10 s of being on both sides"
        print(f"\nbound {time.monotonic() - t0:.1f} s after it was on both sides")
        await world.clover_sale(p.clover, 1)  # after
        await realwoo.order({p.woo: 1})
        await world.wait_clover(p.clover, 5, since=time.time(), what="with all four sales counted ")
        await world.wait_woo(realwoo, p.woo, 5, since=time.time(), what="with all four sales counted ")
        await world.wait_idle()


# --------------------------------------------------------------------------------------------------
# export-csv, last: every product the module bound is in it


async def test_export_csv_equals_the_store(daemon_world: DaemonWorld, realwoo: RealStore, tmp_path: Path) -> None:
    world = daemon_world
    p = await world.pair(realwoo, stock=4)
    await world.bind(p)
    await world.wait_idle()
    out = tmp_path / "stock.csv"
    done = await world.cli("export-csv", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    tracked = [r for r in rows if r["sync_status"] != "untracked"]
    assert any(int(r["woo_product_id"]) == p.woo.ref.product_id for r in tracked)
    differ = []
    for r in tracked:
        ref = (int(r["woo_product_id"]), int(r["woo_variation_id"] or 0))
        path = f"/products/{ref[0]}" + (f"/variations/{ref[1]}" if ref[1] else "")
        stock = (await realwoo.ok("GET", path))["stock_quantity"]
        if str(stock) != r["woo_stock"] or r["woo_stock"] != r["clover_stock"]:
            differ.append((r["sku"] or r["name"], r["woo_stock"], r["clover_stock"], stock, r["sync_status"]))
    print(f"\nexport-csv: {len(rows)} rows ({len(tracked)} tracked), every woo_stock checked against the store")
    assert differ == [], f"rows that differ from the store (sku, woo_stock, clover_stock, store, status): {differ}"
    assert {r["sync_status"] for r in tracked} == {"in sync"}, {r["sync_status"] for r in tracked}
