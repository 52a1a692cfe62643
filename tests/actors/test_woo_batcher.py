"""The Woo write batcher: callers' writes gathered into batches; a writer restart is a retry, not a cancellation."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from cloverwoo_daemon.actors.woo_batcher import BatchingWoo
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.ports import RemoteError
from tests.actors.fakes import FakeWoo, to_the_end
from tests.actors.shard.test_actor import wait_until


async def test_concurrent_writes_share_a_batch_and_each_caller_gets_its_own_result() -> None:
    woo = FakeWoo()
    calls: list[int] = []
    gate = trio.Event()

    async def slow(*, changes: Any) -> None:
        calls.append(len(changes))
        if len(calls) == 1:
            await gate.wait()

    woo.hold = slow
    for i in range(5):
        woo.stock[WooRef(i)] = 10
    batcher = BatchingWoo(woo, max_parallel=1)
    got: dict[int, int | None] = {}

    async def write(i: int) -> None:
        (res,) = await batcher.apply_deltas([(WooRef(i), -i, 2)])
        got[i] = res.quantity

    async with to_the_end() as (n, finish):
        await n.start(batcher.run)
        n.start_soon(write, 0)
        await wait_until(lambda: calls == [1], "the first write in flight")
        for i in range(1, 5):
            n.start_soon(write, i)
        await trio.sleep(0.02)
        gate.set()
        await wait_until(lambda: len(got) == 5, "every caller answered")
        assert calls == [1, 4]  # the four that waited went together
        assert got == {0: 10, 1: 9, 2: 8, 3: 7, 4: 6}
        finish()


async def test_a_writer_restart_fails_its_callers_with_a_remote_error_and_sends_what_is_queued() -> None:
    """A restarted writer used to hand its own cancellation to the callers: a shard then ended as if shut down."""
    woo = FakeWoo()
    woo.stock[WooRef(1)] = 10
    woo.stock[WooRef(2)] = 10
    in_flight = trio.Event()

    async def hang(*, changes: Any) -> None:
        if changes[0][0] == WooRef(1):
            in_flight.set()
            await trio.sleep_forever()

    woo.hold = hang
    batcher = BatchingWoo(woo, max_parallel=1)
    outcome: dict[int, Any] = {}

    async def write(i: int) -> None:
        try:
            (res,) = await batcher.apply_deltas([(WooRef(i), -1, 2)])
            outcome[i] = res.quantity
        except RemoteError as exc:
            outcome[i] = exc

    async with to_the_end() as (n, finish):
        writer = trio.CancelScope()

        async def run_writer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with writer:
                await batcher.run(task_status=task_status)

        await n.start(run_writer)
        n.start_soon(write, 1)
        await in_flight.wait()
        n.start_soon(write, 2)  # queued behind the hung batch (one slot)
        await trio.sleep(0.02)
        writer.cancel()  # the writer restarts
        await wait_until(lambda: 1 in outcome, "the caller of the cut batch answered")
        assert isinstance(outcome[1], RemoteError) and "cut short" in str(outcome[1])
        await n.start(batcher.run)
        await wait_until(lambda: 2 in outcome, "the queued write sent by the next incarnation")
        assert outcome[2] == 9
        finish()  # (a cancellation handed to a caller tore this nursery down early, as it did a shard's)


async def test_a_cancelled_caller_is_not_written_for_later() -> None:
    woo = FakeWoo()
    woo.stock[WooRef(1)] = 10
    batcher = BatchingWoo(woo)
    with trio.move_on_after(0.05):
        await batcher.apply_deltas([(WooRef(1), -1, 2)])  # no writer running: it waits, then gives up
    async with to_the_end() as (n, finish):
        await n.start(batcher.run)
        await trio.sleep(0.05)
        assert woo.stock[WooRef(1)] == 10 and woo.writes == []
        finish()


@pytest.mark.parametrize("error", [RemoteError("503"), ValueError("unexpected payload")])
async def test_a_failed_batch_fails_each_of_its_callers_with_the_error(error: Exception) -> None:
    woo = FakeWoo()
    woo.stock[WooRef(1)] = 10

    async def fail(*, changes: Any) -> None:
        raise error

    woo.hold = fail
    batcher = BatchingWoo(woo)
    async with to_the_end() as (n, finish):
        await n.start(batcher.run)
        with pytest.raises(type(error)):
            await batcher.apply_deltas([(WooRef(1), -1, 2)])
        finish()


async def test_companion_changes_are_batched_apart_from_deltas() -> None:
    """A batch goes to one endpoint: companion changes with companion changes, deltas with deltas."""
    from cloverwoo_daemon.core.model import CompanionInfo, StockChange

    woo = FakeWoo()
    woo.companion_info = CompanionInfo("1.0.0", "11.0.1", False, 30, True)
    kinds: list[tuple[str, int]] = []
    gate = trio.Event()

    async def slow(*, changes: Any) -> None:
        kinds.append(("changes" if isinstance(changes[0], StockChange) else "deltas", len(changes)))
        if len(kinds) == 1:
            await gate.wait()

    woo.hold = slow
    for i in range(6):
        woo.stock[WooRef(i)] = 10
    batcher = BatchingWoo(woo, max_parallel=1)
    got: dict[int, int | None] = {}

    async def change(i: int) -> None:
        (res,) = await batcher.apply_changes([StockChange(f"w{i}", WooRef(i), -1)])
        got[i] = res.quantity

    async def delta(i: int) -> None:
        (res,) = await batcher.apply_deltas([(WooRef(i), -1, f"m{i}")])
        got[i] = res.quantity

    async with to_the_end() as (n, finish):
        await n.start(batcher.run)
        n.start_soon(change, 0)
        await wait_until(lambda: len(kinds) == 1, "the first change in flight")
        for i in (1, 2, 3, 4, 5):
            n.start_soon(change if i % 2 else delta, i)
            await trio.sleep(0.001)
        await trio.sleep(0.02)
        gate.set()
        await wait_until(lambda: len(got) == 6, "every caller answered")
        assert kinds == [("changes", 1), ("changes", 3), ("deltas", 2)]
        assert got == dict.fromkeys(range(6), 9)
        assert (await batcher.companion()) == woo.companion_info  # passed through
        finish()
