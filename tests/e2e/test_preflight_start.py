"""`cloverwoo run` runs the preflight checks first and logs each, as systemd starts it.

A failed check is logged at error level with its fix, and the daemon starts
anyway (README: "Checks at start"): here Clover's "update stock after each
sale" is off, which preflight must say, while the sync itself still runs.
"""

from __future__ import annotations

from pathlib import Path

import trio

from cloverwoo_daemon.sim.harness import start_world
from tests.e2e.conftest import wait_for
from tests.e2e.daemon_proc import DaemonProc, free_port


async def test_run_logs_every_preflight_check_and_starts_despite_a_failure(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        # the WordPress companion installed, so the one failing check is the one this test breaks
        world = await start_world(nursery, tmp_path / "world", products=2, listen=f"127.0.0.1:{free_port()}",
                                  woo_companion=True)
        mid = world.locations["downtown"]
        world.clover.merchants[mid].update_stock = False
        daemon = DaemonProc(world.config_path)
        try:
            url = await daemon.start(nursery)
            checks = daemon.events("preflight")
            lines = [c["result"] for c in checks]
            assert any(c["ok"] for c in checks)
            failed = [c for c in checks if not c["ok"]]
            assert [c["check"] for c in failed] == ["Clover downtown stock after sales"], lines
            assert failed[0]["level"] == "error" and "(fix: " in failed[0]["result"]
            assert any(line.startswith("✓ WooCommerce") for line in lines)
            (done,) = daemon.events("preflight_done")
            assert done["failed"] == 1 and done["checks"] == len(checks)
            # logged before the daemon said it was ready, and the daemon runs and syncs
            order = [ln["event"] for ln in daemon.lines]
            assert order.index("preflight_done") < order.index("daemon_ready")
            await world.connect(url)
            p = world.products[0]
            world.woo.online_order({p.woo: 2})
            await wait_for(lambda: world.clover_stock(p) == 18, timeout=30, what="the sync running")
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()
