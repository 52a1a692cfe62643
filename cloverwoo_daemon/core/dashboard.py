"""The dashboard's ranking: which low or out-of-stock products need the merchant first.

Rules this module keeps:

- Pure: bindings, thresholds and sync-log rows in, ordered rows out.
- Listed: tracked, synced bindings whose shop stock is at or below their
  threshold (out of stock always, even with a negative threshold).
- Most urgent first: out of stock *and* selling (sales in the window); then
  stock relative to threshold (``stock / max(threshold, 1)``, lowest first);
  then the recent sales velocity (highest first); then SKU, so the order is
  stable.
- Velocity comes from the sync log: a merge moves a sale from one side to the
  other, so the units it took away (negative Woo delta: a Clover sale;
  negative Clover deltas: an online sale) are sales. An initial sync or a
  recount is not a sale.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping

import msgspec

from cloverwoo_daemon.core.model import Binding, SyncLogRow

__all__ = ["DashboardRow", "rank", "sales_by_binding"]


class DashboardRow(msgspec.Struct, frozen=True, kw_only=True):
    binding_id: str
    sku: str
    name: str
    stock: int
    threshold: int
    state: str  # "out" | "low"
    sold: int  # units sold in the window
    per_day: float  # sold / window days
    locations: dict[str, int | None] = msgspec.field(default_factory=dict)


def sales_by_binding(rows: Iterable[SyncLogRow]) -> dict[str, int]:
    """Units sold per binding according to the merges in ``rows``."""
    sold: dict[str, int] = {}
    for r in rows:
        if r.event != "merge" or not r.binding_id:
            continue
        try:
            info = json.loads(r.detail) if r.detail else {}
        except ValueError:
            continue
        if not isinstance(info, dict) or info.get("initial"):
            continue
        write = info.get("write")
        if not isinstance(write, dict):
            continue
        units = 0
        woo = write.get("woo_delta")
        if isinstance(woo, int) and woo < 0:
            units += -woo
        clover = write.get("clover")
        if isinstance(clover, dict):
            total = sum(v for v in clover.values() if isinstance(v, int))
            if total < 0:
                units += -total
        if units:
            sold[r.binding_id] = sold.get(r.binding_id, 0) + units
    return sold


def _key(row: DashboardRow) -> tuple[int, float, float, str]:
    selling_out = 0 if row.stock <= 0 and row.sold > 0 else 1
    return (selling_out, row.stock / max(row.threshold, 1), -row.per_day, row.sku)


def rank(
    bindings: Iterable[Binding],
    threshold_of: Callable[[str], int],
    sales: Mapping[str, int],
    *,
    window_days: float = 1.0,
) -> list[DashboardRow]:
    """The low and out-of-stock rows, most urgent first."""
    out: list[DashboardRow] = []
    for b in bindings:
        if not b.tracked or b.excluded or b.base_woo is None:
            continue
        threshold = threshold_of(b.sku)
        stock = b.base_woo
        if stock > 0 and stock > threshold:
            continue
        sold = sales.get(b.binding_id, 0)
        out.append(DashboardRow(
            binding_id=b.binding_id, sku=b.sku, name=b.name, stock=stock, threshold=threshold,
            state="out" if stock <= 0 else "low", sold=sold, per_day=round(sold / max(window_days, 1e-9), 2),
            locations=dict(b.base_clover),
        ))
    out.sort(key=_key)
    return out
