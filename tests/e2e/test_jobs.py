"""Jobs beside live traffic: a recount never counts a change twice, dry runs write nothing, the CLI shows the diff.

(The import / push / reconcile / resume basics are in ``test_sync_jobs.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import trio

from cloverwoo_daemon.messages import ReconcileRequest, SyncRequest
from cloverwoo_daemon.sim.woocommerce import Latency
from tests.e2e.conftest import Env, settle, wait_for
from tests.e2e.test_sync_jobs import run_job, writes


async def cli(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "cloverwoo_daemon.cli", "--socket",
                                   env.daemon.control_socket, *args], capture_stdout=True, capture_stderr=True,
                                  check=False)


async def test_import_racing_a_live_merge_counts_the_sale_once(env_factory: Callable[..., Any]) -> None:
    """An online sale merged between the job's list reads and its recount must not be applied twice.

    The Clover list is read first, then the sale lands and is merged (Woo 19, Clover 19) while the
    Woo list is still being served; the recount then holds a Clover figure older than the binding's
    bases. Writing from it would put Woo back to 20 (and the next merge would deduct the sale again).
    """
    async with env_factory(products=2, poll_every="1h") as env:
        w = env.world
        a, b = w.products
        table = env.daemon.admin.jobs.table
        bid = next(x.binding_id for x in table.all() if x.sku == a.sku)
        lists_before = w.clover.count("GET items")
        w.woo.latency = Latency(list_page=3.0)  # the job's Woo list answers after the sale is merged
        async with trio.open_nursery() as n:
            results: list[dict[str, Any]] = []

            async def job() -> None:
                results.append((await run_job(env, SyncRequest(truth="clover")))[0])

            n.start_soon(job)
            # The Clover list is answered in the same step it is counted (no latency): after this it is stale.
            await wait_for(lambda: w.clover.count("GET items") > lists_before, what="the job's Clover list read")
            w.woo.latency = Latency()  # the merge's own reads are fast; the list already in progress stays slow
            w.woo.online_order({a.woo: 1})
            await wait_for(lambda: (x := table.get(bid)) is not None and x.base_woo == 19,
                           what="the sale merged to both sides")
            assert (w.woo_stock(a), w.clover_stock(a)) == (19, 19)
            cur = env.daemon.admin.jobs.current
            assert cur is not None and cur.state == "reading"  # the race is set up: the recount comes after
        (result,) = results
        assert result["state"] == "done" and result["total"] == 2
        await settle(env)
        assert (w.woo_stock(a), w.clover_stock(a)) == (19, 19)
        assert (w.woo_stock(b), w.clover_stock(b)) == (20, 20)
        # and nothing is left for the next merge to deduct again
        w.woo.online_order({b.woo: 1})
        await wait_for(lambda: w.clover_stock(b) == 19, what="a later sale merged")
        await settle(env)
        assert (w.woo_stock(a), w.clover_stock(a)) == (19, 19)


async def test_push_dry_run_writes_nothing_and_the_cli_prints_the_diff(env_factory: Callable[..., Any]) -> None:
    async with env_factory(products=3, locations=2, poll_every="1h") as env:
        w = env.world
        a, b, c = w.products
        w.woo.faults.webhooks_enabled = False
        w.woo.admin_set_stock(a.woo, 50)  # Woo is the truth: Clover must gain 10 (routed over the locations)
        w.woo.admin_set_stock(b.woo, 36)
        before = writes(env)
        r = await cli(env, "--json", "sync", "push", "--dry-run")
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.decode().splitlines()]  # --json: one object a line
        assert all("progress" in x for x in lines[:-1])
        result = lines[-1]["result"]
        assert result["kind"] == "push" and result["dry_run"] and result["writes_planned"] == 2
        diff = {row["sku"]: row for row in result["diff"]}
        assert set(diff) == {a.sku, b.sku}
        assert sum(new - old for old, new in diff[a.sku]["clover"].values()) == 10
        assert sum(new - old for old, new in diff[b.sku]["clover"].values()) == -4
        await settle(env)
        assert writes(env) == before
        assert [w.clover_stock(p) for p in (a, b, c)] == [40, 40, 40]
        assert [w.woo_stock(p) for p in (a, b, c)] == [50, 36, 40]

        human = await cli(env, "sync", "push", "--dry-run")
        assert human.returncode == 0, human.stderr
        out = human.stdout.decode()
        assert "push done" in out and "2 binding(s) would change" in out
        assert a.sku in out and b.sku in out and c.sku not in out.split("would change")[1]
        await settle(env)
        assert writes(env) == before


async def test_import_of_a_product_deleted_mid_job_unbinds_it_and_finishes(
    env_factory: Callable[..., Any]
) -> None:
    """A product deleted after the job listed it: its write fails; the retry reads fresh, unbinds, and the job ends.

    (Retrying from the job's list reads would fail the same way for ever, and the job, holding the
    catalogue lock, would block every later reconciliation.)
    """
    async with env_factory(products=2, poll_every="1h") as env:
        w = env.world
        a, b = w.products
        mid = w.locations["downtown"]
        w.clover.faults.webhooks_enabled = False
        w.clover.adjust(mid, a.clover["downtown"], 7)
        w.clover.adjust(mid, b.clover["downtown"], 8)
        key = ("GET", "/wp-json/wc/v3/products")
        woo_lists = w.woo.requests[key]
        w.clover.faults.latency = 2.0  # the job's Clover list answers late; its Woo list at once
        async with trio.open_nursery() as n:
            results: list[dict[str, Any]] = []

            async def job() -> None:
                with trio.fail_after(40):
                    results.append((await run_job(env, SyncRequest(truth="clover")))[0])

            n.start_soon(job)
            await wait_for(lambda: w.woo.requests[key] > woo_lists, what="the job's Woo list read")
            await trio.sleep(0.5)  # served (no latency on Woo): the list holds product a
            async with httpx.AsyncClient(auth=(w.woo.consumer_key, w.woo.consumer_secret)) as client:
                r = await client.delete(f"{w.woo.api_url}/products/{a.woo.product_id}", params={"force": "true"})
                assert r.status_code == 200
            w.clover.faults.latency = 0.0
        (result,) = results
        assert result["state"] == "done" and result["report"]["bindings"] == 2  # a was in the job's lists
        await settle(env)
        assert (w.woo_stock(b), w.clover_stock(b)) == (8, 8)
        assert w.clover_stock(a) == 7  # the truth side is left alone
        assert {x.sku for x in env.daemon.admin.table.all()} == {b.sku}
        rows = await env.daemon.admin.store.query_log(sku=a.sku, limit=100)
        assert any(row.event == "unbound" and "deleted" in row.detail for row in rows)


async def test_a_sale_merged_during_reconciliation_is_not_drift(env_factory: Callable[..., Any]) -> None:
    """Bases newer than the job's list reads (a merge committed meanwhile) are not drift: no false alarm."""
    async with env_factory(products=2, poll_every="1h") as env:
        w = env.world
        a, b = w.products
        table = env.daemon.admin.jobs.table
        bid = next(x.binding_id for x in table.all() if x.sku == a.sku)
        lists_before = w.clover.count("GET items")
        w.woo.latency = Latency(list_page=3.0)
        async with trio.open_nursery() as n:
            results: list[dict[str, Any]] = []

            async def job() -> None:
                results.append((await run_job(env, ReconcileRequest()))[0])

            n.start_soon(job)
            await wait_for(lambda: w.clover.count("GET items") > lists_before, what="the job's Clover list read")
            w.woo.latency = Latency()
            w.clover.pos_sale(w.locations["downtown"], {a.clover["downtown"]: 2})
            await wait_for(lambda: (x := table.get(bid)) is not None and x.base_woo == 18,
                           what="the sale merged to both sides")
            cur = env.daemon.admin.jobs.current
            assert cur is not None and cur.state == "reading"
        (result,) = results
        assert result["state"] == "done" and result["report"]["drifted"] == 0 and result["report"]["in_flight"] == 1
        await settle(env)
        assert (w.woo_stock(a), w.clover_stock(a)) == (18, 18)
        assert (w.woo_stock(b), w.clover_stock(b)) == (20, 20)
