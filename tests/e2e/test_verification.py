"""Clover's webhook URL verification, end to end: the daemon as a process, the admin CLI, the simulated dashboard.

The simulated Clover's "Send Verification Code" posts the handshake exactly
as Clover does (no ``X-Clover-Auth``). Once an auth code is configured the
daemon answers it only inside a window ``cloverwoo clover verify`` opens;
before one is configured (an empty ``clover_auth_code`` file) it answers it
and refuses every Clover delivery.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from cloverwoo_daemon.sim.harness import start_world
from tests.e2e.daemon_proc import DaemonProc, free_port, run_cli


async def test_the_handshake_is_answered_only_inside_the_window_the_admin_opens(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, listen=f"127.0.0.1:{free_port()}")
        cfg = str(world.config_path)
        daemon = DaemonProc(world.config_path)
        try:
            await world.connect(await daemon.start(nursery))
            code, status = await world.clover.send_verification_code()
            assert status == 401  # an auth code is configured and no window is open

            opened = await run_cli("clover", "verify", "--minutes", "5", "--config", cfg)
            assert opened.returncode == 0, opened.stderr.decode()
            assert b"Clover verification answered until" in opened.stdout
            first, status = await world.clover.send_verification_code()
            assert status == 200
            second, status = await world.clover.send_verification_code()  # pressed again: both kept
            assert status == 200

            shown = await run_cli("status", "--json", "--config", cfg)
            assert shown.returncode == 0, shown.stderr.decode()
            ver = json.loads(shown.stdout)["webhooks"]["clover_verification"]
            assert ver["expected"] is True and ver["reason"] == "a verification window is open"
            assert [c["code"] for c in ver["codes"]] == [first, second] and code not in json.dumps(ver)
            assert all(c["first_at"] > 0 for c in ver["codes"])
            table = await run_cli("status", "--config", cfg)
            assert first in table.stdout.decode() and second in table.stdout.decode()

            closed = await run_cli("clover", "verify", "--close", "--json", "--config", cfg)
            assert closed.returncode == 0 and json.loads(closed.stdout)["expected"] is False
            _, status = await world.clover.send_verification_code()
            assert status == 401

            assert [e["code"] for e in daemon.events("clover_verification_code")] == [first, second]
            refused = [e for e in daemon.events("webhook_refused") if e["source"] == "clover"]
            assert len(refused) == 2 and all(e["status"] == 401 for e in refused)
            assert await daemon.terminate() == 0
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()


async def test_before_an_auth_code_exists_the_handshake_is_answered_and_deliveries_refused(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1, listen=f"127.0.0.1:{free_port()}")
        (world.dir / "credentials" / "clover_auth_code").write_text("")  # set-up: the URL is not verified yet
        cfg = str(world.config_path)
        offline = await run_cli("check-config", "--offline", "--config", cfg)
        assert offline.returncode == 0 and b"no Clover Auth Code yet" in offline.stdout, offline.stdout
        daemon = DaemonProc(world.config_path)
        try:
            await world.connect(await daemon.start(nursery))
            assert daemon.events("clover_auth_code_missing")
            code, status = await world.clover.send_verification_code()
            assert status == 200
            ver = (await daemon.status())["webhooks"]["clover_verification"]
            assert ver["reason"] == "no Clover auth code configured yet" and ver["codes"][0]["code"] == code

            p = world.products[0]
            world.clover.pos_sale(world.locations["downtown"], {p.clover["downtown"]: 1})
            await daemon.wait_for_line(lambda e: e.get("event") == "webhook_refused" and e.get("status") == 401,
                                       what="the sale's Clover delivery refused for want of an auth code")
            assert await daemon.terminate() == 0
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()
