"""Witnesses of a sale our own stock write may have erased: the orders feeds against each write's window.

Two writes leave a window in which a sale made by someone else is overwritten:

- Clover's absolute ``POST item_stocks`` (read, then write ``read + delta``):
  a POS sale or refund landing between the read and the write is gone from
  Clover's count, and so never reaches WooCommerce either.
- WooCommerce's ``inventory_delta`` without the WordPress companion: PHP
  loads the stock, adds the delta and saves the sum, so a checkout (or a
  restocking refund) landing inside that request is gone.

Both sides then agree on a figure too high (or too low, for a refund), and
no reconciliation can see it. The orders feeds can: an order for the item
whose time falls inside a write's window witnesses a possible loss.

Rules this module keeps:

- Pure: windows and orders in, :class:`Finding` values out. Times are unix
  seconds; a window runs from just before the read (or request) was sent to
  just after the answer, on the daemon's clock. Orders carry the store's
  clock: ``skew`` seconds of difference are allowed on both sides, and a
  WooCommerce date (whole seconds) covers its whole second.
- Recall first: every order that may have landed inside a window is
  reported. An order outside every window (more than ``skew`` away) is never
  reported, so a store without concurrent sales sees no flag at all.
- A WooCommerce loss is *certain*, and so repaired rather than only flagged,
  when exactly one stock-changing order of the product lies in the window
  widened by ``span`` seconds, no other write of ours to it lies there, and
  that order's own stock note (``Stock levels reduced: Name (12→10)``) says
  its decrement started from the very figure our write loaded (the stock our
  write returned less its delta): it ran after our load and before our save.
  Anything short of that is flagged, with the orders and units found.
- A Clover loss is never called certain: an order's times (created, paid,
  modified) do not say when Clover moved the stock, so a witnessed Clover
  write is flagged with the orders, and the merchant recounts. One thing is
  known from Clover's own clock: the item's stock ``modifiedTime`` as our
  read saw it. An order last modified no later than that moved the stock
  before our read (an order's stock change is made no later than its last
  modification), so its sale is in the figure we read: not reported. (Two
  sales of one item in one millisecond, our read between them, would hide
  the second: a register rings up one sale at a time.)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec

__all__ = [
    "CloverOrderSeen",
    "Finding",
    "MAX_EVENTS",
    "StockNote",
    "WooOrderSeen",
    "WriteWindow",
    "conflict_detail",
    "fold_witness",
    "parse_stock_note",
    "witness_clover",
    "witness_woo",
]

MAX_EVENTS = 50  # witnessed writes kept in one open conflict (the latest)

Side = Literal["clover", "woo"]


class WriteWindow(msgspec.Struct, frozen=True):
    """One stock write of ours and the window in which someone else's sale could be erased by it."""

    binding_id: str
    sku: str
    side: Side
    item: str  # the Clover item id, or the WooCommerce product (or variation) id
    started: float  # unix seconds, just before the read (Clover) or the request (Woo) was sent
    ended: float  # just after the write's answer
    delta: int
    location: str = ""  # the Clover location
    read: int | None = None  # Clover: the figure read; Woo: unknown (PHP read it)
    stock_modified_ms: int | None = None  # Clover: when the stock read had last changed (Clover's clock)
    returned: int | None = None  # Woo: the stock the write returned (what PHP loaded + delta)


class CloverOrderSeen(msgspec.Struct, frozen=True):
    """An order in Clover's feed: when it was last modified, and its units per item."""

    order_id: str
    modified_ms: int
    units: dict[str, float]  # item id -> units on its lines
    refunded: bool = False  # a refund (restock) is among its changes


class WooOrderSeen(msgspec.Struct, frozen=True):
    """An order in WooCommerce's feed, as far as stock goes."""

    order_id: int
    paid: int | None  # unix seconds (whole: WooCommerce dates have 1-second resolution)
    modified: int
    reduced: dict[int, int]  # product or variation id -> units its checkout took (``_reduced_stock``)
    refunded: bool = False  # it has refunds (which may have restocked)
    names: dict[int, str] = msgspec.field(default_factory=dict)  # id -> the line's name (to read its notes)


class StockNote(msgspec.Struct, frozen=True):
    name: str
    before: int
    after: int


class Finding(msgspec.Struct, frozen=True):
    """What the feeds say about one write: the orders that may have landed in its window."""

    window: WriteWindow
    orders: tuple[str, ...]  # order ids
    units: float  # the units those orders moved (sold positive, restocked negative); 0 when unknown
    certain: bool = False  # proven erased (WooCommerce only): repair by ``units``
    reason: str = ""
    order_units: dict[str, float] = msgspec.field(default_factory=dict)  # per order: the units it moved here

    def detail(self) -> dict[str, Any]:
        w = self.window
        return {"side": w.side, "location": w.location, "item": w.item, "write_delta": w.delta,
                "window": [round(w.started, 3), round(w.ended, 3)], "orders": list(self.orders),
                "order_units": self.order_units, "units": self.units, "certain": self.certain,
                "reason": self.reason}


def _overlaps(lo: float, hi: float, w: WriteWindow, skew: float) -> bool:
    return lo <= w.ended + skew and hi >= w.started - skew


def witness_clover(window: WriteWindow, orders: Iterable[CloverOrderSeen], *, skew: float = 1.0) -> Finding | None:
    """The Clover orders touching ``window``'s item whose last change may lie inside the window."""
    hits: dict[str, float] = {}
    for o in orders:
        n = o.units.get(window.item)
        if not n:
            continue
        if window.stock_modified_ms is not None and o.modified_ms <= window.stock_modified_ms:
            continue  # changed no later than the stock we read last changed: its sale is in our read
        t = o.modified_ms / 1000.0
        if not _overlaps(t, t, window, skew):
            continue
        hits[o.order_id] = -n if o.refunded else n
    if not hits:
        return None
    return Finding(window, tuple(hits), sum(hits.values()),
                   reason="a Clover order for this item changed inside the write's read-to-write window",
                   order_units=hits)


def witness_woo(
    window: WriteWindow,
    orders: Iterable[WooOrderSeen],
    *,
    our_windows: Sequence[WriteWindow] = (),
    notes: dict[int, Sequence[StockNote]] | None = None,
    skew: float = 1.0,
    span: float = 2.0,
) -> Finding | None:
    """The WooCommerce orders of ``window``'s product that may have landed inside our write's request.

    ``our_windows`` are our other writes to the same product; ``notes`` the
    stock notes of the orders found (order id -> notes), when read.
    """
    pid = int(window.item)
    hits: list[WooOrderSeen] = []
    near: list[WooOrderSeen] = []  # within the widened span: what makes a single witness certain
    for o in orders:
        moved = pid in o.reduced or (o.refunded and pid in o.names)
        if not moved:
            continue
        times = [t for t in (o.paid if pid in o.reduced else None, o.modified if o.refunded else None)
                 if t is not None]
        if any(_overlaps(t, t + 1, window, skew) for t in times):
            hits.append(o)
        if any(_overlaps(t, t + 1, window, skew + span) for t in times):
            near.append(o)
    if not hits:
        return None
    per_order = {str(o.order_id): float(-1 if o.refunded else o.reduced.get(pid, 0)) for o in hits}
    units = float(sum(o.reduced.get(pid, 0) for o in hits if not o.refunded))
    ids = tuple(str(o.order_id) for o in hits)
    reason = "a WooCommerce order for this product was paid or refunded inside the write's request"
    others = [w for w in our_windows if w is not window and w != window
              and _overlaps(w.started, w.ended, window, skew + span)]
    if len(near) == 1 and len(hits) == 1 and not others and not hits[0].refunded and window.returned is not None:
        o = hits[0]
        loaded = window.returned - window.delta
        for note in (notes or {}).get(o.order_id, ()):
            n = o.reduced.get(pid, 0)
            if note.before == loaded and note.after == loaded - n and n > 0 and o.names.get(pid) == note.name:
                return Finding(window, ids, float(n), certain=True,
                               reason=f"the checkout's stock note ({note.before}→{note.after}) starts from the figure "
                                      f"our write loaded ({loaded}): it ran inside our request, and was erased",
                               order_units=per_order)
    return Finding(window, ids, units, reason=reason, order_units=per_order)


_NOTE_ITEM = re.compile(r"(.+?) \((-?\d+)(?:&rarr;|→|->)(-?\d+)\)")


def parse_stock_note(text: str) -> list[StockNote]:
    """The items of a ``Stock levels reduced: Name (12→10), Other (3→2)`` order note (any language prefix)."""
    _, sep, rest = text.partition(":")
    if not sep:
        return []
    out = []
    for m in _NOTE_ITEM.finditer(rest):
        name = m.group(1).strip().lstrip(",").strip()
        out.append(StockNote(name, int(m.group(2)), int(m.group(3))))
    return out


def conflict_detail(finding: Finding, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The detail of a ``possible_lost_decrement`` conflict: one witnessed write, folded later."""
    event = finding.detail()
    return {**(extra or {}), "side": finding.window.side, "units": finding.units, "events": [event]}


def fold_witness(old: str, new: str) -> str:
    """An open conflict's detail with another witnessed write folded in: units add up, events listed."""
    try:
        before = json.loads(old)
        latest = json.loads(new)
    except ValueError:
        return old
    if not isinstance(before, dict) or not isinstance(latest, dict):
        return old
    events = [e for e in (before.get("events") or []) + (latest.get("events") or []) if isinstance(e, dict)]
    folded = {**before, **latest}
    units = [u for u in (before.get("units"), latest.get("units")) if isinstance(u, int | float) and math.isfinite(u)]
    folded["units"] = sum(units)
    folded["writes"] = int(before.get("writes", 1)) + int(latest.get("writes", 1))
    folded["events"] = events[-MAX_EVENTS:]
    return json.dumps(folded)
