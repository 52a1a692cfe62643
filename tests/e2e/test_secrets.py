"""No configured secret ever leaves the daemon: not in its output, not through the CLI, not in the sync log.

One full scenario against a real ``cloverwoo run`` subprocess, with the error
paths taken on purpose (both APIs down for a while, forged deliveries,
``check-config`` against a store that answers 503), because that is where
secrets leak: exception messages that carry a URL or a request, ``repr`` of a
client, a header echoed into an error. Everything the outside can see is
captured and scanned for every secret value, and for the encoded forms that
travel on the wire (the Basic credential, the Bearer header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as pysecrets
import subprocess
from pathlib import Path

import httpx
import trio

from cloverwoo_daemon.sim.harness import start_world
from tests.e2e.conftest import wait_for
from tests.e2e.daemon_proc import DaemonProc, free_port, read_state, run_cli


def _wire_forms(values: list[str], woo_key: str, woo_secret: str) -> dict[str, str]:
    """Each secret, plus what it looks like on the wire, named for the failure message."""
    forms = {f"secret #{i} ({v[:3]}...)": v for i, v in enumerate(values)}
    forms["woo Basic credential"] = base64.b64encode(f"{woo_key}:{woo_secret}".encode()).decode()
    return forms


def _leaks(text: str, forms: dict[str, str]) -> list[str]:
    return [name for name, value in forms.items() if value in text]


def _cli_text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode("utf-8", "replace") + "\n" + result.stderr.decode("utf-8", "replace")


def _dump_state(path: str) -> str:
    """Every row of every table of the state file, as text (read-only)."""
    tables = [r[0] for r in read_state(path, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = []
    for t in tables:
        for row in read_state(path, f'SELECT * FROM "{t}"'):
            out.append(t + " " + " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                          for v in row))
    return "\n".join(out)


async def test_no_secret_appears_in_any_output(tmp_path: Path) -> None:
    captured: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=3, locations=2, stock=20,
                                  listen=f"127.0.0.1:{free_port()}")
        sec = world.secrets()
        values = sec.values()
        assert len(values) == 6  # woo key, secret, webhook secret, clover auth code, two location tokens
        forms = _wire_forms(values, sec.woo_consumer_key, sec.woo_consumer_secret)
        # the scanner itself can fail: a planted secret is found
        assert _leaks(f"x{values[-1]}y", forms) == [f"secret #{len(values) - 1} ({values[-1][:3]}...)"]

        cfg_arg = ["--config", str(world.config_path)]
        daemon = DaemonProc(world.config_path)
        try:
            url = await daemon.start(nursery)
            await world.connect(url)
            await daemon.wait_status(lambda s: s["bindings"] == 3, what="3 bindings")
            await daemon.wait_idle()
            a, b, c = world.products

            # -- sales both ways
            world.clover.pos_sale(world.locations["downtown"], {a.clover["downtown"]: 2})
            world.woo.online_order({b.woo: 3})
            await wait_for(lambda: world.woo_stock(a) == 38 and world.clover_stock(b) == 37, timeout=30,
                           what="both sales synced")

            # -- forged deliveries: wrong auth, wrong signature, no auth at all
            async with httpx.AsyncClient(timeout=10.0) as http:
                body = json.dumps({"appId": "X", "merchants": {world.locations["downtown"]: [
                    {"objectId": f"I:{a.clover['downtown']}", "type": "UPDATE", "ts": 1}]}}).encode()
                r1 = await http.post(url + "/webhooks/clover", content=body,
                                     headers={"X-Clover-Auth": pysecrets.token_hex(16),
                                              "Content-Type": "application/json"})
                r2 = await http.post(url + "/webhooks/clover", content=body,
                                     headers={"Content-Type": "application/json"})
                wbody = json.dumps({"id": b.woo.product_id, "stock_quantity": 0}).encode()
                wrong = base64.b64encode(hmac.new(pysecrets.token_bytes(24), wbody, hashlib.sha256).digest())
                r3 = await http.post(url + "/webhooks/woocommerce", content=wbody, headers={
                    "X-WC-Webhook-Signature": wrong.decode(), "X-WC-Webhook-Topic": "product.updated",
                    "Content-Type": "application/json"})
                captured["forged responses"] = "\n".join(r.text for r in (r1, r2, r3))
            assert (r1.status_code, r2.status_code, r3.status_code) == (401, 401, 401)

            # -- both APIs down: errors flow through logs, the sync log, status and check-config.
            # Kept short: the clients retry with backoff, so a long outage only makes recovery slower.
            world.clover.faults.down = True
            world.woo.faults.down = True
            world.clover.pos_sale(world.locations["airport"], {c.clover["airport"]: 1})
            world.woo.online_order({c.woo: 1})
            await daemon.wait_status(lambda s: s["woocommerce_poll"]["last_error"] != "", timeout=30,
                                     what="the WooCommerce poll seen failing")
            await daemon.wait_for_line(lambda ln: ln.get("event") == "clover_retry", timeout=30,
                                       what="a Clover request retried")
            down_status = await run_cli(*cfg_arg, "--json", "status")
            assert down_status.returncode == 0, _cli_text(down_status)
            captured["status --json (APIs down)"] = _cli_text(down_status)
            world.clover.faults.down = False
            # check-config reaches both APIs; against a 503 store it fails and says why
            check = await run_cli(*cfg_arg, "check-config")
            assert check.returncode == 1, _cli_text(check)
            captured["check-config (WooCommerce down)"] = _cli_text(check)
            world.woo.faults.down = False
            await wait_for(lambda: world.woo_stock(c) == 38 and world.clover_stock(c) == 38, timeout=45,
                           what="the sales made while down synced")
            await daemon.wait_idle(timeout=60)

            # -- the admin's view, through the CLI subprocess and the control socket
            status = await run_cli(*cfg_arg, "--json", "status")
            assert status.returncode == 0, _cli_text(status)
            assert json.loads(status.stdout)["bindings"] == 3
            captured["status --json"] = _cli_text(status)
            human = await run_cli(*cfg_arg, "status")
            assert human.returncode == 0, _cli_text(human)
            captured["status"] = _cli_text(human)
            assert b"no job running" in human.stdout or b"running: " in human.stdout, _cli_text(human)
            log = await run_cli(*cfg_arg, "--json", "log", "--limit", "1000")
            assert log.returncode == 0, _cli_text(log)
            rows = [json.loads(line) for line in log.stdout.decode().splitlines() if line.strip()]
            assert rows, "the sync log is empty after sales both ways"
            captured["log --json"] = _cli_text(log)
            conflicts = await run_cli(*cfg_arg, "--json", "conflicts")
            assert conflicts.returncode == 0, _cli_text(conflicts)
            captured["conflicts --json"] = _cli_text(conflicts)

            assert await daemon.terminate() == 0
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()

    captured["daemon stdout+stderr"] = daemon.output_text()
    state = world.cfg.state.path
    captured["state file (every table)"] = _dump_state(state)
    sync_log = read_state(state, "SELECT level, event, error, detail FROM sync_log")
    captured["sync_log rows"] = "\n".join(map(str, sync_log))

    # the error paths were really taken, else the scan proves little
    out = captured["daemon stdout+stderr"]
    assert '"event": "daemon_ready"' in out
    failures = [r for r in sync_log if r[0] == "error"] + [ln for ln in daemon.lines
                                                           if ln.get("level") in ("warning", "error")]
    assert failures, "no failure was logged while both APIs were down"

    leaks = {where: _leaks(text, forms) for where, text in captured.items()}
    leaks = {where: names for where, names in leaks.items() if names}
    sizes = {where: len(text) for where, text in captured.items()}
    print(f"\n[secrets] scanned {len(forms)} values over {sizes}; {len(failures)} failure records; leaks: {leaks}")
    assert not leaks, f"secrets found in: {leaks}"
