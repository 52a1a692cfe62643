"""The SKU-shard actor: runs merges, one at a time per binding, and executes their writes.

Rules this actor keeps (sync-model.md):

- Per binding, merges run one at a time. Triggers that arrive while a
  binding's merge is in flight are coalesced into exactly one more merge,
  which starts after it with fresh reads.
- Every merge works from fresh reads; triggers (webhooks, polls,
  reconciliation) only say "look again", so duplicates and reordering are
  harmless.
- A write intent is committed before the first remote write; after each
  remote write succeeds the bases move by exactly what that write
  transferred, committed at once (``core.merge`` step functions). A crash at
  any point leaves either a pending trigger in the inbox or an intent that
  the next merge of the binding recovers first (the Woo version marker tells
  whether the delta landed).
- A failed merge keeps its inbox events unsettled and retries with capped
  backoff for as long as it takes: nothing accepted is dropped.
- Never a write that changes nothing: a zero delta sends no request.
"""

from __future__ import annotations

import collections
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import outcome
import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, Conflict, SyncLogRow
from cloverwoo_daemon.messages import (
    CatalogueUpdate,
    EventsSettled,
    Initialise,
    MarkDirty,
    SetExcluded,
    SetStock,
    ShardCommand,
)
from cloverwoo_daemon.ports import CloverPort, NotFound, RemoteError, StockWrite, StorePort, WooPort

if TYPE_CHECKING:
    from cloverwoo_daemon.actors.location import Reachability

log = structlog.get_logger("cloverwoo.shard")
LOCATION_META_KEY = "_cloverwoo_location_stock"  # {location: quantity} as JSON, per-location mode
A = TypeVar("A")
B = TypeVar("B")

_intent_encoder = msgspec.json.Encoder()
_intent_decoder = msgspec.json.Decoder(core_merge.WriteIntent)


_NO_IDS: frozenset[int] = frozenset()
_TRIGGER_SETS: dict[frozenset[str], frozenset[str]] = {}


def _triggers(triggers: frozenset[str]) -> frozenset[str]:
    """One shared object per combination of trigger kinds (there are a handful, and 50,000 pendings)."""
    if len(_TRIGGER_SETS) > 1024:  # not expected: trigger kinds are a fixed set
        return triggers
    return _TRIGGER_SETS.setdefault(triggers, triggers)


@dataclass(slots=True)
class _Pending:
    """Triggers waiting for one binding's next merge, coalesced.

    A catalogue read of a new store queues one for every binding at once, so
    it is kept small: slots, the trigger kinds as a shared frozenset, and the
    sets of event ids and stock hints created only when something is added
    (three empty sets were 650 bytes, 33 MB at 50,000 bindings).
    """

    event_ids: set[int] | frozenset[int] = _NO_IDS
    triggers: frozenset[str] = frozenset()
    received_at: float = math.inf  # earliest trigger (trio clock), for latency
    initialise: Initialise | None = None  # a recount from list reads, run before any plain merge
    woo_hints: set[int] | frozenset[int] = _NO_IDS  # stock figures Woo webhooks carried
    unhinted: bool = False  # some trigger carried no stock figure: a merge is needed
    # The Clover locations where the triggers say stock can have moved (``MarkDirty.clover_at``), or None
    # for any: an aggregate merge reads those (and the primary for a Woo change), not every location.
    clover_at: frozenset[str] | None = frozenset()

    def add_trigger(self, *kinds: str) -> None:
        if not self.triggers.issuperset(kinds):
            self.triggers = _triggers(self.triggers.union(kinds))

    def absorb(
        self, event_ids: tuple[int, ...] | set[int] | frozenset[int], trigger: str, received_at: float,
        hint: int | None = None, clover_at: tuple[str, ...] | None = None,
    ) -> None:
        self._widen(clover_at)
        if event_ids:
            self.event_ids = _grown(self.event_ids, event_ids)
        self.add_trigger(trigger)
        self.received_at = min(self.received_at, received_at)
        if hint is None:
            self.unhinted = True
        else:
            self.woo_hints = _grown(self.woo_hints, (hint,))

    def absorb_pending(self, other: _Pending) -> None:
        self._widen(other.clover_at)
        if other.event_ids:
            self.event_ids = _grown(self.event_ids, other.event_ids)
        self.add_trigger(*other.triggers)
        self.received_at = min(self.received_at, other.received_at)
        if other.woo_hints:
            self.woo_hints = _grown(self.woo_hints, other.woo_hints)
        self.unhinted |= other.unhinted or not other.woo_hints
        if other.initialise is not None:
            self.initialise = other.initialise

    def _widen(self, clover_at: Iterable[str] | None) -> None:
        if clover_at is None:
            self.clover_at = None
        elif self.clover_at is not None:
            self.clover_at = self.clover_at.union(clover_at)

    @property
    def from_woo(self) -> bool:
        """A WooCommerce webhook or poll is among the triggers: Woo's stock may have moved."""
        return any(t.startswith(("webhook:woo", "poll:woo")) for t in self.triggers)

    def only_echoes(self, base_woo: int | None) -> bool:
        """Every trigger was a Woo webhook carrying exactly the stock we last agreed on: nothing to merge."""
        return not self.unhinted and self.initialise is None and base_woo is not None and self.woo_hints == {base_woo}


def _grown(held: set[int] | frozenset[int], more: Iterable[int]) -> set[int]:
    """``held`` with ``more`` added: in place once it is a set of its own, a new set the first time."""
    if isinstance(held, set):
        held.update(more)
        return held
    return {*held, *more}


@dataclass
class ShardDeps:
    """What a shard needs from the outside, handed in by ``app.py``."""

    store: StorePort
    woo: WooPort
    clovers: dict[str, CloverPort]
    table: BindingTable
    merge_config: core_merge.MergeConfig
    settled: trio.MemorySendChannel[EventsSettled]
    intents: dict[str, bytes]  # loaded at start: in-flight merges to recover
    on_merge: Callable[[str, float], None] = lambda trigger, seconds: None  # metrics hook
    on_conflict: Callable[[Conflict], None] = lambda c: None  # alerts hook
    on_stock: Callable[[Binding], None] = lambda b: None  # alerts hook: a merge of this binding committed
    on_failure: Callable[[str, int], None] = lambda bid, attempts: None  # alerts hook: consecutive failed merges
    on_job_item: Callable[[str, str, str], None] = lambda job_id, bid, result: None  # jobs: one recount done
    excluded_sku: Callable[[str], bool] = lambda sku: False  # a new binding with this SKU is born excluded
    # -- locations down are skipped (and caught up on return); per-location figures as Woo meta
    reach: Reachability | None = None
    mode_job: Callable[[str], bool] = lambda job_id: False  # this job is a mode switch (jobs.switch_mode)
    # this mode switch leaves per-location mode: each of its merges removes the per-location meta
    clears_location_meta: Callable[[str], bool] = lambda job_id: False
    mode_switching: Callable[[], bool] = lambda: False  # a mode switch is running
    max_parallel: int = 64  # merges in flight per shard: mostly waiting on I/O; enough to fill Woo batches of 100
    retry: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=10.0, max_attempts=1_000_000))


class _MergeFailed(Exception):
    """This attempt could not finish; retry later (the reason is logged)."""


class ShardActor:
    def __init__(self, index: int, deps: ShardDeps) -> None:
        self.index = index
        self.deps = deps
        self._dirty: dict[str, _Pending] = {}
        self._running: dict[str, _Pending] = {}  # merges in flight, with the triggers they settle
        self._again: dict[str, _Pending] = {}
        self._failures: dict[str, int] = {}
        self._catalogue: dict[str, CatalogueUpdate] = {}
        self._set_stock: dict[str, list[SetStock]] = {}  # CSV rows waiting for their binding's turn
        self._exclusion: dict[str, bool] = {}  # exclude/include waiting for the binding's turn
        # -- bindings merged without a location that was down (merged again when it answers);
        # bindings whose per-location meta write failed (written by their next merge, even if unchanged).
        self._stale: dict[str, set[str]] = {}
        self._meta_owed: set[str] = set()
        # Woo bases a mode switch's catalogue change dropped: what Woo showed, so an online sale not yet
        # merged is still routed to Clover (see _carry_woo_change) instead of being overruled by the recount.
        self._prior_woo: dict[str, int] = {}
        if deps.reach is not None:
            deps.reach.on_return.append(self._location_returned)
        # Bindings ready to merge, taken in order by ``max_parallel`` workers: a fixed pool rather than a task
        # per binding, so that 50,000 bindings made dirty at once (a first start, a reconcile) cost a queue
        # entry each, not a parked task each. Kept across incarnations; a stale entry is a no-op.
        self._ready_send, self._ready = trio.open_memory_channel[str](math.inf)
        self._backing_off: dict[str, _Pending] = {}  # failed merges waiting out their retry delay
        self._nursery: trio.Nursery | None = None
        self.merges = 0
        self.failed_merges = 0
        self.echoes_skipped = 0
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
            "echoes_skipped": self.echoes_skipped,
            "stale": len(set().union(*self._stale.values())) if self._stale else 0,
        }

    def stale_ids(self) -> set[str]:
        """Bindings merged without a location that was down (merged again when it answers), for /metrics."""
        return set().union(*self._stale.values())

    def has_pending(self, bid: str) -> bool:
        """A trigger for this binding is queued, running or waiting to retry."""
        return bid in self._dirty or bid in self._running or bid in self._again or bid in self._failures

    def idle(self) -> bool:
        return not (self._dirty or self._running or self._again or self._failures)

    # ------------------------------------------------------------------ loop

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[ShardCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One incarnation. Pending work kept on ``self`` survives a restart and is rescheduled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # A previous incarnation may have left work: schedule it again.
            leftovers = {**self._again}
            for bid, p in self._backing_off.items():  # their retry timers died with the last incarnation
                leftovers.setdefault(bid, _Pending()).absorb_pending(p)
            self._backing_off.clear()
            for bid, p in self._running.items():
                # A merge the crash interrupted: its events are still unsettled, so they go round again.
                leftovers.setdefault(bid, _Pending()).absorb(p.event_ids, "restart", p.received_at)
            self._running.clear()
            self._again.clear()
            for _ in range(max(1, self.deps.max_parallel)):
                nursery.start_soon(self._worker)
            for bid in list(self._dirty):
                self._ready_send.send_nowait(bid)
            for bid, p in leftovers.items():
                p.add_trigger("restart")
                self._enqueue_pending(bid, p)
            task_status.started()
            async for cmd in inbox:
                match cmd:
                    case MarkDirty():
                        for bid in cmd.binding_ids:
                            p = _Pending()
                            p.absorb(cmd.event_ids, cmd.trigger, cmd.received_at or trio.current_time(),
                                     cmd.woo_stock_hint, cmd.clover_at)
                            self._enqueue_pending(bid, p)
                    case CatalogueUpdate():
                        self._catalogue[cmd.binding_id] = cmd
                        self._enqueue(cmd.binding_id, (), "catalogue", trio.current_time())
                    case SetStock():
                        self._set_stock.setdefault(cmd.binding_id, []).append(cmd)
                        self._enqueue(cmd.binding_id, (), "csv", trio.current_time())
                    case SetExcluded():
                        self._exclusion[cmd.binding_id] = cmd.excluded
                        self._enqueue(cmd.binding_id, (), "exclude" if cmd.excluded else "include",
                                      trio.current_time())
                    case Initialise():
                        p = _Pending(initialise=cmd)
                        p.absorb((), "initialise", trio.current_time())
                        self._enqueue_pending(cmd.binding_id, p)

    def _enqueue(self, bid: str, event_ids: tuple[int, ...] | set[int], trigger: str, received_at: float) -> None:
        p = _Pending()
        p.absorb(event_ids, trigger, received_at)
        self._enqueue_pending(bid, p)

    def _enqueue_pending(self, bid: str, p: _Pending) -> None:
        if bid in self._running:
            self._again.setdefault(bid, _Pending()).absorb_pending(p)
        elif bid in self._dirty:
            self._dirty[bid].absorb_pending(p)
        elif bid in self._backing_off:
            # A failed merge is waiting out its delay: the new trigger waits with it and they run as one.
            # Started beside it instead, a second failure took the waiting one's place, and both retries then
            # found the other's and stopped: their events were never settled, their sales never merged.
            self._backing_off[bid].absorb_pending(p)
        else:
            self._dirty[bid] = p
            self._ready_send.send_nowait(bid)

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
        ok = False
        rerun = False
        try:
            if pending.initialise is not None:
                rerun = await self._initialise(bid, pending, pending.initialise)
            else:
                rerun = await self._merge(bid, pending)
            ok = True
        except _MergeFailed:
            pass
        except (RemoteError, OSError) as exc:
            log.warning("merge_failed", binding_id=bid, error=_short(exc))
            await self._log_failure(bid, pending, exc)
        # Not in a ``finally``: when a bug crashes this actor, the interrupted merge stays in
        # ``_running`` so that the next incarnation runs it again with its unsettled events.
        self._running.pop(bid, None)
        if ok:
            self.merges += 1
            self._failures.pop(bid, None)
            init = pending.initialise
            if init is not None:
                self.deps.on_job_item(init.job_id, bid, "done")
            # ("catalogue" needs no follow-up: the recount applied the update and used it.)
            if init is not None and (pending.event_ids or pending.triggers - {"initialise", "catalogue"}):
                # Triggers that came with the recount get a plain merge from fresh reads; their events
                # are settled by that merge, not by the recount (whose list reads may predate them).
                follow = _Pending(event_ids=set(pending.event_ids), received_at=pending.received_at, clover_at=None)
                follow.add_trigger(*((pending.triggers - {"initialise", "catalogue"}) or {"recheck"}))
                self._enqueue_pending(bid, follow)
            elif pending.event_ids:
                await self.deps.settled.send(EventsSettled(tuple(sorted(pending.event_ids)), bid))
            if rerun:
                self._enqueue(bid, (), "recheck", trio.current_time())
        else:
            self.failed_merges += 1
            attempt = self._failures.get(bid, 0) + 1
            self._failures[bid] = attempt
            self.deps.on_failure(bid, attempt)
            delay = self.deps.retry.next_delay(min(attempt, 30)) or self.deps.retry.cap
            assert self._nursery is not None
            waiting = self._backing_off.get(bid)
            if waiting is not None:  # not expected (see _enqueue_pending); kept rather than overwritten
                pending.absorb_pending(waiting)
            self._backing_off[bid] = pending  # (a restart of this actor re-queues it at once)
            self._nursery.start_soon(self._retry_later, bid, pending, delay)  # the worker moves on
            return
        again = self._again.pop(bid, None)
        if again is not None:
            self._enqueue_pending(bid, again)
        if not self._dirty:
            self._release_tables()

    def _release_tables(self) -> None:
        """Give back the memory of the working tables a job filled (see ``tables``); cheap when they are small."""
        self._dirty = released(self._dirty)
        self._running = released(self._running)
        self._again = released(self._again)
        self._failures = released(self._failures)
        self._catalogue = released(self._catalogue)
        self._set_stock = released(self._set_stock)
        self._exclusion = released(self._exclusion)
        self._meta_owed = released(self._meta_owed)
        self._prior_woo = released(self._prior_woo)
        self._backing_off = released(self._backing_off)

    async def _retry_later(self, bid: str, pending: _Pending, delay: float) -> None:
        await trio.sleep(delay)
        if self._backing_off.pop(bid, None) is not pending:
            return  # re-queued by a restart meanwhile
        # Back in line with everything that arrived meanwhile; the events stay unsettled.
        again = self._again.pop(bid, None)
        if again is not None:
            pending.absorb_pending(again)
        pending.add_trigger("retry")
        self._enqueue_pending(bid, pending)

    # ----------------------------------------------------------------- merge

    async def _merge(self, bid: str, pending: _Pending) -> bool:
        """One merge of one binding. Returns True when another merge should follow (a change landed meanwhile)."""
        d = self.deps
        trigger = ",".join(sorted(pending.triggers))
        update = self._catalogue.pop(bid, None)
        if update is not None:
            try:
                if not await self._apply_catalogue(update, trigger):
                    return False
            except BaseException:
                self._catalogue.setdefault(bid, update)
                raise
            if pending.triggers == {"catalogue"}:
                # New catalogue fields only: a binding never synced gets its recount from the job that
                # sent this (list reads, batched writes), not a per-item merge here.
                return False
        binding = d.table.get(bid)
        if binding is None:
            self._exclusion.pop(bid, None)  # the SKU set keeps it for a later binding
            return False  # unbound since the trigger arrived: nothing to do
        binding = await self._take_exclusion(binding, trigger)
        if binding.excluded and pending.triggers <= {"exclude"} and bid not in d.intents:
            return False  # only the exclusion itself: nothing to read, nothing will be written
        while self._set_stock.get(bid):
            # A recount typed into a CSV: Clover is set absolutely, like a count at the store; the bases
            # stay, so this very merge sees it as a Clover-side change and carries it to Woo as a delta.
            cmd = self._set_stock[bid][0]
            item_id = binding.clover_items.get(cmd.location)
            if item_id is not None and cmd.location in d.clovers and not binding.excluded and binding.tracked:
                await d.clovers[cmd.location].set_stock(item_id, cmd.quantity)  # on failure it stays queued
                await d.store.append_log([self._row(binding, "info", "csv_set", "csv",
                                                    detail={"location": cmd.location, "quantity": cmd.quantity})])
            self._set_stock[bid].pop(0)
        self._set_stock.pop(bid, None)
        if pending.only_echoes(binding.base_woo) and bid not in d.intents:
            # Our own write (or a save that left stock alone) coming back as a webhook: the payload
            # shows the stock we agreed on, so there is nothing on Woo's side to merge.
            self.echoes_skipped += 1
            return False
        # Both sides are read at once (one round trip instead of two) unless a crashed merge must be
        # recovered first; the Clover reads are then made after recovery, below.
        early: tuple[dict[str, int | None], bool, set[str]] | None = None
        first = self._first_reads(binding, pending)
        try:
            if bid not in d.intents and binding.tracked and not binding.excluded:
                woo_stock, early = await _both(d.woo.get_stock(binding.woo), self._read_clover(binding, first))
            else:
                woo_stock = await d.woo.get_stock(binding.woo)
        except NotFound:
            await self._unbind(binding, "WooCommerce product deleted", trigger)
            return False
        if woo_stock.status == "trash":
            await self._unbind(binding, "WooCommerce product trashed", trigger)
            return False

        intent_raw = d.intents.get(bid)
        if intent_raw is not None:
            intent = _intent_decoder.decode(intent_raw)
            binding = await self._recover(binding, intent, woo_stock.version_marker, trigger)

        if not woo_stock.manage_stock:
            if binding.tracked:
                binding = msgspec.structs.replace(binding, tracked=False)
                await d.store.commit_binding(binding, log=self._row(binding, "info", "untracked", trigger,
                                                                    detail={"reason": "manage_stock is off"}))
                d.table.put(binding)
            return False
        if not binding.tracked:
            binding = msgspec.structs.replace(binding, tracked=True, base_woo=None, base_clover={})
            d.table.put(binding)
        if binding.excluded:
            return False

        clover_reads, read_failed, gone = early if early is not None else await self._read_clover(binding)
        if early is not None and first is not None and self._needs_every_location(binding, woo_stock.quantity,
                                                                                  clover_reads):
            rest, rest_failed, rest_gone = await self._read_clover(binding, skip=frozenset(clover_reads))
            clover_reads = {**clover_reads, **rest}
            read_failed, gone = read_failed or rest_failed, gone | rest_gone
        if gone:
            binding = await self._drop_locations(binding, gone, trigger)
            if not binding.clover_items:
                return False
        reads = core_merge.Reads(woo=woo_stock.quantity, clover=clover_reads)
        binding = self._carry_woo_change(binding, reads, pending)
        plan = core_merge.plan_merge(binding, reads, d.merge_config)
        rerun = await self._execute(binding, plan, reads, pending, trigger, reread_clover=True)
        if read_failed:
            raise _MergeFailed()
        return rerun

    async def _initialise(self, bid: str, pending: _Pending, req: Initialise) -> bool:
        """Recount a binding from list reads with ``req.truth`` as the truth (initial sync, import, push)."""
        d = self.deps
        if d.mode_job(req.job_id):  # a mode switch recounts from fresh reads, carrying Woo's changes
            return await self._merge(bid, pending)
        update = self._catalogue.pop(bid, None)
        if update is not None and not await self._apply_catalogue(update, "initialise"):
            self.deps.on_job_item(req.job_id, bid, "unbound")
            return False
        binding = d.table.get(bid)
        if binding is None:
            self.deps.on_job_item(req.job_id, bid, "unbound")
            return False
        binding = await self._take_exclusion(binding, "initialise")
        if req.version is not None and binding.version != req.version:
            # a merge committed after the job's list reads. It already carried the changes it saw
            # to both sides, so those reads are older than the bases and a recount from them would apply
            # those changes a second time. The bases are sound: a plain merge from fresh reads finishes.
            return await self._merge(bid, pending)
        retry = "retry" in pending.triggers
        if bid in d.intents or retry:
            # a crash or a failed attempt: the product may be gone since the job listed it
            # (retrying the job's reads would then fail for ever, holding the job and its lock).
            try:
                woo_stock = await d.woo.get_stock(binding.woo)
            except NotFound:
                woo_stock = None
            if woo_stock is None or woo_stock.status == "trash":
                await self._unbind(binding, "WooCommerce product deleted" if woo_stock is None
                                   else "WooCommerce product trashed", "initialise")
                return False
            if bid in d.intents:
                bases = (binding.base_woo, binding.base_clover)
                binding = await self._recover(binding, _intent_decoder.decode(d.intents[bid]),
                                              woo_stock.version_marker, "initialise")
                if (binding.base_woo, binding.base_clover) != bases:
                    return await self._merge(bid, pending)  # a write landed that the list reads may predate
            if retry:  # recount from fresh reads: the job's are older still, and may be what failed
                clover, failed, gone = await self._read_clover(binding)
                if gone:
                    binding = await self._drop_locations(binding, gone, "initialise")
                    if not binding.clover_items:
                        return False
                if failed:
                    raise _MergeFailed()
                req = msgspec.structs.replace(req, woo=woo_stock.quantity if woo_stock.manage_stock else None,
                                              clover=clover)
        if binding.excluded or not binding.tracked or req.woo is None:
            return False
        reads = core_merge.Reads(
            woo=req.woo,
            clover={loc: req.clover.get(loc) for loc in binding.clover_items if loc in d.merge_config.locations},
        )
        recount = msgspec.structs.replace(binding, base_woo=None, base_clover={})
        cfg = msgspec.structs.replace(d.merge_config, source_of_truth=req.truth)
        plan = core_merge.plan_merge(recount, reads, cfg)
        if plan.skip:
            await d.store.append_log([self._row(binding, "warning", "initialise_skipped", "initialise",
                                                detail={"reason": plan.skip, "job": req.job_id})])
            return False
        return await self._execute(recount, plan, reads, pending, f"initialise:{req.truth}", reread_clover=False,
                                   shown=binding)

    async def _execute(
        self,
        binding: Binding,
        plan: core_merge.Plan,
        reads: core_merge.Reads,
        pending: _Pending,
        trigger: str,
        *,
        reread_clover: bool,
        shown: Binding | None = None,  # the binding whose figures Woo shows (a recount resets bases)
    ) -> bool:
        """Carry out a plan step by step (intent first, bases moved after each write); True to merge again."""
        d = self.deps
        bid = binding.binding_id
        clover_reads = reads.clover
        rerun = False
        shown_figures = self._figures(shown or binding)
        if not plan.woo_delta and not any(plan.clover_deltas.values()):
            new = core_merge.finish(core_merge.after_woo_step(binding, plan), plan)
            if (new.base_woo, new.base_clover) != (binding.base_woo, binding.base_clover):
                await d.store.commit_binding(new, log=self._row(new, "info", "merge", trigger, plan=plan,
                                                                 reads=reads, latency=pending.received_at))
                d.table.put(new)
                d.on_stock(new)
            await self._write_location_meta(new, shown_figures, pending, None)
            await self._flag(new, plan, trigger)
            self._record(trigger, pending)
            return False

        # Commits are what a merge waits on (each is an fsync), so steps share them where recovery does
        # not need them apart: the Woo marker tells whether a delta landed without its own commit, and
        # the last step is committed by the final one.
        clover_locs = [loc for loc, delta in plan.clover_deltas.items() if delta]
        intent = core_merge.intent_for(binding, plan)
        if reread_clover and clover_locs and not plan.woo_delta:
            intent = msgspec.structs.replace(intent, clover_started=(clover_locs[0],))
        await d.store.save_intent(bid, _intent_encoder.encode(intent))
        d.intents[bid] = _intent_encoder.encode(intent)

        # 1. WooCommerce: the delta and the version marker in one request.
        attached: dict[str, str | None] | None = None
        if plan.woo_delta:
            # the figures this merge will leave go in the same request as the delta
            expected = msgspec.structs.replace(binding, base_clover={**binding.base_clover, **plan.clover_expected})
            attached = self._location_meta(expected, shown_figures, pending)
            change: StockWrite = (binding.woo, plan.woo_delta, plan.version)
            if attached is not None:
                change = (binding.woo, plan.woo_delta, plan.version, attached)
            (res,) = await d.woo.apply_deltas([change])
            if not res.ok:
                await self._log_failure(bid, pending, RemoteError(f"woocommerce write refused: {res.error}"))
                raise _MergeFailed()
            binding = core_merge.after_woo_step(binding, plan)
            intent = msgspec.structs.replace(intent, woo_done=True)
            if clover_locs:
                if reread_clover:
                    intent = msgspec.structs.replace(intent, clover_started=(clover_locs[0],))
                await self._commit_step(binding, intent)
            if res.quantity is not None and res.quantity != plan.expected_woo:
                # A Woo-side change landed meanwhile: it is a fresh dW for the next merge, never absorbed.
                rerun = True
        else:
            binding = core_merge.after_woo_step(binding, plan)
            intent = msgspec.structs.replace(intent, woo_done=True)

        # 2. Clover: absolute writes, each read fresh right before it is written.
        for loc, delta in plan.clover_deltas.items():
            if not delta:
                continue
            item_id = binding.clover_items[loc]
            client = d.clovers[loc]
            # A merge reads right before writing, read and write admitted as one unit (the window for a
            # POS sale is one round trip); a recount from list reads writes what it planned, at one call
            # per item (the import's floor).
            fresh: int | None
            if reread_clover:
                if loc not in intent.clover_started:
                    intent = msgspec.structs.replace(intent, clover_started=(*intent.clover_started, loc))
                    await self._commit_step(binding, intent)
                intent_now = intent

                async def record_target(target: int, loc: str = loc, step_binding: Binding = binding) -> None:
                    nonlocal intent_now
                    intent_now = msgspec.structs.replace(
                        intent_now, clover_targets={**intent_now.clover_targets, loc: target})
                    await self._commit_step(step_binding, intent_now)

                done = await client.read_then_write(item_id, delta, record_target)
                intent = intent_now
                fresh = done[0] if done is not None else None
            else:
                fresh = clover_reads.get(loc)
                if fresh is not None:
                    intent = msgspec.structs.replace(intent, clover_targets={**intent.clover_targets,
                                                                             loc: fresh + delta})
                    await self._commit_step(binding, intent)
                    await client.set_stock(item_id, fresh + delta)
            if fresh is None:
                await self._commit_step(binding, intent)
                missing = RemoteError(f"clover item {item_id} at {loc} has no stock record")
                await self._log_failure(bid, pending, missing)
                raise _MergeFailed()
            binding = core_merge.after_clover_step(binding, plan, loc)
            intent = msgspec.structs.replace(intent, clover_done=(*intent.clover_done, loc))
            if loc != clover_locs[-1]:
                await self._commit_step(binding, intent)
            if fresh != clover_reads.get(loc):
                rerun = True  # a POS change landed between the merge's read and this write

        binding = core_merge.finish(binding, plan)
        row = self._row(binding, "info", "merge", trigger, plan=plan, reads=reads, latency=pending.received_at)
        await d.store.commit_binding(binding, intent="clear", log=row)
        d.intents.pop(bid, None)
        d.table.put(binding)
        d.on_stock(binding)
        await self._write_location_meta(binding, shown_figures, pending, attached)
        await self._flag(binding, plan, trigger)
        self._record(trigger, pending)
        return rerun

    # -- per-location figures on the Woo product, and locations that are down

    def _figures(self, binding: Binding) -> dict[str, int]:
        """Each active location's stock as the bases hold it (what the last merge left there)."""
        return {loc: q for loc in self.deps.merge_config.active
                if loc in binding.clover_items and (q := binding.base_clover.get(loc)) is not None}

    def _location_meta(self, binding: Binding, shown: dict[str, int],
                       pending: _Pending) -> dict[str, str | None] | None:
        """The meta to write in per-location mode, or None: another mode, or the figures did not change.

        A mode switch away from per-location mode removes the key instead (a None value), from every
        binding it recounts: a stale figure must not stay on show to the theme or a pickup plugin.
        """
        d = self.deps
        job = pending.initialise.job_id if pending.initialise is not None else None
        if d.merge_config.mode != "per-location":
            if job is not None and d.clears_location_meta(job):
                return {LOCATION_META_KEY: None}
            return None
        figures = self._figures(binding)
        force = binding.binding_id in self._meta_owed or (job is not None and d.mode_job(job))
        if not figures or (figures == shown and not force):
            return None
        return {LOCATION_META_KEY: json.dumps(figures, sort_keys=True)}

    async def _write_location_meta(self, binding: Binding, shown: dict[str, int], pending: _Pending,
                                   attached: dict[str, str | None] | None) -> None:
        """A meta-only write when the figures changed and the delta's request did not already carry them."""
        bid = binding.binding_id
        meta = self._location_meta(binding, shown, pending)
        if meta is None or meta == attached:
            self._meta_owed.discard(bid)
            return
        try:
            (res,) = await self.deps.woo.apply_deltas([(binding.woo, 0, binding.version, meta)])
        except RemoteError:
            self._meta_owed.add(bid)  # the retry writes it even though the bases will not have moved
            raise
        if not res.ok:
            self._meta_owed.add(bid)
            await self._log_failure(bid, pending, RemoteError(f"woocommerce meta write refused: {res.error}"))
            raise _MergeFailed()
        self._meta_owed.discard(bid)

    def _carry_woo_change(self, binding: Binding, reads: core_merge.Reads, pending: _Pending) -> Binding:
        """A mode recount: bases that make the merge recount Woo from Clover *and* route Woo's pending change.

        With ``dW`` = Woo's change since its last base and ``C`` the fresh reads of the new mode's locations,
        Woo must end at ``sum(C) + dW`` and Clover must absorb ``dW``. A binding whose bases are ``C`` but
        with the primary's lowered by ``sum(C) + dW - W``, and ``base_woo = W - dW``, makes the ordinary
        merge plan exactly that (and keeps ``base_woo == sum(base_clover)``). Without a known Woo base (never
        synced) the plain recount from Clover stands.
        """
        bid = binding.binding_id
        job = pending.initialise.job_id if pending.initialise is not None else None
        mode_recount = job is not None and self.deps.mode_job(job)
        if binding.base_woo is not None and not mode_recount:
            return binding
        prior = self._prior_woo.pop(bid, None)
        if mode_recount and binding.base_woo is not None:
            prior = binding.base_woo
        w = reads.woo
        cfg = self.deps.merge_config
        bound = [loc for loc in cfg.active if loc in binding.clover_items]
        known = {loc: c for loc in bound if (c := reads.clover.get(loc)) is not None}
        if w is None or not known or len(known) != len(bound) or binding.excluded or not binding.tracked:
            if prior is not None and binding.base_woo is None:
                self._prior_woo[bid] = prior  # not this time: a later merge carries it
            return binding
        dw = w - prior if prior is not None else 0
        if prior is None and not mode_recount:
            return binding
        if prior is None:
            return msgspec.structs.replace(binding, base_woo=None, base_clover={})  # recount: Clover is right
        stand_in = cfg.primary if cfg.primary in known else next(iter(known))
        base_clover = dict(known)
        base_clover[stand_in] -= sum(known.values()) + dw - w
        return msgspec.structs.replace(binding, base_woo=w - dw, base_clover=base_clover)

    def _mark_stale(self, location: str, bid: str) -> None:
        self._stale.setdefault(location, set()).add(bid)

    def _location_returned(self, location: str) -> None:
        """Reachability hook: merge again every binding merged without this location."""
        bids = self._stale.pop(location, set())
        if bids:
            log.info("location_catch_up", location=location, bindings=len(bids), shard=self.index)
        now = trio.current_time()
        for bid in bids:
            p = _Pending()
            p.absorb((), f"catchup:{location}", now)
            if self._nursery is None:
                self._dirty.setdefault(bid, _Pending()).absorb_pending(p)  # scheduled when the actor runs
            else:
                self._enqueue_pending(bid, p)


    async def _apply_catalogue(self, update: CatalogueUpdate, trigger: str) -> bool:
        """Apply new catalogue fields, keeping the freshest bases; False when the binding is gone."""
        d = self.deps
        current = d.table.get(update.binding_id)
        if update.binding is None:
            if current is not None:
                await self._unbind(current, update.reason or "no longer in the catalogue", trigger)
            return False
        new = update.binding
        if current is not None:
            kept = {
                loc: current.base_clover.get(loc)
                for loc, item in new.clover_items.items()
                if current.clover_items.get(loc) == item
            }
            # Woo's figure covers the bound locations: if one left or changed, it must be recounted.
            same_cover = current.woo == new.woo and all(
                new.clover_items.get(loc) == item for loc, item in current.clover_items.items()
            )
            if not same_cover and current.woo == new.woo and current.base_woo is not None and d.mode_switching():
                self._prior_woo[new.binding_id] = current.base_woo
            new = msgspec.structs.replace(new, base_woo=current.base_woo if same_cover else None,
                                          base_clover=kept, version=current.version, excluded=current.excluded)
        elif d.excluded_sku(new.sku):
            new = msgspec.structs.replace(new, excluded=True)  # excluded before it was bound
        if new != current:
            await d.store.put_bindings([new])
            d.table.put(new)
            if current is None:
                await d.store.append_log([self._row(new, "info", "bound", trigger,
                                                    detail={"matched_by": new.matched_by, "clover": new.clover_items,
                                                            "tracked": new.tracked})])
        return True

    # -- exclusions

    async def _take_exclusion(self, binding: Binding, trigger: str) -> Binding:
        """Apply a waiting exclude/include before this merge reads anything; kept for a retry if it fails."""
        flag = self._exclusion.pop(binding.binding_id, None)
        if flag is None:
            return binding
        try:
            return await self._set_excluded(binding, flag, trigger)
        except BaseException:
            self._exclusion.setdefault(binding.binding_id, flag)
            raise

    async def _set_excluded(self, binding: Binding, excluded: bool, trigger: str) -> Binding:
        """Flip a binding's ``excluded`` flag, committed with a log row.

        Including resets the bases, so the merge that follows is an initial
        sync by the source of truth. The bases are the two sides' agreement at
        the last sync; while the binding was excluded both sides moved on their
        own (a recount typed into one, sales on both, a bulk edit), and a
        three-way merge from those stale bases would add every one of those
        moves to the other side as if it were a sale: a recount of 50 on Woo
        would be pushed to Clover as +N, doubling stock. Nobody can tell
        sales from corrections after the fact, so the merchant's source of
        truth wins, exactly as on the first day.
        """
        d = self.deps
        bid = binding.binding_id
        if binding.excluded == excluded:
            return binding
        if not excluded and bid in d.intents:
            # A merge interrupted before the exclusion: finish its bookkeeping on the old bases first.
            woo_stock = await d.woo.get_stock(binding.woo)
            binding = await self._recover(binding, _intent_decoder.decode(d.intents[bid]),
                                          woo_stock.version_marker, trigger)
        if excluded:
            new = msgspec.structs.replace(binding, excluded=True)
        else:
            new = msgspec.structs.replace(binding, excluded=False, base_woo=None, base_clover={})
        row = self._row(new, "info", "excluded" if excluded else "included", trigger,
                        detail={"bases_reset": not excluded})
        await d.store.commit_binding(new, log=row)
        d.table.put(new)
        log.info("excluded" if excluded else "included", binding_id=bid, sku=new.sku)
        if excluded:
            d.on_stock(new)  # lets the out-of-stock behaviour undo what it did to this product
        return new


    async def _commit_step(self, binding: Binding, intent: core_merge.WriteIntent) -> None:
        raw = _intent_encoder.encode(intent)
        await self.deps.store.commit_binding(binding, intent=raw)
        self.deps.intents[binding.binding_id] = raw
        self.deps.table.put(binding)

    def _first_reads(self, binding: Binding, pending: _Pending) -> frozenset[str] | None:
        """The Clover locations a merge reads first: those the triggers name, or None for every location.

        In aggregate mode a sale at one store moves only that store's count, yet reading every location
        cost N Clover calls per merge, and as many again for the echo of the merge's own write: ten
        locations allowed about two sales a second under Clover's per-app limit. A location left unread
        is taken to be where its base says (the merge neither counts nor writes it, and keeps its base).
        Where that could change the outcome, ``_needs_every_location`` has the rest read before planning.
        Every other case reads every location: a binding never synced, a recount, a mode change, a
        crashed merge being recovered, a trigger that names no location (reconcile, catch-up, retry).
        """
        d = self.deps
        cfg = d.merge_config
        at = pending.clover_at
        if at is None or cfg.mode != "aggregate" or pending.initialise is not None:
            return None
        bound = [loc for loc in cfg.active if loc in binding.clover_items and loc in d.clovers]
        if len(bound) < 2 or binding.base_woo is None or any(binding.base_clover.get(loc) is None for loc in bound):
            return None
        if binding.binding_id in d.intents or binding.binding_id in self._prior_woo:
            return None
        first = (at | {cfg.primary}) if pending.from_woo else at  # a Woo change is routed, by default to the primary
        first = first.intersection(bound)
        return first or None

    def _needs_every_location(self, binding: Binding, woo: int | None, reads: dict[str, int | None]) -> bool:
        """Whether the locations read first are too few for a sound plan (see ``_first_reads``).

        Enough when WooCommerce has not moved since the last sync (each location read contributes its own
        change, the others none), or when Woo's change goes whole to the primary (an increase, or the
        ``primary`` rule) and the primary was read. Otherwise the split of Woo's change depends on the
        other locations' stock (``most_stock``, a fallback order), and they are read too.
        """
        cfg = self.deps.merge_config
        known = {loc for loc, c in reads.items() if c is not None}
        if woo is None or binding.base_woo is None:
            return False  # the plan writes nothing either way
        if not known:
            return True
        dw = woo - binding.base_woo
        if dw == 0:
            return False
        return not ((dw > 0 or cfg.deduct == "primary") and cfg.primary in known)

    async def _read_clover(
        self, binding: Binding, only: frozenset[str] | None = None, skip: frozenset[str] = frozenset()
    ) -> tuple[dict[str, int | None], bool, set[str]]:
        """Fresh reads of the bound locations (``only`` those, none of ``skip``): (reads, some read failed,
        locations whose item is gone)."""
        d = self.deps
        reads: dict[str, int | None] = {}
        failed = False
        gone: set[str] = set()

        async def one(loc: str, item_id: str) -> None:
            nonlocal failed
            reach = d.reach
            try:
                if reach is None:
                    reads[loc] = await d.clovers[loc].get_stock(item_id)
                else:
                    # a location that is down is not waited on (its retries would hold this merge
                    # and every healthy location's change in it); the binding is merged again when it answers.
                    answered, got = False, None
                    if not reach.is_down(loc):
                        answered, got = await _unless(reach.went_down(loc), d.clovers[loc].get_stock(item_id))
                    if not answered:
                        reads[loc] = None
                        self._mark_stale(loc, binding.binding_id)
                        return
                    reads[loc] = got
            except NotFound:
                reads[loc] = None
                gone.add(loc)
            except RemoteError as exc:
                reads[loc] = None
                failed = True
                log.warning("clover_read_failed", binding_id=binding.binding_id, location=loc, error=_short(exc))

        async with trio.open_nursery() as n:
            for loc in d.merge_config.locations:
                item_id = binding.clover_items.get(loc)
                if item_id is not None and loc in d.clovers and (only is None or loc in only) and loc not in skip:
                    n.start_soon(one, loc, item_id)
        return reads, failed, gone

    async def _drop_locations(self, binding: Binding, gone: set[str], trigger: str) -> Binding:
        """A Clover item was deleted: that location no longer holds this product's stock."""
        d = self.deps
        items = {loc: item for loc, item in binding.clover_items.items() if loc not in gone}
        if not items:
            await self._unbind(binding, f"Clover item deleted at {', '.join(sorted(gone))}", trigger)
            return msgspec.structs.replace(binding, clover_items={})
        # Woo's figure covered the dropped location too: recount from the source of truth.
        new = msgspec.structs.replace(binding, clover_items=items, base_woo=None,
                                      base_clover={k: v for k, v in binding.base_clover.items() if k in items})
        row = self._row(new, "warning", "unbound_location", trigger,
                        detail={"locations": sorted(gone), "reason": "Clover item deleted"})
        await d.store.commit_binding(new, log=row)
        d.table.put(new)
        log.warning("unbound_location", binding_id=binding.binding_id, sku=binding.sku, locations=sorted(gone))
        return new

    async def _recover(
        self, binding: Binding, intent: core_merge.WriteIntent, marker: int | None, trigger: str
    ) -> Binding:
        """Finish the bookkeeping of a merge that a crash interrupted, before any new merge."""
        d = self.deps
        recovered, in_doubt = core_merge.recover(binding, intent, marker)
        resolved: dict[str, str] = {}
        for loc in in_doubt:
            target = intent.clover_targets.get(loc)
            # read_then_write commits the target concurrently with the POST, so a kill can leave a
            # landed write with no recorded target. The merge's own read plus the delta is the target it sent
            # unless a POS change landed in between (then the fresh read matches neither and it is flagged);
            # assuming "not landed" here made the next merge carry the write back to Woo: a sale twice.
            if target is None and loc in intent.clover_started and loc in intent.clover_reads:
                target = intent.clover_reads[loc] + intent.clover_deltas.get(loc, 0)
            item_id = recovered.clover_items.get(loc)
            if target is None or item_id is None or loc not in d.clovers:
                # A write that began (read sent) but whose target was never recorded may have landed:
                # nothing can tell, so it is flagged rather than guessed silently.
                started = loc in intent.clover_started and item_id is not None
                resolved[loc] = "in doubt: target unknown, assumed not landed" if started else "not written"
                continue
            fresh = await d.clovers[loc].get_stock(item_id)
            before = target - intent.clover_deltas.get(loc, 0)  # what the pre-write read saw
            if fresh == target:
                recovered = core_merge.after_clover_step_from_intent(recovered, intent, loc)
                resolved[loc] = "landed"
            elif fresh == before:
                resolved[loc] = "not landed"
            else:
                resolved[loc] = "in doubt: assumed not landed"
        recovered = core_merge.finish_from_intent(recovered, intent)
        conflict = None
        if any(v.startswith("in doubt") for v in resolved.values()):
            conflict = Conflict(binding_id=binding.binding_id, sku=binding.sku, kind="ambiguous_write",
                                detail=json.dumps({"locations": resolved, "intent_version": intent.version}),
                                created_at=time.time())
        row = self._row(recovered, "warning", "recovered", trigger,
                        detail={"woo_marker": marker, "intent_version": intent.version, "clover": resolved})
        await d.store.commit_binding(recovered, intent="clear", log=row, conflict=conflict)
        if conflict is not None:
            d.on_conflict(conflict)
        d.intents.pop(binding.binding_id, None)
        d.table.put(recovered)
        return recovered

    async def _unbind(self, binding: Binding, reason: str, trigger: str) -> None:
        d = self.deps
        await d.store.delete_binding(binding.binding_id)
        await d.store.append_log([self._row(binding, "warning", "unbound", trigger, detail={"reason": reason})])
        d.table.remove(binding.binding_id)
        d.intents.pop(binding.binding_id, None)
        log.warning("unbound", binding_id=binding.binding_id, sku=binding.sku, reason=reason)

    async def _flag(self, binding: Binding, plan: core_merge.Plan, trigger: str) -> None:
        for flag in plan.flags:
            if flag.kind != "oversell":
                continue
            conflict = Conflict(binding_id=binding.binding_id, sku=binding.sku, kind="oversell",
                                detail=json.dumps({"side": flag.side, "location": flag.location, "value": flag.value,
                                                   "trigger": trigger}),
                                created_at=time.time())
            conflict_id = await self.deps.store.add_conflict(conflict)
            log.warning("oversell", binding_id=binding.binding_id, sku=binding.sku, side=flag.side,
                        location=flag.location, value=flag.value, conflict_id=conflict_id)
            self.deps.on_conflict(msgspec.structs.replace(conflict, id=conflict_id))

    def _record(self, trigger: str, pending: _Pending) -> None:
        if math.isfinite(pending.received_at):
            self.deps.on_merge(trigger, trio.current_time() - pending.received_at)

    async def _log_failure(self, bid: str, pending: _Pending, exc: BaseException) -> None:
        binding = self.deps.table.get(bid)
        if binding is None:
            return
        row = self._row(binding, "error", "merge_failed", ",".join(sorted(pending.triggers)), error=_short(exc))
        try:
            await self.deps.store.append_log([row])
        except Exception as store_exc:  # the log must never turn a retry into a crash
            log.error("sync_log_write_failed", error=_short(store_exc))

    def _row(
        self,
        binding: Binding,
        level: str,
        event: str,
        trigger: str,
        *,
        plan: core_merge.Plan | None = None,
        reads: core_merge.Reads | None = None,
        detail: dict[str, Any] | None = None,
        error: str = "",
        latency: float | None = None,
    ) -> SyncLogRow:
        info: dict[str, Any] = dict(detail or {})
        if reads is not None:
            info["read"] = {"woo": reads.woo, "clover": reads.clover}
        if plan is not None:
            info["write"] = {"woo_delta": plan.woo_delta, "clover": {k: v for k, v in plan.clover_deltas.items() if v}}
            info["result"] = {"woo": binding.base_woo, "clover": binding.base_clover}
            info["version"] = binding.version
            if plan.initial:
                info["initial"] = True
        latency_ms = None
        if latency is not None and math.isfinite(latency):
            latency_ms = round((trio.current_time() - latency) * 1000, 2)
        return SyncLogRow(ts=time.time(), level=level, event=event, binding_id=binding.binding_id, sku=binding.sku,
                          trigger=trigger, detail=json.dumps(info, sort_keys=True), error=error, latency_ms=latency_ms)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]


async def _unless(event: trio.Event, aw: Awaitable[A]) -> tuple[bool, A | None]:
    """``(True, result)`` of ``aw``, or ``(False, None)`` when ``event`` is set first (it is cancelled)."""
    got: list[outcome.Outcome[A]] = []

    async def run(scope: trio.CancelScope) -> None:
        got.append(await outcome.acapture(lambda: aw))
        scope.cancel()

    async def watch(scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async with trio.open_nursery() as n:
        n.start_soon(run, n.cancel_scope)
        n.start_soon(watch, n.cancel_scope)
    if not got:
        return False, None
    return True, got[0].unwrap()


async def _both(a: Awaitable[A], b: Awaitable[B]) -> tuple[A, B]:
    """Await two things concurrently; the first error cancels the other and is raised as itself."""
    results: dict[int, Any] = {}

    async def run(i: int, aw: Awaitable[Any]) -> None:
        results[i] = await aw

    try:
        async with trio.open_nursery() as n:
            n.start_soon(run, 0, a)
            n.start_soon(run, 1, b)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return results[0], results[1]
