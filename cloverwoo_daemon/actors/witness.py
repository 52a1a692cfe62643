"""The witness: for each of our stock writes that could erase someone else's sale, the orders feeds say
whether one landed inside its window (``core.witness`` decides; this actor feeds it and acts on it).

Rules:

- The shards report every write that leaves such a window (``record``): a
  Clover read-then-write, and a WooCommerce ``inventory_delta`` (a write
  through the WordPress companion leaves none). Nothing else is watched.
- A window is judged once the orders that could fall inside it have had
  time to reach the feeds: ``settle`` seconds after it closed (and, for
  WooCommerce, after the ``span`` around it in which another order would
  make a single witness uncertain). One feed call per Clover location and
  one for WooCommerce answer every window due at once; the stock notes of a
  lone WooCommerce witness are read to see whether it is proven.
- A proven WooCommerce loss goes to the binding's shard as a repair
  (``RepairErased``); everything else witnessed is flagged: a
  ``possible_lost_decrement`` conflict (folded per binding), a sync-log row
  and an alert, with the orders and the units.
- A feed that cannot be read leaves its windows for the next round; a
  window still unjudged after ``give_up`` seconds is dropped and counted,
  and so are windows beyond ``max_pending`` (the oldest first). Windows live
  in memory only: a restart forgets the ones not yet judged.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.actors.shard.log_rows import identity, row, who
from cloverwoo_daemon.core import witness as core_witness
from cloverwoo_daemon.core.model import Conflict
from cloverwoo_daemon.core.witness import Finding, WriteWindow
from cloverwoo_daemon.messages import RepairErased, ShardCommand
from cloverwoo_daemon.ports import CloverPort, RemoteError, StorePort, WooPort

log = structlog.get_logger("cloverwoo.witness")


@dataclass
class WitnessDeps:
    store: StorePort
    woo: WooPort
    clovers: dict[str, CloverPort]
    table: BindingTable
    shards: list[trio.MemorySendChannel[ShardCommand]]
    on_conflict: Callable[[Conflict], None] = lambda c: None
    every: float = 1.0  # how often due windows are judged
    settle: float = 1.5  # seconds after a window closed before its orders are looked for
    skew: float = 1.0  # clock difference allowed between the daemon and each store
    span: float = 2.0  # around a WooCommerce write: one order alone in it can be proven
    give_up: float = 600.0
    max_pending: int = 20_000


@dataclass
class WitnessStats:
    recorded: int = 0
    judged: int = 0
    flagged: int = 0
    repaired: int = 0
    dropped: int = 0
    feed_errors: int = 0


@dataclass
class LossWitness:
    deps: WitnessDeps
    stats: WitnessStats = field(default_factory=WitnessStats)
    _pending: deque[WriteWindow] = field(default_factory=deque)
    _judged_woo: deque[WriteWindow] = field(default_factory=deque)  # recent ones: "another write of ours" nearby

    def record(self, window: WriteWindow) -> None:
        """A shard's hook: one write that left a window (see the module rules)."""
        self.stats.recorded += 1
        self._pending.append(window)
        while len(self._pending) > self.deps.max_pending:
            self._pending.popleft()
            self.stats.dropped += 1

    def pending(self) -> int:
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.deps.every)
            await self.judge_due(time.time())

    async def judge_due(self, now: float) -> None:
        """Judge every window whose orders have had time to show; keep the rest (and those a feed failed)."""
        d = self.deps
        due: list[WriteWindow] = []
        keep: deque[WriteWindow] = deque()
        for w in self._pending:
            wait = d.settle + (d.span + d.skew if w.side == "woo" else 0.0)
            (due if w.ended + wait <= now else keep).append(w)
        if not due:
            return
        self._pending = keep
        unjudged: list[WriteWindow] = []
        by_location: dict[str, list[WriteWindow]] = {}
        for w in due:
            if w.side == "clover":
                by_location.setdefault(w.location, []).append(w)
        for loc, windows in by_location.items():
            unjudged += await self._judge_clover(loc, windows)
        woo = [w for w in due if w.side == "woo"]
        if woo:
            unjudged += await self._judge_woo(woo)
        for w in unjudged:  # a feed failed: next round, unless it is too old to matter
            if now - w.ended > d.give_up:
                self.stats.dropped += 1
            else:
                self._pending.append(w)
        while self._judged_woo and self._judged_woo[0].ended < now - 4 * (d.span + d.skew + d.settle):
            self._judged_woo.popleft()

    async def _judge_clover(self, location: str, windows: list[WriteWindow]) -> list[WriteWindow]:
        d = self.deps
        client = d.clovers.get(location)
        if client is None:
            self.stats.dropped += len(windows)
            return []
        since_ms = int((min(w.started for w in windows) - d.skew - 1.0) * 1000)
        try:
            orders = await client.order_lines(since_ms=since_ms)
        except RemoteError as exc:
            self.stats.feed_errors += 1
            log.warning("witness_feed_failed", location=location, error=str(exc)[:300])
            return windows
        for w in windows:
            self.stats.judged += 1
            finding = core_witness.witness_clover(w, orders, skew=d.skew)
            if finding is not None:
                await self._flag(finding)
        return []

    async def _judge_woo(self, windows: list[WriteWindow]) -> list[WriteWindow]:
        d = self.deps
        oldest = min(w.started for w in windows) - d.skew - d.span - 2.0
        try:
            orders = await d.woo.orders_since(modified_after=_iso(oldest))
        except RemoteError as exc:
            self.stats.feed_errors += 1
            log.warning("witness_feed_failed", location="woocommerce", error=str(exc)[:300])
            return windows
        ours = [*self._judged_woo, *windows, *(w for w in self._pending if w.side == "woo")]
        for w in windows:
            self.stats.judged += 1
            mine = [x for x in ours if x.item == w.item]
            finding = core_witness.witness_woo(w, orders, our_windows=mine, skew=d.skew, span=d.span)
            if finding is not None and len(finding.orders) == 1 and not finding.certain:
                try:  # a lone witness: its stock note may prove it
                    notes = {int(finding.orders[0]): await d.woo.stock_notes(int(finding.orders[0]))}
                except RemoteError as exc:
                    log.warning("witness_notes_failed", order=finding.orders[0], error=str(exc)[:300])
                    notes = {}
                if notes:
                    finding = core_witness.witness_woo(w, orders, our_windows=mine, notes=notes, skew=d.skew,
                                                       span=d.span)
            if finding is None:
                continue
            if finding.certain:
                await self._repair(finding)
            else:
                await self._flag(finding)
        self._judged_woo.extend(windows)
        return []

    async def _repair(self, finding: Finding) -> None:
        d = self.deps
        w = finding.window
        self.stats.repaired += 1
        log.warning("erased_sale_found", units=finding.units, orders=list(finding.orders), binding_id=w.binding_id,
                    sku=w.sku, reason=finding.reason)
        shard = d.shards[shard_of(w.binding_id, len(d.shards))]
        await shard.send(RepairErased(w.binding_id, int(finding.units), json.dumps(finding.detail())))

    async def _flag(self, finding: Finding) -> None:
        d = self.deps
        w = finding.window
        self.stats.flagged += 1
        binding = d.table.get(w.binding_id)
        ident = identity(binding) if binding is not None else {"sku": w.sku}
        detail = core_witness.conflict_detail(finding, ident)
        conflict = Conflict(binding_id=w.binding_id, sku=w.sku, kind="possible_lost_decrement",
                            detail=json.dumps(detail), created_at=time.time())
        conflict_id = await d.store.add_conflict(conflict, fold=core_witness.fold_witness)
        if binding is not None:
            await d.store.append_log([row(binding, "warning", "possible_lost_decrement", f"witness:{w.side}",
                                          detail=finding.detail())])
            log.warning("possible_lost_decrement", side=w.side, location=w.location, units=finding.units,
                        orders=list(finding.orders), conflict_id=conflict_id, **who(binding))
        d.on_conflict(Conflict(conflict.binding_id, conflict.sku, conflict.kind, conflict.detail,
                               conflict.created_at, conflict_id))

    def summary(self) -> dict[str, int]:
        s = self.stats
        return {"recorded": s.recorded, "pending": len(self._pending), "judged": s.judged, "flagged": s.flagged,
                "repaired": s.repaired, "dropped": s.dropped, "feed_errors": s.feed_errors}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(max(ts, 0), UTC).strftime("%Y-%m-%dT%H:%M:%S")
