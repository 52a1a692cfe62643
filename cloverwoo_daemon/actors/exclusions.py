"""Exclusions: products the admin took out of sync (`cloverwoo exclude` / `include`), by SKU.

Rules this module keeps:

- The set of excluded SKUs in the store (kv ``exclusions.skus``) is the
  truth. A binding's ``excluded`` flag follows it; an SKU not bound yet (not
  matched, or not in either catalogue yet) stays in the set and its binding
  is born excluded when it appears (``ShardDeps.excluded_sku``, used by the
  shard's catalogue update, and ``JobRunner.excluded_sku`` for job counts).
- The set is committed first, then each bound binding's shard is told
  (``SetExcluded``): the flag changes between two merges of that binding,
  never during one. A crash in between is finished at the next start by
  ``reconcile()``, which realigns every binding with the committed set.
- An excluded binding is never written, on either side, by any path: merges,
  recounts (initial sync, import, push), CSV rows, out-of-stock behaviour.
  Including it again recounts it from the source of truth (the shard resets
  its bases, see ``Catalogue.set_excluded`` in ``actors/shard/catalogue.py``).
- SKUs are compared as the matcher normalises them (surrounding spaces
  dropped, case kept): a binding matched by name with no SKU cannot be
  excluded by SKU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.core.matching import normalise_sku
from cloverwoo_daemon.messages import SetExcluded, ShardCommand
from cloverwoo_daemon.ports import StorePort

log = structlog.get_logger("cloverwoo.exclusions")

KV_KEY = "exclusions.skus"
STATUS_LIST = 500  # `status` lists at most this many SKUs (the count is always complete)


@dataclass
class Exclusions:
    store: StorePort
    table: BindingTable
    shards: list[trio.MemorySendChannel[ShardCommand]]
    skus: set[str] = field(default_factory=set)

    async def load(self) -> None:
        """Read the committed set (at start, before any shard applies a catalogue update)."""
        raw = await self.store.get_kv(KV_KEY)
        self.skus = {normalise_sku(s) for s in json.loads(raw)} - {""} if raw else set()

    def excluded_sku(self, sku: str) -> bool:
        return bool(sku) and normalise_sku(sku) in self.skus

    async def set(self, skus: Iterable[str], excluded: bool) -> dict[str, Any]:
        """Exclude (or include) these SKUs: commit the set, then tell each bound binding's shard."""
        wanted = sorted({normalise_sku(s) for s in skus} - {""})
        before = set(self.skus)
        after = before | set(wanted) if excluded else before - set(wanted)
        if after != before:
            await self.store.set_kv(KV_KEY, json.dumps(sorted(after)))
        self.skus = after
        bound: dict[str, int] = {}
        sent = 0
        wanted_set = set(wanted)  # a list would make a 50,000-line file 50,000 x 50,000 comparisons
        for b in self.table.all():
            if b.sku in wanted_set:
                bound[b.sku] = bound.get(b.sku, 0) + 1
                if b.excluded != excluded:
                    await self._send(b.binding_id, excluded)
                    sent += 1
        changed = sorted(set(wanted) - before if excluded else set(wanted) & before)
        log.info("exclusions_changed", excluded=excluded, skus=len(wanted), changed=len(changed), bindings=sent)
        return {
            "excluded": excluded,
            "skus": wanted,
            "changed": changed,  # SKUs whose membership in the set changed
            "bound": bound,  # SKU -> bindings with that SKU
            "not_bound": [s for s in wanted if s not in bound],  # kept: applied when they are bound
            "bindings_changed": sent,
            "total_excluded": len(self.skus),
        }

    async def reconcile(self) -> int:
        """At start: realign every binding's flag with the committed set (finishes a crash mid-change)."""
        sent = 0
        for b in self.table.all():
            want = self.excluded_sku(b.sku)
            if b.excluded != want:
                await self._send(b.binding_id, want)
                sent += 1
        if sent:
            log.info("exclusions_realigned", bindings=sent)
        return sent

    def summary(self) -> dict[str, Any]:
        """For `status`: the excluded SKUs and how many bindings are excluded now."""
        listed = sorted(self.skus)
        return {
            "count": len(listed),
            "skus": listed[:STATUS_LIST],
            "bindings_excluded": sum(1 for b in self.table.all() if b.excluded),
            "not_bound": sorted(self.skus - {b.sku for b in self.table.all()})[:STATUS_LIST],
        }

    async def _send(self, binding_id: str, excluded: bool) -> None:
        await self.shards[shard_of(binding_id, len(self.shards))].send(SetExcluded(binding_id, excluded))
