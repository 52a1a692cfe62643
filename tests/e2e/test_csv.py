"""CSV import beyond the basics (``test_stock_csv.py``): by id, only real changes written, a stale file refused.

What an imported row means: ``clover_stock`` is the new count at that (product, location), as after a recount;
Clover is set to it through the binding's shard and WooCommerce follows by the normal merge (the sum over
locations). ``woo_stock`` is never written: filled in, it must still be the agreed WooCommerce figure, else
the stock moved since the export and the row is refused (so an edited export cannot undo later sales).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.core.csv_rows import HEADER
from tests.e2e.conftest import Env, settle, wait_for


async def cli(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "cloverwoo_daemon.cli", "--socket",
                                   env.daemon.control_socket, *args], capture_stdout=True, capture_stderr=True,
                                  check=False)


async def export(env: Env, path: Path) -> list[dict[str, str]]:
    r = await cli(env, "export-csv", str(path))
    assert r.returncode == 0, r.stderr
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=HEADER, quoting=csv.QUOTE_ALL)
        wr.writeheader()
        wr.writerows(rows)


def clover_writes(env: Env) -> int:
    return env.world.clover.count("POST item_stocks/{id}")


async def test_import_by_id_writes_only_the_edited_count(env_factory: Callable[..., Any], tmp_path: Path) -> None:
    async with env_factory(products=3, locations=2, poll_every="1h") as env:
        w = env.world
        a, b, c = w.products
        rows = await export(env, tmp_path / "out.csv")
        assert {(r["woo_product_id"], r["woo_variation_id"], r["location"]) for r in rows} == {
            (str(p.woo.product_id), str(p.woo.variation_id), loc)
            for p in w.products for loc in ("downtown", "airport")}
        for r in rows:
            if r["woo_product_id"] == str(b.woo.product_id) and r["location"] == "downtown":
                r["clover_stock"] = "3"
            r["sku"] = "renamed-in-the-spreadsheet"  # --match id ignores the SKU column
        write(tmp_path / "in.csv", rows)
        before = clover_writes(env)
        r = await cli(env, "import-csv", str(tmp_path / "in.csv"), "--match", "id")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "applied 6 row(s); rejected 0" in out and "1 count(s) to set, 5 already at that count" in out
        await wait_for(lambda: w.woo_stock(b) == 23, what="woo = 3 + 20")
        await settle(env)
        assert (w.clover_stock(b, "downtown"), w.clover_stock(b, "airport"), w.woo_stock(b)) == (3, 20, 23)
        assert all((w.clover_stock(p), w.woo_stock(p)) == (40, 40) for p in (a, c))
        assert clover_writes(env) == before + 1  # the one count set; Woo followed by a delta, Clover by nothing

        # the same file again: its woo_stock figures are now stale for b, and a, c are unchanged
        again = await cli(env, "import-csv", str(tmp_path / "in.csv"), "--match", "id")
        assert again.returncode == 0, again.stderr
        out = again.stdout.decode()
        assert "applied 4 row(s); rejected 2" in out and "0 count(s) to set" in out
        assert out.count("stock changed since the export: woo_stock 40 in the file, 23 now") == 2
        await settle(env)
        assert clover_writes(env) == before + 1


async def test_an_edited_export_does_not_undo_a_later_sale(env_factory: Callable[..., Any], tmp_path: Path) -> None:
    async with env_factory(products=2, untracked=1, poll_every="1h") as env:
        w = env.world
        a, b = w.products
        rows = await export(env, tmp_path / "out.csv")
        assert {r["sku"]: r["sync_status"] for r in rows}["UNTRACKED-000"] == "untracked"
        w.clover.pos_sale(w.locations["downtown"], {a.clover["downtown"]: 2})  # sold after the export
        await wait_for(lambda: w.woo_stock(a) == 18, what="the sale reaching Woo")
        await settle(env)
        by_sku = {r["sku"]: r for r in rows}
        by_sku[b.sku]["clover_stock"] = "9"  # the one edit
        by_sku["UNTRACKED-000"]["clover_stock"] = "5"
        write(tmp_path / "in.csv", rows)
        dry = await cli(env, "import-csv", str(tmp_path / "in.csv"), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        out = dry.stdout.decode()
        assert "would apply 1 row(s); rejected 2" in out
        assert "line 2: stock changed since the export: woo_stock 20 in the file, 18 now" in out  # a's row
        assert "line 4: 'UNTRACKED-000' is not tracked (manage_stock is off)" in out
        r = await cli(env, "import-csv", str(tmp_path / "in.csv"))
        assert r.returncode == 0 and "applied 1 row(s); rejected 2" in r.stdout.decode()
        await wait_for(lambda: w.woo_stock(b) == 9, what="b's recount reaching Woo")
        await settle(env)
        assert (w.clover_stock(a), w.woo_stock(a)) == (18, 18)  # the sale stands
        assert (w.clover_stock(b), w.woo_stock(b)) == (9, 9)
        # an empty woo_stock sets the count regardless (a recount the merchant insists on)
        by_sku[a.sku]["woo_stock"] = ""
        write(tmp_path / "force.csv", [by_sku[a.sku]])
        forced = await cli(env, "import-csv", str(tmp_path / "force.csv"))
        assert forced.returncode == 0 and "applied 1 row(s); rejected 0" in forced.stdout.decode()
        await wait_for(lambda: w.woo_stock(a) == 20, what="a's forced recount reaching Woo")
        await settle(env)
        assert (w.clover_stock(a), w.woo_stock(a)) == (20, 20)
