"""One merge of one binding: fresh reads, the pure plan (``core.merge``), and its writes, step by step.

Rules (sync-model.md is the spec):

- Every merge works from fresh reads; a recount (``Initialise``) plans from
  the job's list reads, which are safe bases unless a merge committed since
  (the ``version`` check) or a write was interrupted (then it reads fresh).
  Its Clover writes still read the item right before writing it: a figure
  from the list read, possibly minutes old, would overwrite every POS sale
  made since.
- A write intent is committed before the first remote write; after each
  remote write succeeds the bases move by exactly what that write
  transferred, committed at once. A crash at any point leaves either a
  pending trigger in the inbox or an intent that the next merge of the
  binding recovers first (``recovery``).
- Memory follows the store: the binding table and the intents are updated
  by the commit itself once it landed (``after_commit``), so a step whose
  task is cancelled after its commit reached the disk cannot leave memory
  behind the database (recovery would then judge a landed Clover write from
  stale bases: a sale counted twice).
- A Clover location is marked started before its read-then-write, and
  unmarked when that call returned or failed without sending its write: only
  a write that may have been sent is ever in doubt.
- Never a write that changes nothing: a zero delta sends no request.
- Every outcome is reported (``MergeOutcome``), so the job of a recount
  learns what became of each binding it sent.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
import trio

from cloverwoo_daemon.actors.shard.catalogue import Catalogue
from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.location_meta import LocationMeta
from cloverwoo_daemon.actors.shard.log_rows import identity, row, who
from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.shard.reads import CloverReadResult, CloverReads
from cloverwoo_daemon.actors.shard.recovery import decode_intent, recover
from cloverwoo_daemon.actors.shard.repairs import Repairs
from cloverwoo_daemon.actors.shard.scheduler import MergeFailed, MergeOutcome, short
from cloverwoo_daemon.core import conflicts as core_conflicts
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding, Conflict, StockChange
from cloverwoo_daemon.core.witness import WriteWindow
from cloverwoo_daemon.messages import Initialise
from cloverwoo_daemon.ports import CompanionMissing, NotFound, RemoteError, StockWrite, WriteOutcomeUnknown

log = structlog.get_logger("cloverwoo.shard")
A = TypeVar("A")
B = TypeVar("B")

_intent_encoder = msgspec.json.Encoder()
_TRUTHS = ("clover", "woo")


class MergeExecutor:
    def __init__(self, deps: ShardDeps, *, reads: CloverReads, catalogue: Catalogue, meta: LocationMeta,
                 repairs: Repairs | None = None) -> None:
        self.deps = deps
        self.reads = reads
        self.catalogue = catalogue
        self.meta = meta
        self.repairs = repairs if repairs is not None else Repairs(deps)
        self.echoes_skipped = 0

    async def merge(self, bid: str, pending: Pending) -> MergeOutcome:
        """The scheduler's merge function: a recount when the pending carries one, else a plain merge."""
        if pending.initialise is not None:
            return await self._initialise(bid, pending, pending.initialise)
        return await self._merge(bid, pending)

    # ----------------------------------------------------------------- merge

    async def _merge(self, bid: str, pending: Pending) -> MergeOutcome:
        """One merge of one binding, from fresh reads."""
        d = self.deps
        trigger = ",".join(sorted(pending.triggers))
        applied = await self.catalogue.take_update(bid, trigger)
        if applied is False:
            return MergeOutcome(job_result="unbound")
        if applied and pending.triggers == {"catalogue"}:
            # New catalogue fields only: a binding never synced gets its recount from the job that
            # sent this (list reads, batched writes), not a per-item merge here.
            return MergeOutcome()
        binding = d.table.get(bid)
        if binding is None:
            self.catalogue.forget_exclusion(bid)
            return MergeOutcome(job_result="unbound")  # unbound since the trigger arrived: nothing to do
        binding = await self.catalogue.take_exclusion(binding, trigger)
        if binding.excluded and pending.triggers <= {"exclude"} and bid not in d.intents:
            return MergeOutcome(job_result="skipped", reason="excluded")  # nothing to read, nothing to write
        await self.catalogue.apply_set_stock(binding)
        if pending.only_echoes(binding.base_woo) and bid not in d.intents:
            # Our own write (or a save that left stock alone) coming back as a webhook: the payload
            # shows the stock we agreed on, so there is nothing on Woo's side to merge.
            self.echoes_skipped += 1
            return MergeOutcome()
        # Both sides are read at once (one round trip instead of two) unless a crashed merge must be
        # recovered first; the Clover reads are then made after recovery, below.
        early: CloverReadResult | None = None
        first = self.reads.first_reads(binding, pending)
        try:
            if bid not in d.intents and binding.tracked and not binding.excluded:
                woo_stock, early = await _both(d.woo.get_stock(binding.woo), self.reads.read(binding, first))
            else:
                woo_stock = await d.woo.get_stock(binding.woo)
        except NotFound:
            await self.catalogue.unbind(binding, "WooCommerce product deleted", trigger)
            return MergeOutcome(job_result="unbound")
        if woo_stock.status == "trash":
            await self.catalogue.unbind(binding, "WooCommerce product trashed", trigger)
            return MergeOutcome(job_result="unbound")

        intent_raw = d.intents.get(bid)
        if intent_raw is not None:
            interrupted = decode_intent(intent_raw)
            binding = await recover(d, binding, interrupted, woo_stock.version_marker, trigger)
            if interrupted.woo_via == "companion" and interrupted.woo_delta and not interrupted.woo_done:
                # settled by sending its write id again, which may have applied it just now: read Woo afresh
                woo_stock = await d.woo.get_stock(binding.woo)

        binding = await self.repairs.apply(binding, trigger)  # erased checkouts, at rest before the plan

        if not woo_stock.manage_stock:
            if binding.tracked:
                binding = msgspec.structs.replace(binding, tracked=False)
                await d.store.commit_binding(binding, log=row(binding, "info", "untracked", trigger,
                                                              detail={"reason": "manage_stock is off"}),
                                             after_commit=_put(d, binding))
            return MergeOutcome(job_result="skipped", reason="untracked: manage_stock is off")
        if not binding.tracked:
            binding = msgspec.structs.replace(binding, tracked=True, base_woo=None, base_clover={})
            d.table.put(binding)
        if binding.excluded:
            return MergeOutcome(job_result="skipped", reason="excluded")

        clover_reads, read_failed, gone = early if early is not None else await self.reads.read(binding)
        if early is not None and first is not None and self.reads.needs_every_location(
                binding, woo_stock.quantity, clover_reads):
            rest, rest_failed, rest_gone = await self.reads.read(binding, skip=frozenset(clover_reads))
            clover_reads = {**clover_reads, **rest}
            read_failed, gone = read_failed or rest_failed, gone | rest_gone
        if gone:
            binding = await self.catalogue.drop_locations(binding, gone, trigger)
            if not binding.clover_items:
                return MergeOutcome(job_result="unbound")
        reads = core_merge.Reads(woo=woo_stock.quantity, clover=clover_reads)
        binding = self.meta.carry_woo_change(binding, reads, pending)
        plan = core_merge.plan_merge(binding, reads, d.merge_config)
        rerun = await self._execute(binding, plan, reads, pending, trigger)
        if read_failed:
            raise MergeFailed("a Clover location's read failed: merged without it, to be merged again")
        return MergeOutcome(rerun=rerun, job_result=_result_of(plan), reason=plan.skip)

    async def _initialise(self, bid: str, pending: Pending, req: Initialise) -> MergeOutcome:
        """Recount a binding from list reads with ``req.truth`` as the truth (initial sync, import, push)."""
        d = self.deps
        if req.truth not in _TRUTHS:
            # Nothing can make this recount valid: it is refused, not retried (retrying it crashed for ever).
            log.error("recount_refused", job=req.job_id, binding_id=bid, truth=req.truth)
            return MergeOutcome(job_result="failed", reason=f"recount with no source of truth ({req.truth!r})")
        if d.mode_job(req.job_id):  # a mode switch recounts from fresh reads, carrying Woo's changes
            return await self._merge(bid, pending)
        if await self.catalogue.take_update(bid, "initialise") is False:
            return MergeOutcome(job_result="unbound")
        binding = d.table.get(bid)
        if binding is None:
            return MergeOutcome(job_result="unbound")
        binding = await self.catalogue.take_exclusion(binding, "initialise")
        if req.version is not None and binding.version != req.version:
            # a merge committed after the job's list reads. It already carried the changes it saw
            # to both sides, so those reads are older than the bases and a recount from them would apply
            # those changes a second time. The bases are sound: a plain merge from fresh reads finishes.
            return await self._merge(bid, pending)
        again = bool(pending.triggers & {"retry", "restart"})
        if bid in d.intents or again:
            # a crash or a failed attempt: the product may be gone since the job listed it
            # (retrying the job's reads would then fail for ever, holding the job and its lock).
            try:
                woo_stock = await d.woo.get_stock(binding.woo)
            except NotFound:
                woo_stock = None
            if woo_stock is None or woo_stock.status == "trash":
                await self.catalogue.unbind(binding, "WooCommerce product deleted" if woo_stock is None
                                            else "WooCommerce product trashed", "initialise")
                return MergeOutcome(job_result="unbound")
            if bid in d.intents:
                bases = (binding.base_woo, binding.base_clover)
                binding = await recover(d, binding, decode_intent(d.intents[bid]), woo_stock.version_marker,
                                        "initialise")
                if (binding.base_woo, binding.base_clover) != bases:
                    return await self._merge(bid, pending)  # a write landed that the list reads may predate
            if again:  # recount from fresh reads: the job's are older still, and may be what failed
                clover, failed, gone = await self.reads.read(binding)
                if gone:
                    binding = await self.catalogue.drop_locations(binding, gone, "initialise")
                    if not binding.clover_items:
                        return MergeOutcome(job_result="unbound")
                if failed:
                    raise MergeFailed("a Clover location's read failed")
                req = msgspec.structs.replace(req, woo=woo_stock.quantity if woo_stock.manage_stock else None,
                                              clover=clover)
        if binding.excluded:
            return MergeOutcome(job_result="skipped", reason="excluded")
        if not binding.tracked or req.woo is None:
            return MergeOutcome(job_result="skipped", reason="untracked: manage_stock is off")
        reads = core_merge.Reads(
            woo=req.woo,
            clover={loc: req.clover.get(loc) for loc in binding.clover_items if loc in d.merge_config.locations},
        )
        recount = msgspec.structs.replace(binding, base_woo=None, base_clover={})
        cfg = msgspec.structs.replace(d.merge_config, source_of_truth=req.truth)
        plan = core_merge.plan_merge(recount, reads, cfg)
        if plan.skip:
            await d.store.append_log([row(binding, "warning", "initialise_skipped", "initialise",
                                          detail={"reason": plan.skip, "job": req.job_id})])
            return MergeOutcome(job_result="skipped", reason=plan.skip)
        # Clover is written as any merge writes it, read right before (the list read may be minutes old: a POS
        # sale since then must not be overwritten); a difference from the list read merges again.
        rerun = await self._execute(recount, plan, reads, pending, f"initialise:{req.truth}", shown=binding)
        return MergeOutcome(rerun=rerun, job_result=_result_of(plan))

    # --------------------------------------------------------------- execute

    async def _execute(
        self,
        binding: Binding,
        plan: core_merge.Plan,
        reads: core_merge.Reads,
        pending: Pending,
        trigger: str,
        *,
        shown: Binding | None = None,  # the binding whose figures Woo shows (a recount resets bases)
    ) -> bool:
        """Carry out a plan step by step (intent first, bases moved after each write); True to merge again."""
        d = self.deps
        bid = binding.binding_id
        clover_reads = reads.clover
        rerun = False
        shown_figures = self.meta.figures(shown or binding)
        if not plan.woo_delta and not any(plan.clover_deltas.values()):
            new = core_merge.finish(core_merge.after_woo_step(binding, plan), plan)
            if (new.base_woo, new.base_clover) != (binding.base_woo, binding.base_clover):
                await d.store.commit_binding(new, log=row(new, "info", "merge", trigger, plan=plan, reads=reads,
                                                          latency=pending.received_at),
                                             after_commit=_put(d, new))
                d.on_stock(new)
            await self.meta.write(new, shown_figures, pending, None)
            await self._flag(new, plan, trigger)
            self._record(trigger, pending)
            return False

        # Commits are what a merge waits on (each is an fsync), so steps share them where recovery does
        # not need them apart: the Woo marker tells whether a delta landed without its own commit, and
        # the last step is committed by the final one.
        clover_locs = [loc for loc, delta in plan.clover_deltas.items() if delta]
        via: core_merge.WooVia = "companion" if plan.woo_delta and d.companion() is not None else "delta"
        # unique per binding and write: a marker copied onto another product (Duplicate in wp-admin) or left
        # by an earlier binding of the same product can never be taken for this write's
        intent = core_merge.intent_for(binding, plan, write_id=f"{secrets.token_hex(16)}.{plan.version}",
                                       via=via, now=time.time())
        if clover_locs and not plan.woo_delta:
            intent = msgspec.structs.replace(intent, clover_started=(clover_locs[0],))
        raw = _intent_encoder.encode(intent)
        d.intents[bid] = raw  # before the commit: whatever interrupts it, the next merge recovers first
        await d.store.save_intent(bid, raw)

        # 1. WooCommerce: through the companion (exactly once by write id), or the delta and the marker in one
        # request.
        attached: dict[str, str | None] | None = None
        if plan.woo_delta:
            if via == "companion":
                quantity = await self._companion_write(binding, intent, pending)
            else:
                # the figures this merge will leave go in the same request as the delta
                expected = msgspec.structs.replace(binding,
                                                   base_clover={**binding.base_clover, **plan.clover_expected})
                attached = self.meta.meta(expected, shown_figures, pending)
                change: StockWrite = (binding.woo, plan.woo_delta, intent.marker)
                if attached is not None:
                    change = (binding.woo, plan.woo_delta, intent.marker, attached)
                started = time.time()
                try:
                    (res,) = await d.woo.apply_deltas([change])
                except WriteOutcomeUnknown as exc:
                    await self._woo_unknown(binding, intent, exc.may_still_land)
                    raise
                except RemoteError:
                    await self._nothing_sent(binding)  # never reached the store: nothing to recover
                    raise
                if not res.ok:
                    if res.unknown:
                        await self._woo_unknown(binding, intent, res.may_still_land)
                    else:  # refused, or never attempted: nothing was applied
                        await self._nothing_sent(binding)
                    refused = RemoteError(f"woocommerce write refused: {res.error}")
                    await self.log_failure(bid, pending, refused)
                    raise MergeFailed(str(refused))
                quantity = res.quantity
                # not atomic: a checkout inside this request is erased; the witness looks for one
                d.on_write(WriteWindow(binding_id=bid, sku=binding.sku, side="woo",
                                       item=str(binding.woo.variation_id or binding.woo.product_id),
                                       started=started, ended=time.time(), delta=plan.woo_delta,
                                       returned=quantity))
            binding = core_merge.after_woo_step(binding, plan)
            intent = msgspec.structs.replace(intent, woo_done=True)
            if clover_locs:
                intent = msgspec.structs.replace(intent, clover_started=(clover_locs[0],))
                await self._commit_step(binding, intent)
            if quantity is not None and quantity != plan.expected_woo:
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
            # Read right before writing, read and write admitted as one unit: the window for a POS sale is
            # one round trip. A recount too: its list read may be minutes old.
            fresh: int | None
            if loc not in intent.clover_started:
                intent = msgspec.structs.replace(intent, clover_started=(*intent.clover_started, loc))
                await self._commit_step(binding, intent)
            intent_now = intent
            target_sent = False

            async def record_target(target: int, loc: str = loc, step_binding: Binding = binding) -> None:
                nonlocal intent_now, target_sent
                target_sent = True  # the POST goes out concurrently with this commit
                intent_now = msgspec.structs.replace(
                    intent_now, clover_targets={**intent_now.clover_targets, loc: target})
                await self._commit_step(step_binding, intent_now)

            started = time.time()
            try:
                done = await client.read_then_write(item_id, delta, record_target)
            except Exception:
                if not target_sent:  # it failed before its write went out: nothing there is in doubt
                    await self._commit_step(binding, _not_started(intent, loc))
                raise
            intent = intent_now
            fresh = done[0] if done is not None else None
            if done is not None:  # a POS sale inside this window would be erased: the witness looks for one
                d.on_write(WriteWindow(binding_id=bid, sku=binding.sku, side="clover", item=item_id,
                                       started=started, ended=time.time(), delta=delta, location=loc,
                                       read=done[0], stock_modified_ms=done[2]))
            if fresh is None and not target_sent:
                intent = _not_started(intent, loc)  # no stock record: it returned without writing
            if fresh is None:
                await self._commit_step(binding, intent)
                missing = RemoteError(f"clover item {item_id} at {loc} has no stock record")
                await self.log_failure(bid, pending, missing)
                raise MergeFailed(str(missing))
            binding = core_merge.after_clover_step(binding, plan, loc)
            intent = msgspec.structs.replace(intent, clover_done=(*intent.clover_done, loc))
            if loc != clover_locs[-1]:
                await self._commit_step(binding, intent)
            if fresh != clover_reads.get(loc):
                rerun = True  # a POS change landed between the merge's read and this write

        binding = core_merge.finish(binding, plan)
        log_row = row(binding, "info", "merge", trigger, plan=plan, reads=reads, latency=pending.received_at)
        await d.store.commit_binding(binding, intent="clear", log=log_row, after_commit=_finished(d, binding))
        d.on_stock(binding)
        await self.meta.write(binding, shown_figures, pending, attached)
        await self._flag(binding, plan, trigger)
        self._record(trigger, pending)
        return rerun

    async def _companion_write(self, binding: Binding, intent: core_merge.WriteIntent, pending: Pending) -> int | None:
        """The Woo delta through the WordPress companion; returns the stock right after it.

        Error handling: a ``RemoteError`` leaves the intent as it is: the
        binding's next merge resends the same write id, which applies it at
        most once (``recovery``). ``CompanionMissing`` (its route answered 404,
        so nothing was applied) clears the intent and fails the merge: the
        retry reads afresh and writes by ``inventory_delta``. A refusal of the
        change itself fails the merge like a refused ``inventory_delta``.
        """
        d = self.deps
        bid = binding.binding_id
        try:
            (res,) = await d.woo.apply_changes([StockChange(intent.write_id, binding.woo, intent.woo_delta)])
        except CompanionMissing as exc:
            d.companion_gone(str(exc))
            await d.store.commit_binding(binding, intent="clear", after_commit=lambda: d.intents.pop(bid, None))
            missing = RemoteError(f"the WordPress companion is gone ({short(exc)}): merged again by inventory_delta")
            await self.log_failure(bid, pending, missing)
            raise MergeFailed(str(missing)) from None
        if not res.ok:
            refused = RemoteError(f"woocommerce change refused by the companion: {res.error}")
            await self.log_failure(bid, pending, refused)
            raise MergeFailed(str(refused))
        return res.quantity

    async def _woo_unknown(self, binding: Binding, intent: core_merge.WriteIntent, may_still_land: bool) -> None:
        """The delta went out and no answer said whether it landed: recorded, so that recovery waits for a
        write that may still land before it takes a missing marker for "not landed"."""
        unknown = msgspec.structs.replace(intent, woo_answer="may_land" if may_still_land else "ended",
                                          woo_unknown_at=time.time())
        await self._commit_step(binding, unknown)

    async def _nothing_sent(self, binding: Binding) -> None:
        """The Woo write certainly did not land (refused, or never reached the store): the intent goes, and
        the merge that follows plans afresh. Nothing was written to Clover yet (Woo is written first)."""
        d = self.deps
        bid = binding.binding_id
        await d.store.commit_binding(binding, intent="clear", after_commit=lambda: d.intents.pop(bid, None))

    async def _commit_step(self, binding: Binding, intent: core_merge.WriteIntent) -> None:
        raw = _intent_encoder.encode(intent)
        d = self.deps

        def landed() -> None:
            d.intents[binding.binding_id] = raw
            d.table.put(binding)

        await d.store.commit_binding(binding, intent=raw, after_commit=landed)

    # ------------------------------------------------------------ reporting

    async def _flag(self, binding: Binding, plan: core_merge.Plan, trigger: str) -> None:
        for flag in plan.flags:
            if flag.kind != "oversell":
                continue
            change = plan.woo_delta if flag.side == "woo" else plan.clover_deltas.get(flag.location, 0)
            detail = core_conflicts.oversell_detail(side=flag.side, location=flag.location, value=flag.value,
                                                    change=change, trigger=trigger, at=time.time(),
                                                    extra=identity(binding))
            conflict = Conflict(binding_id=binding.binding_id, sku=binding.sku, kind="oversell",
                                detail=json.dumps(detail), created_at=time.time())
            conflict_id = await self.deps.store.add_conflict(conflict, fold=core_conflicts.fold_oversell)
            log.warning("oversell", side=flag.side, location=flag.location, value=flag.value, change=change,
                        conflict_id=conflict_id, **who(binding))
            self.deps.on_conflict(msgspec.structs.replace(conflict, id=conflict_id))

    def _record(self, trigger: str, pending: Pending) -> None:
        if math.isfinite(pending.received_at):
            self.deps.on_merge(trigger, trio.current_time() - pending.received_at)

    async def log_failure(self, bid: str, pending: Pending, exc: BaseException) -> None:
        """A failed attempt, in the sync log (the scheduler logs and counts it; this never raises)."""
        binding = self.deps.table.get(bid)
        if binding is None:
            return
        error = short(exc) if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {short(exc)}"
        log_row = row(binding, "error", "merge_failed", ",".join(sorted(pending.triggers)), error=error)
        try:
            await self.deps.store.append_log([log_row])
        except Exception as store_exc:  # the log must never turn a retry into something worse
            log.error("sync_log_write_failed", error=short(store_exc))


def _result_of(plan: core_merge.Plan) -> str:
    if plan.skip:
        return "skipped"
    return "changed" if plan.writes else "unchanged"


def _not_started(intent: core_merge.WriteIntent, loc: str) -> core_merge.WriteIntent:
    return msgspec.structs.replace(intent, clover_started=tuple(x for x in intent.clover_started if x != loc))


def _put(d: ShardDeps, binding: Binding) -> Callable[[], None]:
    return lambda: d.table.put(binding)


def _finished(d: ShardDeps, binding: Binding) -> Callable[[], None]:
    def apply() -> None:
        d.intents.pop(binding.binding_id, None)
        d.table.put(binding)

    return apply


async def _both(a: Awaitable[A], b: Awaitable[B]) -> tuple[A, B]:
    """Await two things concurrently; the first error cancels the other and is raised as itself."""
    results: dict[int, Any] = {}

    async def run(i: int, aw: Awaitable[Any]) -> None:
        results[i] = await aw

    try:
        async with trio.open_nursery() as n:
            n.start_soon(run, 0, a)
            n.start_soon(run, 1, b)
    except ExceptionGroup as group:
        # (only ordinary exceptions: a group holding a Cancelled is no ``ExceptionGroup`` and travels on)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return results[0], results[1]
