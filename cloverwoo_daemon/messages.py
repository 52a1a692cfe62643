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


class CatalogueUpdate(msgspec.Struct, frozen=True, tag="catalogue"):
    """New catalogue fields for a binding (or its removal), applied by its shard between merges."""

    binding_id: str
    binding: Binding | None  # None: unbind
    reason: str = ""


ShardCommand = MarkDirty | CatalogueUpdate


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


ControlRequest = StatusRequest | LogRequest | ConflictsRequest | ReconcileRequest


class ControlResponse(msgspec.Struct, frozen=True):
    ok: bool
    data: Any = None
    error: str | None = None


SyncLevel = Literal["info", "warning", "error"]
