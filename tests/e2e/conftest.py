"""End-to-end fixtures: simulated stores on loopback and the daemon driven over HTTP, as in production."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.sim.harness import World, start_world


@dataclass
class Env:
    world: World
    daemon: Running
    nursery: trio.Nursery


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail with ``what`` after ``timeout`` (generous: a noisy 2-core box)."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def settle(env: Env, *, quiet: float = 0.5, timeout: float = 15.0) -> None:
    """Wait until the daemon has been idle (no queued or running merge) for ``quiet`` seconds."""
    with trio.fail_after(timeout):
        idle_since = None
        while True:
            if env.daemon.admin.idle():
                idle_since = idle_since or trio.current_time()
                if trio.current_time() - idle_since >= quiet:
                    return
            else:
                idle_since = None
            await trio.sleep(0.02)


@asynccontextmanager
async def running_env(tmp_path: Path, **world_kw: Any) -> AsyncIterator[Env]:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", **world_kw)
        cfg = world.cfg
        running: Running = await nursery.start(
            lambda task_status: run_daemon(cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                           task_status=task_status)
        )
        await world.connect(running.webhook_url)
        env = Env(world, running, nursery)
        await running.admin.jobs.refreshed.wait()
        await settle(env)
        try:
            yield env
        finally:
            running.stop()
            await running.stopped.wait()
            nursery.cancel_scope.cancel()


@pytest.fixture
def env_factory(tmp_path: Path) -> Callable[..., Any]:
    return lambda **kw: running_env(tmp_path, **kw)
