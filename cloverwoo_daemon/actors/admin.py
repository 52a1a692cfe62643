"""Answers to the control socket: status, the sync log, conflicts, reconciliation on demand.

Read-mostly: it looks at what the actors expose (``statistics()``, status
structs) and at the store; the only thing it changes is marking bindings dirty
for a reconciliation and resolving conflicts, both through the normal paths.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.actors.jobs import JobBusy, JobRunner, JobStatus
from cloverwoo_daemon.actors.location import LocationActor
from cloverwoo_daemon.actors.modes import MODES
from cloverwoo_daemon.actors.router import Router, RouterInput
from cloverwoo_daemon.actors.shard import ShardActor
from cloverwoo_daemon.actors.supervisor import Supervisor
from cloverwoo_daemon.actors.woo_poller import WooPoller
from cloverwoo_daemon.core import csv_rows
from cloverwoo_daemon.core.matching import normalise_name
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.messages import (
    CloverVerifyRequest,
    ConflictsRequest,
    ControlRequest,
    ControlResponse,
    DashboardRequest,
    ExcludeRequest,
    ExportCsvRequest,
    ImportCsvRequest,
    JobRequest,
    LogRequest,
    ModeRequest,
    OutOfStockRequest,
    ReconcileRequest,
    SetStock,
    StatusRequest,
    SyncRequest,
    ThresholdRequest,
)
from cloverwoo_daemon.ports import StorePort


@dataclass
class WebhookHealth:
    """Last delivery per source, and Clover's verification handshake (its window, the codes received)."""

    last_event: dict[str, float] = field(default_factory=dict)  # source -> unix time
    verification: VerificationGate = field(default_factory=lambda: VerificationGate(configured=True))

    def saw(self, source: str) -> None:
        self.last_event[source] = time.time()


@dataclass
class Admin:
    store: StorePort
    table: BindingTable
    supervisor: Supervisor
    router: Router
    router_inbox: trio.MemorySendChannel[RouterInput]
    shards: list[ShardActor]
    shard_inboxes: list[trio.MemorySendChannel[Any]]
    locations: dict[str, LocationActor]
    woo_poller: WooPoller
    webhooks: WebhookHealth
    jobs: JobRunner
    reconcile_every: float | None
    listen_url: str = ""
    started_at: float = field(default_factory=time.time)
    store_stats: Callable[[], Any] = lambda: None
    # set by app.py: actors.stock_policy.StockPolicyActor, actors.health.HealthActor
    stock_policy: Any = None
    health_monitor: Any = None
    exclusions: Any = None  # set by app.py: actors.exclusions.Exclusions
    companion: Any = None  # set by app.py: actors.companion.CompanionWatch (whether stock writes are atomic)
    witness: Any = None  # set by app.py: actors.witness.LossWitness (sales our writes may have erased)
    intake: Any = None  # set by app.py: actors.intake.Intake (its overflow is queued work too)

    async def handle(self, req: ControlRequest) -> ControlResponse | AsyncIterator[ControlResponse]:
        match req:
            case StatusRequest():
                return ControlResponse(ok=True, data=self.status())
            case LogRequest():
                return await self._log(req)
            case ConflictsRequest(resolve=ids):
                if ids:
                    n = await self.store.resolve_conflicts(list(ids))
                    return ControlResponse(ok=True, data={"resolved": n})
                conflicts = await self.store.list_conflicts()
                return ControlResponse(ok=True, data=msgspec.to_builtins(conflicts))
            case ReconcileRequest(dry_run=dry, full=full):
                kind = "full" if full else "reconcile"
                return self._start_job(kind, lambda: self.jobs.start(kind, dry_run=dry))
            case SyncRequest(truth=truth, dry_run=dry):
                if truth not in ("clover", "woo"):
                    return ControlResponse(ok=False, error=f"unknown source of truth {truth!r}")
                kind = "import" if truth == "clover" else "push"
                return self._start_job(kind, lambda: self.jobs.start("sync", truth=truth, dry_run=dry))
            case ExportCsvRequest():
                return ControlResponse(ok=True, data={"csv": await self._export_csv()})
            case ImportCsvRequest(text=text, match=match, dry_run=dry):
                return await self._import_csv(text, match, dry)
            case ThresholdRequest() | OutOfStockRequest() | DashboardRequest():
                return await self._issue6(req)
            case ExcludeRequest(skus=skus, excluded=excluded):
                if self.exclusions is None:
                    return ControlResponse(ok=False, error="exclusions are not running")
                if not any(s.strip() for s in skus):
                    return ControlResponse(ok=False, error="give at least one SKU")
                return ControlResponse(ok=True, data=await self.exclusions.set(skus, excluded))
            case ModeRequest(mode=mode):
                if mode not in MODES:
                    return ControlResponse(ok=False, error=f"unknown mode {mode!r} (one of {', '.join(MODES)})")
                return self._start_job("mode", lambda: self.jobs.start("mode", mode=mode))
            case CloverVerifyRequest(minutes=minutes, close=close):
                return self._clover_verify(minutes, close)
            case JobRequest(follow=follow):
                cur = self.jobs.current
                if cur is not None and follow:
                    return self._follow(cur.kind, cur.started_at)
                data = {"current": msgspec.to_builtins(cur) if cur else None,
                        "last": {k: msgspec.to_builtins(v) for k, v in self.jobs.last.items()},
                        "last_dry_run": {k: msgspec.to_builtins(v) for k, v in self.jobs.last_dry_run.items()}}
                return ControlResponse(ok=True, data=data)
        return ControlResponse(ok=False, error=f"unsupported request {type(req).__name__}")

    def _clover_verify(self, minutes: float, close: bool) -> ControlResponse:
        gate = self.webhooks.verification
        now = time.time()
        if close:
            gate.close_window()
        elif not 0 < minutes <= 24 * 60:
            return ControlResponse(ok=False, error=f"--minutes must be between 0 and 1440, not {minutes:g}")
        else:
            gate.open_window(now, minutes * 60.0)
        return ControlResponse(ok=True, data=gate.summary(now))

    # ------------------------------------------------------------------ thresholds, out of stock, dashboard

    async def _issue6(self, req: ThresholdRequest | OutOfStockRequest | DashboardRequest) -> ControlResponse:
        alerts = getattr(self, "alerts", None)
        match req:
            case ThresholdRequest(sku=sku, threshold=n):
                if alerts is None:
                    return ControlResponse(ok=False, error="alerts are not running")
                if not sku:
                    return ControlResponse(ok=False, error="a SKU is required")
                await alerts.set_threshold(sku, n)
                return ControlResponse(ok=True, data={"sku": sku, "threshold": self._threshold_of(sku),
                                                      "override": n})
            case OutOfStockRequest(sku=sku, action=action):
                if self.stock_policy is None:
                    return ControlResponse(ok=False, error="the out-of-stock behaviour is not running")
                try:
                    await self.stock_policy.set_override(sku, action)
                except ValueError as exc:
                    return ControlResponse(ok=False, error=str(exc))
                return ControlResponse(ok=True, data={"sku": sku, "action": self.stock_policy.action_of(sku),
                                                      "override": action})
            case DashboardRequest(limit=limit):
                return ControlResponse(ok=True, data=await self.dashboard(limit))

    def _threshold_of(self, sku: str) -> int:
        from cloverwoo_daemon.core.alerts import AlertPolicy

        alerts = getattr(self, "alerts", None)
        if alerts is None:
            return AlertPolicy().low_stock_threshold
        return int(alerts.thresholds().get(sku, alerts.deps.policy.low_stock_threshold))

    async def dashboard(self, limit: int = 100, *, window_s: float = 86400.0) -> dict[str, Any]:
        from cloverwoo_daemon.core.dashboard import rank, sales_by_binding

        log_rows = await self.store.query_log(since=time.time() - window_s, limit=100_000)
        ranked = rank(self.table.all(), self._threshold_of, sales_by_binding(log_rows), window_days=window_s / 86400)
        conflicts = await self.store.list_conflicts()
        policy = self.stock_policy.applied() if self.stock_policy is not None else {}
        hm = self.health_monitor
        products = []
        for r in ranked[: max(0, limit)]:
            row = msgspec.to_builtins(r)
            applied = policy.get(r.binding_id)
            row["out_of_stock_action"] = applied.action if applied is not None else None
            products.append(row)
        return {
            "products": products,
            "total_listed": len(ranked),
            "conflicts": msgspec.to_builtins(conflicts),
            "webhooks": {
                "last_event": dict(self.webhooks.last_event),
                "woo": asdict(hm.status) if hm is not None else None,
                "locations": {n: {"reachable": a.status.reachable, "last_error": a.status.last_error}
                              for n, a in self.locations.items()},
                "woocommerce_reachable": self.woo_poller.status.reachable,
            },
        }


    def _start_job(self, kind: str, start: Any) -> ControlResponse | AsyncIterator[ControlResponse]:
        since = time.time()
        try:
            start()
        except JobBusy as exc:
            return ControlResponse(ok=False, error=str(exc))
        return self._follow(kind, since)

    async def _follow(self, kind: str, since: float) -> AsyncIterator[ControlResponse]:
        """Progress lines of the job of ``kind`` started at or after ``since``, then its result."""
        job: JobStatus | None = None
        with trio.move_on_after(60):
            while job is None:
                cur = self.jobs.current
                if cur is not None and cur.kind == kind and cur.started_at >= since:
                    job = cur
                    break
                for done in (self.jobs.last.get(kind), self.jobs.last_dry_run.get(kind)):
                    if done is not None and done.started_at >= since:
                        yield _result(done)
                        return
                await trio.sleep(0.02)
        if job is None:
            yield ControlResponse(ok=False, error="the job did not start (another job holds the catalogue)")
            return
        while self.jobs.current is job:
            progress = msgspec.to_builtins(msgspec.structs.replace(job, diff=[]))
            yield ControlResponse(ok=True, data={"progress": progress})
            await trio.sleep(0.2)
        yield _result(job)

    # ------------------------------------------------------------------ CSV

    async def _export_csv(self) -> str:
        last = await self.store.last_synced()
        rows = []
        for b in sorted(self.table.all(), key=lambda b: (b.sku, b.binding_id)):
            if not b.tracked:
                status = "untracked"
            elif b.excluded:
                status = "excluded"
            elif b.base_woo is None:
                status = "never synced"
            elif self.shards[shard_of(b.binding_id, len(self.shards))].has_pending(b.binding_id):
                status = "syncing"
            else:
                status = "in sync"
            when = last.get(b.binding_id)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)) if when else ""
            for loc, item in sorted(b.clover_items.items()):
                rows.append(csv_rows.ExportRow(
                    name=b.name, sku=b.sku, woo_product_id=b.woo.product_id, woo_variation_id=b.woo.variation_id,
                    clover_item_id=item, location=loc, clover_stock=b.base_clover.get(loc), woo_stock=b.base_woo,
                    sync_status=status, last_synced_at=stamp))
        return csv_rows.format_rows(rows)

    async def _import_csv(self, text: str, match: str, dry_run: bool) -> ControlResponse:
        if match not in ("sku", "id"):
            return ControlResponse(ok=False, error=f"--match must be sku or id, not {match!r}")
        by_key: dict[str, str] = {}
        known: dict[str, frozenset[str]] = {}
        woo_now: dict[str, int | None] = {}  # a filled-in woo_stock must still be the agreed figure
        for b in self.table.all():
            key = b.sku if match == "sku" else f"{b.woo.product_id}:{b.woo.variation_id}"
            if key:
                by_key[key] = b.binding_id
                known[key] = frozenset(b.clover_items)
                woo_now[key] = b.base_woo
        try:
            # In a worker thread: checking 50,000 rows takes long enough to hold up webhook acknowledgements.
            rows, errors = await trio.to_thread.run_sync(functools.partial(
                csv_rows.parse_import, text, match="sku" if match == "sku" else "id", known=known, woo_now=woo_now))
        except csv_rows.HeaderError as exc:
            return ControlResponse(ok=False, error=f"nothing applied: {exc}")
        # -- rows the sync would not carry are rejected; a row equal to the agreed count writes nothing
        apply: list[tuple[str, csv_rows.ImportRow]] = []
        unchanged = 0
        for r in rows:
            bound = self.table.get(by_key[r.key])
            if bound is None or not bound.tracked or bound.excluded:
                why = "unbound" if bound is None else "excluded" if bound.tracked else \
                    "not tracked (manage_stock is off)"
                errors.append(csv_rows.RowError(r.line, f"{r.key!r} is {why}"))
            elif bound.base_clover.get(r.location) == r.quantity:
                unchanged += 1
            else:
                apply.append((bound.binding_id, r))
        errors.sort(key=lambda e: e.line)
        if not dry_run:
            for bid, r in apply:
                shard = shard_of(bid, len(self.shard_inboxes))
                await self.shard_inboxes[shard].send(SetStock(bid, r.location, r.quantity))
        accepted = len(apply) + unchanged
        return ControlResponse(ok=True, data={
            "dry_run": dry_run, "accepted": accepted, "applied": 0 if dry_run else accepted,
            "changed": len(apply), "unchanged": unchanged,
            "rejected": [{"line": e.line, "reason": e.reason} for e in errors],
        })

    async def _log(self, req: LogRequest) -> ControlResponse:
        """The sync log; ``--sku`` also finds a product without a SKU by its name or its WooCommerce id."""
        named = self._bindings_named(req.sku) if req.sku else None
        rows = await self.store.query_log(sku=req.sku, level=req.level, since=req.since, after_id=req.after_id,
                                          limit=req.limit, binding_ids=named or None)
        return ControlResponse(ok=True, data=msgspec.to_builtins(rows))

    def _bindings_named(self, text: str) -> list[str]:
        """Bindings ``text`` names other than by SKU: a binding id, a WooCommerce id (``123`` or ``123:45``
        for a variation), or a product name (compared as the name match compares them)."""
        key = text.strip()
        if not key:
            return []
        if key in self.table:
            return [key]
        name = normalise_name(key)
        parts = key.split(":")
        ref = tuple(int(p) for p in parts) if len(parts) <= 2 and all(p.isdigit() for p in parts) else None
        found = []
        for b in self.table.all():
            if b.sku == key:
                continue  # found by the SKU itself
            if ref is not None and (b.woo.product_id, b.woo.variation_id)[:len(ref)] == ref:
                found.append(b.binding_id)
            elif normalise_name(b.name) == name:
                found.append(b.binding_id)
        return found

    def status(self) -> dict[str, Any]:
        shard_stats = [s.statistics() for s in self.shards]
        queue = {
            "router": self.router_inbox.statistics().current_buffer_used,
            "shards": [ch.statistics().current_buffer_used for ch in self.shard_inboxes],
            "intake_overflow": len(self.intake.overflow) if self.intake is not None else 0,
        }
        stats = self.store_stats()
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "listen": self.listen_url,
            "bindings": len(self.table),
            "actors": {
                name: {"running": a.running, "restarts": a.restarts, "last_error": a.last_error}
                for name, a in self.supervisor.actors.items()
            },
            "queues": queue,
            "router": self.router.statistics(),
            "shards": {
                "merges": sum(s["merges"] for s in shard_stats),
                "failed_merges": sum(s["failed_merges"] for s in shard_stats),
                "in_flight": sum(s["running"] for s in shard_stats),
                "dirty": sum(s["dirty"] + s["again"] for s in shard_stats),
                "retrying": sum(s["retrying"] for s in shard_stats),
                "echoes_skipped": sum(s.get("echoes_skipped", 0) for s in shard_stats),
                "triggers": dict(sum((sh.trigger_counts for sh in self.shards), collections.Counter())),
            },
            "locations": {name: asdict(a.status) for name, a in self.locations.items()},
            "mode": self.jobs.merge_config.mode,
            "stale_bindings": sum(s.get("stale", 0) for s in shard_stats),  # merged without a down location
            "woocommerce_poll": asdict(self.woo_poller.status),
            "webhooks": {
                "last_event": self.webhooks.last_event,
                "clover_verification": self.webhooks.verification.summary(time.time()),
            },
            "reconcile": {"every_s": self.reconcile_every, "last": max(
                (j.finished_at for k, j in self.jobs.last.items()
                 if k in ("reconcile", "full") and j.finished_at and not j.dry_run and j.state == "done"),
                default=None)},
            "jobs": {
                "current": msgspec.to_builtins(msgspec.structs.replace(self.jobs.current, diff=[]))
                if self.jobs.current else None,
                "last": {k: _job_summary(v) for k, v in self.jobs.last.items()},
                "last_dry_run": {k: _job_summary(v) for k, v in self.jobs.last_dry_run.items()},
                "catalogue": self.jobs.report,
            },
            "stock_writes": self.companion.summary() if self.companion is not None else None,
            "witness": self.witness.summary() if self.witness is not None else None,
            "store": msgspec.to_builtins(stats) if stats is not None else None,
            "exclusions": self.exclusions.summary() if self.exclusions is not None else None,
        }

    def idle(self) -> bool:
        return (
            all(s.idle() for s in self.shards)
            and self.router_inbox.statistics().current_buffer_used == 0
            and (self.intake is None or not self.intake.overflow)
            and all(ch.statistics().current_buffer_used == 0 for ch in self.shard_inboxes)
        )


def _job_summary(job: JobStatus) -> dict[str, Any]:
    return {"state": job.state, "finished_at": job.finished_at, "total": job.total, "dry_run": job.dry_run,
            "writes_planned": job.writes_planned, "changed": job.changed, "unchanged": job.unchanged,
            "skipped": job.skipped, "failed": job.failed, "error": job.error, "report": job.report}


def _result(job: JobStatus) -> ControlResponse:
    return ControlResponse(ok=job.state == "done", data={"result": msgspec.to_builtins(job)},
                           error=job.error or None)
