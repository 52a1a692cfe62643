"""Catalogue jobs: initial sync, `sync import` / `sync push`, and reconciliation.

All of them start the same way: read both catalogues in pages (Clover
``items?expand=itemStock&limit=1000`` per location, Woo products and
variations 100 a page), match them (``core.matching``) and hand binding
changes to the shards. Then:

- **initial** (at start and every refresh): bindings never synced are
  recounted from those list reads, the configured ``source_of_truth`` being
  right;
- **import** / **push**: *every* tracked binding is recounted, Clover /
  WooCommerce being right; ``--dry-run`` computes the same plans with the pure
  core and reports the diff, writing nothing;
- **reconcile**: each binding's list reads are compared with its bases by the
  pure merge; where a side moved and no trigger said so (a lost webhook, a
  missed poll, another app writing), the binding is marked dirty and merged
  from fresh reads. ``full`` skips the comparison and merges everything.

Rules:

- Writes go through the shards (``Initialise``), so per-binding serialisation,
  write intents, version markers and batching are the same as for real-time
  sync; a recount costs no per-item read (list reads are safe bases, see
  ``messages.Initialise``), only the batched writes.
- A running import/push is saved in the store (``job.current``); after a
  restart it runs again from fresh lists, and every binding it had already
  finished recounts to "nothing to write": it resumes, it does not redo.
- One job at a time; a request while one runs is refused with its status.
  The scheduled reconcile waits for a running job instead of skipping.
- A failed catalogue read fails the job and changes nothing: a partial list
  would look like deleted products.
- A job cannot wedge: every binding it sends is accounted for by its shard
  (changed, unchanged, skipped, unbound, or failed with the reason), and a
  job that hears of no binding for ``stall_after`` seconds fails with what
  it was waiting for, freeing the lock.
- A binding never synced that a reconcile meets is recounted by the
  configured ``source_of_truth``, exactly as the next catalogue refresh
  would: the reconcile only does it sooner.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.actors.modes import MODE_KEY, MODE_SYNCED_KEY, mode_config
from cloverwoo_daemon.core import matching
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, CloverItem, WooItem, WooRef
from cloverwoo_daemon.messages import CatalogueUpdate, Initialise, MarkDirty, ShardCommand
from cloverwoo_daemon.ports import CloverPort, RemoteError, StorePort, WooPort

log = structlog.get_logger("cloverwoo.jobs")

JOB_KEY = "job.current"
RECOUNT_WINDOW = 2000  # recounts sent to the shards and not yet done, at most (memory, not speed)
DIFF_ROWS = 2000  # a dry run lists at most this many differing bindings (the counts are always complete)
FAILURE_ROWS = 100  # a job lists at most this many failed bindings (the count is always complete)


class JobStatus(msgspec.Struct, kw_only=True):
    """What `cloverwoo sync` / `reconcile` show and what is persisted while a job runs."""

    id: str
    kind: str  # initial | import | push | reconcile | full
    truth: str = ""
    dry_run: bool = False
    state: str = "reading"  # reading | applying | done | failed
    total: int = 0
    done: int = 0
    writes_planned: int = 0  # a dry run or a reconcile: bindings whose stock would be (is being) corrected
    # what a recount did, binding by binding (import, push, initial, mode, a reconcile's never-synced ones)
    changed: int = 0  # stock written on one side or both
    unchanged: int = 0  # already agreed
    skipped: int = 0  # excluded, untracked, unreadable, or gone (unbound)
    failed: int = 0  # kept failing: retried on their own, see ``failures``
    failures: list[dict[str, str]] = msgspec.field(default_factory=list)  # sku, binding_id, reason
    started_at: float = 0.0
    finished_at: float | None = None
    resumed: bool = False
    report: dict[str, Any] = msgspec.field(default_factory=dict)
    diff: list[dict[str, Any]] = msgspec.field(default_factory=list)
    error: str = ""


@dataclass
class Snapshot:
    """Both catalogues' stock figures as listed, indexed for the comparisons.

    Only the quantities: the items themselves (names, SKUs) are needed for the
    match and dropped after it, since a job holds its snapshot for its whole
    run (minutes at 50,000 products).
    """

    clover: dict[str, dict[str, int | None]]  # location -> item id -> quantity (None: no stock record)
    woo: dict[WooRef, int | None]  # quantity; None when stock is not managed
    report: dict[str, Any]
    versions: dict[str, int] = field(default_factory=dict)  # binding versions before the reads (see Initialise)

    def reads(self, b: Binding, locations: tuple[str, ...]) -> core_merge.Reads:
        clover: dict[str, int | None] = {}
        for loc in locations:
            item_id = b.clover_items.get(loc)
            if item_id is not None:
                clover[loc] = self.clover.get(loc, {}).get(item_id)
        return core_merge.Reads(woo=self.woo.get(b.woo), clover=clover)


class JobBusy(Exception):
    """Another job is running."""


class JobStalled(Exception):
    """No binding of the job finished for ``stall_after`` seconds."""


@dataclass
class _Recount:
    """A recount waiting for its bindings: which are left, and the deadline a finished one pushes back."""

    status: JobStatus
    waiting: set[str]
    count_total: bool
    watchdog: trio.CancelScope
    stall_after: float


@dataclass
class JobRunner:
    store: StorePort
    woo: WooPort
    clovers: dict[str, CloverPort]  # active locations
    table: BindingTable
    shards: list[trio.MemorySendChannel[ShardCommand]]
    merge_config: core_merge.MergeConfig
    is_busy: Callable[[str], bool] = lambda bid: False  # a trigger is already queued or running for it
    on_drift: Callable[[int, int], None] = lambda drifted, total: None  # alerts hook
    excluded_sku: Callable[[str], bool] = lambda sku: False  # new bindings born excluded (counts, dry runs)
    refresh_every: float | None = 600.0
    reconcile_every: float | None = None
    full_every: float | None = 7 * 86400.0
    current: JobStatus | None = None
    last: dict[str, JobStatus] = field(default_factory=dict)  # kind -> last finished (real runs)
    last_dry_run: dict[str, JobStatus] = field(default_factory=dict)  # kind -> last finished dry run
    stall_after: float = 300.0  # a job that hears of no binding for this long fails (and frees the lock)
    report: dict[str, Any] = field(default_factory=dict)  # last match report
    refreshed: trio.Event = field(default_factory=trio.Event)
    retry: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0, max_attempts=1_000_000))
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _recounts: dict[str, _Recount] = field(default_factory=dict)  # job id -> its bindings not yet recounted
    _progress: trio.Event = field(default_factory=trio.Event)
    _expected: dict[str, Binding] = field(default_factory=dict)  # catalogue updates sent, not yet applied
    _nursery: trio.Nursery | None = None
    # -- multi-location modes. ``clovers`` holds every configured location; ``merge_config.locations``
    # says which are read (single mode: the primary only).
    all_locations: tuple[str, ...] = ()  # every configured location, in order
    on_mode: Callable[[core_merge.MergeConfig], None] = lambda cfg: None  # swaps the shards' (and pollers') config
    mode_recount_at_start: bool = False  # the bindings were synced under another mode (modes.resolve_mode)
    _meta_jobs: set[str] = field(default_factory=set)  # mode jobs: every binding's per-location meta rewritten
    _meta_clearing: set[str] = field(default_factory=set)  # mode jobs leaving per-location: the meta removed

    def is_mode_job(self, job_id: str) -> bool:
        return job_id in self._meta_jobs

    def clears_location_meta(self, job_id: str) -> bool:
        return job_id in self._meta_clearing

    def mode_switching(self) -> bool:
        return bool(self._meta_jobs)

    async def switch_mode(self, mode: str) -> JobStatus:
        """`cloverwoo mode`: recount every binding from fresh list reads of every location of the new mode.

        Clover is the truth whatever ``source_of_truth`` says: what changes is which Clover figure Woo
        shows (the sum, or the primary's), never the stores' own counts. Merges keep running meanwhile, so a
        sale during the switch is merged like any other (the recount's ``version`` check).
        """
        if self._lock.locked():
            raise JobBusy(f"a {self.current.kind if self.current else ''} job is running")
        new_cfg = mode_config(self.merge_config, mode, self.all_locations or self.merge_config.locations)
        async with self._lock:
            status = self._start("mode", "clover", False)
            status.report = {"from": self.merge_config.mode, "to": mode}
            self._meta_jobs.add(status.id)
            try:
                # Leaving per-location mode removes the meta it wrote. "Leaving": the bindings were last
                # synced under it (also after a restart that interrupted this very switch, or a config
                # change), or it is the mode in effect (a switch to it that failed half-way wrote some).
                synced = await self.store.get_kv(MODE_SYNCED_KEY)
                if mode != "per-location" and "per-location" in (synced, self.merge_config.mode):
                    self._meta_clearing.add(status.id)
                    status.report["location_meta"] = "removed"
                await self.store.set_kv(MODE_KEY, mode)  # chosen: the next start keeps it (modes.py)
                self.merge_config = new_cfg
                # A binding whose locations change is recounted; until its Initialise, a merge of it must
                # also take Clover as the truth, or a Woo-truth config would push one figure into the other.
                self.on_mode(msgspec.structs.replace(new_cfg, source_of_truth="clover"))
                snap = await self.snapshot()
                bindings = [b for b in self._bindings_after(snap) if b.tracked and not b.excluded]
                status.report = {**snap.report, **status.report}
                await self._recount(status, snap, bindings)
                await self.store.set_kv(MODE_SYNCED_KEY, mode)
                return self._finish(status)
            except BaseException as exc:
                self._fail(status, exc)
                raise
            finally:
                self.on_mode(new_cfg)
                self._meta_jobs.discard(status.id)
                self._meta_clearing.discard(status.id)


    # ------------------------------------------------------------ scheduling

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._schedule()
                await trio.sleep_forever()  # every schedule off: jobs on demand still run in this nursery
        finally:
            self._nursery = None  # until the next incarnation, `start` answers "not running yet"

    def start(self, kind: str, *, truth: str = "", dry_run: bool = False, mode: str = "") -> None:
        """Run a job in the background (it outlives the admin connection that asked for it)."""
        if self._lock.locked():
            raise JobBusy(f"a {self.current.kind if self.current else 'catalogue'} job is running; "
                          "see `cloverwoo status`")
        if self._nursery is None:
            raise JobBusy("the job runner is not running yet")

        async def job() -> None:
            try:
                if kind == "sync":
                    await self.sync(truth, dry_run=dry_run)
                elif kind == "mode":
                    await self.switch_mode(mode)
                else:
                    await self.reconcile(dry_run=dry_run, full=kind == "full")
            except (RemoteError, JobBusy, JobStalled) as exc:
                log.warning("job_failed", kind=kind, error=str(exc)[:300])
            except Exception as exc:  # a bug in one job: that job failed (its status says so), not the actor
                log.error("job_crashed", kind=kind, error=f"{type(exc).__name__}: {str(exc)[:300]}", exc_info=exc)

        self._nursery.start_soon(job)

    async def _schedule(self) -> None:
        saved = await self.store.get_kv(JOB_KEY)
        attempt = 0
        while True:
            try:
                await self.initial()
                break
            except RemoteError as exc:
                attempt += 1
                log.warning("catalogue_read_failed", error=str(exc)[:300], attempt=attempt)
                await trio.sleep(self.retry.next_delay(min(attempt, 20)) or self.retry.cap)
        # a change found by a poll whose cursor was saved before its merge finished, or whose
        # webhook was refused while the daemon was down, has no inbox event: after a crash nothing would
        # trigger it until the next reconcile (never, with reconcile_every = "off"). One pass at start
        # compares the list reads with the bases and merges what drifted.
        # An import or push the crash interrupted left its unfinished bindings differing on purpose: that is
        # not lost webhooks, so this pass raises no drift alert then (it still merges them, keeping any sale).
        interrupted = saved is not None and _resumable(msgspec.json.decode(saved, type=JobStatus))
        try:
            await self.reconcile(dry_run=False, alert=not interrupted)
        except (RemoteError, JobBusy, JobStalled) as exc:
            log.warning("startup_reconcile_skipped", error=str(exc)[:300])
        attempt = 0
        while self.mode_recount_at_start:  # a mode change the bindings were not recounted under
            try:
                await self.switch_mode(self.merge_config.mode)
                self.mode_recount_at_start = False
            except RemoteError as exc:
                attempt += 1
                log.warning("mode_recount_failed", error=str(exc)[:300], attempt=attempt)
                await trio.sleep(self.retry.next_delay(min(attempt, 20)) or self.retry.cap)
        if saved:
            prev = msgspec.json.decode(saved, type=JobStatus)
            if _resumable(prev):
                log.info("job_resuming", job=prev.id, kind=prev.kind, done=prev.done, total=prev.total)
                async with trio.open_nursery() as n:
                    n.start_soon(self._resume, prev)
        async with trio.open_nursery() as n:
            n.start_soon(self._every, self.reconcile_every, "reconcile")
            n.start_soon(self._every, self.full_every, "full")
            if not self.reconcile_every:
                n.start_soon(self._every, self.refresh_every, "initial")

    async def _resume(self, prev: JobStatus) -> None:
        try:
            await self.sync(prev.truth, dry_run=False, resumed_from=prev)
        except (RemoteError, JobBusy, JobStalled) as exc:
            log.warning("job_resume_failed", job=prev.id, error=str(exc)[:300])

    async def _every(self, every: float | None, kind: str) -> None:
        """A scheduled job: it waits for a job that is running (every job ends: see ``stall_after``)."""
        if not every:
            return
        while True:
            await trio.sleep(every)
            if self._lock.locked():
                log.info("scheduled_job_waiting", kind=kind,
                         running=self.current.kind if self.current is not None else "")
            try:
                if kind == "reconcile":
                    await self.reconcile(dry_run=False, full=False, wait=True)
                elif kind == "full":
                    await self.reconcile(dry_run=False, full=True, wait=True)
                else:
                    await self.initial()
            except (RemoteError, JobBusy, JobStalled) as exc:
                log.warning("scheduled_job_failed", kind=kind, error=str(exc)[:300])
            except Exception as exc:  # a bug in one run: logged (and the job marked failed); the schedule goes on
                log.error("scheduled_job_crashed", kind=kind, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                          exc_info=exc)

    # ---------------------------------------------------------------- reading

    async def snapshot(self) -> Snapshot:
        """Read both catalogues, match, and send binding changes to the shards."""
        versions = {b.binding_id: b.version for b in self.table.all()}  # before the reads: a later merge shows
        clover_lists: dict[str, list[CloverItem]] = {}

        async def read(loc: str, client: CloverPort) -> None:
            clover_lists[loc] = await client.list_items()

        woo_list: list[WooItem] = []

        async def read_woo() -> None:
            woo_list.extend(await self.woo.list_items())

        try:
            async with trio.open_nursery() as n:
                for loc, client in self.clovers.items():
                    if loc in self.merge_config.locations:  # single mode lists the primary only
                        n.start_soon(read, loc, client)
                n.start_soon(read_woo)
        except ExceptionGroup as group:  # (a group holding a Cancelled is no ExceptionGroup: it travels on)
            # a failed read comes out of the nursery wrapped (strict groups), past every ``except
            # RemoteError``: the jobs actor crashed, and at its restart re-read and crashed again, until the
            # daemon exited on its crash budget during an outage. Raised bare when every failure is remote.
            remote, other = group.split(RemoteError)
            if remote is None or other is not None:
                raise
            bare: Exception = remote
            while isinstance(bare, ExceptionGroup):
                bare = bare.exceptions[0]
            raise bare from None
        report = matching.match_catalogues(clover_lists, woo_list, primary=self.merge_config.primary,
                                           reuse=self.table.mapping())
        put, removed = matching.reconcile_bindings(self.table.all(), report)
        summary = _summary(report, changed=0, removed=len(removed))
        del report
        # the job keeps only the quantities: the items go now, before the updates are sent (which waits)
        snap = Snapshot(
            clover={loc: {i.item_id: i.quantity for i in items} for loc, items in clover_lists.items()},
            woo={w.ref: w.quantity if w.manage_stock else None for w in woo_list},
            report=summary,
            versions=versions,
        )
        clover_lists.clear()
        woo_list.clear()
        # a new binding whose SKU was excluded beforehand is born excluded (the shard does the same)
        put = [msgspec.structs.replace(b, excluded=True) if b.binding_id not in self.table and not b.excluded
               and self.excluded_sku(b.sku) else b for b in put]
        nshards = len(self.shards)
        sent: set[str] = set()
        for b in put:
            current = self.table.get(b.binding_id)
            if current is not None and matching.same_catalogue(current, b):
                continue
            sent.add(b.binding_id)
            await self.shards[shard_of(b.binding_id, nshards)].send(CatalogueUpdate(b.binding_id, b, "catalogue"))
        for b, reason in removed:
            await self.shards[shard_of(b.binding_id, nshards)].send(CatalogueUpdate(b.binding_id, None, reason))
        summary["changed"] = len(sent)
        self.report = summary
        log.info("catalogue_read", **{k: v for k, v in summary.items() if isinstance(v, int)})
        # only the bindings whose catalogue changed: for the others the table already holds the same
        self._expected = {b.binding_id: b for b in put if b.binding_id in sent}
        return snap

    def _bindings_after(self, snap: Snapshot) -> list[Binding]:
        """The bindings as they will be once the shards applied this snapshot's catalogue updates."""
        merged = {b.binding_id: b for b in self.table.all()}
        merged.update(self._expected)
        return sorted(merged.values(), key=lambda b: b.binding_id)

    # ------------------------------------------------------------------ jobs

    async def initial(self) -> JobStatus:
        """Read the catalogues and recount every binding never synced, by the configured truth."""
        async with self._lock:
            status = self._start("initial", self.merge_config.source_of_truth, False)
            try:
                snap = await self.snapshot()
                status.report = snap.report
                todo = [b for b in self._bindings_after(snap) if _never_synced(b, self.merge_config.locations)]
                await self._recount(status, snap, todo)
                return self._finish(status)
            except BaseException as exc:
                self._fail(status, exc)
                raise
            finally:
                self.refreshed.set()

    async def sync(self, truth: str, *, dry_run: bool, resumed_from: JobStatus | None = None) -> JobStatus:
        """`cloverwoo sync import` (truth clover) / `push` (truth woo): recount every tracked binding."""
        if self._lock.locked():
            raise JobBusy(f"a {self.current.kind if self.current else ''} job is running")
        async with self._lock:
            status = self._start("import" if truth == "clover" else "push", truth, dry_run, resumed_from)
            try:
                snap = await self.snapshot()
                status.report = snap.report
                bindings = [b for b in self._bindings_after(snap) if b.tracked and not b.excluded]
                if dry_run:
                    self._dry_run(status, snap, bindings, truth)
                else:
                    await self._persist(status)
                    await self._recount(status, snap, bindings)
                return self._finish(status)
            except BaseException as exc:
                self._fail(status, exc)
                raise
            finally:
                if not dry_run:
                    await self._persist(status)

    async def reconcile(self, *, dry_run: bool, full: bool = False, alert: bool = True,
                        wait: bool = False) -> JobStatus:
        """Compare every binding's list reads with its bases; merge (from fresh reads) those that drifted.

        ``wait``: wait for a running job to end instead of refusing (the schedule's way).
        """
        if self._lock.locked() and not wait:
            raise JobBusy(f"a {self.current.kind if self.current else ''} job is running")
        async with self._lock:
            # the never-synced ones it meets are recounted by the configured truth (see the module rules)
            status = self._start("full" if full else "reconcile", self.merge_config.source_of_truth, dry_run)
            try:
                if full:
                    ids = tuple(self.table.ids())
                    status.total = len(ids)
                    if not dry_run:
                        await self._dirty(ids, "reconcile:full")
                    status.done = len(ids)
                    return self._finish(status)
                snap = await self.snapshot()
                status.report = snap.report
                bindings = self._bindings_after(snap)
                status.total = len(bindings)
                drifted: list[str] = []
                never: list[Binding] = []
                woo_side = clover_side = busy = 0
                for b in bindings:
                    status.done += 1
                    if not b.tracked or b.excluded:
                        continue
                    if _never_synced(b, self.merge_config.locations):
                        never.append(b)
                        continue
                    plan = core_merge.plan_merge(b, snap.reads(b, self.merge_config.locations), self.merge_config)
                    if plan.skip or not (plan.dw or any(plan.dc.values())):
                        continue
                    if self.is_busy(b.binding_id):
                        busy += 1  # a trigger already has it: not drift, just not merged yet
                        continue
                    if b.version != snap.versions.get(b.binding_id, b.version):
                        busy += 1  # merged since the reads: the bases are newer than the lists
                        continue
                    drifted.append(b.binding_id)
                    woo_side += bool(plan.dw)
                    clover_side += bool(any(plan.dc.values()))
                    if len(status.diff) < DIFF_ROWS:
                        status.diff.append({"sku": b.sku, "name": b.name, "binding_id": b.binding_id,
                                            "woo_moved_by": plan.dw,
                                            "clover_moved_by": {k: v for k, v in plan.dc.items() if v},
                                            "woo_delta": plan.woo_delta, "clover_deltas": plan.clover_deltas})
                status.writes_planned = len(drifted)
                status.report = {**snap.report, "drifted": len(drifted), "drifted_woo_side": woo_side,
                                 "drifted_clover_side": clover_side, "in_flight": busy, "never_synced": len(never),
                                 "reason": "changes that no webhook or poll delivered (lost webhook, missed poll, "
                                           "or another app writing stock)" if drifted else ""}
                if not dry_run:
                    if drifted:
                        await self._dirty(tuple(drifted), "reconcile")
                    if never:
                        await self._recount(status, snap, never, count_total=False)
                    if alert:
                        self.on_drift(len(drifted), len(bindings))
                if drifted:
                    log.warning("drift_found", drifted=len(drifted), woo_side=woo_side, clover_side=clover_side,
                                total=len(bindings), dry_run=dry_run)
                return self._finish(status)
            except BaseException as exc:
                self._fail(status, exc)
                raise

    # ---------------------------------------------------------------- helpers

    def _dry_run(self, status: JobStatus, snap: Snapshot, bindings: list[Binding], truth: str) -> None:
        cfg = msgspec.structs.replace(self.merge_config, source_of_truth=truth)
        status.total = len(bindings)
        for b in bindings:
            status.done += 1
            recount = msgspec.structs.replace(b, base_woo=None, base_clover={})
            reads = snap.reads(b, self.merge_config.locations)
            plan = core_merge.plan_merge(recount, reads, cfg)
            if plan.skip or not (plan.woo_delta or plan.clover_deltas):
                continue
            status.writes_planned += 1
            if len(status.diff) < DIFF_ROWS:
                status.diff.append({
                    "sku": b.sku, "name": b.name, "binding_id": b.binding_id,
                    "woo": [reads.woo, (reads.woo or 0) + plan.woo_delta],
                    "clover": {loc: [reads.clover.get(loc), (reads.clover.get(loc) or 0) + d]
                               for loc, d in plan.clover_deltas.items()},
                })

    async def _recount(self, status: JobStatus, snap: Snapshot, todo: list[Binding], *,
                       count_total: bool = True) -> None:
        """Send one ``Initialise`` per binding and wait until every one is accounted for.

        Error handling: ``JobStalled`` when no binding is accounted for during ``stall_after`` seconds
        (sending included: a shard that takes nothing in is as stuck as one that never answers).
        """
        status.state = "applying"
        if count_total:
            status.total = len(todo)
            status.done = 0
        todo = list({b.binding_id: b for b in todo}.values())
        waiting = {b.binding_id for b in todo}
        rec = _Recount(status, waiting, count_total, trio.CancelScope(deadline=trio.current_time() + self.stall_after),
                       self.stall_after)
        self._recounts[status.id] = rec
        nshards = len(self.shards)
        last_saved = time.monotonic()

        async def progressed() -> None:
            nonlocal last_saved
            await self._progress.wait()
            self._progress = trio.Event()
            if status.kind in ("import", "push") and time.monotonic() - last_saved > 2.0:
                await self._persist(status)
                last_saved = time.monotonic()

        try:
            with rec.watchdog:
                for sent, b in enumerate(todo):
                    # At most RECOUNT_WINDOW outstanding: the shards' queues hold a window, not the catalogue.
                    while sent - (len(todo) - len(waiting)) >= RECOUNT_WINDOW:
                        await progressed()
                    reads = snap.reads(b, self.merge_config.locations)
                    await self.shards[shard_of(b.binding_id, nshards)].send(
                        Initialise(b.binding_id, reads.woo, dict(reads.clover), status.truth, status.id,
                                   version=snap.versions.get(b.binding_id, b.version))
                    )
                while waiting:
                    await progressed()
            if rec.watchdog.cancelled_caught:
                left = sorted(waiting)
                sample = ", ".join(self._name_of(bid) for bid in left[:5]) + (" ..." if len(left) > 5 else "")
                log.error("job_stalled", job=status.id, kind=status.kind, waiting=len(left), sample=sample,
                          seconds=self.stall_after)
                raise JobStalled(f"no binding finished for {self.stall_after:g}s; {len(left)} of "
                                 f"{len(todo)} not finished ({sample})")
            if count_total:
                status.done = status.total
        finally:
            self._recounts.pop(status.id, None)

    def _name_of(self, bid: str) -> str:
        b = self.table.get(bid)
        return (b.sku or b.name or bid) if b is not None else bid

    def item_done(self, job_id: str, binding_id: str, result: str, reason: str = "") -> None:
        """Shard hook: one binding of a job was recounted, found gone or skipped, or kept failing."""
        rec = self._recounts.get(job_id)
        if rec is None:
            return  # the job ended (or stalled) before: nothing waits for it
        status = rec.status
        if binding_id not in rec.waiting:
            if result != "failed" and status.failed and self._unfail(status, binding_id):
                self._count(status, result)  # reported failed before; its retry has now finished
            return
        rec.waiting.discard(binding_id)
        self._count(status, result)
        if result == "failed":
            if len(status.failures) < FAILURE_ROWS:
                b = self.table.get(binding_id)
                status.failures.append({"binding_id": binding_id, "sku": b.sku if b is not None else "",
                                        "name": b.name if b is not None else "", "reason": reason[:300]})
            log.warning("job_item_failed", job=job_id, binding_id=binding_id, reason=reason[:300])
        if rec.count_total:
            status.done = status.total - len(rec.waiting)
        rec.watchdog.deadline = trio.current_time() + rec.stall_after
        self._progress.set()

    @staticmethod
    def _count(status: JobStatus, result: str) -> None:
        if result == "changed":
            status.changed += 1
        elif result == "unchanged":
            status.unchanged += 1
        elif result == "failed":
            status.failed += 1
        else:  # skipped, unbound
            status.skipped += 1

    @staticmethod
    def _unfail(status: JobStatus, binding_id: str) -> bool:
        for i, row in enumerate(status.failures):
            if row["binding_id"] == binding_id:
                del status.failures[i]
                status.failed -= 1
                return True
        return False

    async def _dirty(self, ids: tuple[str, ...], trigger: str) -> None:
        nshards = len(self.shards)
        by_shard: dict[int, list[str]] = {}
        for bid in ids:
            by_shard.setdefault(shard_of(bid, nshards), []).append(bid)
        now = trio.current_time()
        for shard, bids in by_shard.items():
            await self.shards[shard].send(MarkDirty(tuple(bids), trigger, (), now))

    def _start(self, kind: str, truth: str, dry_run: bool, resumed_from: JobStatus | None = None) -> JobStatus:
        status = JobStatus(id=resumed_from.id if resumed_from else uuid.uuid4().hex[:12], kind=kind, truth=truth,
                           dry_run=dry_run, started_at=time.time(), resumed=resumed_from is not None)
        self.current = status
        return status

    def _finish(self, status: JobStatus) -> JobStatus:
        self._expected = {}  # a copy of every binding: needed only while the job runs
        status.finished_at = time.time()
        if status.failed:
            # It ended (the lock is free), but not everything it was asked to do is done: say so.
            status.state = "failed"
            names = ", ".join(f.get("sku") or f.get("name") or f["binding_id"] for f in status.failures[:5])
            status.error = f"{status.failed} binding(s) failed ({names}); they are retried on their own"
        else:
            status.state = "done"
        if not status.dry_run and status.kind in ("initial", "import", "push", "mode"):
            status.writes_planned = max(status.writes_planned, status.changed)  # it planned what it wrote
        self._remember(status)
        (log.info if status.state == "done" else log.warning)("job_done", job=status.id, kind=status.kind,
                truth=status.truth, dry_run=status.dry_run, total=status.total,
                writes_planned=status.writes_planned, changed=status.changed, unchanged=status.unchanged,
                skipped=status.skipped, failed=status.failed, seconds=round(status.finished_at - status.started_at, 2))
        return status

    def _fail(self, status: JobStatus, exc: BaseException) -> None:
        self._expected = {}
        if status.state in ("done", "failed"):
            return
        if _only_cancelled(exc):
            # a shutdown (or a restart of this actor) mid-job: the saved state lets the next start resume it;
            # it is not running any more, so it is not shown as running either.
            if self.current is status:
                self.current = None
            return
        status.state = "failed"
        status.error = (_describe(exc) if not isinstance(exc, (RemoteError, JobStalled)) else str(exc))[:500]
        status.finished_at = time.time()
        self._remember(status)
        log.error("job_failed", job=status.id, kind=status.kind, error=status.error)

    def _remember(self, status: JobStatus) -> None:
        (self.last_dry_run if status.dry_run else self.last)[status.kind] = status
        if self.current is status:
            self.current = None

    async def _persist(self, status: JobStatus) -> None:
        if status.kind not in ("import", "push") or status.dry_run:
            return
        slim = msgspec.structs.replace(status, diff=[])
        with trio.CancelScope(shield=True):
            await self.store.set_kv(JOB_KEY, msgspec.json.encode(slim).decode())

    async def follow(self, job_id: str | None = None) -> AsyncIterator[JobStatus]:
        """Progress of the current job, about ten times a second, then its final status."""
        while True:
            cur = self.current
            if cur is None or (job_id is not None and cur.id != job_id):
                return
            yield cur
            await trio.sleep(0.1)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the real errors inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _never_synced(b: Binding, locations: tuple[str, ...]) -> bool:
    if not b.tracked or b.excluded:
        return False
    if b.base_woo is None:
        return True
    return any(b.base_clover.get(loc) is None for loc in locations if loc in b.clover_items)


def _summary(report: Any, *, changed: int, removed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"changed": changed, "removed": removed}
    for name in ("bindings", "by_sku", "by_name", "unmatched_woo", "ambiguous", "untracked"):
        value = getattr(report, name, None)
        if value is not None:
            out[name] = len(value) if hasattr(value, "__len__") else value
    unmatched_clover = getattr(report, "unmatched_clover", None)
    if isinstance(unmatched_clover, dict):
        out["unmatched_clover"] = sum(len(v) for v in unmatched_clover.values())
    return out


def _resumable(job: JobStatus) -> bool:
    """An import or push that a crash or restart stopped before it finished (a dry run is not resumed)."""
    return job.state not in ("done", "failed") and job.kind in ("import", "push") and not job.dry_run


def _only_cancelled(exc: BaseException) -> bool:
    """A cancellation, bare or as every leaf of a nursery's group: a shutdown, not a failed job."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return isinstance(exc, trio.Cancelled)
