"""The shard's scheduler with a fake merge function: coalescing, the worker pool, retries, job accounting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.shard.scheduler import MergeOutcome, MergeScheduler
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.messages import EventsSettled, Initialise
from tests.actors.fakes import to_the_end
from tests.actors.shard.test_actor import wait_until


def trigger(*events: int, kind: str = "webhook:clover", clover_at: tuple[str, ...] | None = ("downtown",)) -> Pending:
    p = Pending()
    p.absorb(events, kind, trio.current_time(), None, clover_at)
    return p


def recount(job: str) -> Pending:
    p = Pending(initialise=Initialise("b", 1, {"downtown": 1}, "clover", job))
    p.absorb((), "initialise", trio.current_time())
    return p


class Harness:
    """A scheduler whose merge function the test scripts: ``plan[bid]`` is called with the pending."""

    def __init__(self, **kw: Any) -> None:
        self.calls: list[tuple[str, Pending, float]] = []
        self.running: dict[str, int] = {}
        self.most_at_once = 0
        self.most_per_binding = 0
        self.plan: dict[str, Callable[[Pending], Any]] = {}
        self.failures: list[tuple[str, int]] = []
        self.jobs: list[tuple[str, str, str, str]] = []
        self.settled: list[EventsSettled] = []
        self.settled_send, self.settled_recv = trio.open_memory_channel[EventsSettled](1000)
        kw.setdefault("retry", Backoff(base=1.0, cap=4.0, max_attempts=1_000_000))
        self.scheduler = MergeScheduler(
            merge=self.merge, settled=self.settled_send,
            on_failure=lambda bid, n: self.failures.append((bid, n)),
            on_job_item=lambda job, bid, result, reason: self.jobs.append((job, bid, result, reason)), **kw,
        )

    async def merge(self, bid: str, pending: Pending) -> MergeOutcome:
        self.calls.append((bid, pending, trio.current_time()))
        self.running[bid] = self.running.get(bid, 0) + 1
        self.most_per_binding = max(self.most_per_binding, self.running[bid])
        self.most_at_once = max(self.most_at_once, sum(self.running.values()))
        try:
            step = self.plan.get(bid)
            result = await step(pending) if step is not None else None
            return result if isinstance(result, MergeOutcome) else MergeOutcome()
        finally:
            self.running[bid] -= 1

    async def collect(self) -> None:
        async for msg in self.settled_recv:
            self.settled.append(msg)

    def settled_events(self, bid: str) -> list[set[int]]:
        return [set(m.event_ids) for m in self.settled if m.binding_id == bid]

    async def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await self.scheduler.run(task_status=task_status)

        await nursery.start(run)
        return scope


async def test_triggers_during_a_merge_coalesce_into_one_more_merge() -> None:
    h = Harness()
    gate = trio.Event()

    async def first_waits(p: Pending) -> None:
        if len(h.calls) == 1:
            await gate.wait()

    h.plan["b"] = first_waits
    async with to_the_end() as (n, finish):
        n.start_soon(h.collect)
        await h.start(n)
        h.scheduler.enqueue("b", trigger(1))
        await wait_until(lambda: len(h.calls) == 1, "the first merge")
        for e in (2, 3, 4):
            h.scheduler.enqueue("b", trigger(e, clover_at=("airport",)))
        await trio.sleep(0.05)
        assert len(h.calls) == 1  # one merge at a time per binding
        gate.set()
        await wait_until(lambda: len(h.settled) == 2, "both merges settled")
        assert len(h.calls) == 2 and h.most_per_binding == 1
        assert h.settled_events("b") == [{1}, {2, 3, 4}]
        assert h.calls[1][1].clover_at == {"airport"}
        assert h.scheduler.idle()
        finish()


async def test_the_worker_pool_is_fixed() -> None:
    h = Harness(max_parallel=3)
    gate = trio.Event()

    async def wait(p: Pending) -> None:
        await gate.wait()

    for i in range(10):
        h.plan[f"b{i}"] = wait
    async with to_the_end() as (n, finish):
        await h.start(n)
        for i in range(10):
            h.scheduler.enqueue(f"b{i}", trigger(i))
        await wait_until(lambda: len(h.calls) == 3, "three merges running")
        await trio.sleep(0.05)
        assert h.most_at_once == 3 and h.scheduler.statistics()["dirty"] == 7
        gate.set()
        await wait_until(lambda: len(h.calls) == 10, "every binding merged")
        assert h.most_at_once == 3
        finish()


async def test_a_failing_merge_is_retried_with_backoff_and_settles_only_after_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness()
    errors: list[Exception] = [RuntimeError("a bug"), OSError("disk full"), KeyError("x")]

    async def fails_three_times(p: Pending) -> None:
        if errors:
            raise errors.pop(0)

    h.plan["b"] = fails_three_times
    async with to_the_end() as (n, finish):
        n.start_soon(h.collect)
        await h.start(n)
        h.scheduler.enqueue("b", trigger(1))
        h.scheduler.enqueue("other", trigger(2))
        await wait_until(lambda: h.settled_events("b") == [{1}], "the fourth attempt to settle", timeout=60)
        assert h.settled_events("other") == [{2}]  # the failures never held the other binding
        assert h.failures == [("b", 1), ("b", 2), ("b", 3)]
        times = [t for bid, _, t in h.calls if bid == "b"]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        # full-jitter backoff: attempt k waits within [d/2, d], d = 1, 2, 4 seconds
        for gap, d in zip(gaps, (1.0, 2.0, 4.0), strict=True):
            assert d / 2 <= gap <= d + 0.01, (gaps, d)
        assert all("retry" in p.triggers for bid, p, _ in h.calls[2:] if bid == "b")
        stats = h.scheduler.statistics()
        assert stats["failed_merges"] == 3 and stats["retrying"] == 0 and stats["merges"] == 2
        finish()


async def test_a_trigger_during_the_backoff_joins_the_waiting_merge(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness()
    failed = trio.Event()

    async def fails_once(p: Pending) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("once")

    h.plan["b"] = fails_once
    async with to_the_end() as (n, finish):
        n.start_soon(h.collect)
        await h.start(n)
        h.scheduler.enqueue("b", trigger(1))
        await failed.wait()
        await trio.sleep(0)  # (inside the backoff delay)
        h.scheduler.enqueue("b", trigger(2))
        assert h.scheduler.statistics()["dirty"] == 0  # not a second merge beside the waiting one
        await wait_until(lambda: h.settled, "the retry", timeout=60)
        assert h.settled_events("b") == [{1, 2}] and len(h.calls) == 2
        finish()


async def test_an_interrupted_incarnation_runs_its_work_again_whole() -> None:
    """Cancellation is not a failure: the merge stays owed, and the next incarnation runs it with everything."""
    h = Harness()
    gate = trio.Event()

    async def first_hangs(p: Pending) -> None:
        if len(h.calls) == 1:
            await trio.sleep_forever()
        await gate.wait()

    h.plan["b"] = first_hangs
    async with to_the_end() as (n, finish):
        n.start_soon(h.collect)
        scope = await h.start(n)
        p = recount("job-1")
        p.absorb((7,), "webhook:clover", trio.current_time(), None, ("downtown",))
        h.scheduler.enqueue("b", p)
        await wait_until(lambda: len(h.calls) == 1, "the merge in flight")
        scope.cancel()
        await trio.sleep(0.02)
        assert h.scheduler.has_pending("b") and h.scheduler.statistics()["failed_merges"] == 0
        await h.start(n)
        await wait_until(lambda: len(h.calls) == 2, "the merge run again")
        again = h.calls[1][1]
        assert again.initialise is not None and again.initialise.job_id == "job-1"
        assert 7 in again.event_ids and "restart" in again.triggers and again.clover_at is None
        gate.set()
        await wait_until(lambda: h.jobs, "the job told")
        assert h.jobs == [("job-1", "b", "unchanged", "")]
        finish()


async def test_a_recount_that_keeps_failing_is_told_failed_once_and_keeps_retrying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(job_attempts=3, retry=Backoff(base=0.1, cap=0.2, max_attempts=1_000_000))
    attempts = 0

    async def fails_five_times(p: Pending) -> MergeOutcome:
        nonlocal attempts
        attempts += 1
        if attempts <= 5:
            raise ValueError(f"refused #{attempts}")
        return MergeOutcome(job_result="changed")

    h.plan["b"] = fails_five_times
    async with to_the_end() as (n, finish):
        await h.start(n)
        h.scheduler.enqueue("b", recount("job-9"))
        await wait_until(lambda: attempts == 6, "the sixth attempt", timeout=60)
        await trio.sleep(0)
        assert [j[2] for j in h.jobs] == ["failed", "changed"]
        assert "3 attempts failed" in h.jobs[0][3] and "refused #3" in h.jobs[0][3]
        finish()


async def test_a_recount_superseded_by_another_jobs_is_told_skipped() -> None:
    h = Harness()
    gate = trio.Event()

    async def wait(p: Pending) -> None:
        await gate.wait()

    h.plan["busy"] = wait
    h.plan["b"] = wait
    async with to_the_end() as (n, finish):
        await h.start(n)
        h.scheduler.enqueue("b", trigger(1))
        await wait_until(lambda: len(h.calls) == 1, "b running")
        h.scheduler.enqueue("b", recount("job-old"))
        h.scheduler.enqueue("b", recount("job-new"))
        assert h.jobs == [("job-old", "b", "skipped", "superseded by job job-new")]
        gate.set()
        await wait_until(lambda: len(h.jobs) == 2, "the new job told")
        assert h.jobs[1][:3] == ("job-new", "b", "unchanged")
        finish()


@pytest.mark.parametrize("result", ["changed", "unchanged", "skipped", "unbound"])
async def test_the_job_hears_what_the_merge_did(result: str) -> None:
    h = Harness()

    async def did(p: Pending) -> MergeOutcome:
        return MergeOutcome(job_result=result, reason="why")

    h.plan["b"] = did
    async with to_the_end() as (n, finish):
        await h.start(n)
        h.scheduler.enqueue("b", recount("job-3"))
        await wait_until(lambda: h.jobs, "the job told")
        assert h.jobs == [("job-3", "b", result, "why")]
        finish()
