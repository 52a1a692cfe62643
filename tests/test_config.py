"""Config: the example parses, every bad key is named, secrets come from files or the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloverwoo_daemon.config import (
    ConfigError,
    check_service_directories,
    load_config,
    load_secrets,
    parse_config,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "cloverwoo.example.toml"

MINIMAL = """
[woocommerce]
base_url = "https://shop.example.com"
consumer_key_file = "{d}/ck"
consumer_secret_file = "{d}/cs"
webhook_secret_file = "{d}/whs"

[clover]
auth_code_file = "{d}/auth"

[[clover.locations]]
name = "downtown"
merchant_id = "M1"
token_file = "{d}/tok"
primary = true
"""


def write_secrets(d: Path) -> dict[str, str]:
    values = {"ck": "ck_abc", "cs": "cs_def", "whs": "whsecret", "auth": "clover-auth", "tok": "token-1"}
    for name, value in values.items():
        (d / name).write_text(value + "\n")
    return values


def test_example_config_parses() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.sync.mode == "aggregate"
    assert cfg.clover.locations[0].primary
    assert cfg.alerts.thresholds == {"TSHIRT-M": 20}
    assert cfg.primary_location.name == "downtown"


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (("[sync]\n", "[sync]\nbogus = 1\n"), "sync.bogus: unknown key"),
        (('name = "downtown"', 'nme = "downtown"'), "clover.locations[0].nme: unknown key"),
        (("shards = 8", 'shards = "eight"'), "sync.shards: Expected `int`, got `str`"),
        (('mode = "aggregate"', 'mode = "everywhere"'), "sync.mode"),
        (('poll_every = "2s"', 'poll_every = "soon"'), "poll_every: 'soon' is not a duration"),
        (('deduct = "primary"', 'deduct = ["nowhere"]'), "sync.deduct: unknown location"),
        (('listen = "127.0.0.1:8787"', 'listen = "8787"'), "server.listen"),
    ],
)
def test_bad_config_names_the_key(patch: tuple[str, str], needle: str) -> None:
    text = EXAMPLE.read_text()
    assert patch[0] in text
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace(patch[0], patch[1], 1))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_section() -> None:
    with pytest.raises(ConfigError, match="woocommerce: required key is missing"):
        parse_config("[clover]\n")


def test_durations() -> None:
    assert parse_duration("2s", key="k") == 2.0
    assert parse_duration("15m", key="k") == 900.0
    assert parse_duration("250ms", key="k") == 0.25
    assert parse_duration("off", key="k") is None
    with pytest.raises(ConfigError):
        parse_duration("-1s", key="k")


def test_secrets_from_files(tmp_path: Path) -> None:
    values = write_secrets(tmp_path)
    cfg = parse_config(MINIMAL.format(d=tmp_path))
    secrets = load_secrets(cfg)
    assert secrets.woo_consumer_key == values["ck"]
    assert secrets.clover_tokens == {"downtown": values["tok"]}
    for v in values.values():
        assert v not in repr(secrets) and v not in str(secrets)


def test_secrets_from_environment_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_secrets(tmp_path)
    monkeypatch.setenv("CLOVERWOO_CLOVER_TOKEN_DOWNTOWN", "from-env")
    monkeypatch.setenv("CLOVERWOO_WOOCOMMERCE_CONSUMER_SECRET", "cs-env")
    secrets = load_secrets(parse_config(MINIMAL.format(d=tmp_path)))
    assert secrets.clover_tokens["downtown"] == "from-env"
    assert secrets.woo_consumer_secret == "cs-env"


def test_relative_secret_found_in_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_secrets(tmp_path)
    text = MINIMAL.format(d=tmp_path).replace(f'"{tmp_path}/tok"', '"tok"')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_secrets(parse_config(text)).clover_tokens["downtown"] == "token-1"


def test_missing_or_empty_secret_file_is_named(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    (tmp_path / "tok").unlink()
    with pytest.raises(ConfigError, match=r"clover.locations\[0\].token_file: .*/tok does not exist"):
        load_secrets(parse_config(MINIMAL.format(d=tmp_path)))
    (tmp_path / "tok").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_secrets(parse_config(MINIMAL.format(d=tmp_path)))


def test_check_config_offline_cli(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(MINIMAL.format(d=tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOVERWOO_")}
    ok = subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(cfg), "check-config",
                         "--offline"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    cfg.write_text(MINIMAL.format(d=tmp_path) + "\n[sync]\nshard = 3\n")
    bad = subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(cfg), "check-config",
                          "--offline"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert "sync.shard: unknown key" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_an_empty_clover_auth_code_file_means_not_configured_yet(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    (tmp_path / "auth").write_text("")  # the file exists (LoadCredential= needs it) and says "not yet"
    assert load_secrets(parse_config(MINIMAL.format(d=tmp_path))).clover_auth_code == ""
    (tmp_path / "auth").unlink()  # a missing file is still a mistake worth stopping for
    with pytest.raises(ConfigError, match="clover.auth_code_file: .*/auth does not exist"):
        load_secrets(parse_config(MINIMAL.format(d=tmp_path)))


INSTANCE_DIRS = {"STATE_DIRECTORY": "/var/lib/cloverwoo/shop1", "RUNTIME_DIRECTORY": "/run/cloverwoo/shop1"}


def test_service_directories_unchecked_outside_systemd(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL.format(d=tmp_path))
    check_service_directories(cfg, {}, source="c.toml")  # the admin CLI, tests: any path


def test_default_paths_fit_the_single_unit(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL.format(d=tmp_path))
    check_service_directories(cfg, {"STATE_DIRECTORY": "/var/lib/cloverwoo", "RUNTIME_DIRECTORY": "/run/cloverwoo"},
                              source="c.toml")


def test_default_paths_refused_in_a_template_instance_naming_the_keys(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL.format(d=tmp_path))
    with pytest.raises(ConfigError) as info:
        check_service_directories(cfg, INSTANCE_DIRS, source="/etc/cloverwoo/shop1.toml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("/etc/cloverwoo/shop1.toml: state.path = /var/lib/cloverwoo/state.sqlite3 and "
                          "control.socket = /run/cloverwoo/control.sock are outside")
    assert ('set [state] path = "/var/lib/cloverwoo/shop1/state.sqlite3" and '
            '[control] socket = "/run/cloverwoo/shop1/control.sock"') in msg


def test_instance_paths_accepted_and_each_key_judged_alone(tmp_path: Path) -> None:
    text = MINIMAL.format(d=tmp_path) + '\n[state]\npath = "/var/lib/cloverwoo/shop1/state.sqlite3"\n'
    with pytest.raises(ConfigError) as info:
        check_service_directories(parse_config(text), INSTANCE_DIRS, source="c.toml")
    assert "state.path" not in str(info.value) and "control.socket = /run/cloverwoo/control.sock is outside" in str(
        info.value)
    text += '\n[control]\nsocket = "/run/cloverwoo/shop1/control.sock"\n'
    check_service_directories(parse_config(text), INSTANCE_DIRS, source="c.toml")
    sneaky = text.replace("/var/lib/cloverwoo/shop1/state", "/var/lib/cloverwoo/shop1/../shop2/state")
    with pytest.raises(ConfigError, match="state.path"):
        check_service_directories(parse_config(sneaky), INSTANCE_DIRS, source="c.toml")


def test_run_refuses_paths_outside_the_unit_directories_with_exit_2(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(MINIMAL.format(d=tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOVERWOO_")} | INSTANCE_DIRS
    proc = subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "[state] path" in proc.stderr and "[control] socket" in proc.stderr
    assert not Path("/var/lib/cloverwoo/state.sqlite3").exists()
