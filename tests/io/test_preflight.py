"""Preflight against both simulators: each ✗ comes from a simulator (or a file) misconfigured that way."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cloverwoo_daemon.config import Config, Secrets, load_config, load_secrets
from cloverwoo_daemon.io.clover_oauth import connect_location
from cloverwoo_daemon.io.preflight import Check, exit_code, file_checks, others_can_read, print_checks, run_preflight
from cloverwoo_daemon.sim.clover import CloverSim
from cloverwoo_daemon.sim.woocommerce import WooSim

MID_A, MID_B = "MERCHANTAAAAA", "MERCHANTBBBBB"


@pytest.fixture
async def clover(nursery):
    sim = CloverSim(seed=5)
    sim.add_merchant("Downtown", merchant_id=MID_A, token="static-token-a")
    sim.add_merchant("Airport", merchant_id=MID_B, token="static-token-b")
    await nursery.start(sim.run)
    return sim


@pytest.fixture
async def woo(nursery):
    sim = WooSim(companion=True)  # fully configured: the WordPress companion installed
    sim.add_product("Mug", sku="MUG", stock=3)
    await nursery.start(sim.run)
    return sim


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory others may enter (pytest's own tmp dirs are 0700, which hides any file in them)."""
    d = Path(tempfile.mkdtemp(prefix="cloverwoo-preflight-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


class Setup:
    def __init__(self, root: Path, clover: CloverSim, woo: WooSim) -> None:
        self.root, self.clover, self.woo = root, clover, woo
        self.creds = root / "creds"
        self.creds.mkdir()
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.state_dir.mkdir()
        self.run_dir.mkdir()
        self.files = {"woo_key": woo.consumer_key, "woo_secret": woo.consumer_secret, "hook": "wh-secret",
                      "auth": "clover-auth-code", "token_a": "static-token-a",
                      "app_secret": clover.oauth.settings.client_secret}
        self.oauth_b = False  # the second location (airport) uses OAuth

    def config(self) -> Config:
        for name, value in self.files.items():
            path = self.creds / name
            path.write_text(value)
            path.chmod(0o600)
        airport = (f'oauth = true\nclient_id = "{self.clover.app_id}"\n'
                   f'client_secret_file = "{self.creds / "app_secret"}"\n') if self.oauth_b else \
            f'token_file = "{self.creds / "token_b"}"\n'
        (self.creds / "token_b").write_text("static-token-b")
        (self.creds / "token_b").chmod(0o600)
        path = self.root / "cloverwoo.toml"
        path.write_text(f"""
[control]
socket = "{self.run_dir / 'control.sock'}"
[state]
path = "{self.state_dir / 'state.sqlite3'}"
[woocommerce]
base_url = "{self.woo.base_url}"
auth = "basic"
consumer_key_file = "{self.creds / 'woo_key'}"
consumer_secret_file = "{self.creds / 'woo_secret'}"
webhook_secret_file = "{self.creds / 'hook'}"
timeout = "5s"
[clover]
base_url = "{self.clover.base_url}"
auth_code_file = "{self.creds / 'auth'}"
timeout = "5s"
[[clover.locations]]
name = "downtown"
merchant_id = "{MID_A}"
token_file = "{self.creds / 'token_a'}"
primary = true
[[clover.locations]]
name = "airport"
merchant_id = "{MID_B}"
{airport}""")
        return load_config(path)

    async def run(self, cfg: Config | None = None) -> tuple[list[Check], Secrets]:
        cfg = cfg or self.config()
        secrets = load_secrets(cfg)
        checks = await run_preflight(cfg, secrets)
        text = "\n".join(c.line() for c in checks)
        assert not any(s in text for s in secrets.values())  # no secret in any line
        return checks, secrets


@pytest.fixture
def setup(open_dir, clover, woo) -> Setup:
    return Setup(open_dir, clover, woo)


def failed(checks: list[Check]) -> list[str]:
    return [c.line() for c in checks if not c.ok]


async def test_everything_configured_passes(setup):
    setup.oauth_b = True
    cfg = setup.config()
    await connect_location(cfg, load_secrets(cfg), "airport", setup.clover.oauth.code_for(MID_B))
    checks, _ = await setup.run(cfg)
    lines: list[str] = []
    assert print_checks(checks, lines.append) == 0
    assert all(line.startswith("✓ ") for line in lines) and len(lines) == len(checks)
    text = "\n".join(lines)
    for expected in ("✓ WooCommerce stock management: on", "✓ WooCommerce key permission: read_write",
                     "✓ WooCommerce version: store-wide /variations available",
                     f"✓ Clover downtown: token valid for merchant {MID_A} (Downtown)",
                     f"✓ Clover airport: token valid for merchant {MID_B} (Airport)",
                     "✓ Clover airport inventory: read permission granted",
                     "✓ Clover downtown stock tracking: on", "✓ Clover airport stock after sales: on",
                     "✓ secret files: none of the 7 file(s)", "✓ state directory:", "✓ runtime directory:",
                     "✓ stock writes: atomic (companion v1.0.0; webhooks asynchronous)"):
        assert expected in text, expected
    # the permission probe wrote nothing
    assert setup.woo.stock_writes == [] and setup.woo.stock(setup.woo.add_product("X", stock=1)) == 1


async def test_old_woocommerce_uses_the_fallback_and_still_passes(nursery, setup):
    old = WooSim(store_wide_variations=False)
    await nursery.start(old.run)
    setup.woo = old
    setup.files |= {"woo_key": old.consumer_key, "woo_secret": old.consumer_secret}
    checks, _ = await setup.run()
    assert exit_code(checks) == 0
    assert any("WooCommerce before 10.3" in c.line() and c.ok for c in checks)


async def set_manage_stock_off(s: Setup) -> None:
    async with httpx.AsyncClient(auth=(s.woo.consumer_key, s.woo.consumer_secret)) as http:
        r = await http.put(f"{s.woo.api_url}/settings/products/woocommerce_manage_stock", json={"value": "no"})
        assert r.status_code == 200


async def read_only_key(s: Setup) -> None:
    s.files["woo_key"], s.files["woo_secret"] = s.woo.add_key("read")


async def write_only_key(s: Setup) -> None:
    s.files["woo_key"], s.files["woo_secret"] = s.woo.add_key("write")


async def bad_woo_secret(s: Setup) -> None:
    s.files["woo_secret"] = "cs_wrong"


async def woo_down(s: Setup) -> None:
    s.woo.faults.down = True


async def bad_clover_token(s: Setup) -> None:
    s.files["token_a"] = "not-a-token"


async def token_of_other_merchant(s: Setup) -> None:
    s.files["token_a"] = "static-token-b"


async def no_inventory_permission(s: Setup) -> None:
    s.clover.oauth.deny(MID_A, "INVENTORY_R")


async def track_stock_off(s: Setup) -> None:
    s.clover.merchants[MID_A].track_stock = False


async def update_stock_off(s: Setup) -> None:
    s.clover.merchants[MID_A].update_stock = False


async def clover_down(s: Setup) -> None:
    s.clover.faults.down = True


async def oauth_never_connected(s: Setup) -> None:
    s.oauth_b = True


async def oauth_revoked(s: Setup) -> None:
    s.oauth_b = True
    cfg = s.config()
    await connect_location(cfg, load_secrets(cfg), "airport", s.clover.oauth.code_for(MID_B))
    s.clover.oauth.revoke(MID_B)


async def world_readable_secret(s: Setup) -> None:
    original = s.config

    def config() -> Config:
        cfg = original()
        (s.creds / "woo_secret").chmod(0o644)
        return cfg

    s.config = config  # type: ignore[method-assign]


async def no_state_dir(s: Setup) -> None:
    s.state_dir.rmdir()


async def no_runtime_dir(s: Setup) -> None:
    s.run_dir.rmdir()


CASES: list[tuple[Callable[[Setup], object], str, str]] = [
    (set_manage_stock_off, "✗ WooCommerce stock management: off (woocommerce_manage_stock = no)",
     'tick "Enable stock management"'),
    (read_only_key, "✗ WooCommerce key permission: read only", "Permissions: Read/Write"),
    (write_only_key, "✗ WooCommerce: the API key may not read", "Permissions: Read/Write"),
    (bad_woo_secret, "refused the API key", "consumer_secret_file"),
    (woo_down, "unreachable", "check woocommerce.base_url"),
    (bad_clover_token, f"✗ Clover downtown: token refused for merchant {MID_A}", "check token_file"),
    (token_of_other_merchant, f"✗ Clover downtown: token refused for merchant {MID_A}", f"merchant_id {MID_A}"),
    (no_inventory_permission, "✗ Clover downtown inventory: cannot read items", "Inventory Read and Write"),
    (track_stock_off, "✗ Clover downtown stock tracking: off", "turn on Track stock"),
    (update_stock_off, "✗ Clover downtown stock after sales: off (updateStock): POS sales do not change",
     "after each sale"),
    (clover_down, "✗ Clover downtown: unreachable", "check clover.base_url"),
    (oauth_never_connected, "✗ Clover airport: no OAuth tokens stored yet", "cloverwoo clover connect airport"),
    (oauth_revoked, "✗ Clover airport:", "cloverwoo clover connect airport"),
    (world_readable_secret, "is readable by every user (mode 0644)", "chmod 600"),
    (no_state_dir, "✗ state directory:", "StateDirectory="),
    (no_runtime_dir, "✗ runtime directory:", "RuntimeDirectory="),
]


@pytest.mark.parametrize("misconfigure,message,fix", CASES, ids=[c[0].__name__ for c in CASES])
async def test_each_misconfiguration_is_one_cross_with_its_fix(setup, misconfigure, message, fix):
    await misconfigure(setup)
    checks, _ = await setup.run()
    bad = failed(checks)
    assert exit_code(checks) == 1
    matching = [line for line in bad if message in line]
    assert matching, bad
    assert fix in matching[0] and "(fix: " in matching[0]
    assert all("\n" not in line for line in bad)


async def test_read_only_key_probe_changes_nothing(setup):
    await read_only_key(setup)
    before = setup.woo.stock(setup.woo.add_product("Probe", stock=2))
    checks, _ = await setup.run()
    assert setup.woo.stock_writes == [] and before == 2
    posts = [n for (method, rule), n in setup.woo.requests.items() if method == "POST"]
    assert sum(posts) == 1  # the one empty batch
    assert any(not c.ok and "read only" in c.line() for c in checks)


def test_others_can_read_needs_every_directory_open(open_dir):
    f = open_dir / "s"
    f.write_text("x")
    f.chmod(0o644)
    assert others_can_read(f)
    f.chmod(0o640)
    assert not others_can_read(f)
    f.chmod(0o644)
    open_dir.chmod(0o750)  # the directory shuts others out: the mode of the file no longer matters
    assert not others_can_read(f)
    open_dir.chmod(0o755)


async def test_secrets_from_the_environment_have_no_file_to_check(setup, monkeypatch):
    cfg = setup.config()
    (setup.creds / "woo_secret").chmod(0o644)
    assert any(not c.ok for c in file_checks(cfg))
    monkeypatch.setenv("CLOVERWOO_WOOCOMMERCE_CONSUMER_SECRET", "from-env")
    assert all(c.ok for c in file_checks(cfg))


async def test_check_config_command_prints_the_lines_and_exits_by_them(setup):
    import sys

    import trio

    cfg_path = setup.root / "cloverwoo.toml"
    setup.config()
    argv = [sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(cfg_path), "check-config"]
    ok = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = ok.stdout.decode()
    assert ok.returncode == 0, out + ok.stderr.decode()
    assert "✓ WooCommerce key permission: read_write" in out and "✗" not in out
    await set_manage_stock_off(setup)
    bad = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert bad.returncode == 1
    assert "✗ WooCommerce stock management: off" in bad.stdout.decode()


async def test_without_the_companion_stock_writes_are_marked_not_atomic_and_the_check_still_passes(setup):
    """The companion is optional: its absence is a ✗ with the one-line install, not a failed check."""
    setup.woo.companion = False
    checks, _ = await setup.run()
    [line] = [c.line() for c in checks if c.subject == "stock writes"]
    assert line == ("✗ stock writes: not atomic: a checkout during a daemon stock write can be lost "
                    "(fix: copy wordpress/cloverwoo-companion.php into wp-content/mu-plugins/)")
    assert exit_code(checks) == 0
    assert sum(not c.ok for c in checks) == 1
    setup.woo.companion = True
    async with httpx.AsyncClient(auth=(setup.woo.consumer_key, setup.woo.consumer_secret)) as http:
        r = await http.post(f"{setup.woo.base_url}/wp-json/wc-cloverwoo/v1/settings", json={"sync_webhooks": True})
        assert r.status_code == 200 and r.json()["sync_webhooks"] is True
    checks, _ = await setup.run()
    assert "✓ stock writes: atomic (companion v1.0.0; webhooks synchronous)" in [c.line() for c in checks]
    assert (Path(__file__).parents[2] / "wordpress" / "cloverwoo-companion.php").is_file()  # what the fix names
