"""Initial sync and reconciliation jobs, driven over the control socket as `cloverwoo sync` / `reconcile` do."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.io.control import control_call, control_stream
from cloverwoo_daemon.messages import ControlRequest, ReconcileRequest, StatusRequest, SyncRequest
from cloverwoo_daemon.sim.harness import start_world
from cloverwoo_daemon.sim.woocommerce import Latency
from tests.e2e.conftest import Env, settle, wait_for
from tests.e2e.daemon_proc import DaemonProc, free_port


async def run_job(env: Env, req: ControlRequest) -> tuple[dict[str, Any], int]:
    """Run a job through the control socket; returns its result and how many progress lines came first."""
    progress = 0
    result: dict[str, Any] = {}
    async with control_stream(env.daemon.control_socket, req, timeout=30.0, idle_timeout=60.0) as stream:
        async for resp in stream:
            data = resp.data or {}
            if "progress" in data:
                progress += 1
            elif "result" in data:
                result = data["result"]
    return result, progress


def writes(env: Env) -> tuple[int, int]:
    w = env.world
    woo = sum(1 for s in w.woo.stock_writes if s.source in ("rest", "batch"))
    return woo, w.clover.count("POST item_stocks/{id}")


async def test_import_makes_woo_follow_clover_and_dry_run_writes_nothing(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=4, poll_every="1h") as env:
        w = env.world
        mid = w.locations["downtown"]
        w.clover.faults.webhooks_enabled = False  # the drift must be found by the job, not by a webhook
        for i, p in enumerate(w.products):
            w.clover.adjust(mid, p.clover["downtown"], 5 + i)
        before = writes(env)
        dry, _ = await run_job(env, SyncRequest(truth="clover", dry_run=True))
        assert dry["state"] == "done" and dry["dry_run"] and dry["writes_planned"] == 4
        assert {row["sku"]: row["woo"] for row in dry["diff"]} == {p.sku: [20, 5 + i] for i, p in enumerate(w.products)}
        assert writes(env) == before  # nothing written by a dry run
        assert all(w.woo_stock(p) == 20 for p in w.products)

        result, _ = await run_job(env, SyncRequest(truth="clover"))
        assert result["state"] == "done" and result["kind"] == "import" and result["total"] == 4
        await settle(env)
        assert [w.woo_stock(p) for p in w.products] == [5, 6, 7, 8]
        assert [w.clover_stock(p) for p in w.products] == [5, 6, 7, 8]
        assert writes(env)[1] == before[1]  # Clover, the truth, was not written


async def test_push_makes_clover_follow_woo(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=3, poll_every="1h") as env:
        w = env.world
        w.woo.faults.webhooks_enabled = False
        for i, p in enumerate(w.products):
            w.woo.admin_set_stock(p.woo, 30 + i)
        result, _ = await run_job(env, SyncRequest(truth="woo"))
        assert result["state"] == "done" and result["kind"] == "push"
        await settle(env)
        assert [w.clover_stock(p) for p in w.products] == [30, 31, 32]
        assert [w.woo_stock(p) for p in w.products] == [30, 31, 32]
        # and the bindings keep syncing in real time afterwards
        w.woo.faults.webhooks_enabled = True
        w.clover.pos_sale(w.locations["downtown"], {w.products[0].clover["downtown"]: 2})
        await wait_for(lambda: w.woo_stock(w.products[0]) == 28, what="woo 28 after the push")
        await settle(env)
        assert w.woo_stock(w.products[0]) == 28 and w.clover_stock(w.products[0]) == 28


async def _status(env: Env) -> dict[str, Any]:
    resp = await control_call(env.daemon.control_socket, StatusRequest(), timeout=10.0)
    assert resp.ok, resp.error
    return resp.data


async def test_reconcile_finds_and_fixes_drift_on_each_side(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=4, poll_every="1h") as env:
        w = env.world
        a, b, c, _ = w.products
        w.clover.faults.webhooks_enabled = False
        w.woo.faults.webhooks_enabled = False
        w.clover.pos_sale(w.locations["downtown"], {a.clover["downtown"]: 3})  # lost webhook, Clover side
        w.woo.online_order({b.woo: 2})  # lost webhook, Woo side
        w.woo.online_order({c.woo: 1})
        w.clover.pos_sale(w.locations["downtown"], {c.clover["downtown"]: 1})  # both sides of one product
        before = writes(env)
        status = await _status(env)
        startup = status["reconcile"]["last"]  # the reconcile every start runs
        assert startup is not None and status["jobs"]["last"]["reconcile"]["dry_run"] is False
        dry, _ = await run_job(env, ReconcileRequest(dry_run=True))
        assert dry["state"] == "done" and dry["report"]["drifted"] == 3
        assert dry["report"]["drifted_woo_side"] == 2 and dry["report"]["drifted_clover_side"] == 2
        assert writes(env) == before
        # a dry run corrects nothing: it is not the last reconcile, and does not hide the last real one
        status = await _status(env)
        assert status["reconcile"]["last"] == startup
        assert status["jobs"]["last"]["reconcile"]["finished_at"] == startup
        assert status["jobs"]["last_dry_run"]["reconcile"]["writes_planned"] == 3
        result, _ = await run_job(env, ReconcileRequest())
        assert result["report"]["drifted"] == 3
        last = (await _status(env))["reconcile"]["last"]
        assert last is not None and last > startup and abs(last - time.time()) < 60
        await settle(env)
        assert (w.woo_stock(a), w.clover_stock(a)) == (17, 17)
        assert (w.woo_stock(b), w.clover_stock(b)) == (18, 18)
        assert (w.woo_stock(c), w.clover_stock(c)) == (18, 18)
        again, _ = await run_job(env, ReconcileRequest())
        assert again["report"]["drifted"] == 0


async def test_import_resumes_after_a_kill_mid_job(tmp_path: Path) -> None:
    """SIGKILL while `sync import` is writing; the restarted daemon finishes it and applies nothing twice."""
    N = 150  # 20 ms per batch item: the kill lands while the batches are being applied
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=N, listen=f"127.0.0.1:{free_port()}",
                                  poll_every="1h")
        daemon = DaemonProc(world.config_path)
        try:
            url = await daemon.start(nursery)
            await world.connect(url)
            await daemon.wait_status(lambda s: s["bindings"] == N, what=f"{N} bindings")
            await daemon.wait_idle()
            mid = world.locations["downtown"]
            world.clover.faults.webhooks_enabled = False
            want = {}
            for i, p in enumerate(world.products):
                want[p.sku] = 3 + i % 9
                world.clover.adjust(mid, p.clover["downtown"], want[p.sku])
            world.woo.latency = Latency(batch_item=0.02)  # 100 writes take 2 s: the kill lands mid-job
            job = await trio.lowlevel.open_process([sys.executable, "-m", "cloverwoo_daemon.cli", "--config",
                                           str(world.config_path), "--json", "sync", "import"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await daemon.wait_status(lambda s: (s["jobs"]["current"] or {}).get("state") == "applying",
                                     timeout=60, what="the import applying")
            await wait_for(lambda: 0 < sum(1 for s in world.woo.stock_writes if s.source == "batch") < N,
                           timeout=60, what="the import writing")
            assert await daemon.kill() == -signal.SIGKILL
            with trio.move_on_after(10):
                await job.wait()
            done_before = sum(1 for s in world.woo.stock_writes if s.source == "batch")
            assert done_before < N
            await daemon.start(nursery)
            status = await daemon.wait_status(
                lambda s: (s["jobs"]["last"].get("import") or {}).get("state") == "done", timeout=120,
                what="the resumed import to finish")
            assert status["jobs"]["last"]["import"]["total"] == N
            await daemon.wait_idle()
            assert {p.sku: world.woo_stock(p) for p in world.products} == want
            assert {p.sku: world.clover_stock(p) for p in world.products} == want
            per_product: dict[int, int] = {}
            for s in world.woo.stock_writes:
                if s.source in ("rest", "batch"):
                    per_product[s.product_id] = per_product.get(s.product_id, 0) + 1
            assert max(per_product.values()) == 1  # no delta sent twice
            assert daemon.events("job_resuming")
            # the interrupted import's unfinished products differ on purpose: no "webhooks are being lost" alert
            assert daemon.events("drift_found", run=2)
            assert not [e for e in daemon.events("alert", run=2) if e.get("kind") == "drift"]
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()


async def test_reconcile_drift_above_threshold_raises_an_alert(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=6, poll_every="1h") as env:
        w = env.world
        w.clover.faults.webhooks_enabled = False
        for p in w.products:
            w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
        result, _ = await run_job(env, ReconcileRequest())
        assert result["report"]["drifted"] == 6
        store = env.daemon.admin.store

        async def drift_emails() -> list[Any]:
            return [e for e in await store.list_emails() if e.kind == "drift"]

        with trio.fail_after(20):
            while not await drift_emails():
                await trio.sleep(0.2)
        (email,) = await drift_emails()
        assert "6 of 6 products" in email.subject
