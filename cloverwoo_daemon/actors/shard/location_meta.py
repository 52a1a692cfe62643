"""Per-location figures on the WooCommerce product, and a mode switch's pending online sales.

Rules:

- In per-location mode each binding's per-location stock is published as
  product meta (``_cloverwoo_location_stock``, JSON) for pickup plugins. It
  rides in the same request as the merge's Woo delta when that goes by
  ``inventory_delta``; the WordPress companion writes stock only, so its
  changes are followed by a meta-only write, which is sent only when the
  figures changed and nothing carried them. A failed meta write is owed: the binding's next merge writes it even
  when the bases do not move.
- A mode switch leaving per-location mode removes the key from every binding
  it recounts: a stale figure must not stay on show.
- A mode switch changes which Clover figure Woo shows; an online sale not yet
  merged at that moment must still reach Clover, not be overruled by the
  recount (:meth:`LocationMeta.carry_woo_change`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import msgspec

from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.pending import Pending
from cloverwoo_daemon.actors.shard.scheduler import MergeFailed
from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding
from cloverwoo_daemon.ports import RemoteError

LOCATION_META_KEY = "_cloverwoo_location_stock"  # {location: quantity} as JSON, per-location mode


class LocationMeta:
    def __init__(
        self, deps: ShardDeps, *, log_failure: Callable[[str, Pending, BaseException], Awaitable[None]]
    ) -> None:
        self.deps = deps
        self._log_failure = log_failure
        self._meta_owed: set[str] = set()  # per-location meta write failed: written by the next merge
        # Woo bases a mode switch's catalogue change dropped: what Woo showed, so an online sale not yet
        # merged is still routed to Clover (see carry_woo_change) instead of being overruled by the recount.
        self._prior_woo: dict[str, int] = {}

    def hold_prior_woo(self, bid: str, base_woo: int) -> None:
        self._prior_woo[bid] = base_woo

    def carries(self, bid: str) -> bool:
        """A mode switch's Woo change is held for this binding (its next merge reads every location)."""
        return bid in self._prior_woo

    def release_tables(self) -> None:
        self._meta_owed = released(self._meta_owed)
        self._prior_woo = released(self._prior_woo)

    def figures(self, binding: Binding) -> dict[str, int]:
        """Each active location's stock as the bases hold it (what the last merge left there)."""
        return {loc: q for loc in self.deps.merge_config.active
                if loc in binding.clover_items and (q := binding.base_clover.get(loc)) is not None}

    def meta(self, binding: Binding, shown: dict[str, int], pending: Pending) -> dict[str, str | None] | None:
        """The meta to write in per-location mode, or None: another mode, or the figures did not change."""
        d = self.deps
        job = pending.initialise.job_id if pending.initialise is not None else None
        if d.merge_config.mode != "per-location":
            if job is not None and d.clears_location_meta(job):
                return {LOCATION_META_KEY: None}
            return None
        figures = self.figures(binding)
        force = binding.binding_id in self._meta_owed or (job is not None and d.mode_job(job))
        if not figures or (figures == shown and not force):
            return None
        return {LOCATION_META_KEY: json.dumps(figures, sort_keys=True)}

    async def write(self, binding: Binding, shown: dict[str, int], pending: Pending,
                    attached: dict[str, str | None] | None) -> None:
        """A meta-only write when the figures changed and the delta's request did not already carry them."""
        bid = binding.binding_id
        meta = self.meta(binding, shown, pending)
        if meta is None or meta == attached:
            self._meta_owed.discard(bid)
            return
        self._meta_owed.add(bid)  # until the write is known to have landed, whatever interrupts it
        (res,) = await self.deps.woo.apply_deltas([(binding.woo, 0, None, meta)])  # the marker stays as it is
        if not res.ok:
            refused = RemoteError(f"woocommerce meta write refused: {res.error}")
            await self._log_failure(bid, pending, refused)
            raise MergeFailed(str(refused))
        self._meta_owed.discard(bid)

    def carry_woo_change(self, binding: Binding, reads: core_merge.Reads, pending: Pending) -> Binding:
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
