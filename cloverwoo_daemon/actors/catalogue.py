"""The catalogue refresh: reads both catalogues, matches them, and hands binding changes to the shards.

Rules:

- Matching is ``core.matching`` (SKU, then name where a side has no SKU,
  never an ambiguous or empty key); this actor only fetches and forwards.
- It never edits a binding itself: each new, changed or vanished binding is
  sent to its shard as a ``CatalogueUpdate``, applied between two merges of
  that binding, so a refresh cannot race a merge and the bases stay the
  shard's.
- A failed read of either side skips this refresh entirely: a partial list
  would look like deleted products and unbind them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.core import matching
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import CloverItem
from cloverwoo_daemon.messages import CatalogueUpdate, ShardCommand
from cloverwoo_daemon.ports import CloverPort, RemoteError, WooPort

log = structlog.get_logger("cloverwoo.catalogue")


@dataclass
class CatalogueActor:
    woo: WooPort
    clovers: dict[str, CloverPort]  # active locations
    primary: str
    table: BindingTable
    shards: list[trio.MemorySendChannel[ShardCommand]]
    every: float | None = 600.0
    report: dict[str, Any] = field(default_factory=dict)
    last_refresh: float | None = None
    retry: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0, max_attempts=1_000_000))
    refreshed: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        while True:
            try:
                await self.refresh()
                attempt = 0
                if self.every is None:
                    return
                await trio.sleep(self.every)
            except RemoteError as exc:
                attempt += 1
                log.warning("catalogue_refresh_failed", error=str(exc)[:300], attempt=attempt)
                await trio.sleep(self.retry.next_delay(min(attempt, 20)) or self.retry.cap)

    async def refresh(self) -> dict[str, Any]:
        clover: dict[str, list[CloverItem]] = {}

        async def read(loc: str, client: CloverPort) -> None:
            clover[loc] = await client.list_items()

        async with trio.open_nursery() as n:
            for loc, client in self.clovers.items():
                n.start_soon(read, loc, client)
        woo = await self.woo.list_items()
        report = matching.match_catalogues(clover, woo, primary=self.primary)
        put, removed = matching.reconcile_bindings(self.table.all(), report)
        nshards = len(self.shards)
        changed = 0
        for b in put:
            current = self.table.get(b.binding_id)
            if current is not None and _same_catalogue(current, b):
                continue
            changed += 1
            await self.shards[shard_of(b.binding_id, nshards)].send(CatalogueUpdate(b.binding_id, b, "catalogue"))
        for b, reason in removed:
            await self.shards[shard_of(b.binding_id, nshards)].send(CatalogueUpdate(b.binding_id, None, reason))
        self.report = _summary(report, changed=changed, removed=len(removed))
        self.last_refresh = time.time()
        log.info("catalogue_refreshed", **{k: v for k, v in self.report.items() if isinstance(v, int)})
        self.refreshed.set()
        return self.report


def _same_catalogue(a: Any, b: Any) -> bool:
    return (a.sku, a.name, a.woo, a.clover_items, a.matched_by, a.tracked) == (
        b.sku, b.name, b.woo, b.clover_items, b.matched_by, b.tracked
    )


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
