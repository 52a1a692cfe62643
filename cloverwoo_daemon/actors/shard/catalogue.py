"""Changes to a binding itself, applied by its shard between merges: catalogue fields, unbinding,
exclusions, and counts typed into a stock CSV.

Rules:

- Each waits in a per-binding queue and is applied by the binding's next
  merge, before it reads anything: it never races a merge of the same
  binding. A change whose application fails stays queued for the retry.
- A catalogue update keeps the freshest bases of the locations whose item did
  not change. When WooCommerce's figure no longer covers the same locations,
  the Woo base is dropped: the binding is recounted.
- A new binding whose SKU was excluded beforehand is born excluded.
- Including a binding again resets its bases: the merchant's source of truth
  wins, as on the first day (see :meth:`Catalogue.set_excluded`).
- A CSV count is written to Clover absolutely, like a count at the store;
  the bases stay, so the same merge carries it to Woo as a Clover change.
- In-memory tables follow the store only once its commit landed
  (``after_commit``), so a cancelled step never leaves memory behind the
  database.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import structlog

from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.location_meta import LocationMeta
from cloverwoo_daemon.actors.shard.log_rows import row, who
from cloverwoo_daemon.actors.shard.recovery import decode_intent, recover
from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core.model import Binding
from cloverwoo_daemon.messages import CatalogueUpdate, SetStock

log = structlog.get_logger("cloverwoo.shard")


class Catalogue:
    def __init__(self, deps: ShardDeps, meta: LocationMeta) -> None:
        self.deps = deps
        self.meta = meta
        self._updates: dict[str, CatalogueUpdate] = {}
        self._set_stock: dict[str, list[SetStock]] = {}  # CSV rows waiting for their binding's turn
        self._exclusion: dict[str, bool] = {}  # exclude/include waiting for the binding's turn

    # -- queueing (from the inbox loop)

    def queue_update(self, cmd: CatalogueUpdate) -> None:
        self._updates[cmd.binding_id] = cmd

    def queue_set_stock(self, cmd: SetStock) -> None:
        self._set_stock.setdefault(cmd.binding_id, []).append(cmd)

    def queue_exclusion(self, bid: str, excluded: bool) -> None:
        self._exclusion[bid] = excluded

    def release_tables(self) -> None:
        self._updates = released(self._updates)
        self._set_stock = released(self._set_stock)
        self._exclusion = released(self._exclusion)

    # -- applied by a merge

    async def take_update(self, bid: str, trigger: str) -> bool | None:
        """Apply the waiting catalogue update of ``bid``: None when there was none, False when it unbound."""
        update = self._updates.pop(bid, None)
        if update is None:
            return None
        try:
            return await self.apply(update, trigger)
        except BaseException:
            self._updates.setdefault(bid, update)  # kept for the retry (or the next incarnation)
            raise

    def forget_exclusion(self, bid: str) -> None:
        """The binding is gone: the SKU set keeps the exclusion for a later binding."""
        self._exclusion.pop(bid, None)

    async def apply(self, update: CatalogueUpdate, trigger: str) -> bool:
        """Apply new catalogue fields, keeping the freshest bases; False when the binding is gone."""
        d = self.deps
        current = d.table.get(update.binding_id)
        if update.binding is None:
            if current is not None:
                await self.unbind(current, update.reason or "no longer in the catalogue", trigger)
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
                self.meta.hold_prior_woo(new.binding_id, current.base_woo)
            new = msgspec.structs.replace(new, base_woo=current.base_woo if same_cover else None,
                                          base_clover=kept, version=current.version, excluded=current.excluded)
        elif d.excluded_sku(new.sku):
            new = msgspec.structs.replace(new, excluded=True)  # excluded before it was bound
        if new != current:
            await d.store.put_bindings([new])
            d.table.put(new)
            if current is None:
                await d.store.append_log([row(new, "info", "bound", trigger,
                                              detail={"matched_by": new.matched_by, "clover": new.clover_items,
                                                      "tracked": new.tracked})])
                log.info("bound", matched_by=new.matched_by, **who(new))
        return True

    async def unbind(self, binding: Binding, reason: str, trigger: str) -> None:
        d = self.deps
        await d.store.delete_binding(binding.binding_id)
        d.table.remove(binding.binding_id)
        d.intents.pop(binding.binding_id, None)
        await d.store.append_log([row(binding, "warning", "unbound", trigger, detail={"reason": reason})])
        log.warning("unbound", reason=reason, **who(binding))

    async def drop_locations(self, binding: Binding, gone: set[str], trigger: str) -> Binding:
        """A Clover item was deleted: that location no longer holds this product's stock."""
        d = self.deps
        items = {loc: item for loc, item in binding.clover_items.items() if loc not in gone}
        if not items:
            await self.unbind(binding, f"Clover item deleted at {', '.join(sorted(gone))}", trigger)
            return msgspec.structs.replace(binding, clover_items={})
        # Woo's figure covered the dropped location too: recount from the source of truth.
        new = msgspec.structs.replace(binding, clover_items=items, base_woo=None,
                                      base_clover={k: v for k, v in binding.base_clover.items() if k in items})
        log_row = row(new, "warning", "unbound_location", trigger,
                      detail={"locations": sorted(gone), "reason": "Clover item deleted"})
        await d.store.commit_binding(new, log=log_row, after_commit=_put(d, new))
        log.warning("unbound_location", locations=sorted(gone), **who(binding))
        return new

    async def apply_set_stock(self, binding: Binding) -> None:
        """Write the CSV counts waiting for this binding to Clover (each stays queued until written)."""
        d = self.deps
        bid = binding.binding_id
        while self._set_stock.get(bid):
            cmd = self._set_stock[bid][0]
            item_id = binding.clover_items.get(cmd.location)
            if item_id is not None and cmd.location in d.clovers and not binding.excluded and binding.tracked:
                await d.clovers[cmd.location].set_stock(item_id, cmd.quantity)  # on failure it stays queued
                await d.store.append_log([row(binding, "info", "csv_set", "csv",
                                              detail={"location": cmd.location, "quantity": cmd.quantity})])
            self._set_stock[bid].pop(0)
        self._set_stock.pop(bid, None)

    # -- exclusions

    async def take_exclusion(self, binding: Binding, trigger: str) -> Binding:
        """Apply a waiting exclude/include before this merge reads anything; kept for a retry if it fails."""
        flag = self._exclusion.pop(binding.binding_id, None)
        if flag is None:
            return binding
        try:
            return await self.set_excluded(binding, flag, trigger)
        except BaseException:
            self._exclusion.setdefault(binding.binding_id, flag)
            raise

    async def set_excluded(self, binding: Binding, excluded: bool, trigger: str) -> Binding:
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
            binding = await recover(d, binding, decode_intent(d.intents[bid]), woo_stock.version_marker, trigger)
        if excluded:
            new = msgspec.structs.replace(binding, excluded=True)
        else:
            new = msgspec.structs.replace(binding, excluded=False, base_woo=None, base_clover={})
        log_row = row(new, "info", "excluded" if excluded else "included", trigger,
                      detail={"bases_reset": not excluded})
        await d.store.commit_binding(new, log=log_row, after_commit=_put(d, new))
        log.info("excluded" if excluded else "included", **who(new))
        if excluded:
            d.on_stock(new)  # lets the out-of-stock behaviour undo what it did to this product
        return new


def _put(d: ShardDeps, binding: Binding) -> Callable[[], None]:
    return lambda: d.table.put(binding)
