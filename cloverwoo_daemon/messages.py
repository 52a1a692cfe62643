"""Typed messages: what enters the daemon, what actors tell each other, and the control protocol.

Every message is a frozen ``msgspec.Struct``; the unions are tagged so one
decoder handles a whole family and actors dispatch with ``match``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from cloverwoo_daemon.core.model import Binding, WooRef

# --------------------------------------------------------------------------
# Inbound events: what a webhook delivery or a poll found. Durable in the
# store's inbox before a webhook is acknowledged.


class CloverChange(msgspec.Struct, frozen=True, tag="clover", tag_field="source"):
    """One ``merchants[mId][]`` entry of a Clover delivery: ``objectId`` split on the first ``:``."""

    merchant_id: str
    kind: str  # "I", "O", "P", ... (event type key)
    object_id: str
    type: str  # CREATE | UPDATE | DELETE
    ts: int  # unix ms


class WooChange(msgspec.Struct, frozen=True, tag="woo", tag_field="source"):
    """A WooCommerce delivery reduced to what the sync needs: which resource changed."""

    topic: str  # product.updated, order.created, ...
    resource_id: int
    parent_id: int = 0  # for a variation
    refs: tuple[WooRef, ...] = ()  # line items of an order payload, when present
    date_modified_gmt: str = ""
    stock_quantity: int | None = None  # a product payload's stock at send time: lets the shard skip our own echo


InboundEvent = CloverChange | WooChange


class InboxEvent(msgspec.Struct, frozen=True):
    """An accepted event as stored: the unit that must never be lost."""

    event_id: int
    event: InboundEvent
    received_at: float


# --------------------------------------------------------------------------
# Actor commands


class MarkDirty(msgspec.Struct, frozen=True, tag="dirty"):
    """Look at these bindings again (fresh reads, then merge)."""

    binding_ids: tuple[str, ...]
    trigger: str  # webhook:clover, poll:woo, reconcile, ...
    event_ids: tuple[int, ...] = ()  # inbox events settled once these merges succeed
    received_at: float = 0.0  # monotonic time the trigger arrived, for latency
    woo_stock_hint: int | None = None  # the stock a Woo product webhook carried (None: unknown)
    # Where Clover's side can have changed, as far as the trigger tells: the locations a Clover webhook or
    # poll came from, () for a WooCommerce trigger (nothing changed at Clover), None when it does not say
    # (a reconcile, a recheck): every location. Lets an aggregate merge read only what may have moved.
    clover_at: tuple[str, ...] | None = None


class CatalogueUpdate(msgspec.Struct, frozen=True, tag="catalogue"):
    """New catalogue fields for a binding (or its removal), applied by its shard between merges."""

    binding_id: str
    binding: Binding | None  # None: unbind
    reason: str = ""


class Initialise(msgspec.Struct, frozen=True, tag="initialise"):
    """Recount one binding from catalogue-list reads, the given side being the truth (initial sync, import, push).

    The reads may be seconds old: that is safe, because the merge writes the
    difference as a delta to Woo and keeps whatever happened since as a
    pending delta against the new bases. No per-item read is made, so a
    5,000-product import costs its list pages and its batch writes only.
    That holds only while no merge committed after the lists were read: one
    that did already moved both sides, and the bases are newer than the reads.
    ``version`` (the binding's version before the reads) lets the shard see
    that and merge from fresh reads instead.
    """

    binding_id: str
    woo: int | None
    clover: dict[str, int | None]
    truth: str  # "clover" | "woo"
    job_id: str = ""
    version: int | None = None  # the binding's version before the list reads (None: not checked)


class SetStock(msgspec.Struct, frozen=True, tag="set_stock"):
    """Set one location's Clover count (a CSV import row); the merge that follows carries it to Woo."""

    binding_id: str
    location: str
    quantity: int


# -- exclusions


class SetExcluded(msgspec.Struct, frozen=True, tag="set_excluded"):
    """Exclude a binding from sync, or include it again; applied by its shard between merges (never racing one)."""

    binding_id: str
    excluded: bool



class RepairErased(msgspec.Struct, frozen=True, tag="repair_erased"):
    """Checkouts our own write erased, proven by their orders (``core.witness``): take them off both sides."""

    binding_id: str
    units: int
    evidence: str  # JSON: the write's window and the order that proves it


ShardCommand = MarkDirty | CatalogueUpdate | Initialise | SetStock | SetExcluded | RepairErased


class EventsSettled(msgspec.Struct, frozen=True, tag="settled"):
    """A shard finished (successfully) the merges an inbox event asked for."""

    event_ids: tuple[int, ...]
    binding_id: str


# --------------------------------------------------------------------------
# Control protocol (length-prefixed msgspec JSON over the unix socket)


class StatusRequest(msgspec.Struct, frozen=True, tag="status"):
    pass


class LogRequest(msgspec.Struct, frozen=True, tag="log"):
    sku: str | None = None
    level: str | None = None
    since: float | None = None  # unix seconds
    limit: int = 200
    after_id: int = 0  # for --follow


class ConflictsRequest(msgspec.Struct, frozen=True, tag="conflicts"):
    resolve: tuple[int, ...] = ()


class ReconcileRequest(msgspec.Struct, frozen=True, tag="reconcile"):
    dry_run: bool = False
    full: bool = False  # merge every binding from fresh reads instead of comparing list reads


class SyncRequest(msgspec.Struct, frozen=True, tag="sync"):
    """`cloverwoo sync import` (truth "clover") / `push` (truth "woo"); answered by a stream of progress."""

    truth: str
    dry_run: bool = False


class JobRequest(msgspec.Struct, frozen=True, tag="job"):
    """The running job's progress (streamed until it ends) or, when none runs, the last one of each kind."""

    follow: bool = False


class ExportCsvRequest(msgspec.Struct, frozen=True, tag="export_csv"):
    """The stock CSV (interface.md columns), as text; the CLI writes it where the admin asked."""


class ImportCsvRequest(msgspec.Struct, frozen=True, tag="import_csv"):
    """A stock CSV read by the CLI; checked whole, then applied row by row (``core.csv_rows``)."""

    text: str
    match: str = "sku"  # sku | id
    dry_run: bool = False


# -- thresholds, out-of-stock behaviour, the dashboard


class ThresholdRequest(msgspec.Struct, frozen=True, tag="threshold"):
    """`cloverwoo threshold SKU N|--clear`: a run-time low-stock threshold (None: back to the config's)."""

    sku: str
    threshold: int | None = None


class OutOfStockRequest(msgspec.Struct, frozen=True, tag="out_of_stock"):
    """`cloverwoo out-of-stock SKU hide|backorder|contact|--clear`: a run-time per-SKU behaviour."""

    sku: str
    action: str | None = None


class DashboardRequest(msgspec.Struct, frozen=True, tag="dashboard"):
    """Low and out-of-stock products, most urgent first; open conflicts; webhook health."""

    limit: int = 100


# -- exclusions


class ExcludeRequest(msgspec.Struct, frozen=True, tag="exclude"):
    """`cloverwoo exclude SKU...` (``excluded`` true) / `cloverwoo include SKU...` (false); persisted by SKU."""

    skus: tuple[str, ...]
    excluded: bool = True


# -- multi-location mode


class ModeRequest(msgspec.Struct, frozen=True, tag="mode"):
    """`cloverwoo mode aggregate|single|per-location`: persisted, then every binding recounted (progress streamed)."""

    mode: str


# -- Clover's webhook URL verification


class CloverVerifyRequest(msgspec.Struct, frozen=True, tag="clover_verify"):
    """`cloverwoo clover verify`: answer Clover's verification handshake for ``minutes`` (or stop: ``close``)."""

    minutes: float = 10.0
    close: bool = False



# -- requests larger than one frame (a 50,000-row CSV, a long exclusion list)


class UploadRequest(msgspec.Struct, frozen=True, tag="upload"):
    """The request that follows is too large for one frame: ``parts`` frames of its encoding, ``size`` bytes in all.

    Sent and reassembled by ``io.control`` itself; a handler never sees one.
    """

    size: int
    parts: int



ControlRequest = (
    StatusRequest | LogRequest | ConflictsRequest | ReconcileRequest | SyncRequest | JobRequest
    | ExportCsvRequest | ImportCsvRequest
    | ThresholdRequest | OutOfStockRequest | DashboardRequest
    | ExcludeRequest
    | ModeRequest
    | CloverVerifyRequest
    | UploadRequest
)


class ControlResponse(msgspec.Struct, frozen=True):
    ok: bool
    data: Any = None
    error: str | None = None


SyncLevel = Literal["info", "warning", "error"]
