"""The witness's rules (core/witness.py): which orders may have landed inside one of our writes' windows, and
when a WooCommerce loss is proven."""

from __future__ import annotations

import json

import pytest

from cloverwoo_daemon.core.witness import (
    MAX_EVENTS,
    CloverOrderSeen,
    StockNote,
    WooOrderSeen,
    WriteWindow,
    conflict_detail,
    fold_witness,
    parse_stock_note,
    witness_clover,
    witness_woo,
)

T = 1_800_000_000.0  # a write at this unix time, 200 ms long


def clover_window(**kw: object) -> WriteWindow:
    return WriteWindow(**{"binding_id": "woo:1:0", "sku": "MUG", "side": "clover", "item": "ITEM1",  # type: ignore[arg-type]
                          "started": T, "ended": T + 0.2, "delta": -1, "location": "downtown", "read": 10, **kw})


def woo_window(**kw: object) -> WriteWindow:
    return WriteWindow(**{"binding_id": "woo:7:0", "sku": "MUG", "side": "woo", "item": "7",  # type: ignore[arg-type]
                          "started": T, "ended": T + 0.2, "delta": -2, "returned": 8, **kw})


def pos(order: str, at: float, units: float = 1, item: str = "ITEM1", refunded: bool = False) -> CloverOrderSeen:
    return CloverOrderSeen(order, int(at * 1000), {item: units}, refunded)


def checkout(order: int, paid: float, qty: int = 1, pid: int = 7, name: str = "Mug") -> WooOrderSeen:
    return WooOrderSeen(order, int(paid), int(paid), {pid: qty}, names={pid: name})


@pytest.mark.parametrize(("at", "seen"), [
    (T + 0.1, True),  # inside the window
    (T - 0.9, True), (T + 1.1, True),  # within the allowed clock difference
    (T - 1.1, False), (T + 1.3, False),  # further away: never reported
])
def test_a_clover_order_is_reported_only_near_the_window(at: float, seen: bool) -> None:
    f = witness_clover(clover_window(), [pos("O1", at, units=2)], skew=1.0)
    assert (f is not None) == seen
    if f is not None:
        assert f.orders == ("O1",) and f.units == 2 and not f.certain  # Clover is never called proven


def test_clover_orders_for_other_items_are_not_reported_and_refunds_count_negative() -> None:
    assert witness_clover(clover_window(), [pos("O1", T, item="OTHER")]) is None
    f = witness_clover(clover_window(), [pos("O1", T, units=3), pos("O2", T + 0.1, units=1, refunded=True)])
    assert f is not None and f.orders == ("O1", "O2") and f.units == 2


def test_a_lone_checkout_whose_note_starts_from_what_our_write_loaded_is_proven() -> None:
    """Our write returned 8 after -2: PHP loaded 10. The checkout's SQL went 10 -> 9: inside our request."""
    order = checkout(501, T, qty=1)
    notes = {501: [StockNote("Mug", 10, 9)]}
    f = witness_woo(woo_window(), [order], notes=notes)
    assert f is not None and f.certain and f.units == 1 and f.orders == ("501",)
    assert witness_woo(woo_window(), [order]).certain is False  # type: ignore[union-attr]  # no note read: flagged


@pytest.mark.parametrize("why", ["note from elsewhere", "another order near", "another write of ours near",
                                 "refund", "another product's note"])
def test_anything_short_of_proof_is_flagged_not_repaired(why: str) -> None:
    order = checkout(501, T, qty=1)
    notes = {501: [StockNote("Mug", 10, 9)]}
    orders = [order]
    ours: list[WriteWindow] = []
    if why == "note from elsewhere":
        notes = {501: [StockNote("Mug", 11, 10)]}  # it saw 11: before our load
    elif why == "another order near":
        orders.append(checkout(502, T + 2.5))
    elif why == "another write of ours near":
        ours = [woo_window(started=T + 1.5, ended=T + 1.7)]
    elif why == "refund":
        orders = [WooOrderSeen(501, None, int(T), {}, refunded=True, names={7: "Mug"})]
    else:
        notes = {501: [StockNote("Cup", 10, 9)]}
    f = witness_woo(woo_window(), orders, our_windows=ours, notes=notes)
    assert f is not None and not f.certain


def test_woo_dates_cover_their_whole_second() -> None:
    """date_paid_gmt 12:00:05 is any time in that second: a write at 12:00:06.9 with 1 s of skew still sees it."""
    w = woo_window(started=T + 6.7, ended=T + 6.9)
    assert witness_woo(w, [checkout(1, T + 5)], skew=1.0) is not None
    assert witness_woo(w, [checkout(1, T + 4)], skew=1.0) is None
    assert witness_woo(woo_window(), [checkout(1, T, pid=8)]) is None  # another product


@pytest.mark.parametrize(("text", "expected"), [
    ("Stock levels reduced: Witness probe (12&rarr;10)", [StockNote("Witness probe", 12, 10)]),
    ("Stock levels reduced: Mug (3→1), Tee - S (0&rarr;-2)", [StockNote("Mug", 3, 1), StockNote("Tee - S", 0, -2)]),
    ("Niveaux de stock réduits : Tasse (5&rarr;4)", [StockNote("Tasse", 5, 4)]),
    ("Payment complete.", []),
    ("Order status changed from Pending payment to Processing.", []),
])
def test_stock_notes_are_read_in_any_language(text: str, expected: list[StockNote]) -> None:
    assert parse_stock_note(text) == expected


def test_folded_flags_add_their_units_and_keep_the_latest_events() -> None:
    f = witness_clover(clover_window(), [pos("O1", T, units=2)])
    assert f is not None
    detail = json.dumps(conflict_detail(f, {"sku": "MUG"}))
    for _ in range(MAX_EVENTS + 5):
        detail = fold_witness(detail, json.dumps(conflict_detail(f, {"sku": "MUG"})))
    d = json.loads(detail)
    assert d["units"] == 2 * (MAX_EVENTS + 6) and d["writes"] == MAX_EVENTS + 6
    assert len(d["events"]) == MAX_EVENTS and d["events"][0]["orders"] == ["O1"]
    assert fold_witness("not json", detail) == "not json"


def test_an_order_changed_before_the_stock_we_read_last_changed_is_in_our_read() -> None:
    """Clover's own clock: the read saw the stock as last changed at T + 0.05 (that sale); it is in the read."""
    w = clover_window(stock_modified_ms=int((T + 0.05) * 1000))
    assert witness_clover(w, [pos("O1", T - 0.3)]) is None
    assert witness_clover(w, [pos("O1", T + 0.05)]) is None  # the sale that made that change: in the read
    assert witness_clover(w, [pos("O1", T + 0.1)]) is not None
