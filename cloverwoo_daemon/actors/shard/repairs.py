"""Checkouts our own ``inventory_delta`` erased, proven by the witness: taken off both sides by the next merge.

Rules:

- A repair waits in a per-binding queue and is applied by the binding's next
  merge, after any interrupted merge was recovered and before the plan: the
  bases are then at rest, and the repair never races a merge of the binding.
- Applying it moves the bases up by the erased units (``core.merge.owe_erased``),
  committed with a sync-log row; the same merge then plans ``-units`` on each
  side. Committed before any write, so a crash after it neither loses the
  repair nor applies it twice: the next merge plans from those bases.
- A binding that cannot be repaired (never synced, excluded, untracked, gone)
  gets the loss flagged as a conflict instead; nothing is written for it.
- Units of several repairs for one binding add up.
"""

from __future__ import annotations

import json
import time

import structlog

from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.log_rows import identity, row, who
from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding, Conflict
from cloverwoo_daemon.core.witness import fold_witness
from cloverwoo_daemon.messages import RepairErased

log = structlog.get_logger("cloverwoo.shard")


class Repairs:
    def __init__(self, deps: ShardDeps) -> None:
        self.deps = deps
        self._owed: dict[str, list[RepairErased]] = {}

    def queue(self, cmd: RepairErased) -> None:
        self._owed.setdefault(cmd.binding_id, []).append(cmd)

    def _forget(self, bid: str, applied: list[RepairErased]) -> None:
        """Drop the repairs applied (by identity: one queued meanwhile waits for the next merge)."""
        rest = [c for c in self._owed.get(bid, ()) if not any(c is a for a in applied)]
        if rest:
            self._owed[bid] = rest
        else:
            self._owed.pop(bid, None)

    def release_tables(self) -> None:
        self._owed = released(self._owed)

    async def apply(self, binding: Binding, trigger: str) -> Binding:
        """Move the bases by the units owed to ``binding`` (committed), or flag them when it cannot be repaired."""
        owed = list(self._owed.get(binding.binding_id, ()))
        if not owed:
            return binding
        d = self.deps
        units = sum(c.units for c in owed)
        evidence = [json.loads(c.evidence) for c in owed]
        try:
            if binding.excluded or not binding.tracked:
                raise ValueError("the binding is excluded or untracked")
            repaired, location = core_merge.owe_erased(binding, units, d.merge_config)
        except ValueError as exc:
            conflict = Conflict(binding_id=binding.binding_id, sku=binding.sku, kind="possible_lost_decrement",
                                detail=json.dumps({**identity(binding), "side": "woo", "units": units,
                                                   "events": evidence, "not_repaired": str(exc)}),
                                created_at=time.time())
            conflict_id = await d.store.add_conflict(conflict, fold=fold_witness)
            self._forget(binding.binding_id, owed)
            log.warning("erased_sale_not_repaired", units=units, reason=str(exc), **who(binding))
            d.on_conflict(Conflict(conflict.binding_id, conflict.sku, conflict.kind, conflict.detail,
                                   conflict.created_at, conflict_id))
            return binding
        log_row = row(repaired, "warning", "erased_sale_repaired", trigger,
                      detail={"units": units, "location": location, "evidence": evidence})

        def landed() -> None:
            d.table.put(repaired)
            self._forget(binding.binding_id, owed)

        await d.store.commit_binding(repaired, log=log_row, after_commit=landed)
        log.warning("erased_sale_repaired", units=units, location=location, **who(binding))
        return repaired
