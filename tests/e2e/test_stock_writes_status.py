"""``cloverwoo status`` (text and JSON) says whether WooCommerce stock writes are atomic: ✓ with the companion's
version, ✗ with the one-line install; and the daemon falls back by itself when the companion goes away."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from cloverwoo_daemon.sim.harness import start_world
from tests.e2e.conftest import wait_for
from tests.e2e.daemon_proc import DaemonProc, free_port, run_cli


async def _status(cfg: str) -> tuple[dict[str, object], str]:
    shown = await run_cli("status", "--json", "--config", cfg)
    assert shown.returncode == 0, shown.stderr.decode()
    table = await run_cli("status", "--config", cfg)
    assert table.returncode == 0, table.stderr.decode()
    return json.loads(shown.stdout)["stock_writes"], table.stdout.decode()


async def test_status_says_whether_stock_writes_are_atomic(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, listen=f"127.0.0.1:{free_port()}",
                                  woo_companion=True)
        cfg = str(world.config_path)
        daemon = DaemonProc(world.config_path)
        try:
            await world.connect(await daemon.start(nursery))
            sw, text = await _status(cfg)
            assert sw["atomic"] is True and sw["companion"] == "1.0.0" and sw["install"] is None
            assert "stock writes: ✓ atomic (companion v1.0.0" in text

            world.woo.companion = False  # the mu-plugin deleted: its routes answer 404
            (p,) = world.products
            world.clover.pos_sale(world.locations["downtown"], {p.clover["downtown"]: 1})
            await wait_for(lambda: world.woo_stock(p) == world.clover_stock(p) == 19, timeout=30,
                           what="the sale written by inventory_delta once the companion is gone")
            sw, text = await _status(cfg)
            assert sw["atomic"] is False and sw["fallbacks"] == 1
            assert "stock writes: ✗ not atomic" in text
            assert "copy wordpress/cloverwoo-companion.php into wp-content/mu-plugins/" in text
            assert await daemon.terminate() == 0
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()
