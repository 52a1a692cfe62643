"""``cloverwoo demo`` end to end: the real command in a subprocess, judged by its JSON summary.

The demo is the first thing a new user runs (``make demo``), so it is tested
as they run it: through the CLI, in its own process, with a hard timeout.
The ledger's latency arithmetic is tested directly against a simulated world
(no daemon): a sale counts as landed only once the other side imported it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from cloverwoo_daemon.demo import Ledger, Shoppers, percentile
from cloverwoo_daemon.sim.harness import start_world

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 90.0, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_demo_json_summary_has_sales_latencies_and_no_drift() -> None:
    # a short TMPDIR of its own: the daemon's control socket lives in the demo's temp dir (AF_UNIX: 108 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="cwdemo-"))
    try:
        proc = run_cli("--json", "demo", "--seconds", "4", "--products", "5", "--rate", "4", "--seed", "3",
                       tmpdir=tmp)
        left = list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["drift"] == 0 and summary["drifting"] == []
    assert summary["settled"] is True
    assert summary["sales"]["clover"] > 0 and summary["sales"]["woo"] > 0
    assert summary["events_accepted"]["total"] >= summary["sales"]["clover"]
    for direction in ("clover_to_woo", "woo_to_clover"):
        lat = summary["latency_ms"][direction]
        assert lat["count"] > 0
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert summary["merges"] > 0
    # the demo's temp dir (config, secrets, state, log) is gone
    assert left == []


def test_demo_rejects_bad_arguments() -> None:
    proc = run_cli("demo", "--seconds", "0")
    assert proc.returncode == 2
    assert "--seconds" in proc.stderr


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(list(reversed(values)), 100) == 100.0


async def test_ledger_counts_a_sale_only_once_the_other_side_imported_it(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, stock=10)
        p = world.products[0]
        mid, item = world.locations["downtown"], p.clover["downtown"]
        ledger = Ledger(world)
        world.clover.pos_sale(mid, {item: 2})
        ledger.sold("clover", p, 2, at=100.0)
        # WooCommerce sells one itself: its stock drops, but it has imported nothing from Clover yet
        world.woo.online_order({p.woo: 1})
        ledger.sold("woo", p, 1, at=100.1)
        ledger.sample(100.2)
        assert ledger.latencies_ms == {"clover_to_woo": [], "woo_to_clover": []}
        assert ledger.waiting() == 2
        # the daemon carries Clover's sale across: Woo 10 - 1 - 2
        world.woo.admin_set_stock(p.woo, 7)
        ledger.sample(100.25)
        assert [round(v) for v in ledger.latencies_ms["clover_to_woo"]] == [250]
        assert ledger.waiting() == 1
        # and Woo's sale into Clover: 10 - 2 - 1
        world.clover.adjust(mid, item, 7)
        ledger.sample(100.4)
        assert [round(v) for v in ledger.latencies_ms["woo_to_clover"]] == [300]
        assert ledger.drift() == []
        # a refund on one side only: drift until the other side follows
        ledger.refunded("woo", p, 1, at=101.0)
        world.woo.admin_set_stock(p.woo, 8)
        assert ledger.drift() == [{"sku": p.sku, "clover": 7, "woo": 8, "expected": 8}]
        nursery.cancel_scope.cancel()


async def test_shoppers_never_sell_what_their_side_shows_out_of_stock(tmp_path: Path) -> None:
    import random

    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=3, locations=2, stock=2)
        ledger = Ledger(world)
        shoppers = Shoppers(world, ledger, random.Random(7), refund_rate=0.0)
        for i in range(200):
            shoppers.one(float(i))
        for p in world.products:
            assert world.woo_stock(p) == 4 - ledger.net["woo"][p.sku] >= 0
            for loc in world.locations:
                assert (world.clover_stock(p, loc) or 0) >= 0
        # nothing syncs here, so each side sold out on its own: 2 x 2 at Clover, 4 at Woo, per product
        assert ledger.units["clover"] == 3 * 4 and ledger.units["woo"] == 3 * 4
        assert shoppers.skipped > 0
        nursery.cancel_scope.cancel()
