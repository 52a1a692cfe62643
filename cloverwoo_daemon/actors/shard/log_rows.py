"""How a shard names a binding in its log lines and sync-log rows.

A product matched by name has no SKU, and a line saying ``sku=`` can be
neither read nor filtered. So every line names the product by its SKU when it
has one and otherwise by its name and WooCommerce id (:func:`who`); the sync
log keeps the binding id, by which ``cloverwoo log --sku NAME`` (see
``Admin._log``) finds such a product's rows.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import trio

from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding, SyncLogRow


def who(binding: Binding) -> dict[str, Any]:
    """Keyword arguments naming ``binding`` in a structlog line: its SKU, or its name and Woo id without one."""
    if binding.sku:
        return {"binding_id": binding.binding_id, "sku": binding.sku}
    return {"binding_id": binding.binding_id, "sku": "", "product": binding.name,
            "woo_id": _woo_id(binding)}


def _woo_id(binding: Binding) -> str:
    ref = binding.woo
    return f"{ref.product_id}:{ref.variation_id}" if ref.variation_id else str(ref.product_id)


def identity(binding: Binding) -> dict[str, Any]:
    """What a sync-log row's or a conflict's detail adds so that a product without a SKU is recognisable."""
    if binding.sku:
        return {}
    return {"product": binding.name, "woo_id": _woo_id(binding), "matched_by": binding.matched_by}


def row(
    binding: Binding,
    level: str,
    event: str,
    trigger: str,
    *,
    plan: core_merge.Plan | None = None,
    reads: core_merge.Reads | None = None,
    detail: dict[str, Any] | None = None,
    error: str = "",
    latency: float | None = None,
) -> SyncLogRow:
    """One sync-log row about ``binding``; ``latency`` is the trio time its earliest trigger arrived."""
    info: dict[str, Any] = {**identity(binding), **(detail or {})}
    if reads is not None:
        info["read"] = {"woo": reads.woo, "clover": reads.clover}
    if plan is not None:
        info["write"] = {"woo_delta": plan.woo_delta, "clover": {k: v for k, v in plan.clover_deltas.items() if v}}
        info["result"] = {"woo": binding.base_woo, "clover": binding.base_clover}
        info["version"] = binding.version
        if plan.initial:
            info["initial"] = True
    latency_ms = None
    if latency is not None and math.isfinite(latency):
        latency_ms = round((trio.current_time() - latency) * 1000, 2)
    return SyncLogRow(ts=time.time(), level=level, event=event, binding_id=binding.binding_id, sku=binding.sku,
                      trigger=trigger, detail=json.dumps(info, sort_keys=True), error=error, latency_ms=latency_ms)
