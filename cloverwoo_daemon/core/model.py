"""Value types shared by the pure core, the actors and the adapters.

Rules this module keeps:

- Every type is a frozen ``msgspec.Struct``: values, never mutable state.
- Quantities are whole units (``int``). Clover stores a float; the adapters
  round it at the edge, so the core never compares floats.
- The types held by the thousand (a binding and its parts, a catalogue
  entry) are ``gc=False``: they hold only strings, numbers and dicts of
  those, so they can never be part of a reference cycle, and the cyclic
  collector need not walk 50,000 bindings on every full collection (it also
  saves 16 bytes each).
- A quantity that is not known is ``None``, never ``0``: a Clover item with no
  stock record is *unknown* and nothing is ever written from it (peers.md,
  pain point 1, the "phantom zero").
"""

from __future__ import annotations

from typing import Literal

import msgspec

MatchedBy = Literal["sku", "name"]
Side = Literal["clover", "woo"]


class WooRef(msgspec.Struct, frozen=True, order=True, gc=False):
    """One WooCommerce stock unit: a simple product, or one variation."""

    product_id: int
    variation_id: int = 0  # 0 for a simple product

    @property
    def key(self) -> str:
        return f"woo:{self.product_id}:{self.variation_id}"


class Binding(msgspec.Struct, frozen=True, gc=False):
    """One Woo stock unit tied to the Clover items (one per location) holding its stock.

    ``base_woo`` and ``base_clover`` are the quantities both sides held right
    after the last successful sync (sync-model.md); ``None`` means "never
    synced", which the merge treats as an initial sync by the source of truth.
    """

    binding_id: str  # stable: WooRef.key
    sku: str
    name: str
    woo: WooRef
    clover_items: dict[str, str]  # location name -> Clover item id
    matched_by: MatchedBy = "sku"
    tracked: bool = True  # False when Woo manage_stock is off: never written
    excluded: bool = False  # admin opt-out: never written
    base_woo: int | None = None
    base_clover: dict[str, int | None] = msgspec.field(default_factory=dict)
    version: int = 0


class CloverItem(msgspec.Struct, frozen=True, gc=False):
    """What the catalogue read of one Clover location says about one item."""

    item_id: str
    name: str
    sku: str | None
    quantity: int | None  # None: no stock record (unknown, not zero)
    item_group_id: str | None = None
    modified_time: int = 0  # unix ms
    deleted: bool = False


class WooItem(msgspec.Struct, frozen=True, gc=False):
    """What the catalogue read of WooCommerce says about one stock unit."""

    ref: WooRef
    name: str  # for a variation: parent name + attribute values
    sku: str | None
    manage_stock: bool
    quantity: int | None
    status: str = "publish"  # "trash" unbinds
    type: str = "simple"  # simple | variable | variation


class WooStock(msgspec.Struct, frozen=True):
    """A fresh read of one Woo stock unit, as the merge needs it."""

    ref: WooRef
    manage_stock: bool
    quantity: int | None
    version_marker: str | None  # our product meta marker (the last write id sent with a delta), if present
    sku: str | None = None
    status: str = "publish"  # "trash": the merchant deleted it; the binding is dropped


class WooWriteResult(msgspec.Struct, frozen=True):
    """What Woo answered to one stock write (a delta)."""

    ref: WooRef
    ok: bool
    quantity: int | None = None  # stock as returned by the write
    error: str | None = None
    unknown: bool = False  # not ok, and it may have been applied all the same (sent, no answer said)
    may_still_land: bool = False  # unknown, and the request may still be running on the store


class StockChange(msgspec.Struct, frozen=True):
    """One stock change for the WordPress companion: a delta made exactly-once by its write id.

    The companion records ``write_id`` in the transaction that applies the
    delta, so sending the same change again (after a timeout, a 503, a crash)
    never applies it twice. An id must therefore name one write of one
    binding and never be reused: 1-64 characters of ``A-Za-z0-9._:-``.
    """

    write_id: str
    ref: WooRef
    delta: int  # non-zero whole units


class StockChangeResult(msgspec.Struct, frozen=True):
    """The companion's answer for one ``StockChange``.

    ``new`` is False when the write id had been applied before: nothing was
    changed now, and ``quantity`` repeats the stock that first application
    left. ``quantity`` is the stock right after this change (other sales
    landing afterwards are not in it), on ``stock_product_id`` (a variation's
    parent when the parent manages its stock).
    """

    write_id: str
    ref: WooRef
    ok: bool
    new: bool = False
    quantity: int | None = None
    stock_product_id: int | None = None
    code: str = ""  # the refusal's code when not ok, e.g. cloverwoo_unknown_product
    error: str | None = None


class CompanionInfo(msgspec.Struct, frozen=True):
    """What the companion's status route reports."""

    version: str
    woocommerce: str
    sync_webhooks: bool | None  # None: another plugin's filter could not be asked
    write_ids_kept_days: int  # a change older than this may not be resent (its id may be gone)
    transactional: bool  # False: the meta table is not InnoDB, so a crash can lose a write id
    max_changes: int = 100


class SyncLogRow(msgspec.Struct, frozen=True):
    """One row of the sync log: every merge, every failure with its error."""

    ts: float  # unix seconds
    level: str  # info | warning | error
    event: str  # merge, write_failed, unbound, conflict, ...
    binding_id: str = ""
    sku: str = ""
    location: str = ""
    trigger: str = ""
    detail: str = ""  # JSON text: reads, writes, result
    error: str = ""
    latency_ms: float | None = None
    id: int = 0  # assigned by the store


class Conflict(msgspec.Struct, frozen=True):
    """A flagged oversell or conflict, open until an admin resolves it."""

    binding_id: str
    sku: str
    kind: str  # oversell | both_recounted | possible_lost_decrement | ambiguous_write
    detail: str
    created_at: float
    id: int = 0
    resolved_at: float | None = None
