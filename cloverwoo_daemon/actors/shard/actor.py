"""The SKU-shard actor: reads its inbox and hands each command to the part of the shard that owns it."""

from __future__ import annotations

import collections

import trio

from cloverwoo_daemon.actors.shard.catalogue import Catalogue
from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.execute import MergeExecutor
from cloverwoo_daemon.actors.shard.location_meta import LocationMeta
from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.shard.reads import CloverReads
from cloverwoo_daemon.actors.shard.repairs import Repairs
from cloverwoo_daemon.actors.shard.scheduler import MergeOutcome, MergeScheduler
from cloverwoo_daemon.messages import (
    CatalogueUpdate,
    Initialise,
    MarkDirty,
    RepairErased,
    SetExcluded,
    SetStock,
    ShardCommand,
)


class ShardActor:
    def __init__(self, index: int, deps: ShardDeps) -> None:
        self.index = index
        self.deps = deps
        self.meta = LocationMeta(deps, log_failure=self._log_failure)
        self.catalogue = Catalogue(deps, self.meta)
        self.scheduler = MergeScheduler(
            merge=self._merge,
            settled=deps.settled,
            max_parallel=deps.max_parallel,
            retry=deps.retry,
            # the hooks are looked up at call time: app.py sets some after the shards exist
            on_failure=lambda bid, attempts: self.deps.on_failure(bid, attempts),
            on_job_item=lambda job, bid, result, reason: self.deps.on_job_item(job, bid, result, reason),
            log_failure=self._log_failure,
            job_attempts=deps.job_attempts,
            name=f"shard-{index}",
            on_drained=self._drained,
        )
        self.reads = CloverReads(deps, requeue=self.scheduler.enqueue, index=index,
                                 carries_woo_change=self.meta.carries)
        self.repairs = Repairs(deps)
        self.executor = MergeExecutor(deps, reads=self.reads, catalogue=self.catalogue, meta=self.meta,
                                      repairs=self.repairs)

    # ----------------------------------------------------------------- state

    @property
    def merges(self) -> int:
        return self.scheduler.merges

    @property
    def failed_merges(self) -> int:
        return self.scheduler.failed_merges

    @property
    def trigger_counts(self) -> collections.Counter[str]:
        return self.scheduler.trigger_counts

    def statistics(self) -> dict[str, int]:
        stale = self.reads.stale_ids()
        return {**self.scheduler.statistics(), "echoes_skipped": self.executor.echoes_skipped, "stale": len(stale)}

    def stale_ids(self) -> set[str]:
        """Bindings merged without a location that was down (merged again when it answers), for /metrics."""
        return self.reads.stale_ids()

    def has_pending(self, bid: str) -> bool:
        return self.scheduler.has_pending(bid)

    def idle(self) -> bool:
        return self.scheduler.idle()

    # ------------------------------------------------------------------ loop

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[ShardCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One incarnation. Pending work is kept on the scheduler: a restart runs it again, whole."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scheduler.run)
            task_status.started()
            async for cmd in inbox:
                now = trio.current_time()
                match cmd:
                    case MarkDirty():
                        for bid in cmd.binding_ids:
                            p = Pending()
                            p.absorb(cmd.event_ids, cmd.trigger, cmd.received_at or now, cmd.woo_stock_hint,
                                     cmd.clover_at)
                            self.scheduler.enqueue(bid, p)
                    case CatalogueUpdate():
                        self.catalogue.queue_update(cmd)
                        self._poke(cmd.binding_id, "catalogue", now)
                    case SetStock():
                        self.catalogue.queue_set_stock(cmd)
                        self._poke(cmd.binding_id, "csv", now)
                    case SetExcluded():
                        self.catalogue.queue_exclusion(cmd.binding_id, cmd.excluded)
                        self._poke(cmd.binding_id, "exclude" if cmd.excluded else "include", now)
                    case RepairErased():
                        self.repairs.queue(cmd)
                        p = Pending()
                        p.absorb((), "repair", now)
                        p.read_everywhere()  # the repair routes an online sale: every location's figure counts
                        self.scheduler.enqueue(cmd.binding_id, p)
                    case Initialise():
                        p = Pending(initialise=cmd)
                        p.absorb((), "initialise", now)
                        self.scheduler.enqueue(cmd.binding_id, p)

    def _poke(self, bid: str, trigger: str, now: float) -> None:
        p = Pending()
        p.absorb((), trigger, now)
        self.scheduler.enqueue(bid, p)

    async def _merge(self, bid: str, pending: Pending) -> MergeOutcome:
        return await self.executor.merge(bid, pending)

    async def _log_failure(self, bid: str, pending: Pending, exc: BaseException) -> None:
        await self.executor.log_failure(bid, pending, exc)

    def _drained(self) -> None:
        self.catalogue.release_tables()
        self.meta.release_tables()
        self.repairs.release_tables()
