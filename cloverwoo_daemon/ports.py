"""The interfaces the actors use, as ``typing.Protocol`` classes.

Actors never import ``io``: they are handed objects that satisfy these
protocols by ``app.py`` (production) or by tests. That keeps the one seam
through which the outside world enters the daemon narrow and visible.

Error handling: every remote call raises a subclass of ``RemoteError`` for a
failure that is worth retrying later (after the adapter's own bounded retries
ran out), and ``PermanentError`` for a request the remote refused for good
(unknown id, bad permission). Actors catch these two and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from cloverwoo_daemon.core.alerts import Alert, ArmState, Email, OutboxEmail
from cloverwoo_daemon.core.model import (
    Binding,
    CloverItem,
    CompanionInfo,
    Conflict,
    StockChange,
    StockChangeResult,
    SyncLogRow,
    WooItem,
    WooRef,
    WooStock,
    WooWriteResult,
)
from cloverwoo_daemon.core.stock_policy import Change, Presentation
from cloverwoo_daemon.core.witness import CloverOrderSeen, StockNote, WooOrderSeen


class RemoteError(Exception):
    """A remote call failed after the adapter's retries; try again later."""


class PermanentError(RemoteError):
    """The remote refused the request itself (4xx other than 429); retrying will not help."""


class NotFound(PermanentError):
    """The object does not exist (deleted Clover item, trashed Woo product)."""


class WriteOutcomeUnknown(RemoteError):
    """A write may or may not have been applied: it was sent and no answer said which.

    ``may_still_land`` is True when the request may still be running on the
    store (a timeout, a connection reset, a gateway's 504): PHP does not stop
    a request whose client went away, so it can apply the write later. False
    when the store answered (another 5xx, a 2xx that is not JSON): the request
    ended, one way or the other.
    """

    def __init__(self, message: str, *, may_still_land: bool = True) -> None:
        super().__init__(message)
        self.may_still_land = may_still_land


class CompanionMissing(PermanentError):
    """The WordPress companion is not (or no longer) installed: its route answers 404 ``rest_no_route``."""


class CloverPort(Protocol):
    """One Clover location (= one merchant, one token)."""

    location: str
    merchant_id: str

    async def get_stock(self, item_id: str) -> int | None:
        """Fresh stock of one item (``GET item_stocks/{id}``); None when it has no stock record."""
        ...

    async def set_stock(self, item_id: str, quantity: int) -> int:
        """Absolute write (``POST item_stocks/{id}``); returns the quantity Clover reports."""
        ...

    async def read_then_write(
        self, item_id: str, delta: int, before_write: Callable[[int], Awaitable[None]]
    ) -> tuple[int, int, int | None] | None:
        """Fresh read, ``before_write(target)``, absolute write of read + delta, admitted as one unit.

        Returns (read, written, the stock's modifiedTime as read, unix ms, when Clover gave it); None when
        the item has no stock record.
        """
        ...

    async def list_items(self, *, modified_since_ms: int | None = None) -> list[CloverItem]:
        """All items with ``expand=itemStock``, paged at 1000; filtered by modifiedTime when given."""
        ...

    async def changed_item_ids_from_orders(self, *, since_ms: int) -> tuple[set[str], int]:
        """Item ids in orders modified since ``since_ms``; returns (ids, newest modifiedTime seen)."""
        ...

    async def changed_orders(self, *, since_ms: int) -> dict[str, tuple[int, set[str]]]:
        """Orders modified since ``since_ms``: order id -> (its modifiedTime, the item ids on its lines).

        Per order, so a poll whose window overlaps the last one can tell an order it already saw.
        """
        ...

    async def order_item_ids(self, order_id: str) -> set[str]:
        """Item ids in the line items of one order (for an ``O:`` webhook)."""
        ...

    async def order_lines(self, *, since_ms: int) -> list[CloverOrderSeen]:
        """Orders modified since ``since_ms`` with their units per item (the witness of our writes)."""
        ...

    async def aclose(self) -> None: ...


# -- a Woo stock write: (ref, inventory_delta, marker[, extra meta]). The marker is the write id recorded in
# product meta in the same request (None: the marker is left alone). Extra meta is sent in the same request
# (``_cloverwoo_location_stock`` in per-location mode). A delta of 0 with meta writes the meta only; a
# meta value of None removes the key (the REST API's ``update_meta_data(key, null)``).
StockWrite = tuple[WooRef, int, str | None] | tuple[WooRef, int, str | None, dict[str, str | None]]


class WooPort(Protocol):
    """The WooCommerce store."""

    async def get_stock(self, ref: WooRef) -> WooStock:
        """Fresh read of one product or variation, with our version marker."""
        ...

    async def apply_deltas(
        self, changes: Sequence[StockWrite]  # was list[tuple[WooRef, int, int]]
    ) -> list[WooWriteResult]:
        """Apply ``(ref, inventory_delta, marker[, meta])`` changes; batches of ≤ 100 per call.

        Each change writes ``inventory_delta`` and the product meta marker
        ``_cloverwoo_version`` (the intent's write id) in the same request. Per-item errors come back
        as ``ok=False`` results, never as an exception.
        """
        ...

    async def companion(self) -> CompanionInfo | None:
        """The WordPress companion's status; None when it is not installed."""
        ...

    async def apply_changes(self, changes: Sequence[StockChange]) -> list[StockChangeResult]:
        """Apply deltas through the companion, exactly once each by write id; results in input order.

        Safe to call again with the same changes at any time (a change already
        applied answers ``new=False`` with the stock it left), so every failure
        is answered by resending: ``RemoteError`` means some or none were
        applied; ``CompanionMissing`` that the companion is gone (fall back to
        ``apply_deltas`` after re-reading). Per-item refusals (unknown product,
        stock not managed, a write id reused for another change) come back as
        ``ok=False`` results with a ``code``.
        """
        ...

    async def list_items(self) -> list[WooItem]:
        """Every product and variation (paged, 100 per page)."""
        ...

    async def changed_refs(self, *, modified_after: str) -> tuple[set[WooRef], str]:
        """Refs of products and variations modified after the ISO GMT cursor; returns (refs, new cursor)."""
        ...

    async def changed_items(self, *, modified_after: str) -> tuple[dict[WooRef, str], str]:
        """Like ``changed_refs``, with a change stamp per ref (date and stock) so a poller skips what it saw."""
        ...

    async def order_refs(self, order_id: int) -> set[WooRef]:
        """Refs in the line items of one order."""
        ...

    async def orders_since(self, *, modified_after: str) -> list[WooOrderSeen]:
        """Orders modified after the ISO GMT cursor: paid when, what each checkout took (the witness)."""
        ...

    async def stock_notes(self, order_id: int) -> list[StockNote]:
        """What an order's notes say it did to stock (``Name (12→10)``)."""
        ...

    async def aclose(self) -> None: ...


class StorePort(Protocol):
    """The durable state the actors need (implemented by ``io.store.Store``)."""

    async def accept_events(self, items: list[tuple[str, bytes]]) -> list[tuple[int, bool]]: ...

    async def pending_events(self) -> list[tuple[int, bytes, float]]: ...

    async def settle_events(self, ids: list[int]) -> None: ...

    async def load_bindings(self) -> list[Binding]: ...

    async def put_bindings(self, bindings: list[Binding]) -> None: ...

    async def delete_binding(self, binding_id: str) -> None: ...

    async def save_intent(self, binding_id: str, intent: bytes) -> None: ...

    async def load_intents(self) -> dict[str, bytes]: ...

    async def commit_binding(
        self,
        binding: Binding,
        *,
        intent: bytes | None | Literal["clear"] = None,
        log: SyncLogRow | None = None,
        conflict: Conflict | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        """One merge step, atomically; ``after_commit`` runs once it is durable, even if the caller was
        cancelled meanwhile (so memory never lags behind the file)."""
        ...

    async def append_log(self, rows: list[SyncLogRow]) -> None: ...

    async def query_log(
        self,
        *,
        sku: str | None = None,
        level: str | None = None,
        since: float | None = None,
        after_id: int = 0,
        limit: int = 200,
        binding_ids: Sequence[str] | None = None,
    ) -> list[SyncLogRow]: ...

    async def add_conflict(self, conflict: Conflict, *, fold: Callable[[str, str], str] | None = None) -> int:
        """An open conflict of the same binding and kind is returned instead (its detail folded with ``fold``)."""
        ...

    async def list_conflicts(self, include_resolved: bool = False) -> list[Conflict]: ...

    async def resolve_conflicts(self, ids: list[int]) -> int: ...

    async def last_synced(self) -> dict[str, float]: ...

    async def get_kv(self, key: str) -> str | None: ...

    async def set_kv(self, key: str, value: str) -> None: ...


class Overloaded(Exception):
    """The actors' queues are full: the webhook server answers 503 with ``Retry-After``."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(f"overloaded, retry after {retry_after}s")
        self.retry_after = retry_after


# --------------------------------------------------------------------------
# Alerts: the ports of actors/alerts.py. The store half is
# implemented by ``io.store.Store``, the mailer by ``io.smtp.SmtpMailer``.


class AlertStore(Protocol):
    """What the alert actor keeps durable: arm state, thresholds, recorded alerts, the outbox."""

    async def load_arm_states(self) -> dict[str, ArmState]: ...

    async def save_arm_state(self, binding_id: str, state: ArmState) -> None: ...

    async def record_alert(self, alert: Alert, *, arm: ArmState | None = None) -> bool:
        """False (and nothing recorded) when an alert with the same key exists."""
        ...

    async def pending_alerts(self) -> list[Alert]: ...

    async def queue_email(self, email: Email, recipients: Sequence[str], *, delivered: bool = False) -> OutboxEmail:
        ...

    async def unsent_emails(self) -> list[OutboxEmail]: ...

    async def mark_email_sent(self, email_id: int) -> None: ...

    async def mark_email_failed(self, email_id: int, error: str) -> None: ...

    async def recent_emails(self, since: float) -> list[tuple[str, float]]: ...

    async def alert_thresholds(self) -> dict[str, int]: ...

    async def set_alert_threshold(self, sku: str, threshold: int | None) -> None: ...

    async def last_sync_error(self, binding_id: str) -> str | None: ...

    async def list_conflicts(self, include_resolved: bool = False) -> list[Conflict]: ...


class Mailer(Protocol):
    """Hands one email to the mail server.

    Error handling: ``RemoteError`` when the server could not be reached or
    answered 4xx (try again later), ``PermanentError`` when it refused the
    message or the login for good (5xx). Either way the email stays in the
    outbox; the actor retries with backoff.
    """

    async def send(self, email: OutboxEmail) -> None: ...


# --------------------------------------------------------------------------
# Out-of-stock behaviour and webhook health: implemented by ``io.woocommerce.WooClient``.


class ShopPresentationPort(Protocol):
    """The product fields the out-of-stock behaviour reads and writes (never stock)."""

    async def get_presentation(self, ref: WooRef) -> Presentation: ...

    async def set_presentation(self, ref: WooRef, change: Change) -> Presentation: ...


class WebhookInfo(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def delivery_url(self) -> str: ...

    @property
    def status(self) -> str: ...


class WebhookAdminPort(Protocol):
    """WooCommerce's webhooks as the health check sees them."""

    async def list_webhooks(self, status: str = "all") -> Sequence[WebhookInfo]: ...

    async def set_webhook_status(self, webhook_id: int, status: str) -> WebhookInfo: ...
