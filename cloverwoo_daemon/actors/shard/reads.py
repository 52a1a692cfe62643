"""Which Clover locations a merge reads, the reads themselves, and locations that are down.

Rules:

- In aggregate mode a sale at one store moves only that store's count. A
  merge reads the locations its triggers name (and the primary for a Woo
  change), not all of them; a location left unread is taken to be where its
  base says (the merge neither counts nor writes it, and keeps its base).
  Where that could change the outcome, :meth:`CloverReads.needs_every_location`
  has the rest read before planning. Every other case reads every location.
- A location that is down (``Reachability``) is not waited on: its read is
  unknown (``None``), never zero, the binding is remembered as *stale* for
  that location, and merged again when the location answers. A read in
  flight when its location goes down is abandoned (its cancel scope is
  cancelled by ``Reachability``), so one dead store never holds the merge of
  the stores that answer.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.shard.scheduler import short
from cloverwoo_daemon.core.model import Binding
from cloverwoo_daemon.ports import NotFound, RemoteError

log = structlog.get_logger("cloverwoo.shard")

CloverReadResult = tuple[dict[str, "int | None"], bool, set[str]]  # reads, some read failed, locations gone


class CloverReads:
    """The Clover side of a merge's reads, for one shard."""

    def __init__(
        self, deps: ShardDeps, *, requeue: Callable[[str, Pending], None], index: int = 0,
        carries_woo_change: Callable[[str], bool] = lambda bid: False,
    ) -> None:
        self.deps = deps
        self.index = index
        self._requeue = requeue
        self._carries_woo_change = carries_woo_change  # a mode recount's held Woo base (location_meta)
        # bindings merged without a location that was down (merged again when it answers)
        self._stale: dict[str, set[str]] = {}
        if deps.reach is not None:
            deps.reach.on_return.append(self.location_returned)

    def stale_ids(self) -> set[str]:
        """Bindings merged without a location that was down, for /metrics and status."""
        return set().union(*self._stale.values()) if self._stale else set()

    def first_reads(self, binding: Binding, pending: Pending) -> frozenset[str] | None:
        """The Clover locations a merge reads first: those the triggers name, or None for every location.

        Reading every location cost N Clover calls per merge, and as many again for the echo of the merge's
        own write: ten locations allowed about two sales a second under Clover's per-app limit. Every case
        but a plain aggregate merge of a synced binding reads every location: a binding never synced, a
        recount, a mode change, a crashed merge being recovered, a trigger that names no location.
        """
        d = self.deps
        cfg = d.merge_config
        at = pending.clover_at
        if at is None or cfg.mode != "aggregate" or pending.initialise is not None:
            return None
        bound = [loc for loc in cfg.active if loc in binding.clover_items and loc in d.clovers]
        if len(bound) < 2 or binding.base_woo is None or any(binding.base_clover.get(loc) is None for loc in bound):
            return None
        if binding.binding_id in d.intents or self._carries_woo_change(binding.binding_id):
            return None
        first = (at | {cfg.primary}) if pending.from_woo else at  # a Woo change is routed, by default to the primary
        first = first.intersection(bound)
        return first or None

    def needs_every_location(self, binding: Binding, woo: int | None, reads: dict[str, int | None]) -> bool:
        """Whether the locations read first are too few for a sound plan (see :meth:`first_reads`).

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

    async def read(
        self, binding: Binding, only: frozenset[str] | None = None, skip: frozenset[str] = frozenset()
    ) -> CloverReadResult:
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
                    return
                if reach.is_down(loc):
                    reads[loc] = None
                    self._mark_stale(loc, binding.binding_id)
                    return
                # a location that goes down meanwhile is not waited on (its retries would hold this merge
                # and every healthy location's change in it); the binding is merged again when it answers.
                with reach.abandon_when_down(loc) as scope:
                    reads[loc] = await d.clovers[loc].get_stock(item_id)
                if scope.cancelled_caught:
                    reads[loc] = None
                    self._mark_stale(loc, binding.binding_id)
            except NotFound:
                reads[loc] = None
                gone.add(loc)
            except RemoteError as exc:
                reads[loc] = None
                failed = True
                log.warning("clover_read_failed", binding_id=binding.binding_id, location=loc, error=short(exc))

        async with trio.open_nursery() as n:
            for loc in d.merge_config.locations:
                item_id = binding.clover_items.get(loc)
                if item_id is not None and loc in d.clovers and (only is None or loc in only) and loc not in skip:
                    n.start_soon(one, loc, item_id)
        return reads, failed, gone

    def _mark_stale(self, location: str, bid: str) -> None:
        self._stale.setdefault(location, set()).add(bid)

    def location_returned(self, location: str) -> None:
        """Reachability hook: merge again every binding merged without this location."""
        bids = self._stale.pop(location, set())
        if bids:
            log.info("location_catch_up", location=location, bindings=len(bids), shard=self.index)
        now = trio.current_time()
        for bid in bids:
            p = Pending()
            p.absorb((), f"catchup:{location}", now)
            self._requeue(bid, p)
