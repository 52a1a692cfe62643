"""Config: the example parses, every bad key is named, secrets come from files or the environment."""

from __future__ import annotations

import os
import socket
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


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('[alerts]\nemail_to = ["o@shop.example"]\nsmtp_url = "http://mail.example"\n', "alerts.smtp_url: scheme"),
        ('[alerts]\nsmtp_url = "smtp://user:pw@mail.example"\n', "alerts.smtp_url: put the password"),
        ('[alerts]\nsmtp_url = "smtp://mail.example:abc"\n', "alerts.smtp_url: the port is not a number"),
        ('[alerts]\nemail_to = ["owner"]\n', "alerts.email_to[0]: 'owner' is not one email address"),
        ('[alerts]\nemail_to = ["a@x.example, b@x.example"]\n', "alerts.email_to[0]"),
        ("[server]\nqueue_size = 0\n", "server.queue_size: must be at least 1"),
        ('[[clover.locations]]\nname = "airport"\nmerchant_id = "M1"\ntoken_file = "t"\n',
         "clover.locations: each location needs its own merchant_id"),
        ("[woocommerce2]\n", "woocommerce2: unknown key"),
    ],
)
def test_values_the_daemon_builds_from_are_judged_at_load(tmp_path: Path, extra: str, needle: str) -> None:
    """Before, a bad SMTP URL (or a limit of 0) passed the load and failed inside the running daemon."""
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.format(d=tmp_path) + "\n" + extra)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("app_in_flight", "0", "clover.app_in_flight: must be at least 1"),
    ("token_in_flight", "-1", "clover.token_in_flight: must be at least 1"),
    ("app_rate", "0.0", "clover.app_rate: must be a positive number"),
    ("token_rate", "nan", "clover.token_rate: must be a positive number"),
])
def test_clover_limits_are_judged_at_load(tmp_path: Path, key: str, value: str, needle: str) -> None:
    text = MINIMAL.format(d=tmp_path).replace('auth_code_file =', f"{key} = {value}\nauth_code_file =")
    with pytest.raises(ConfigError, match=needle):
        parse_config(text)


def test_the_smtp_password_is_a_secret_read_at_load(tmp_path: Path) -> None:
    """Read with the other secrets (so a missing file is refused before anything starts) and redacted with them;
    not read at all when nothing is emailed."""
    write_secrets(tmp_path)
    alerts = f'\n[alerts]\nemail_to = ["o@shop.example"]\nsmtp_password_file = "{tmp_path}/smtp"\n'
    with pytest.raises(ConfigError, match=r"alerts.smtp_password_file: .*/smtp does not exist"):
        load_secrets(parse_config(MINIMAL.format(d=tmp_path) + alerts))
    (tmp_path / "smtp").write_text("s3cret-mail-pw\n")
    secrets = load_secrets(parse_config(MINIMAL.format(d=tmp_path) + alerts))
    assert secrets.smtp_password == "s3cret-mail-pw" and "s3cret-mail-pw" in secrets.values()
    quiet = alerts.replace('email_to = ["o@shop.example"]', "email_to = []")
    (tmp_path / "smtp").unlink()
    assert load_secrets(parse_config(MINIMAL.format(d=tmp_path) + quiet)).smtp_password == ""


def _run_daemon_cli(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLOVERWOO_") and k not in ("NOTIFY_SOCKET", "STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=90)


@pytest.mark.parametrize("case", ["smtp_url", "smtp_password_file", "in_flight", "socket_dir_missing",
                                  "socket_dir_world_writable", "socket_is_a_file"])
def test_run_exits_2_with_one_line_for_every_config_error(tmp_path: Path, case: str) -> None:
    """``cloverwoo run`` as systemd starts it. Before, an SMTP URL or password file found bad while building the
    alerts (and a limit of 0 while building the clients, a socket directory while binding) ended in a traceback
    and exit 1, after the 20 s preflight; now each is one line and exit 2, before anything starts."""
    write_secrets(tmp_path)
    text = MINIMAL.format(d=tmp_path).replace("https://shop.example.com", "http://127.0.0.1:9")
    text = text.replace("[clover]\n", '[clover]\nbase_url = "http://127.0.0.1:9"\n')
    text += f'\n[state]\npath = "{tmp_path}/state.sqlite3"\n'
    socket = tmp_path / "run" / "control.sock"
    (tmp_path / "run").mkdir()
    needle = {"smtp_url": "alerts.smtp_url", "smtp_password_file": "alerts.smtp_password_file",
              "in_flight": "woocommerce.max_in_flight", "socket_dir_missing": "control.socket",
              "socket_dir_world_writable": "control.socket", "socket_is_a_file": "control.socket"}[case]
    if case == "smtp_url":
        text += '\n[alerts]\nemail_to = ["o@shop.example"]\nsmtp_url = "smtps://"\n'
    elif case == "smtp_password_file":
        text += f'\n[alerts]\nemail_to = ["o@shop.example"]\nsmtp_password_file = "{tmp_path}/nope"\n'
    elif case == "in_flight":
        text = text.replace('webhook_secret_file =', "max_in_flight = 0\nwebhook_secret_file =")
    elif case == "socket_dir_missing":
        socket = tmp_path / "missing" / "control.sock"
    elif case == "socket_dir_world_writable":
        (tmp_path / "run").chmod(0o777)
    else:
        socket.write_text("not a socket")
    text += f'\n[control]\nsocket = "{socket}"\n'
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    proc = _run_daemon_cli(cfg)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("cloverwoo: config error: ") and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "state.sqlite3").exists()  # refused before anything started


def test_run_with_its_listen_port_taken_exits_1_with_one_line_before_anything_starts(tmp_path: Path) -> None:
    """Before, the store opened, the actors started and the server's bind failed deep inside them: a traceback
    and exit 1 after the preflight. Now one line naming the key, and the state file is never created."""
    write_secrets(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = MINIMAL.format(d=tmp_path).replace("https://shop.example.com", "http://127.0.0.1:9")
        text += (f'\n[state]\npath = "{tmp_path}/state.sqlite3"\n[control]\nsocket = "{tmp_path}/control.sock"\n'
                 f'[server]\nlisten = "127.0.0.1:{port}"\n')
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        proc = _run_daemon_cli(cfg)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr == (f"cloverwoo: cannot listen on 127.0.0.1:{port} ([server] listen): address already in "
                           "use (is another cloverwoo, or another program, running on it?)\n")
    assert not (tmp_path / "state.sqlite3").exists()
