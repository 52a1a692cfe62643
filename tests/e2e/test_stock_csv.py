"""CSV export and import through the CLI, against a running daemon and the simulators."""

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


async def test_export_edit_import_round_trip(env_factory: Callable[..., Any], tmp_path: Path) -> None:
    async with env_factory(products=3, locations=2) as env:
        w = env.world
        out = tmp_path / "stock.csv"
        r = await cli(env, "export-csv", str(out))
        assert r.returncode == 0, r.stderr
        rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
        assert tuple(rows[0]) == HEADER
        assert len(rows) == 6  # one per binding and location
        assert {(row["sku"], row["location"], row["clover_stock"], row["woo_stock"], row["sync_status"])
                for row in rows} == {(p.sku, loc, "20", "40", "in sync") for p in w.products
                                     for loc in ("downtown", "airport")}
        # edit: a recount of the first product at the airport
        a = w.products[0]
        for row in rows:
            if row["sku"] == a.sku and row["location"] == "airport":
                row["clover_stock"] = "7"
        edited = tmp_path / "edited.csv"
        with open(edited, "w", encoding="utf-8-sig", newline="") as f:  # with a BOM, as spreadsheets write
            wr = csv.DictWriter(f, fieldnames=HEADER)
            wr.writeheader()
            wr.writerows(rows)
        dry = await cli(env, "import-csv", str(edited), "--dry-run")
        assert dry.returncode == 0 and b"would apply 6 row(s); rejected 0" in dry.stdout
        await settle(env)
        assert w.clover_stock(a, "airport") == 20
        r = await cli(env, "import-csv", str(edited))
        assert r.returncode == 0, r.stderr
        await wait_for(lambda: w.woo_stock(a) == 27, what="woo = 20 + 7")
        await settle(env)
        assert (w.clover_stock(a, "downtown"), w.clover_stock(a, "airport"), w.woo_stock(a)) == (20, 7, 27)
        assert all(w.woo_stock(p) == 40 for p in w.products[1:])


async def test_bad_rows_are_rejected_with_reasons_and_bad_header_applies_nothing(
    env_factory: Callable[..., Any], tmp_path: Path
) -> None:
    async with env_factory(products=2) as env:
        w = env.world
        a, b = w.products
        path = tmp_path / "in.csv"
        q = ",".join(f'"{h}"' for h in HEADER)
        path.write_text("\n".join([
            q,
            f'"","{a.sku}","","","","downtown","5","","",""',
            '"","NOPE","","","","downtown","5","","",""',
            f'"","{b.sku}","","","","downtown","many","","",""',
            f'"","{b.sku}","","","","downtown","-1","","",""',
            f'"","{a.sku}","","","","downtown","6","","",""',
            f'"","{b.sku}","","","","mars","1","","",""',
        ]) + "\n")
        r = await cli(env, "import-csv", str(path))
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "applied 1 row(s); rejected 5" in out
        for needle in ("line 3: unknown SKU 'NOPE'", "line 4: clover_stock 'many' is not a whole number",
                       "line 5: clover_stock -1 is negative", "line 6: duplicate of line 2",
                       "line 7: 'SKU-0001' is not bound at location 'mars'"):
            assert needle in out
        await wait_for(lambda: w.woo_stock(a) == 5, what="the one good row applied")
        await settle(env)
        assert (w.clover_stock(a), w.clover_stock(b), w.woo_stock(b)) == (5, 20, 20)
        path.write_text("sku,location,qty\nSKU-0001,downtown,1\n")
        bad = await cli(env, "import-csv", str(path))
        assert bad.returncode == 1 and b"nothing applied" in bad.stderr
        await settle(env)
        assert w.clover_stock(a) == 5
