"""A shop's everyday life, over HTTP and the control socket: new products, jobs that end and say what
they did, products without a SKU that can be found, oversells that show where stock ended."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import trio
from structlog.testing import capture_logs

from cloverwoo_daemon.io.control import control_call
from cloverwoo_daemon.messages import ConflictsRequest, LogRequest, ReconcileRequest, StatusRequest, SyncRequest
from tests.e2e.conftest import Env, settle, wait_for
from tests.e2e.test_sync_jobs import run_job


async def cli(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "cloverwoo_daemon.cli", "--socket",
                                   env.daemon.control_socket, *args], capture_stdout=True, capture_stderr=True,
                                  check=False)


async def status(env: Env) -> dict[str, Any]:
    resp = await control_call(env.daemon.control_socket, StatusRequest(), timeout=10.0)
    assert resp.ok, resp.error
    return resp.data


async def test_a_product_added_on_both_sides_does_not_wedge_the_jobs(env_factory: Callable[..., Any]) -> None:
    """The reconcile that met it crashed a shard; the job said "applying" for ever and held every later job."""
    async with env_factory(products=3, poll_every="1h") as env:
        w = env.world
        mid = w.locations["downtown"]
        item = w.clover.add_item(mid, "Espresso cup", sku="NEW-1", quantity=6)
        ref = w.woo.add_product("Espresso cup", sku="NEW-1", stock=6)
        with trio.fail_after(60):
            first, _ = await run_job(env, ReconcileRequest())
        assert first["state"] == "done" and first["report"]["never_synced"] == 1
        assert first["truth"] == "clover" and first["unchanged"] == 1  # recounted by the configured truth
        await settle(env)
        bound = next(b for b in env.daemon.admin.table.all() if b.sku == "NEW-1")
        assert bound.base_woo == 6 and bound.base_clover == {"downtown": 6}
        # it syncs like any other product from now on
        w.clover.pos_sale(mid, {item: 2})
        await wait_for(lambda: w.woo.stock(ref) == 4, what="the new product's POS sale reaching WooCommerce")
        # and nothing is held: every later job runs
        with trio.fail_after(60):
            again, _ = await run_job(env, ReconcileRequest())
            imported, _ = await run_job(env, SyncRequest(truth="clover"))
        assert again["state"] == "done" and imported["state"] == "done"
        st = await status(env)
        assert st["jobs"]["current"] is None
        assert all(a["restarts"] == 0 for a in st["actors"].values()), st["actors"]


async def test_an_import_says_how_many_products_it_changed(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=9, poll_every="1h") as env:
        w = env.world
        mid = w.locations["downtown"]
        w.clover.faults.webhooks_enabled = False
        for p in w.products[:7]:
            w.clover.adjust(mid, p.clover["downtown"], 5)
        with capture_logs() as logs:
            r = await cli(env, "sync", "import")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "7 changed, 2 unchanged, 0 skipped, 0 failed" in out, out
        done = [e for e in logs if e["event"] == "job_done" and e["kind"] == "import"]
        assert len(done) == 1 and done[0]["changed"] == 7 and done[0]["writes_planned"] == 7, done
        await settle(env)
        assert [w.woo_stock(p) for p in w.products] == [5] * 7 + [20, 20]
        jobs = await cli(env, "job")
        assert jobs.returncode == 0 and "last import: done" in jobs.stdout.decode()
        assert "7 changed" in jobs.stdout.decode()


async def test_a_product_without_a_sku_can_be_found_in_the_log_by_its_name(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=2, poll_every="1h") as env:
        w = env.world
        mid = w.locations["downtown"]
        item = w.clover.add_item(mid, "Blue Mug", quantity=8)
        ref = w.woo.add_product("Blue Mug", stock=8)
        with trio.fail_after(60):
            await run_job(env, ReconcileRequest())
        bound = next(b for b in env.daemon.admin.table.all() if b.name == "Blue Mug")
        assert bound.sku == "" and bound.matched_by == "name"
        with capture_logs() as logs:
            w.clover.pos_sale(mid, {item: 3})
            await wait_for(lambda: w.woo.stock(ref) == 5, what="the sale of the name-matched product merged")
            await settle(env)
        resp = await control_call(env.daemon.control_socket, LogRequest(sku="blue  MUG"), timeout=10.0)
        assert resp.ok, resp.error
        rows = resp.data
        assert rows and {r["binding_id"] for r in rows} == {bound.binding_id}
        merged = [r for r in rows if r["event"] == "merge"]
        assert merged and json.loads(merged[-1]["detail"])["product"] == "Blue Mug"
        by_id = await control_call(env.daemon.control_socket, LogRequest(sku=str(ref.product_id)), timeout=10.0)
        assert {r["binding_id"] for r in by_id.data} == {bound.binding_id}
        text = await cli(env, "log", "--sku", "Blue Mug")
        assert text.returncode == 0 and '"product": "Blue Mug"' in text.stdout.decode()
        # the daemon's own lines name it too
        lines = [e for e in logs if e.get("binding_id") == bound.binding_id]
        assert not lines or all(e.get("product") == "Blue Mug" for e in lines if "sku" in e)


async def test_an_oversell_shows_the_figure_stock_ended_at_and_the_sales(env_factory: Callable[..., Any]) -> None:
    """`conflicts` said -1 while stock went on to -3: the first figure was kept, the later sales dropped."""
    async with env_factory(products=1, stock=1, poll_every="1h") as env:
        w = env.world
        (p,) = w.products
        mid = w.locations["downtown"]
        w.clover.faults.webhooks_enabled = False
        w.woo.faults.webhooks_enabled = False
        w.woo.admin_set_stock(p.woo, 0)  # the last one sold online ...
        w.clover.adjust(mid, p.clover["downtown"], 0)  # ... and at the till, in the same minute
        with trio.fail_after(60):
            await run_job(env, ReconcileRequest())
            await settle(env)
        assert (w.woo_stock(p), w.clover_stock(p)) == (-1, -1)
        w.clover.adjust(mid, p.clover["downtown"], -3)  # two more rung up at the till
        with trio.fail_after(60):
            await run_job(env, ReconcileRequest())
            await settle(env)
        assert (w.woo_stock(p), w.clover_stock(p)) == (-3, -3)
        resp = await control_call(env.daemon.control_socket, ConflictsRequest(), timeout=10.0)
        (conflict,) = [c for c in resp.data if c["kind"] == "oversell"]
        detail = json.loads(conflict["detail"])
        assert detail["value"] == -3 and detail["first_value"] == -1
        assert [(s["side"], s["change"], s["to"]) for s in detail["sales"]][-1] == ("woo", -2, -3)
        assert len(detail["sales"]) == 3  # woo -1 and downtown -1 (the same merge), then woo -2
        text = await cli(env, "conflicts")
        assert text.returncode == 0 and '"value": -3' in text.stdout.decode()
