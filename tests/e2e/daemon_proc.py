"""The daemon as a real subprocess, started as the systemd units start it: ``cloverwoo run --config X``.

Rules this helper keeps:

- The command line is the units' ``ExecStart`` (``cloverwoo run --config
  X``), run by the console script of the interpreter running the tests (the
  venv's ``bin/cloverwoo``, as the units run ``/opt/cloverwoo/.venv/bin/
  cloverwoo``); ``python -m cloverwoo_daemon.cli`` with the same arguments
  only where no script is installed next to the interpreter.
- stdout and stderr are pipes, never a tty, so the daemon logs JSON lines
  (io/logs.py). Every byte of both streams is kept, across restarts, for the
  tests that scan output (secrets); stdout lines that parse as JSON objects
  are also kept parsed, tagged with the run they came from.
- "Started" means the ``daemon_ready`` line was logged; its ``listen`` URL is
  what the simulators are pointed at. A daemon that exits before that fails
  the test with its output attached, so a crash at start is diagnosable.
- Every wait has a generous timeout (a noisy 2-core machine) and fails with a
  message saying what it waited for; nothing here asserts on durations.
- Restarts reuse the same config, hence the same state file and control
  socket: that is the point of the crash tests.
- The environment handed to the daemon drops ``NOTIFY_SOCKET`` and
  ``WATCHDOG_*``: the test runner may itself run under systemd, and the
  daemon must not talk to the runner's manager.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.io.control import DaemonUnreachable, control_call
from cloverwoo_daemon.messages import StatusRequest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 45.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback port free right now, so every restart of a daemon listens where the webhooks point."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cloverwoo_command() -> list[str]:
    """How to run ``cloverwoo``: the installed console script, else the module with this interpreter."""
    script = Path(sys.executable).parent / "cloverwoo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cloverwoo_daemon.cli"]


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class DaemonProc:
    """One daemon config, run as a subprocess any number of times in a row (never two at once)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = Path(config_path)
        self.stdout = bytearray()  # every run, concatenated
        self.stderr = bytearray()
        self.lines: list[dict[str, Any]] = []  # parsed JSON stdout lines; each has "_run" added
        self.runs = 0
        self.exit_codes: list[int] = []
        self.listen_url = ""
        self.control_socket = ""
        self._proc: trio.Process | None = None
        self._changed = trio.Event()
        self._exited = trio.Event()

    # ------------------------------------------------------------ output

    def output_text(self) -> str:
        return (self.stdout + b"\n" + self.stderr).decode("utf-8", "replace")

    def tail(self, n: int = 40) -> str:
        out = self.stdout.decode("utf-8", "replace").splitlines()[-n:]
        err = self.stderr.decode("utf-8", "replace").splitlines()[-n:]
        return "--- daemon stdout (tail) ---\n" + "\n".join(out) + "\n--- daemon stderr (tail) ---\n" + "\n".join(err)

    def events(self, name: str, run: int | None = None) -> list[dict[str, Any]]:
        return [ln for ln in self.lines if ln.get("event") == name and (run is None or ln["_run"] == run)]

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _pump(self, stream: Any, sink: bytearray, parse: bool, run: int) -> None:
        partial = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            sink.extend(chunk)
            if parse:
                partial += chunk
                *complete, partial = partial.split(b"\n")
                for raw in complete:
                    self._parse(raw, run)
            self._poke()
        if parse and partial:
            self._parse(partial, run)
        self._poke()

    def _parse(self, raw: bytes, run: int) -> None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if isinstance(obj, dict):
            obj["_run"] = run
            self.lines.append(obj)

    async def wait_for_line(self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0,
                            what: str = "a log line") -> dict[str, Any]:
        """The first line (of any run) matching ``predicate``, waiting for it if needed."""
        with trio.move_on_after(timeout):
            while True:
                for ln in self.lines:
                    if predicate(ln):
                        return ln
                await self._changed.wait()
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.tail()}")

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, nursery: trio.Nursery, *, timeout: float = START_TIMEOUT) -> str:
        """Start the daemon and wait for ``daemon_ready``; returns its listen URL."""
        assert not self.running, "one daemon at a time on a state file"
        self.runs += 1
        run = self.runs
        proc = await trio.lowlevel.open_process(
            [*cloverwoo_command(), "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(REPO), env=daemon_env(),
        )
        self._proc = proc
        exited = self._exited = trio.Event()

        async def watch() -> None:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(self._pump, proc.stdout, self.stdout, True, run)
                pumps.start_soon(self._pump, proc.stderr, self.stderr, False, run)
                await proc.wait()
            self.exit_codes.append(proc.returncode if proc.returncode is not None else -1)
            exited.set()
            self._poke()

        nursery.start_soon(watch)
        with trio.move_on_after(timeout):
            while True:
                ready = self.events("daemon_ready", run)
                if ready:
                    self.listen_url = str(ready[0]["listen"])
                    self.control_socket = str(ready[0].get("control", ""))
                    return self.listen_url
                if exited.is_set():
                    raise AssertionError(f"daemon run {run} exited with {proc.returncode} before daemon_ready\n"
                                         f"{self.tail()}")
                await self._changed.wait()
        await self.kill()
        raise AssertionError(f"daemon run {run} not ready after {timeout}s\n{self.tail()}")

    async def _signal_and_wait(self, signum: int, timeout: float) -> int | None:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(signum)
        with trio.move_on_after(timeout):
            await self._exited.wait()  # the pumps drained: every byte it wrote is in self.stdout
            return proc.returncode
        return None

    async def kill(self) -> int:
        """SIGKILL: no shutdown phase runs, exactly like a power cut of the process."""
        code = await self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)
        assert code is not None, f"daemon survived SIGKILL for {STOP_TIMEOUT}s"
        return code

    async def terminate(self, *, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as systemd stops it; the daemon drains and exits. Returns its exit code."""
        code = await self._signal_and_wait(signal.SIGTERM, timeout)
        if code is None:
            await self.kill()
            raise AssertionError(f"daemon did not exit within {timeout}s of SIGTERM\n{self.tail()}")
        return code

    async def aclose(self) -> None:
        """Last-resort cleanup for a failed test: never leave a daemon behind."""
        if self.running:
            with trio.CancelScope(shield=True):
                await self.kill()

    # ------------------------------------------------------------ control socket

    async def status(self, *, timeout: float = 20.0) -> dict[str, Any]:
        resp = await control_call(self.control_socket, StatusRequest(), timeout=timeout)
        assert resp.ok, resp.error
        assert isinstance(resp.data, dict)
        return resp.data

    async def wait_status(self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0,
                          what: str = "a status") -> dict[str, Any]:
        last: dict[str, Any] | None = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    last = await self.status()
                except DaemonUnreachable:
                    last = None
                if last is not None and predicate(last):
                    return last
                await trio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last status: {last}\n{self.tail()}")

    async def wait_idle(self, *, quiet: float = 1.0, timeout: float = 45.0) -> dict[str, Any]:
        """Wait until ``is_idle`` has held for ``quiet`` seconds."""
        since: float | None = None
        last: dict[str, Any] | None = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    last = await self.status()
                except DaemonUnreachable:
                    last = None
                if last is not None and is_idle(last):
                    since = since if since is not None else trio.current_time()
                    if trio.current_time() - since >= quiet:
                        return last
                else:
                    since = None
                await trio.sleep(0.1)
        raise AssertionError(f"daemon not idle after {timeout}s; last status: {last}\n{self.tail()}")


def is_idle(status: dict[str, Any]) -> bool:
    """Nothing accepted is waiting and no merge is failing.

    Merges in flight are not looked at: the WooCommerce poll re-finds the
    products modified in its cursor's second on every pass (the cursor
    overlaps by one second), so read-only merges start every poll interval
    and a daemon is never without one for long. What matters for "settled"
    is that every accepted event is settled and nothing is being retried.
    """
    s, store = status["shards"], status.get("store") or {}
    return bool(s["retrying"] == 0 and store.get("pending_inbox", 1) == 0)


# ---------------------------------------------------------------- the state file, read-only


def read_state(path: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on the state file, read-only (the daemon must be stopped or idle)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def pending_inbox(path: Path | str) -> int:
    return int(read_state(path, "SELECT count(*) FROM inbox WHERE settled_at IS NULL")[0][0])


def pending_intents(path: Path | str) -> int:
    return int(read_state(path, "SELECT count(*) FROM intents")[0][0])


# ---------------------------------------------------------------- the CLI, as an admin runs it


async def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """``cloverwoo ARGS`` as a subprocess; output captured, exit code returned (never raises on it)."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "cloverwoo_daemon.cli", *args],
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False,
            cwd=str(REPO), env=daemon_env(),
        )
