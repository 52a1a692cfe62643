"""The shipped units, started the way systemd starts them, against the simulated stores.

For ``systemd/cloverwoo.service`` and ``systemd/cloverwoo@.service`` (instance
``shop1``) the unit's ``ExecStart`` runs as written, only
``/opt/cloverwoo/.venv/bin`` swapped for this interpreter's bin directory,
with what systemd would give it:

- a clean environment: ``PATH``, ``NOTIFY_SOCKET`` (a datagram socket this
  test reads), ``WATCHDOG_USEC`` from ``WatchdogSec=``, ``WATCHDOG_PID``,
  ``CREDENTIALS_DIRECTORY`` (``/run/credentials/UNIT``) holding exactly the
  unit's ``LoadCredential=`` names, ``STATE_DIRECTORY``,
  ``RUNTIME_DIRECTORY``, ``CONFIGURATION_DIRECTORY``; working directory ``/``;
- the file system of ``ProtectSystem=strict``: every mount read-only but the
  state and runtime directories (and ``/tmp``, writable as ``PrivateTmp=``
  leaves it, though not private here), in a private mount namespace (``unshare --mount``), where
  overlays on ``/etc``, ``/var/lib`` and ``/run`` hold the config at the
  ExecStart's ``--config`` path, the credentials and the two directories
  without writing a byte to the real ones. Needs root and ``unshare``;
  skipped with the reason otherwise (CI runs as root).

The config is the shipped example with the stores' addresses pointed at the
simulators, and for the instance the keys docs/SETUP.md step 12 says to
set, read from that section. Asserted: ``READY=1``, a working sync and admin
socket, periodic ``WATCHDOG=1``, ``STOPPING=1`` on SIGTERM and exit 0; and
that an instance left with the default paths exits 2 naming the keys.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from cloverwoo_daemon.sim.harness import World, start_world
from tests.command_lines import INSTANCE
from tests.e2e.daemon_proc import REPO, free_port, run_cli

UNITS = REPO / "systemd"
EXAMPLE = REPO / "config" / "cloverwoo.example.toml"
GUIDE = REPO / "docs" / "SETUP.md"
SHIPPED_BIN = "/opt/cloverwoo/.venv/bin"
READY_TIMEOUT = 60.0  # the units' TimeoutStartSec=
STOP_TIMEOUT = 30.0  # the units' TimeoutStopSec=


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare --mount); CI runs as root"
    for tool in ("unshare", "mount", "sh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount is refused here: {probe.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


# ---------------------------------------------------------------- the unit, as systemd reads it


@dataclass
class Unit:
    name: str  # "cloverwoo@shop1.service"
    exec_start: list[str]
    credentials: dict[str, str]  # LoadCredential= id -> source path
    state_dir: str
    runtime_dir: str
    config_dir: str
    watchdog_usec: int

    @property
    def config_path(self) -> str:
        i = self.exec_start.index("--config")
        return self.exec_start[i + 1]


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|min)?", text.strip())
    assert m, f"cannot read the duration {text!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


def read_unit(file: str, instance: str | None = None) -> Unit:
    name = file.replace("@", f"@{instance}") if instance else file
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / file).read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value.replace("%i", instance or ""))
    creds = dict(v.split(":", 1) for v in settings["LoadCredential"])
    return Unit(
        name=name,
        exec_start=shlex.split(settings["ExecStart"][0]),
        credentials=creds,
        state_dir="/var/lib/" + settings["StateDirectory"][0],
        runtime_dir="/run/" + settings["RuntimeDirectory"][0],
        config_dir="/etc/" + settings["ConfigurationDirectory"][0],
        watchdog_usec=int(_seconds(settings["WatchdogSec"][0]) * 1_000_000),
    )


# ---------------------------------------------------------------- the config, as the docs say


def set_key(text: str, section: str, key: str, value: object) -> str:
    """``key = value`` in the first ``[section]`` of TOML text (replacing the line, or added after the header)."""
    lines = text.splitlines()
    header = f"[{section}]"
    assert header in lines, f"the example config has no {header}"
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    literal = f"{key} = {json.dumps(value)}"
    for i in range(start, end):
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            lines[i] = literal
            break
    else:
        lines.insert(start, literal)
    return "\n".join(lines) + "\n"


def instance_keys(instance: str) -> dict[str, dict[str, object]]:
    """The TOML keys docs/SETUP.md's section for several merchants tells an instance to set."""
    text = GUIDE.read_text()
    head = text.index("## 12. More than one merchant on one server")
    section = text[head: text.find("\n## ", head + 1) if text.find("\n## ", head + 1) > 0 else len(text)]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "docs/SETUP.md step 12 should show the instance's keys in one toml block"
    return tomllib.loads(blocks[0].replace("shop1", instance))


def unit_config(world: World, port: int, instance: str | None) -> str:
    """The shipped example, pointed at the simulators (and, for an instance, with step 12's keys)."""
    text = EXAMPLE.read_text()
    text = set_key(text, "woocommerce", "base_url", world.woo.base_url)
    text = set_key(text, "woocommerce", "auth", "basic")  # the simulated store plays an https one, over http
    text = set_key(text, "clover", "base_url", world.clover.base_url)
    text = set_key(text, "[clover.locations]", "merchant_id", world.locations["downtown"])
    text = set_key(text, "alerts", "email_to", [])  # no mail server here
    if instance:
        for section, keys in instance_keys(instance).items():
            for key, value in keys.items():
                text = set_key(text, section, key, value)
    return set_key(text, "server", "listen", f"127.0.0.1:{port}")  # the docs' port may be taken here


# ---------------------------------------------------------------- systemd's execution environment

# ProtectSystem=strict in a private mount namespace. Arguments: scratch dir, then pairs of
# (source on the host, path in the namespace), "--", then the ExecStart words.
NAMESPACE = r"""
set -eu
scratch=$1; shift
mount --bind /tmp /tmp
mount -t tmpfs -o mode=0700 cloverwoo-unit-test "$scratch"
for d in /etc /var/lib /run; do
    n=$(printf %s "$d" | tr / _)
    mkdir -p "$scratch/$n/upper" "$scratch/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$scratch/$n/upper,workdir=$scratch/$n/work" "$d"
done
writable=" /tmp "
while [ "$1" != "--" ]; do
    mkdir -p "$2"
    mount --bind "$1" "$2"
    case "$2" in /etc/*|/run/credentials/*) ;; *) writable="$writable$2 " ;; esac
    shift 2
done
shift
for mp in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
    case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    case "$writable" in *" $mp "*) continue ;; esac
    mount -o remount,bind,ro "$mp"
done
cd /
export WATCHDOG_PID=$$
exec "$@"
"""


@dataclass
class Started:
    proc: trio.Process
    messages: list[str] = field(default_factory=list)  # notify datagrams, in order
    output: bytearray = field(default_factory=bytearray)
    changed: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def tail(self) -> str:
        return "--- unit output (tail) ---\n" + "\n".join(self.output.decode("utf-8", "replace").splitlines()[-30:])

    async def wait(self, predicate: object, *, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            while not predicate():  # type: ignore[operator]
                await self.changed.wait()
            return
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; notify messages: {self.messages}\n"
                             f"{self.tail()}")


async def start_unit(nursery: trio.Nursery, unit: Unit, tmp: Path, etc_dir: Path, creds: Path) -> Started:
    """Run the unit's ExecStart as systemd would; notify messages and output are collected as they come."""
    state, runtime = tmp / "state", tmp / "runtime"
    state.mkdir(mode=0o700)
    runtime.mkdir(mode=0o750)
    (tmp / "scratch").mkdir()
    notify_path = str(tmp / "notify")
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(notify_path)
    binary = Path(sys.executable).parent / "cloverwoo"
    assert binary.exists(), f"no console script {binary}: run `make venv`"
    argv = [unit.exec_start[0].replace(SHIPPED_BIN, str(binary.parent)), *unit.exec_start[1:]]
    assert argv[0] == str(binary), f"{unit.name}: ExecStart does not run {SHIPPED_BIN}/cloverwoo: {unit.exec_start}"
    credentials_dir = f"/run/credentials/{unit.name}"
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "NOTIFY_SOCKET": notify_path,
        "WATCHDOG_USEC": str(unit.watchdog_usec),
        "CREDENTIALS_DIRECTORY": credentials_dir,
        "STATE_DIRECTORY": unit.state_dir,
        "RUNTIME_DIRECTORY": unit.runtime_dir,
        "CONFIGURATION_DIRECTORY": unit.config_dir,
        "INVOCATION_ID": os.urandom(16).hex(),
        "HOME": "/", "USER": "cloverwoo", "LOGNAME": "cloverwoo", "SHELL": "/usr/sbin/nologin",
    }
    binds = [str(etc_dir), unit.config_dir, str(creds), credentials_dir,
             str(state), unit.state_dir, str(runtime), unit.runtime_dir]
    proc = await trio.lowlevel.open_process(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh", str(tmp / "scratch"),
         *binds, "--", *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd="/",
    )
    started = Started(proc)

    async def read_notify() -> None:
        with notify:
            while True:
                data = await notify.recv(4096)
                started.messages.extend(data.decode().split("\n"))
                started.poke()

    async def read_output() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(65536):
            started.output.extend(chunk)
        await proc.wait()
        started.poke()

    nursery.start_soon(read_notify)
    nursery.start_soon(read_output)
    return started


def credentials_for(unit: Unit, world: World, tmp: Path) -> Path:
    """A directory with exactly the unit's LoadCredential= names, from the simulators' secrets."""
    creds = tmp / "credentials"
    creds.mkdir(mode=0o700)
    source = world.dir / "credentials"
    for cred_id in unit.credentials:
        assert (source / cred_id).exists(), f"{unit.name} loads {cred_id}, which the simulated world has no value for"
        shutil.copy(source / cred_id, creds / cred_id)
    return creds


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("file,instance", [("cloverwoo.service", None), ("cloverwoo@.service", INSTANCE)],
                         ids=["cloverwoo.service", f"cloverwoo@{INSTANCE}.service"])
async def test_unit_starts_syncs_pings_and_stops(file: str, instance: str | None, tmp_path: Path) -> None:
    unit = read_unit(file, instance)
    sources = {str(Path(p).parent) for p in unit.credentials.values()}
    assert len(sources) == 1, f"{unit.name}: LoadCredential= reads from several directories: {sources}"
    if instance:
        assert f"`{sources.pop()}/`".replace(instance, "NAME") in GUIDE.read_text(), \
            "docs/SETUP.md step 12 must name the instance's credentials directory"
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=3)
        port = free_port()
        etc_dir = tmp_path / "etc-cloverwoo"
        etc_dir.mkdir()
        config_file = etc_dir / Path(unit.config_path).relative_to(unit.config_dir)
        config_file.write_text(unit_config(world, port, instance))
        started = await start_unit(nursery, unit, tmp_path, etc_dir, credentials_for(unit, world, tmp_path))
        try:
            await started.wait(lambda: "READY=1" in started.messages or started.proc.returncode is not None,
                               timeout=READY_TIMEOUT, what="READY=1")
            assert "READY=1" in started.messages, f"exited {started.proc.returncode} before READY=1\n{started.tail()}"
            ready_at = started.messages.index("READY=1")

            # the state file and the control socket are in the unit's own directories
            assert (tmp_path / "state" / "state.sqlite3").exists(), started.tail()
            socket_path = tmp_path / "runtime" / "control.sock"
            status = await run_cli("status", "--json", "--socket", str(socket_path))
            assert status.returncode == 0, status.stderr.decode()
            assert json.loads(status.stdout)["listen"] == f"http://127.0.0.1:{port}"

            # it syncs: a sale at the register reaches the shop
            await world.connect(f"http://127.0.0.1:{port}")
            p = world.products[0]
            world.clover.pos_sale(world.locations["downtown"], {p.clover["downtown"]: 2})
            with trio.move_on_after(30):
                while world.woo_stock(p) != 18:
                    await trio.sleep(0.05)
            assert world.woo_stock(p) == 18, f"the sale did not reach the shop\n{started.tail()}"

            # the watchdog is fed every WATCHDOG_USEC / 2 after READY=1
            interval = unit.watchdog_usec / 2_000_000
            await started.wait(lambda: started.messages[ready_at:].count("WATCHDOG=1") >= 1,
                               timeout=interval * 2 + 10, what="a WATCHDOG=1 after READY=1")
            assert started.messages.count("WATCHDOG=1") >= 2, started.messages  # one at start, one later

            started.proc.send_signal(signal.SIGTERM)
            await started.wait(lambda: started.proc.returncode is not None, timeout=STOP_TIMEOUT,
                               what="the exit after SIGTERM")
            assert "STOPPING=1" in started.messages, started.messages
            assert started.proc.returncode == 0, f"exit {started.proc.returncode}\n{started.tail()}"
            assert b"Read-only file system" not in started.output and b"PermissionError" not in started.output
        finally:
            if started.proc.returncode is None:
                started.proc.kill()
            nursery.cancel_scope.cancel()


async def test_an_instance_with_the_default_paths_is_refused_naming_the_keys(tmp_path: Path) -> None:
    unit = read_unit("cloverwoo@.service", INSTANCE)
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=1)
        etc_dir = tmp_path / "etc-cloverwoo"
        etc_dir.mkdir()
        (etc_dir / f"{INSTANCE}.toml").write_text(unit_config(world, free_port(), None))  # step 12 skipped
        started = await start_unit(nursery, unit, tmp_path, etc_dir, credentials_for(unit, world, tmp_path))
        await started.wait(lambda: started.proc.returncode is not None, timeout=READY_TIMEOUT, what="the exit")
        out = started.output.decode()
        assert started.proc.returncode == 2, out
        assert "READY=1" not in started.messages
        assert out.count("\n") == 1, out
        assert (f'set [state] path = "/var/lib/cloverwoo/{INSTANCE}/state.sqlite3" and '
                f'[control] socket = "/run/cloverwoo/{INSTANCE}/control.sock"') in out
        assert list((tmp_path / "state").iterdir()) == []
        nursery.cancel_scope.cancel()
