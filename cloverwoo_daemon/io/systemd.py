"""systemd's notify protocol, written by hand: readiness, status text, watchdog, stopping.

Rules this module keeps:

- One datagram per call to ``$NOTIFY_SOCKET``, on a socket opened and closed
  within the call (the ``sdnotify`` package keeps one per call open and hides
  errors; stack.md). A path starting with ``@`` is in the abstract namespace
  (the ``@`` becomes a NUL byte).
- Without ``$NOTIFY_SOCKET`` (not started by systemd, or in tests) every call
  is a no-op returning False.
- A failed send is logged and returns False; it never raises: the daemon
  must not die because systemd could not be told something. A watchdog
  that stops arriving is how systemd learns the rest.
- ``watchdog_interval`` is half of ``$WATCHDOG_USEC`` (systemd's advice), and
  None when the watchdog is off or meant for another process
  (``$WATCHDOG_PID``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import structlog
import trio

__all__ = [
    "notify",
    "notify_ready",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "run_watchdog",
    "watchdog_interval",
]

log = structlog.get_logger("cloverwoo.systemd")


def _address(env: Mapping[str, str]) -> str | None:
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return None
    if target.startswith("@"):
        return "\0" + target[1:]
    if target.startswith("/"):
        return target
    log.warning("notify_socket_unsupported", notify_socket=target)  # e.g. vsock:, not used by a service unit
    return None


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=value`` lines) to systemd; True when it was sent.

    ``env`` defaults to ``os.environ``; tests pass their own.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)  # a full receive queue must not block the daemon for long
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify_failed", state=state.split("=", 1)[0], error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def notify_ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``Type=notify``: the store is open and the server listens."""
    state = "READY=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
    return notify(state, env=env)


def notify_status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """The one-line status ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def notify_watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env=env)


def notify_stopping(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    state = "STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
    return notify(state, env=env)


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None when there is no watchdog."""
    e = os.environ if env is None else env
    try:
        usec = int(e.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = e.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000 / 2


async def run_watchdog(
    is_healthy: Callable[[], bool] = lambda: True,
    *,
    env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping the watchdog every interval while ``is_healthy()``; returns at once when there is no watchdog.

    Skipping pings while unhealthy is deliberate: systemd then restarts the
    daemon (``Restart=on-failure``), which is what a wedged daemon needs.
    Reports the interval (or None) through ``task_status``.
    """
    interval = watchdog_interval(env=env)
    task_status.started(interval)
    if interval is None:
        return
    while True:
        if is_healthy():
            notify_watchdog(env=env)
        else:
            log.warning("watchdog_withheld", reason="unhealthy")
        await trio.sleep(interval)
