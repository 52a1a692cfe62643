"""The shard's scheduler: per-binding serialisation, a fixed pool of workers, retries, and job accounting.

Rules this module keeps:

- Per binding, merges run one at a time. A trigger for a binding whose merge
  is in flight waits in ``again`` and runs once, after it, with fresh reads;
  a trigger for a binding waiting out a retry delay joins the waiting merge.
- A fixed pool of ``max_parallel`` workers takes bindings from one ready
  queue: 50,000 bindings made dirty at once (a first start, a reconcile) cost
  a queue entry each, not a parked task each.
- A merge that fails, for any reason, fails that merge and nothing else: it
  is logged with its error (a traceback when it is not a remote failure),
  counted (``on_failure`` alerts past a limit), and retried with capped
  backoff for as long as it takes, its inbox events unsettled. The shard and
  its other merges go on. ``trio.Cancelled`` is never caught here.
- Events are settled only by a merge that succeeded.
- Every binding a job sent (``Pending.initialise``) is accounted to that job
  exactly once as finished (its result: changed, unchanged, skipped,
  unbound) or, after ``job_attempts`` failed attempts, as failed with the
  reason. A failed one keeps retrying as the binding's own merge. A recount
  superseded by another job's is accounted as skipped.
- The tables live on the scheduler, not on an incarnation: when the shard is
  restarted, work that was queued, running (interrupted) or waiting out a
  retry is queued again, whole: its events, its locations and its job part.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.messages import EventsSettled
from cloverwoo_daemon.ports import RemoteError

log = structlog.get_logger("cloverwoo.shard")

JobResult = str  # changed | unchanged | skipped | unbound | failed


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """What one successful merge reports back to the scheduler."""

    rerun: bool = False  # a change landed meanwhile: merge again from fresh reads
    job_result: JobResult = "unchanged"  # what it did, for the job of a recount
    reason: str = ""  # why it was skipped


class MergeFailed(Exception):
    """This attempt could not finish (the executor already wrote why to the sync log); retry later."""


MergeFn = Callable[[str, Pending], Awaitable[MergeOutcome]]
JobItemHook = Callable[[str, str, str, str], None]  # job id, binding id, result, reason


def short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]


class MergeScheduler:
    """Runs ``merge(binding_id, pending)`` for each dirty binding, one at a time per binding."""

    def __init__(
        self,
        *,
        merge: MergeFn,
        settled: trio.MemorySendChannel[EventsSettled],
        max_parallel: int = 64,
        retry: Backoff | None = None,
        on_failure: Callable[[str, int], None] = lambda bid, attempts: None,
        on_job_item: JobItemHook = lambda job_id, bid, result, reason: None,
        log_failure: Callable[[str, Pending, BaseException], Awaitable[None]] | None = None,
        job_attempts: int = 8,
        name: str = "shard",
        on_drained: Callable[[], None] = lambda: None,
    ) -> None:
        self._merge = merge
        self._settled = settled
        self.max_parallel = max(1, max_parallel)
        self.retry = retry or Backoff(base=0.5, cap=10.0, max_attempts=1_000_000)
        self.on_failure = on_failure
        self.on_job_item = on_job_item
        self._log_failure = log_failure
        self.job_attempts = max(1, job_attempts)
        self.name = name
        self._on_drained = on_drained  # nothing queued any more: the other parts may shrink their tables too
        self._dirty: dict[str, Pending] = {}  # waiting for a worker
        self._running: dict[str, Pending] = {}  # merges in flight, with the triggers they settle
        self._again: dict[str, Pending] = {}  # arrived while running: one more merge afterwards
        self._failures: dict[str, int] = {}  # consecutive failed attempts
        self._backing_off: dict[str, Pending] = {}  # failed merges waiting out their retry delay
        # Bindings ready to merge, in order. Unbounded on purpose: one entry per dirty binding, and a
        # stale entry (already merged, or queued twice by a restart) is a no-op.
        self._ready_send, self._ready = trio.open_memory_channel[str](math.inf)
        self._nursery: trio.Nursery | None = None
        self.merges = 0
        self.failed_merges = 0
        self.trigger_counts: collections.Counter[str] = collections.Counter()  # what started merges, for status

    # ----------------------------------------------------------------- state

    def statistics(self) -> dict[str, int]:
        return {
            "dirty": len(self._dirty),
            "running": len(self._running),
            "again": len(self._again),
            "retrying": len(self._failures),
            "merges": self.merges,
            "failed_merges": self.failed_merges,
        }

    def has_pending(self, bid: str) -> bool:
        """A trigger for this binding is queued, running or waiting to retry."""
        return bid in self._dirty or bid in self._running or bid in self._again or bid in self._failures

    def idle(self) -> bool:
        return not (self._dirty or self._running or self._again or self._failures)

    # ------------------------------------------------------------------ loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation of the worker pool; work left by the last one is queued again first."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                leftovers: dict[str, Pending] = {}
                for table in (self._again, self._backing_off, self._running):
                    # again: its merge was running; backing off: its timer died with the last incarnation;
                    # running: a merge that incarnation's end interrupted, its events still unsettled.
                    for bid, p in table.items():
                        leftovers.setdefault(bid, Pending()).absorb_pending(p)
                self._again.clear()
                self._backing_off.clear()
                self._running.clear()
                for _ in range(self.max_parallel):
                    nursery.start_soon(self._worker)
                for bid in list(self._dirty):
                    self._ready_send.send_nowait(bid)
                for bid, p in leftovers.items():
                    p.add_trigger("restart")
                    p.read_everywhere()
                    self.enqueue(bid, p)
                task_status.started()
        finally:
            self._nursery = None

    def enqueue(self, bid: str, p: Pending) -> None:
        """Queue ``p`` for ``bid``, folded into whatever already waits for it. Never blocks."""
        if bid in self._running:
            self._fold(self._again.setdefault(bid, Pending()), p, bid)
        elif bid in self._dirty:
            self._fold(self._dirty[bid], p, bid)
        elif bid in self._backing_off:
            # A failed merge is waiting out its delay: the new trigger waits with it and they run as one.
            # Started beside it instead, a second failure took the waiting one's place, and both retries then
            # found the other's and stopped: their events were never settled, their sales never merged.
            self._fold(self._backing_off[bid], p, bid)
        else:
            self._dirty[bid] = p
            self._ready_send.send_nowait(bid)

    def _fold(self, into: Pending, p: Pending, bid: str) -> None:
        old = into.initialise
        if old is not None and p.initialise is not None and old.job_id != p.initialise.job_id:
            self._tell_job(old.job_id, bid, "skipped", f"superseded by job {p.initialise.job_id}")
        into.absorb_pending(p)

    async def _worker(self) -> None:
        async for bid in self._ready:
            await self._merge_task(bid)

    async def _merge_task(self, bid: str) -> None:
        """Merge ``bid`` with what is pending for it, then settle, follow up, or schedule a retry."""
        pending = self._dirty.pop(bid, None)
        if pending is None:
            return
        self._running[bid] = pending
        self.trigger_counts.update(pending.triggers)
        outcome: MergeOutcome | None = None
        error: Exception | None = None
        try:
            outcome = await self._merge(bid, pending)
        except MergeFailed as exc:  # logged where it happened
            error = exc
        except Exception as exc:
            # A store error, an answer that did not decode, a bug: this binding's failure, not the shard's.
            error = exc
            if isinstance(exc, RemoteError):
                log.warning("merge_failed", shard=self.name, binding_id=bid, error=short(exc))
            else:
                log.error("merge_failed", shard=self.name, binding_id=bid, error=f"{type(exc).__name__}: {short(exc)}",
                          exc_info=exc)
            if self._log_failure is not None:
                await self._log_failure(bid, pending, exc)
        # Not in a ``finally``: a merge interrupted by cancellation stays in ``_running``, so that the next
        # incarnation runs it again with its unsettled events and its job part.
        self._running.pop(bid, None)
        if outcome is not None:
            await self._succeeded(bid, pending, outcome)
        else:
            assert error is not None
            self._failed(bid, pending, error)
            return
        again = self._again.pop(bid, None)
        if again is not None:
            self.enqueue(bid, again)
        if not self._dirty:
            self._release_tables()

    async def _succeeded(self, bid: str, pending: Pending, outcome: MergeOutcome) -> None:
        self.merges += 1
        self._failures.pop(bid, None)
        init = pending.initialise
        if init is not None:
            self._tell_job(init.job_id, bid, outcome.job_result, outcome.reason)
        # ("catalogue" needs no follow-up: the recount applied the update and used it.)
        rest = pending.triggers - {"initialise", "catalogue", "retry", "restart"}
        if init is not None and (pending.event_ids or rest):
            # Triggers that came with the recount get a plain merge from fresh reads; their events
            # are settled by that merge, not by the recount (whose list reads may predate them).
            follow = Pending(event_ids=set(pending.event_ids), received_at=pending.received_at, clover_at=None)
            follow.add_trigger(*(rest or {"recheck"}))
            self.enqueue(bid, follow)
        elif pending.event_ids:
            await self._settled.send(EventsSettled(tuple(sorted(pending.event_ids)), bid))
        if outcome.rerun:
            p = Pending()
            p.absorb((), "recheck", trio.current_time())
            self.enqueue(bid, p)

    def _failed(self, bid: str, pending: Pending, error: Exception) -> None:
        self.failed_merges += 1
        attempt = self._failures.get(bid, 0) + 1
        self._failures[bid] = attempt
        try:
            self.on_failure(bid, attempt)
        except Exception as exc:  # the alert hook must never stop the retry
            log.error("failure_hook_failed", binding_id=bid, error=short(exc), exc_info=exc)
        init = pending.initialise
        if init is not None and attempt >= self.job_attempts and not pending.job_told_failed:
            pending.job_told_failed = True
            self._tell_job(init.job_id, bid, "failed", f"{attempt} attempts failed, the last: {short(error)}")
        delay = self.retry.next_delay(min(attempt, 30)) or self.retry.cap
        waiting = self._backing_off.get(bid)
        if waiting is not None:  # not expected (see enqueue); kept rather than overwritten
            pending.absorb_pending(waiting)
        self._backing_off[bid] = pending  # (a restart of this actor re-queues it at once)
        assert self._nursery is not None  # a merge only runs inside an incarnation
        self._nursery.start_soon(self._retry_later, bid, pending, delay)  # the worker moves on

    async def _retry_later(self, bid: str, pending: Pending, delay: float) -> None:
        await trio.sleep(delay)
        if self._backing_off.get(bid) is not pending:
            return  # re-queued by a restart meanwhile
        del self._backing_off[bid]
        # Back in line with everything that arrived meanwhile; the events stay unsettled.
        again = self._again.pop(bid, None)
        if again is not None:
            pending.absorb_pending(again)
        pending.add_trigger("retry")
        self.enqueue(bid, pending)

    def _tell_job(self, job_id: str, bid: str, result: str, reason: str) -> None:
        try:
            self.on_job_item(job_id, bid, result, reason)
        except Exception as exc:  # a bookkeeping hook must never turn a finished merge into a failed one
            log.error("job_item_hook_failed", job=job_id, binding_id=bid, error=short(exc), exc_info=exc)

    def _release_tables(self) -> None:
        """Give back the memory of the working tables a job filled (see ``tables``); cheap when they are small."""
        self._dirty = released(self._dirty)
        self._running = released(self._running)
        self._again = released(self._again)
        self._failures = released(self._failures)
        self._backing_off = released(self._backing_off)
        self._on_drained()
