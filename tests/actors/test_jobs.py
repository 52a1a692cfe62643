"""The job runner over fake ports and a scripted shard: a job always ends, and says what it did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.jobs import JobRunner, JobStalled
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import CloverItem, WooItem, WooRef
from cloverwoo_daemon.messages import CatalogueUpdate, Initialise, ShardCommand
from tests.actors.fakes import FakeClover, FakeStore, FakeWoo, to_the_end
from tests.actors.shard.test_actor import wait_until


class Rig:
    """A job runner with one shard, played by the test: ``answer(initialise)`` decides what it reports."""

    def __init__(self, products: int = 3, **kw: Any) -> None:
        self.store = FakeStore()
        self.woo = FakeWoo()
        self.clover = FakeClover("downtown")
        self.table = BindingTable()
        self.shard_send, self.shard_recv = trio.open_memory_channel[ShardCommand](10_000)
        for i in range(products):
            self.add(i)
        self.jobs = JobRunner(store=self.store, woo=self.woo, clovers={"downtown": self.clover},  # type: ignore[arg-type]
                              table=self.table, shards=[self.shard_send],
                              merge_config=core_merge.MergeConfig(locations=("downtown",), primary="downtown"),
                              **kw)
        self.received: list[Initialise] = []
        self.answer: Callable[[Initialise], tuple[str, str] | None] = lambda init: ("unchanged", "")

    def add(self, i: int, *, woo: int = 10, clover: int = 10) -> None:
        self.woo.items.append(WooItem(ref=WooRef(100 + i), name=f"Mug {i}", sku=f"SKU-{i}", manage_stock=True,
                                      quantity=woo))
        self.clover.items.append(CloverItem(item_id=f"I{i}", name=f"Mug {i}", sku=f"SKU-{i}", quantity=clover))

    def lock_held(self) -> bool:
        return self.jobs._lock.locked()

    async def shard(self) -> None:
        """What a shard does with the job's commands, as far as the job can tell."""
        async for cmd in self.shard_recv:
            if isinstance(cmd, CatalogueUpdate) and cmd.binding is not None:
                self.table.put(cmd.binding)
            elif isinstance(cmd, Initialise):
                self.received.append(cmd)
                said = self.answer(cmd)
                if said is not None:
                    result, reason = said
                    if reason:
                        self.jobs.item_done(cmd.job_id, cmd.binding_id, result, reason)
                    else:
                        self.jobs.item_done(cmd.job_id, cmd.binding_id, result)


async def test_a_recount_nobody_answers_fails_and_frees_the_lock(autojump_clock: trio.testing.MockClock) -> None:
    """The wedge: a shard that never reports a binding held the job, and its lock, for ever."""
    rig = Rig(stall_after=120.0)
    rig.answer = lambda init: None if init.binding_id == "woo:101:0" else ("unchanged", "")
    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        with pytest.raises(JobStalled, match=r"no binding finished for 120s; 1 of 3 not finished \(SKU-1\)"):
            await rig.jobs.sync("clover", dry_run=False)
        failed = rig.jobs.last["import"]
        assert failed.state == "failed" and "no binding finished" in failed.error
        assert rig.jobs.current is None and not rig.lock_held()
        rig.answer = lambda init: ("unchanged", "")
        again = await rig.jobs.sync("clover", dry_run=False)  # the lock is free: the next job runs
        assert again.state == "done" and again.unchanged == 3
        finish()


async def test_progress_keeps_a_slow_job_alive(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig(products=5, stall_after=10.0)
    waiting: list[Initialise] = []
    rig.answer = lambda init: waiting.append(init)  # type: ignore[func-returns-value]

    async def slow_shard() -> None:
        await wait_until(lambda: len(waiting) == 5, "the five recounts sent", timeout=60)
        for init in waiting:
            await trio.sleep(8.0)  # each under stall_after, all five well over it
            rig.jobs.item_done(init.job_id, init.binding_id, "changed")

    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        n.start_soon(slow_shard)
        status = await rig.jobs.sync("clover", dry_run=False)
        assert status.state == "done" and status.changed == 5
        finish()


async def test_a_reconcile_recounts_never_synced_bindings_by_the_configured_truth() -> None:
    """It sent an empty truth, which crashed the shard (``source_of_truth must be clover or woo, not ''``)."""
    rig = Rig(products=2)
    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        status = await rig.jobs.reconcile(dry_run=False)
        assert status.state == "done" and status.report["never_synced"] == 2
        assert {init.truth for init in rig.received} == {"clover"}
        assert status.unchanged == 2
        finish()


async def test_results_are_counted_and_a_failed_binding_fails_the_job_with_its_reason() -> None:
    rig = Rig(products=4)
    results = {"woo:100:0": ("changed", ""), "woo:101:0": ("unchanged", ""), "woo:102:0": ("skipped", "excluded"),
               "woo:103:0": ("failed", "8 attempts failed, the last: woocommerce write refused: 400")}
    rig.answer = lambda init: results[init.binding_id]
    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        status = await rig.jobs.sync("clover", dry_run=False)
        assert (status.changed, status.unchanged, status.skipped, status.failed) == (1, 1, 1, 1)
        assert status.state == "failed" and "1 binding(s) failed (SKU-3)" in status.error
        assert status.failures == [{"binding_id": "woo:103:0", "sku": "SKU-3", "name": "Mug 3",
                                    "reason": results["woo:103:0"][1]}]
        assert status.writes_planned == 1  # it planned (at least) what it wrote
        assert not rig.lock_held()
        finish()


async def test_the_scheduled_reconcile_waits_for_a_running_job(autojump_clock: trio.testing.MockClock) -> None:
    """It skipped while a job ran, every time, for as long as that job was stuck."""
    rig = Rig(products=2, reconcile_every=60.0, refresh_every=None, full_every=None)
    held: list[Initialise] = []
    rig.answer = lambda init: held.append(init) if init.truth == "woo" else ("unchanged", "")  # type: ignore[func-returns-value]
    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        await n.start(rig.jobs.run)
        await wait_until(lambda: "reconcile" in rig.jobs.last, "the start-up reconcile", timeout=60)
        first = rig.jobs.last["reconcile"].finished_at
        rig.jobs.start("sync", truth="woo")  # a push that takes 100 s
        await wait_until(lambda: len(held) == 2, "the push's recounts", timeout=60)
        await trio.sleep(110.0)  # the schedule fires meanwhile (at 60 s), and its next turn is at 120 s
        assert rig.jobs.last["reconcile"].finished_at == first
        released = trio.current_time()
        for init in held:
            rig.jobs.item_done(init.job_id, init.binding_id, "unchanged")
        await wait_until(lambda: rig.jobs.last["reconcile"].finished_at != first, "the scheduled reconcile",
                         timeout=60)
        assert trio.current_time() - released < 5.0  # it waited for the push, then ran: not skipped to 120 s
        assert rig.jobs.last["push"].state == "done"
        finish()


async def test_a_job_that_crashes_does_not_take_the_runner_down() -> None:
    rig = Rig(products=1, refresh_every=None, full_every=None)
    async with to_the_end() as (n, finish):
        n.start_soon(rig.shard)
        await n.start(rig.jobs.run)
        await wait_until(lambda: "reconcile" in rig.jobs.last, "the start-up reconcile")
        rig.woo.items = None  # type: ignore[assignment]  # the catalogue read raising a non-remote error (a bug)
        rig.jobs.start("sync", truth="clover")
        await wait_until(lambda: "import" in rig.jobs.last, "the import to fail")
        failed = rig.jobs.last["import"]
        assert failed.state == "failed" and rig.jobs.current is None
        assert failed.error == "TypeError: 'NoneType' object is not iterable"
        rig.woo.items = []
        rig.jobs.start("reconcile")  # the runner still takes jobs
        await wait_until(lambda: rig.jobs.last["reconcile"].started_at > rig.jobs.last["import"].started_at,
                         "the next reconcile")
        finish()


async def test_a_job_cut_short_by_a_shutdown_is_not_a_failed_job(autojump_clock: trio.testing.MockClock) -> None:
    """A shutdown cancels a job while it reads both catalogues in a nursery, so the cancellation arrives as a
    group of them: that is not a failure (nothing is recorded as the last job), and no ``job_failed`` is logged."""
    from structlog.testing import capture_logs

    rig = Rig()

    async def slow_list(**kw: Any) -> list[Any]:
        await trio.sleep(60)
        return []

    rig.woo.list_items = slow_list  # type: ignore[method-assign]
    rig.clover.list_items = slow_list  # type: ignore[method-assign]
    with capture_logs() as logs, trio.move_on_after(5):
        await rig.jobs.reconcile(dry_run=False)
    assert [e for e in logs if e["event"] == "job_failed"] == []
    assert "reconcile" not in rig.jobs.last and rig.jobs.current is None and not rig.lock_held()
