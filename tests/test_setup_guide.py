"""docs/SETUP.md cannot rot: every `cloverwoo ...` command in it parses, and the runnable ones run as written.

1. Every command line (code blocks, and inline code in the prose) is parsed
   by the CLI's own argparse parser: a renamed subcommand or flag fails
   ``tests/test_command_lines.py``, which reads every document the same way
   (``tests/command_lines.py``).
2. The commands that need no real store, browser or public address are run,
   in the guide's order, as subprocesses against the simulated stores and a
   daemon started the way systemd starts it (``cloverwoo run``), with
   ``CLOVERWOO_CONFIG`` pointing at the simulators' config: exactly how the
   guide's step 0 rehearses. The only rewrite: files the guide puts under
   ``/root/`` go to the test's directory. Each must exit 0.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import trio

from cloverwoo_daemon.sim.harness import start_world
from tests.command_lines import markdown_commands
from tests.e2e.daemon_proc import REPO, DaemonProc, daemon_env, free_port

GUIDE = REPO / "docs" / "SETUP.md"

# Commands that cannot run here, and why. Anything else in the guide must run.
NOT_HERE = {
    ("run",): "the daemon itself: started by this test as `cloverwoo run`",
    ("simulate",): "serves the simulators on fixed ports; this test starts the same simulators itself",
    ("clover", "connect"): "needs a browser and a real merchant's approval (tests/io/test_clover_oauth.py)",
    ("webhooks", "register"): "needs the public HTTPS address (tests/real/test_setup_guide_real.py: behind nginx)",
    ("log", "--follow"): "runs until interrupted",
    ("status", "/etc/cloverwoo/shop1.toml"): "an instance of the template unit (tests/test_units_start.py runs one)",
}


def guide_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """Every cloverwoo command of the guide, in order: (the text, env assignments, argv)."""
    return [(c.text, c.env, c.argv) for c in markdown_commands(GUIDE)]


def test_the_guide_has_the_steps_that_matter() -> None:
    subcommands = {tuple(argv[:2]) if argv[0] in ("sync", "clover", "webhooks") else (argv[0],)
                   for _, _, argv in guide_commands()}
    for needed in [("check-config",), ("clover", "connect"), ("webhooks", "register"), ("status",),
                   ("sync", "import"), ("exclude",), ("include",), ("log",), ("conflicts",), ("run",)]:
        assert needed in subcommands, f"docs/SETUP.md no longer shows `cloverwoo {' '.join(needed)}`"


def _not_here(argv: list[str]) -> str | None:
    for key, why in NOT_HERE.items():
        if tuple(argv[: len(key)]) == key or (key[0] == argv[0] and key[-1] in argv):
            return why
    return None


async def test_the_guide_runs_as_written_against_the_simulators(tmp_path: Path) -> None:
    home = tmp_path / "root"
    home.mkdir()
    (home / "not-synced.txt").write_text("# kept out of the sync\nGIFT-CARD-10\n\nSKU-0001\n")
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=4, listen=f"127.0.0.1:{free_port()}")
        daemon = DaemonProc(world.config_path)
        try:
            url = await daemon.start(nursery)
            await world.connect(url)
            await daemon.wait_idle()
            for text, assigned, argv in guide_commands():
                if _not_here(argv):
                    continue
                args = [a.replace("/root/", f"{home}/") for a in argv]
                env = {**daemon_env(), **assigned, "CLOVERWOO_CONFIG": str(world.config_path)}
                proc = await trio.run_process([sys.executable, "-m", "cloverwoo_daemon.cli", *args], env=env,
                                              capture_stdout=True, capture_stderr=True, check=False)
                out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
                assert proc.returncode == 0, f"docs/SETUP.md: `{text}` exited {proc.returncode}:\n{out}"
                ran.append(text)
            # what the guide promised happened
            rows = {r["sku"]: r for r in csv.DictReader(io.StringIO((home / "stock.csv").read_text()))}
            assert set(rows) == {p.sku for p in world.products}
            assert rows["SKU-0001"]["sync_status"] == "excluded" and rows["SKU-0002"]["sync_status"] == "in sync"
            status = await daemon.status()
            assert status["exclusions"]["skus"] == ["GIFT-CARD-10", "GIFT-CARD-25", "SKU-0001"]
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()
    assert any(t.startswith("cloverwoo sync import") for t in ran) and len(ran) >= 12, ran
