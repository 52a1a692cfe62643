"""sd_notify against a real datagram socket, both a path and the abstract namespace."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from cloverwoo_daemon.io.systemd import (
    notify,
    notify_ready,
    notify_status,
    notify_stopping,
    notify_watchdog,
    run_watchdog,
    watchdog_interval,
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    with sock:
        yield sock, {"NOTIFY_SOCKET": path}


def test_messages_arrive(receiver: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = receiver
    assert notify_ready("listening on 127.0.0.1:8787", env=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:8787"
    assert notify_status("syncing\n120 products", env=env)
    assert sock.recv(4096) == b"STATUS=syncing 120 products"  # one line: a newline would start a new key
    assert notify_watchdog(env=env)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notify_stopping("draining", env=env)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    assert notify_ready(env=env)
    assert sock.recv(4096) == b"READY=1"


def test_abstract_namespace() -> None:
    name = f"cloverwoo-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_noop_and_errors_do_not_raise(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False  # logged, not raised


def test_watchdog_interval() -> None:
    assert watchdog_interval(env={}) is None
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval(env={"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval(env={"WATCHDOG_USEC": "soon"}) is None


async def test_run_watchdog_pings_while_healthy(receiver: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = receiver
    sock.setblocking(False)
    healthy = [True]
    env = env | {"WATCHDOG_USEC": "20000"}  # 10 ms interval
    async with trio.open_nursery() as nursery:
        assert await nursery.start(partial(run_watchdog, lambda: healthy[0], env=env)) == 0.01
        tsock = trio.socket.from_stdlib_socket(sock)
        with trio.fail_after(5):
            assert await tsock.recv(64) == b"WATCHDOG=1"
            assert await tsock.recv(64) == b"WATCHDOG=1"
        healthy[0] = False
        await trio.sleep(0.05)
        while True:  # drain what was sent before the switch; later iterations see unhealthy and send nothing
            try:
                sock.recv(64)
            except BlockingIOError:
                break
        await trio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            sock.recv(64)
        nursery.cancel_scope.cancel()
    # Without a watchdog it returns at once.
    with trio.fail_after(5):
        await run_watchdog(env={})
