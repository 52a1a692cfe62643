"""The dashboard's ranking and the sales velocity it reads from the sync log (pure)."""

from __future__ import annotations

import json

from cloverwoo_daemon.core.dashboard import rank, sales_by_binding
from cloverwoo_daemon.core.model import Binding, SyncLogRow, WooRef


def b(i: int, stock: int | None, *, tracked: bool = True) -> Binding:
    return Binding(f"woo:{i}:0", f"SKU-{i}", f"P{i}", WooRef(i), {"a": f"I{i}"}, tracked=tracked, base_woo=stock,
                   base_clover={"a": stock})


def merge(bid: str, woo_delta: int, clover: dict[str, int], **extra: object) -> SyncLogRow:
    detail = {"write": {"woo_delta": woo_delta, "clover": clover}, **extra}
    return SyncLogRow(ts=0.0, level="info", event="merge", binding_id=bid, detail=json.dumps(detail))


def test_sales_count_units_taken_from_either_side_but_not_restocks_or_initial_syncs() -> None:
    rows = [
        merge("woo:1:0", -3, {}),  # a Clover sale carried to Woo
        merge("woo:1:0", 0, {"a": -2}),  # an online sale carried to Clover
        merge("woo:1:0", 10, {}),  # a restock
        merge("woo:2:0", -50, {}, initial=True),
        SyncLogRow(ts=0.0, level="error", event="merge_failed", binding_id="woo:2:0", detail="not json"),
    ]
    assert sales_by_binding(rows) == {"woo:1:0": 5}


def test_rank_out_and_selling_first_then_stock_over_threshold_then_velocity() -> None:
    bindings = [b(1, 4), b(2, 0), b(3, 0), b(4, 2), b(5, 2), b(6, 50), b(7, 0, tracked=False), b(8, None)]
    thresholds = {"SKU-4": 10}
    rows = rank(bindings, lambda sku: thresholds.get(sku, 5), {"woo:3:0": 4, "woo:4:0": 1, "woo:5:0": 9},
                window_days=2.0)
    assert [r.sku for r in rows] == ["SKU-3", "SKU-2", "SKU-4", "SKU-5", "SKU-1"]
    assert rows[0].state == "out" and rows[0].per_day == 2.0
    assert rows[-1].state == "low"


def test_out_of_stock_is_listed_even_with_low_stock_alerts_off() -> None:
    rows = rank([b(1, 0), b(2, 3)], lambda sku: -1, {})
    assert [r.sku for r in rows] == ["SKU-1"]
