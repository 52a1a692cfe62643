"""Supervision: restart with the same inbox, escalate past the crash budget."""

from __future__ import annotations

import pytest
import trio

from cloverwoo_daemon.actors.supervisor import CrashBudgetExceeded, Supervisor
from cloverwoo_daemon.core.backoff import Backoff


async def test_crashed_actor_restarts_and_keeps_its_inbox() -> None:
    send, recv = trio.open_memory_channel[int](10)
    seen: list[int] = []
    crashes = 0

    async def actor(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crashes
        task_status.started()
        async for item in recv:
            if item == 2 and crashes == 0:
                crashes += 1
                raise RuntimeError("boom")  # the item is consumed and lost by this incarnation only
            seen.append(item)

    sup = Supervisor(budget=3, window=60, backoff=Backoff(base=0.01, cap=0.02, max_attempts=100))
    async with trio.open_nursery() as n:
        await n.start(sup.supervise, "a", actor)
        for i in range(1, 6):
            await send.send(i)
        with trio.fail_after(5):
            while len(seen) < 4:
                await trio.sleep(0.01)
        assert sup.actors["a"].restarts == 1
        assert "boom" in sup.actors["a"].last_error
        assert sup.actors["a"].running
        n.cancel_scope.cancel()
    assert seen == [1, 3, 4, 5]


async def test_crash_budget_escalates() -> None:
    async def always_crashes(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        raise RuntimeError("still broken")

    sup = Supervisor(budget=2, window=60, backoff=Backoff(base=0.01, cap=0.02, max_attempts=100))
    with pytest.RaisesGroup(CrashBudgetExceeded, flatten_subgroups=True), trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(sup.supervise, "b", always_crashes)
    assert sup.actors["b"].restarts == 3


async def test_actor_that_returns_while_the_daemon_runs_is_restarted() -> None:
    """Returning is not a shutdown: a run loop that fell through is restarted like a crash."""
    runs = 0
    second = trio.Event()

    async def quits_once(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs == 1:
            return
        second.set()
        await trio.sleep_forever()

    sup = Supervisor(budget=3, window=60, backoff=Backoff(base=0.01, cap=0.02, max_attempts=100))
    async with trio.open_nursery() as n:
        await n.start(sup.supervise, "c", quits_once)
        with trio.fail_after(5):
            await second.wait()
            while not sup.actors["c"].running:
                await trio.sleep(0.01)
        assert sup.actors["c"].restarts == 1 and "returned while the daemon runs" in sup.actors["c"].last_error
        n.cancel_scope.cancel()


async def test_actor_that_keeps_returning_escalates() -> None:
    async def quits(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    sup = Supervisor(budget=2, window=60, backoff=Backoff(base=0.01, cap=0.02, max_attempts=100))
    with pytest.RaisesGroup(CrashBudgetExceeded, flatten_subgroups=True), trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(sup.supervise, "d", quits)


async def test_actor_that_returns_after_shutdown_ends_supervision() -> None:
    async def quits(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    sup = Supervisor()
    sup.shutdown()
    with trio.fail_after(2):
        await sup.supervise("e", quits)
    assert sup.actors["e"].restarts == 0 and not sup.actors["e"].running
