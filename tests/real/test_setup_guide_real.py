"""docs/SETUP.md walked as written on the REAL WooCommerce: every step that does not need Clover's servers.

``tests/test_setup_guide.py`` runs the guide's ``cloverwoo`` commands against the simulators. This
walks the guide itself, the way a merchant on a fresh Debian server does: its shell blocks, read
from the document, run by bash as root, in order, against the realwoo store, the Clover simulator
(standing in for Clover's servers and dashboard) and nginx configured from step 5's example.

How "as written" is kept:

- The guide's paths are real inside a private mount namespace (``unshare --mount``, held open by
  one process for the whole walk; every command enters it with ``nsenter``): ``/etc``,
  ``/var/lib``, ``/run``, ``/root``, ``/usr/local`` and ``/opt`` are overlays whose changes vanish
  with it, and ``/opt/cloverwoo`` is this checkout, read-only (the clone). So ``install -d ...
  /etc/cloverwoo``, ``systemd-sysusers``, ``ln -s ... /usr/local/bin/cloverwoo``,
  ``CREDENTIALS_DIRECTORY=/etc/cloverwoo/credentials cloverwoo ...`` run literally, and the admin
  commands find ``/etc/cloverwoo/cloverwoo.toml`` and ``/run/cloverwoo/control.sock`` by default.
- Only what a merchant substitutes changes: the key and secrets (``'ck_...'``, ``'cs_...'``,
  ``'app secret'``, ``'the auth code'``), and in step 4's config the addresses and ids
  (``127.0.0.1:8787`` becomes a free port, ``https://sync.example.com`` the nginx address, the
  store, the Clover base URL, the merchant id, the App ID). Each must be found in the guide.
  Step 4's config block is applied to the installed example: its keys set, and its
  ``[[clover.locations]]`` table replaces the example's (token_file out, the OAuth keys in).
  Alerts by email are off (``email_to = []``): there is no mail server here.
- What cannot run here is named with the reason (``SKIPPED``): ``apt-get`` (this machine has the
  packages), ``git clone`` (the bind mount is the clone), ``journalctl`` (the walk keeps the
  daemon's output, the journal's content, and greps its ``preflight`` lines as step 6 says).
  ``systemctl`` is played by the walk: ``enable --now`` / ``restart`` start the unit copied to
  ``/etc/systemd/system`` in step 6 (edited as step 4 says for OAuth) the way systemd starts it:
  ``ExecStart`` as written, ``LoadCredential=`` files copied to ``/run/credentials/...`` (a
  missing one fails like status 243/CREDENTIALS), ``StateDirectory=`` and ``RuntimeDirectory=``
  made, ``NOTIFY_SOCKET`` read for ``READY=1``; ``stop`` is SIGTERM and must exit 0. (The unit's
  sandboxing is ``tests/test_units_start.py``'s subject.)
- What the merchant does in a browser is done by the test: approving the Clover app (the
  simulator's authorize page answers the code, which is pasted into ``clover connect`` on its
  stdin), entering the webhook URL and pressing *Send Verification Code* (the simulator posts it
  through nginx), creating the mu-plugin of step 8 in the store's ``wp-content/mu-plugins`` with
  the guide's own PHP block, the test sale (a POS sale at the simulator, a paid order in the store).
- Step 0 (the simulators) is ``tests/test_setup_guide.py``'s; step 12 (a second merchant on the
  template unit) is ``tests/test_units_start.py``'s.

Every command's exit status is checked (0), and what the guide promises is checked after it. The
transcript is printed (``pytest -s``).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloverwoo_daemon.io.control import control_call
from cloverwoo_daemon.messages import StatusRequest
from cloverwoo_daemon.sim.clover import CloverSim
from tests.e2e.daemon_proc import REPO, free_port, is_idle
from tests.real.daemon_world import DAEMON_UA, DaemonWorld
from tests.real.proxies import Proxy, ensure_installed, start_nginx
from tests.real.stores import RealStore
from tests.test_units_start import set_key

GUIDE = REPO / "docs" / "SETUP.md"
ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "dumb"}
UNIT = "cloverwoo.service"
COMMAND_TIMEOUT = 240.0  # a job (sync import) reads the whole store: every product the tier made
READY_TIMEOUT = 60.0  # the unit's TimeoutStartSec=

# Lines of the guide's shell blocks the walk does not run, and why.
SKIPPED = {
    "apt-get ": "installs Debian packages: this machine has them",
    "git clone ": "the clone: /opt/cloverwoo is this checkout, bind-mounted read-only",
    "journalctl ": "the journal: the walk keeps the daemon's output and greps its preflight lines",
}
# Whole steps left to other tests.
OTHER_TESTS = {
    "0": "the rehearsal with the simulators: tests/test_setup_guide.py",
    "12": "a second merchant on the template unit: tests/test_units_start.py",
}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare --mount); CI runs as root"
    for tool in ("unshare", "nsenter", "mount", "bash", "systemd-sysusers", "make", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount is refused here: {probe.stderr.strip()}"
    return None


pytestmark = [pytest.mark.realwoo, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


# --------------------------------------------------------------------------------------------------
# The guide, read


@dataclass(frozen=True)
class Block:
    step: str  # "4" for "## 4. The config"
    lang: str
    text: str
    line: int  # of the opening fence


def guide_blocks() -> list[Block]:
    found: list[Block] = []
    step, lang, start, current = "", "", 0, None
    for n, line in enumerate(GUIDE.read_text(encoding="utf-8").splitlines(), 1):
        head = re.match(r"## (\d+)\. ", line)
        if head and current is None:
            step = head.group(1)
        if line.startswith("```"):
            if current is None:
                current, lang, start = [], line[3:].strip().lower(), n
            else:
                found.append(Block(step, lang, "\n".join(current), start))
                current = None
        elif current is not None:
            current.append(line)
    return found


def step_text(step: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    head = re.search(rf"(?m)^## {step}\. .*$", text)
    assert head, f"docs/SETUP.md has no step {step}"
    end = re.search(r"(?m)^## \d+\. ", text[head.end():])
    return text[head.start(): head.end() + end.start() if end else len(text)]


def substitute(text: str, values: dict[str, str], where: str) -> str:
    for old, new in values.items():
        assert old in text, f"docs/SETUP.md {where} no longer has {old!r}, a value the walk substitutes"
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------------------------------
# The server: a private mount namespace held open for the walk

HOLDER = r"""
set -eu
scratch=$1; repo=$2
mount -t tmpfs -o mode=0700 cloverwoo-guide "$scratch"
for d in /etc /var/lib /run /root /usr/local /opt; do
    n=$(printf %s "$d" | tr / _)
    mkdir -p "$scratch/$n/upper" "$scratch/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$scratch/$n/upper,workdir=$scratch/$n/work" "$d"
done
mkdir -p /opt/cloverwoo
mount --bind "$repo" /opt/cloverwoo
mount -o remount,bind,ro /opt/cloverwoo
echo ready
exec sleep 86400
"""


@dataclass
class Server:
    """The merchant's server: a mount namespace where the guide's paths are real (module docstring).

    Resource handling: ``open`` starts the holder process; ``close`` kills it by its pid (the
    namespace, and every change made in it, goes with the last process inside).
    """

    holder: trio.Process
    transcript: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, scratch: Path) -> Server:
        scratch.mkdir()
        proc = await trio.lowlevel.open_process(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", HOLDER, "sh", str(scratch), str(REPO)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        server = cls(proc)
        assert proc.stdout is not None
        seen = b""
        with trio.move_on_after(30):
            while b"ready" not in seen:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    break
                seen += chunk
        if b"ready" not in seen:
            await server.close()
            raise RuntimeError(f"the private mount namespace did not come up: {seen.decode(errors='replace')}")
        return server

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            if self.holder.returncode is None:
                self.holder.kill()
            await self.holder.wait()
            if self.holder.stdout is not None:
                await self.holder.stdout.aclose()

    def path(self, inside: str) -> Path:
        """A path of the server as the test reaches it from outside (through the holder's root)."""
        return Path(f"/proc/{self.holder.pid}/root{inside}")

    def enter(self, env: dict[str, str]) -> list[str]:
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", "env", "-i",
                *[f"{k}={v}" for k, v in env.items()]]

    async def bash(self, script: str, *, where: str, check: bool = True) -> str:
        """Run ``script`` as root's bash in the server (from ``/root``); its output. Exit 0 required."""
        with trio.fail_after(COMMAND_TIMEOUT):
            done = await trio.run_process([*self.enter(ROOT_ENV), "bash", "-e", "-c", "cd /root\n" + script],
                                          stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                                          check=False, cwd="/")
        out = (done.stdout + done.stderr).decode("utf-8", "replace")
        self.transcript.append(f"[{where}] $ {script.strip()}\n" + "".join(f"    {ln}\n" for ln in out.splitlines()))
        if check:
            assert done.returncode == 0, f"docs/SETUP.md {where}: `{script.strip()}` exited {done.returncode}:\n{out}"
        return out


# --------------------------------------------------------------------------------------------------
# systemd, played


@dataclass
class UnitRun:
    """The unit the guide installed, started as systemd starts it (module docstring); one run at a time."""

    server: Server
    notify_path: Path
    proc: trio.Process | None = None
    output: bytearray = field(default_factory=bytearray)
    messages: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.output.decode("utf-8", "replace").splitlines():
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def tail(self, n: int = 30) -> str:
        return "--- the daemon's output (tail) ---\n" + "\n".join(
            self.output.decode("utf-8", "replace").splitlines()[-n:])

    def unit(self) -> dict[str, list[str]]:
        """The [Service] settings of /etc/systemd/system/cloverwoo.service in the server."""
        path = self.server.path(f"/etc/systemd/system/{UNIT}")
        assert path.exists(), "systemctl: Unit cloverwoo.service not found (step 6 copies it)"
        settings: dict[str, list[str]] = {}
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == "Service" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
        return settings

    async def start(self, nursery: trio.Nursery) -> None:
        assert self.proc is None or self.proc.returncode is not None, "the unit is already running"
        unit = self.unit()
        creds_dir = f"/run/credentials/{UNIT}"
        host_creds = self.server.path(creds_dir)
        shutil.rmtree(host_creds, ignore_errors=True)
        host_creds.mkdir(parents=True, mode=0o700)
        for spec in unit["LoadCredential"]:
            cred_id, _, source = spec.partition(":")
            src = self.server.path(source)
            assert src.is_file(), (f"systemd would not start the unit: LoadCredential={spec}: {source} does not "
                                   f"exist (status 243/CREDENTIALS)")
            (host_creds / cred_id).write_bytes(src.read_bytes())
            (host_creds / cred_id).chmod(0o400)
        state, runtime = "/var/lib/" + unit["StateDirectory"][0], "/run/" + unit["RuntimeDirectory"][0]
        self.server.path(state).mkdir(mode=0o700, exist_ok=True)
        self.server.path(runtime).mkdir(mode=0o750, exist_ok=True)
        env = {"PATH": ROOT_ENV["PATH"], "NOTIFY_SOCKET": str(self.notify_path), "CREDENTIALS_DIRECTORY": creds_dir,
               "STATE_DIRECTORY": state, "RUNTIME_DIRECTORY": runtime,
               "CONFIGURATION_DIRECTORY": "/etc/" + unit["ConfigurationDirectory"][0],
               "INVOCATION_ID": os.urandom(16).hex(), "HOME": "/", "LANG": "C.UTF-8"}
        argv = shlex.split(unit["ExecStart"][0])
        self.messages.clear()
        self.proc = proc = await trio.lowlevel.open_process(
            [*self.server.enter(env), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd="/")
        nursery.start_soon(self._read_output, proc)
        await self.wait(lambda: "READY=1" in self.messages or proc.returncode is not None, READY_TIMEOUT,
                        "READY=1 from the unit")
        assert "READY=1" in self.messages, f"the unit exited {proc.returncode} before READY=1\n{self.tail()}"

    async def _read_output(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(65536):
            self.output.extend(chunk)
            self._poke()
        await proc.wait()
        self._poke()

    async def read_notify(self, sock: trio.socket.SocketType) -> None:
        while True:
            data = await sock.recv(4096)
            self.messages.extend(data.decode().split("\n"))
            self._poke()

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                await self.changed.wait()
            return
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{self.tail()}")

    async def stop(self) -> int:
        proc = self.proc
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await self.wait(lambda: proc.returncode is not None, 30.0, "the exit after SIGTERM (TimeoutStopSec=)")
        self.exit_codes.append(proc.returncode)
        return proc.returncode

    async def restart(self, nursery: trio.Nursery) -> None:
        code = await self.stop()
        assert code == 0, f"the daemon exited {code} on SIGTERM\n{self.tail()}"
        await self.start(nursery)


# --------------------------------------------------------------------------------------------------
# The walk


@dataclass
class Walk:
    server: Server
    unit: UnitRun
    nursery: trio.Nursery
    woo: RealStore
    clover: CloverSim
    merchant_id: str
    port: int
    nginx: Proxy
    secrets: dict[str, str]  # the guide's placeholder (quoted) -> the value
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.server.path("/run/cloverwoo/control.sock"))

    async def status(self) -> dict[str, Any]:
        resp = await control_call(self.socket, StatusRequest(), timeout=30.0)
        assert resp.ok and isinstance(resp.data, dict), resp.error
        return resp.data

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90.0) -> None:
        last: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                last = await self.status()
                if predicate(last):
                    return
                await trio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; status: {last}\n{self.unit.tail()}")

    async def wait_idle(self) -> None:
        await self.wait_status(is_idle, "the daemon to settle")

    def access_mark(self) -> int:
        """Where the store's access log ends now (``store_writes`` reads what comes after)."""
        return (self.woo.rig.dir / "logs" / "access.log").stat().st_size

    def store_writes(self, mark: int) -> list[str]:
        """Requests that can write, made to the store by the daemon (its User-Agent) after ``mark``."""
        with (self.woo.rig.dir / "logs" / "access.log").open("rb") as f:
            f.seek(mark)
            lines = f.read().decode("utf-8", "replace").splitlines()
        return [ln for ln in lines if ln.split(" ")[1:2] != ["GET"] and ln.rstrip().endswith(DAEMON_UA)]

    async def metrics(self) -> dict[str, float]:
        """Scraped where step 5 says, on the daemon's own address: ``{'name{labels}': value}``."""
        async with httpx.AsyncClient(timeout=30.0) as http:
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).raise_for_status().text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    # ------------------------------------------------------------ running a block

    async def run_block(self, block: Block, special: dict[str, Callable[[str], Any]] | None = None) -> str:
        """The block's lines, in order: runs of ordinary lines as one bash script (so ``cd`` and ``umask``
        carry), ``systemctl`` played, a line a ``special`` prefix names handed to it, SKIPPED ones noted.
        Returns what the scripts printed."""
        where = f"step {block.step} (line {block.line})"
        text = block.text
        for old, new in self.secrets.items():
            text = text.replace(old, new)
        pending: list[str] = []
        printed: list[str] = []

        async def flush() -> None:
            if any(ln.strip() and not ln.strip().startswith("#") for ln in pending):
                printed.append(await self.server.bash("\n".join(pending), where=where))
                self.ran += [ln.strip() for ln in pending if ln.strip()]
            pending.clear()

        for line in text.splitlines():
            stripped = line.strip()
            why = next((w for prefix, w in SKIPPED.items() if stripped.startswith(prefix)), None)
            handler = next((h for prefix, h in (special or {}).items() if prefix in stripped), None)
            if why:
                await flush()
                self.skipped.append(f"{where}: `{stripped}`: {why}")
            elif stripped.startswith("systemctl "):
                await flush()
                await self.systemctl(stripped, where)
                self.ran.append(stripped)
            elif handler is not None:
                await flush()
                await handler(stripped)
                self.ran.append(stripped)
            else:
                pending.append(line)
        await flush()
        return "".join(printed)

    async def systemctl(self, line: str, where: str) -> None:
        words = line.split()
        self.server.transcript.append(f"[{where}] $ {line}   (played by the walk)\n")
        match words[1:]:
            case ["daemon-reload"]:
                self.unit.unit()  # systemd reads the unit file: it must be there
            case ["enable", "--now", "cloverwoo"] | ["start", "cloverwoo"]:
                await self.unit.start(self.nursery)
            case ["restart", "cloverwoo"]:
                await self.unit.restart(self.nursery)
            case _:
                raise AssertionError(f"docs/SETUP.md {where}: the walk cannot play `{line}`")

    async def clover_connect(self, line: str) -> None:
        """``clover connect``: reads the address it prints, approves the app there as the merchant (the
        simulator's authorize page answers the code at once), pastes the code on its stdin."""
        words = shlex.split(line)
        env = dict(ROOT_ENV)
        while "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        proc = await trio.lowlevel.open_process([*self.server.enter(env), *words], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        assert proc.stdin is not None and proc.stdout is not None
        out = b""
        with trio.fail_after(60):
            while b"Paste" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"`{line}` ended before asking for the code:\n{out.decode()}"
                out += chunk
            url = re.search(rb"(https?://\S+/oauth/v2/authorize\S*)", out)
            assert url, f"`{line}` printed no address to open:\n{out.decode()}"
            async with httpx.AsyncClient(timeout=30.0) as http:  # the merchant's browser
                page = (await http.get(url.group(1).decode())).raise_for_status().json()
            await proc.stdin.send_all(page["code"].encode() + b"\n")
            await proc.stdin.aclose()
            while chunk := await proc.stdout.receive_some(4096):
                out += chunk
            await proc.wait()
        text = out.decode("utf-8", "replace")
        self.server.transcript.append(f"[step 7] $ {line}   (the code pasted)\n" +
                                      "".join(f"    {ln}\n" for ln in text.splitlines()))
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{text}"


def config_from_guide(example: str, guide_toml: str) -> str:
    """Step 4: the guide's keys set in the installed example; its location replaces the example's."""
    wanted = tomllib.loads(guide_toml)
    text = example
    for section, keys in wanted.items():
        for key, value in keys.items():
            if section == "clover" and key == "locations":
                continue
            text = set_key(text, section, key, value)
    lines = text.splitlines()
    start = lines.index("[[clover.locations]]")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip() or lines[i].startswith(("[", "#")))
    location = [f"{k} = {json.dumps(v)}" for k, v in wanted["clover"]["locations"][0].items()]
    lines[start + 1: end] = location
    return set_key("\n".join(lines) + "\n", "alerts", "email_to", [])


@asynccontextmanager
async def clover_simulator(nursery: trio.Nursery) -> AsyncIterator[CloverSim]:
    sim = CloverSim(auth_code=os.urandom(16).hex())
    await nursery.start(sim.run)
    try:
        yield sim
    finally:
        sim.stop()


def _store_hooks(woo: RealStore, delivery_url: str) -> list[dict[str, Any]]:
    with httpx.Client(auth=(woo.rig.env["REALWOO_CK"], woo.rig.env["REALWOO_CS"]), timeout=60.0) as http:
        hooks = http.get(woo.rig.env["REALWOO_API"] + "/webhooks",
                         params={"per_page": "100", "status": "all"}).raise_for_status().json()
        return [h for h in hooks if h["delivery_url"] == delivery_url]


def _delete_hooks(woo: RealStore, delivery_url: str) -> None:
    with httpx.Client(auth=(woo.rig.env["REALWOO_CK"], woo.rig.env["REALWOO_CS"]), timeout=60.0) as http:
        for hook in _store_hooks(woo, delivery_url):
            http.delete(f"{woo.rig.env['REALWOO_API']}/webhooks/{hook['id']}",
                        params={"force": "true"}).raise_for_status()


def _accepted(metrics: dict[str, float], source: str) -> float:
    return DaemonWorld.metric(metrics, "cloverwoo_events_received_total", source=source, result="accepted")


async def test_the_guide_walked_on_the_real_store(realwoo: RealStore, tmp_path: Path) -> None:
    nginx_bin, why = ensure_installed("nginx")
    if nginx_bin is None:
        pytest.skip(why)
    blocks = guide_blocks()
    by_step: dict[str, list[Block]] = {}
    for b in blocks:
        by_step.setdefault(b.step, []).append(b)
    shell = {s: [b for b in bs if b.lang in ("", "sh", "bash", "shell")] for s, bs in by_step.items()}
    mu_plugin_name = re.search(r"wp-content/mu-plugins/(\S+?\.php)", step_text("8"))
    assert mu_plugin_name, "docs/SETUP.md step 8 no longer names the mu-plugin's file"
    mu_plugin = realwoo.rig.mu_plugins / mu_plugin_name.group(1)
    assert not mu_plugin.exists(), f"{mu_plugin} is there before the walk"
    t_start = time.monotonic()
    port = free_port()
    server = await Server.open(tmp_path / "scratch")
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(str(tmp_path / "notify"))
    unit = UnitRun(server, tmp_path / "notify")
    try:
        async with trio.open_nursery() as nursery, clover_simulator(nursery) as clover:
            nursery.start_soon(unit.read_notify, notify)
            merchant = clover.add_merchant("Downtown")
            with start_nginx(nginx_bin, f"127.0.0.1:{port}") as nginx:
                clover.trust_certificate(nginx.ca)
                delivery_url = nginx.url + "/webhooks/woocommerce"
                env = realwoo.rig.env
                walk = Walk(server, unit, nursery, realwoo, clover, merchant.id, port, nginx, secrets={
                    "'ck_...'": shlex.quote(env["REALWOO_CK"]), "'cs_...'": shlex.quote(env["REALWOO_CS"]),
                    "'app secret'": shlex.quote(clover.oauth.settings.client_secret),
                    "'the auth code'": shlex.quote(clover.auth_code)})
                try:
                    await _walk(walk, shell, mu_plugin)
                finally:
                    mu_plugin.unlink(missing_ok=True)
                    with trio.CancelScope(shield=True), trio.move_on_after(90):
                        if unit.proc is not None and unit.proc.returncode is None:
                            await unit.stop()
                        await trio.to_thread.run_sync(_delete_hooks, realwoo, delivery_url)
            nursery.cancel_scope.cancel()
    finally:
        notify.close()
        await server.close()
        print("\n" + "".join(server.transcript))
        print(f"walk: {time.monotonic() - t_start:.1f} s")


async def _walk(walk: Walk, shell: dict[str, list[Block]], mu_plugin: Path) -> None:
    server, woo, clover = walk.server, walk.woo, walk.clover
    for step in sorted(shell, key=int):
        if step in OTHER_TESTS:
            walk.skipped.append(f"step {step}: {OTHER_TESTS[step]}")
    assert set(shell) >= {"1", "2", "3", "4", "6", "7", "8", "9", "10", "11"}, sorted(shell)

    # the merchant's catalogue, on both sides before the set-up, counted differently (Clover is right)
    a = await woo.create_product(stock=5, sku=woo.sku("WALK"))
    b = await woo.create_product(stock=6, sku=woo.sku("WALK"))
    c = await woo.create_product(stock=3, sku=woo.sku("WALK"))
    items = {p.sku: clover.add_item(walk.merchant_id, f"Walk {p.sku}", sku=p.sku, quantity=q)
             for p, q in ((a, 9), (b, 4), (c, 3))}

    # 1. Install; 2. the WooCommerce key; 3. the Clover app's secret, the auth code empty
    for step in ("1", "2", "3"):
        for block in shell[step]:
            await walk.run_block(block)
    assert (await server.bash("stat -c '%a %U %G' /etc/cloverwoo /etc/cloverwoo/credentials "
                              "/etc/cloverwoo/cloverwoo.toml; id cloverwoo", where="after step 3")).split("\n")[:3] \
        == ["750 root cloverwoo", "700 root root", "640 root cloverwoo"]
    creds = server.path("/etc/cloverwoo/credentials")
    assert {p.name: p.stat().st_mode & 0o777 for p in creds.iterdir()} == {
        "woo_key": 0o600, "woo_secret": 0o600, "woo_webhook_secret": 0o600, "clover_app_secret": 0o600,
        "clover_auth_code": 0o600}
    assert re.fullmatch(r"[A-Za-z0-9]{48}", (creds / "woo_webhook_secret").read_text())
    assert (creds / "clover_auth_code").read_text() == ""

    # 4. The config: the guide's keys, the merchant's values
    public_url = walk.nginx.url
    toml_blocks = [b for b in guide_blocks() if b.step == "4" and b.lang == "toml"]
    assert len(toml_blocks) == 1, "docs/SETUP.md step 4 should show the config in one toml block"
    guide_toml = substitute(toml_blocks[0].text, {
        "127.0.0.1:8787": f"127.0.0.1:{walk.port}", "https://sync.example.com": public_url,
        "https://shop.example.com": woo.rig.url, "https://api.clover.com": str(clover.base_url),
        '"MERCHANT1"': f'"{walk.merchant_id}"', '"APPID1234567"': f'"{clover.oauth.client_id}"'}, "step 4's config")
    config = server.path("/etc/cloverwoo/cloverwoo.toml")
    config.write_text(config_from_guide(config.read_text(), guide_toml))
    for block in shell["4"]:
        await walk.run_block(block)

    # 5. TLS in front: nginx from the guide's example is already listening (walk.nginx)
    # 6. Start the daemon; step 4 says: with OAuth, the copied unit loads clover_app_secret, not the token
    load_app_secret = re.search(r"`(LoadCredential=clover_app_secret:\S+)`", step_text("4"))
    assert load_app_secret, "docs/SETUP.md step 4 no longer gives the unit's line for clover_app_secret"

    async def after_cp(line: str) -> None:
        await server.bash(line, where="step 6")
        unit_file = server.path(f"/etc/systemd/system/{UNIT}")
        text = unit_file.read_text()
        token_line = re.search(r"(?m)^LoadCredential=downtown_token:.*$", text)
        assert token_line, "the shipped unit has no downtown_token line for step 4's OAuth edit"
        unit_file.write_text(text.replace(token_line.group(0), load_app_secret.group(1)))

    for block in shell["6"]:
        await walk.run_block(block, {"cp /opt/cloverwoo/systemd/cloverwoo.service": after_cp})
    preflight = [ln for ln in walk.unit.lines() if str(ln.get("event", "")).startswith("preflight")]
    assert preflight and preflight[-1]["event"] == "preflight_done", walk.unit.tail()  # journalctl ... | grep preflight
    server.transcript.append("[step 6] journalctl -u cloverwoo | grep preflight   (the daemon's output)\n" + "".join(
        f"    {ln.get('level', '')}: {ln.get('result') or ln}\n" for ln in preflight))
    assert (await walk.status())["locations"]["downtown"]["polls"] == 0  # no Clover tokens yet

    # 7. Connect the Clover location (OAuth): the running daemon picks the tokens up
    for block in shell["7"]:
        await walk.run_block(block, {"cloverwoo clover connect": walk.clover_connect})
    assert server.path("/var/lib/cloverwoo/state.sqlite3").stat().st_mode & 0o777 == 0o600
    await walk.wait_status(lambda s: s["locations"]["downtown"]["polls"] >= 1, "a Clover poll of downtown with "
                           "the tokens `clover connect` stored, without a restart")

    # 8. Webhooks: Clover's URL verified through nginx, then the auth code; WooCommerce's registered
    clover.set_webhook_url(public_url + "/webhooks/clover")
    code, answered = await clover.send_verification_code()  # the dashboard's "Send Verification Code"
    assert answered == 200, f"Clover's verification post through nginx was answered {answered}"

    async def status_shows_code(line: str) -> None:
        out = await server.bash(line, where="step 8")
        assert f"verification code {code}" in out, f"`cloverwoo status` does not list the code {code}:\n{out}"

    hooks_before = await trio.to_thread.run_sync(_store_hooks, woo, public_url + "/webhooks/woocommerce")
    assert hooks_before == []
    blocks8 = shell["8"]
    for block in blocks8:
        if "clover verify" in block.text:
            continue  # after the auth code, below
        await walk.run_block(block, {"cloverwoo status": status_shows_code})
    assert (server.path("/etc/cloverwoo/credentials/clover_auth_code").read_text() == clover.auth_code)
    hooks = await trio.to_thread.run_sync(_store_hooks, woo, public_url + "/webhooks/woocommerce")
    assert sorted(h["topic"] for h in hooks) == ["order.created", "order.updated", "product.deleted",
                                                 "product.updated"], hooks
    assert all(h["status"] == "active" for h in hooks), hooks
    pings = [x for x in walk.nginx.accesses() if x["request"].startswith("POST /webhooks/woocommerce ")]
    assert pings and all(x["status"] == 200 for x in pings), pings  # WooCommerce pinged each, through nginx
    # verifying the URL again: a window opened, a new code received within it
    verify = [blk for blk in blocks8 if "clover verify" in blk.text]
    assert len(verify) == 1
    await walk.run_block(verify[0])
    again, answered = await clover.send_verification_code()
    assert answered == 200, f"the second verification post was answered {answered} inside the window"
    listed = await server.bash("cloverwoo status", where="step 8, after the window")
    assert f"verification code {again}" in listed, listed  # (codes are kept while the daemon runs)
    # the recommended mu-plugin, into the real store as written
    php = [blk for blk in guide_blocks() if blk.step == "8" and blk.lang == "php"]
    assert len(php) == 1, "docs/SETUP.md step 8 should show the mu-plugin in one php block"
    mu_plugin.write_text(php[0].text + "\n")

    # 9. Check everything
    for block in shell["9"]:
        out = await walk.run_block(block)
        marks = [ln for ln in out.splitlines() if ln.startswith(("✓", "✗"))]
        assert marks and all(ln.startswith("✓") or "stock writes: not atomic" in ln for ln in marks), out

    # 10. The first sync, then a test sale each way
    async def both_sides() -> list[tuple[int | None, float | None]]:
        return [(await woo.stock(p), clover.stock(walk.merchant_id, items[p.sku])) for p in (a, b, c)]

    async def dry_run(line: str) -> None:
        await walk.wait_idle()
        before, mark = await both_sides(), walk.access_mark()
        await server.bash(line, where="step 10")
        await walk.wait_idle()
        after = await both_sides()
        assert after == before and walk.store_writes(mark) == [], f"`{line}` wrote: {before} -> {after}"

    server.path("/root/not-synced.txt").write_text(f"# kept out of the sync\nGIFT-CARD-10\n\n{c.sku}\n")
    for block in shell["10"]:
        await walk.run_block(block, {"--dry-run": dry_run})
    await walk.wait_idle()
    assert [await woo.stock(p) for p in (a, b)] == [9, 4], "sync import did not make WooCommerce follow Clover"
    excluded = (await walk.status())["exclusions"]["skus"]
    assert c.sku in excluded and "GIFT-CARD-25" in excluded and "GIFT-CARD-50" not in excluded, excluded
    metrics0 = await walk.metrics()
    t0 = time.time()
    clover.pos_sale(walk.merchant_id, {items[a.sku]: 1})  # sell one unit on the Clover device ...
    pos = await wait_until(lambda: woo.stock(a), 8, what="the WooCommerce stock after the POS sale")
    metrics1 = await walk.metrics()
    clover_in = _accepted(metrics1, "clover") - _accepted(metrics0, "clover")
    assert clover_in >= 1, "the POS sale's Clover webhook did not reach the daemon through nginx"
    async with woo.deliveries_held():  # WP-Cron held: only the mu-plugin's synchronous delivery can come
        t1 = time.time()
        await woo.order({b: 1})  # ... and buy one online
        metrics2 = await walk.metrics()  # right after the store answered the order
        online = await wait_until(lambda: clover.stock(walk.merchant_id, items[b.sku]), 3,
                                  what="the Clover stock after the online order")
    woo_in = _accepted(metrics2, "woocommerce") - _accepted(metrics1, "woocommerce")
    assert woo_in >= 1, "no WooCommerce delivery came inside the order's request: the step 8 mu-plugin did not work"
    await walk.wait_idle()

    # 11. What to watch
    for block in shell["11"]:
        await walk.run_block(block)
    rows = {r["sku"]: r for r in _csv(server.path("/root/stock.csv").read_text())}
    assert rows[a.sku]["woo_stock"] == rows[a.sku]["clover_stock"] == "8", rows.get(a.sku)
    assert rows[b.sku]["woo_stock"] == rows[b.sku]["clover_stock"] == "3", rows.get(b.sku)
    assert rows[c.sku]["sync_status"] == "excluded", rows.get(c.sku)
    code = await walk.unit.stop()
    assert code == 0 and "STOPPING=1" in walk.unit.messages, walk.unit.tail()

    print(f"\ntest sale: POS -> WooCommerce {pos - t0:.2f} s, online order -> Clover {online - t1:.2f} s "
          f"(webhooks through nginx: Clover {clover_in:g}, WooCommerce {woo_in:g})")
    print(f"ran {len(walk.ran)} lines of docs/SETUP.md; not run here:\n  " + "\n  ".join(walk.skipped))
    assert sum(1 for ln in walk.ran if "cloverwoo " in ln) >= 15, walk.ran


async def wait_until(read: Callable[[], Any], value: int, *, what: str, timeout: float = 30.0) -> float:
    """Poll ``read()`` (a value or an awaitable) until it gives ``value``; the time.time() it did."""
    last = None
    with trio.move_on_after(timeout):
        while True:
            last = read()
            if inspect.isawaitable(last):
                last = await last
            if last == value:
                return time.time()
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} to be {value} (last {last})")


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))

