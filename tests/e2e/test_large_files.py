"""A catalogue of 50,000 products (the sizing the daemon is built for): its CSV and exclusion files, through the CLI.

The daemon runs as in production against the simulated stores; the admin commands are the ``cloverwoo``
console script, so the files go through the real control socket. Before, a request was one frame of at most
64 KiB: an import of more than about 1,000 rows, or an exclusion file of a few thousand SKUs, was refused.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import settle, wait_for
from tests.e2e.daemon_proc import run_cli

PRODUCTS = 50_000


def _text(result: Any) -> str:
    return result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")


async def test_a_50000_row_csv_imports_and_a_50000_line_exclusion_file_applies(
        env_factory: Callable[..., Any], tmp_path: Path) -> None:
    async with env_factory(products=PRODUCTS, poll_every="off") as env:
        w = env.world
        cfg = ["--config", str(w.config_path)]
        assert len(env.daemon.admin.table) == PRODUCTS

        # -- export every binding, change ten counts, break one row: the whole file is checked, then applied
        exported = tmp_path / "stock.csv"
        r = await run_cli(*cfg, "export-csv", str(exported), timeout=120)
        assert r.returncode == 0, _text(r)
        rows = list(csv.reader(io.StringIO(exported.read_text())))
        header, body = rows[0], rows[1:]
        assert len(body) == PRODUCTS
        col = {name: i for i, name in enumerate(header)}
        changed = {f"SKU-{i:04d}": 7 + i % 5 for i in range(0, PRODUCTS, PRODUCTS // 10)}
        for row in body:
            if row[col["sku"]] in changed:
                row[col["clover_stock"]] = str(changed[row[col["sku"]]])
        broken_line = 2 + 25_000  # header is line 1
        body[broken_line - 2][col["clover_stock"]] = "lots"
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *body])
        upload = tmp_path / "import.csv"
        upload.write_text(out.getvalue())
        assert upload.stat().st_size > 50 * 64 * 1024

        r = await run_cli(*cfg, "--json", "import-csv", str(upload), timeout=180)
        assert r.returncode == 0, _text(r)
        result = json.loads(r.stdout)
        assert result["accepted"] == PRODUCTS - 1 and result["changed"] == len(changed), result
        assert result["rejected"] == [{"line": broken_line, "reason": "clover_stock 'lots' is not a whole number"}]
        by_sku = {p.sku: p for p in w.products}
        for sku, quantity in changed.items():
            p = by_sku[sku]
            await wait_for(lambda p=p, q=quantity: w.clover_stock(p) == q and w.woo_stock(p) == q, timeout=60,
                           what=f"{sku} set to {quantity} on both sides")
        await settle(env, timeout=60)

        # -- an exclusion file of 50,000 lines: ten bound SKUs and SKUs not bound (yet)
        skus = [f"SKU-{i:04d}" for i in range(10)] + [f"NOT-YET-{i:05d}" for i in range(PRODUCTS - 10)]
        listing = tmp_path / "exclude.txt"
        listing.write_text("# taken out of sync\n" + "\n".join(skus) + "\n")
        r = await run_cli(*cfg, "--json", "exclude", "--from-file", str(listing), timeout=180)
        assert r.returncode == 0, _text(r)
        done = json.loads(r.stdout)
        assert done["bindings_changed"] == 10 and done["total_excluded"] == PRODUCTS
        assert len(done["not_bound"]) == PRODUCTS - 10
        await wait_for(lambda: sum(1 for b in env.daemon.admin.table.all() if b.excluded) == 10, timeout=60,
                       what="ten bindings excluded")
