"""A simulated Clover REST API and webhook sender, faithful to ../reference/clover-api.md.

Rules this simulator keeps (each one is something the daemon must cope with
against the real Clover, so the sim does it too):

- Every REST route lives under ``/v3/merchants/{mId}`` and needs
  ``Authorization: Bearer <token>`` of *that* merchant; anything else is 401.
  Errors are JSON ``{"message": ...}``.
- Rate limits as documented (§3): per token 16 req/s and 5 in flight, per
  app (all merchants together) 50 req/s and 10 in flight. A request over a
  limit gets 429 with the header naming the limit (``X-RateLimit-tokenLimit``,
  ``-crossTokenLimit``, ``-tokenConcurrentLimit``,
  ``-crossTokenConcurrentLimit``; the value is the limit) and an integer
  ``retry-after``. Coming back before ``retry-after`` lengthens the penalty
  ("the waiting period increases") by ``RateLimits.early_retry_penalty``.
  Rates are token buckets whose capacity is one second's worth (the docs give
  no burst; this is the natural reading of "16 requests per second").
- Stock is ``itemStock.quantity``, a float that may be absent (no stock
  record: GET ``item_stocks/{id}`` is 404). ``POST item_stocks/{id}`` sets it
  absolutely and answers ``stockCount`` = quantity rounded half up. The
  deprecated top-level ``item.stockCount`` is always 0, as third parties
  report it "often" is: a client that reads it gets caught here.
- Lists are ``{"elements": [...], "href": ...}``, ``limit`` defaults to 100
  and is clamped to 1000, ``offset`` pages. Expanded nested collections
  (``lineItems`` on an order) are cut to their first 100 elements (§2.3);
  ``orders/{id}/line_items`` pages them.
- A POS sale of N units of a FIXED-price item is N line items (§6.1), the
  order is PAID; with ``updateStock`` on, stock drops, ``itemStock`` and the
  item's ``modifiedTime`` move, and webhooks ``O:<order> CREATE`` and
  ``I:<item> UPDATE`` go out. A refund restocks (configurable: real
  behaviour is undocumented) and sends ``O: UPDATE`` + ``I: UPDATE``.
- Webhooks are batched (events within ``webhook_batch_window`` share one
  POST), carry ``X-Clover-Auth``, and honour ``Faults`` (drop, delay,
  duplicate, off). Nothing is retried, as Clover promises nothing.
- Two webhook styles (``webhook_style``), because Clover is splitting its
  inventory topic (its page "Upcoming changes to inventory webhooks",
  updated 2026-09-28; the reference's section 1.6):
  ``"legacy"``: ``I:<item> UPDATE`` for every item change, stock and
  availability included, IDs only. ``"split"``: ``I`` only for the item's
  own fields (created, deleted); a stock change sends ``IS:<item> UPDATE``
  and an availability change ``IA:<item> UPDATE``, each with a "rich"
  payload. Clover shows only the start of that payload (``{"objectId":
  "IS:UUID_OF_ITEM", "type"...``), so the rest is this simulator's
  assumption: the entry carries ``ts`` like every other entry (drop it with
  ``new_events_ts=False``: whether Clover sends it is not known) and the
  object it is about, as the REST API shows it: ``"itemStock"`` (the
  ``GET item_stocks/{id}`` object) for ``IS``, ``"item"`` (``id``,
  ``available``, ``autoManage``) for ``IA``. Which changes fire ``IS``:
  Clover lists manual edits, ``POST item_stocks`` and stock falling below
  the merchant's threshold; whether a sale's decrement does is not stated:
  here it does (the daemon also learns of a sale from ``O:`` and the polls).
  ``subscribed`` (event type keys) stands for the app's webhook
  subscriptions: a key not in it is never sent.
- Everything the tests and benchmarks need to *prove* something is counted:
  requests per merchant and endpoint, 429s, the highest arrival rate over
  any one-second window and the highest concurrency, per token and per app;
  and every ``POST item_stocks/{id}`` that replaced a change made after the
  last ``GET item_stocks/{id}`` of that item (``stock_overwrites``): the
  read-then-write race that Clover's absolute writes leave open. Every applied
  stock write is kept too (``stock_writes``: item, quantity, time).

- OAuth v2 (§4.2; the ``OAuthSim`` block at the end of this module, reached
  as ``CloverSim.oauth``): ``/oauth/v2/authorize``, ``/oauth/v2/token`` and
  ``/oauth/v2/refresh`` issue expiring access tokens and single-use refresh
  tokens, with a cap on active refresh tokens per merchant; an expired
  access token is 401 like any unknown one. A permission the merchant did not
  grant is 401 too (Clover does not answer 403).

Simulation actions (``add_item``, ``pos_sale``, ``refund``, ``adjust``,
``delete_item``, ``stock``) are plain methods; the same actions are served
unauthenticated as JSON under ``/_sim/`` for ``cloverwoo simulate``.
"""

from __future__ import annotations

import collections
import hmac
import math
import random
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from cloverwoo_daemon.core.ratelimit import TokenBucket
from cloverwoo_daemon.sim.common import FaultInjector, Faults, serve_app

NESTED_LIMIT = 100  # expanded collections are truncated to this many elements
WEBHOOK_STYLES = ("legacy", "split")  # before and after Clover split its inventory webhooks (module docstring)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

ITEM_FILTER_FIELDS = ("modifiedTime", "id", "sku", "deleted", "name", "hidden", "itemGroup.id", "itemStock.quantity")
ORDER_FILTER_FIELDS = ("modifiedTime", "createdTime", "clientCreatedTime", "id", "state")
GROUP_FILTER_FIELDS = ("modifiedTime", "name", "id")
_ITEM_FIELD_ATTRS = {  # filter field -> SimItem attribute
    "modifiedTime": "modified", "id": "id", "sku": "sku", "deleted": "deleted", "name": "name",
    "hidden": "hidden", "itemGroup.id": "group_id", "itemStock.quantity": "quantity",
}

_FILTER = re.compile(r"^([A-Za-z][A-Za-z.]*)(>=|<=|!=|=|>|<)(.*)$")
_ID_ALPHABET = string.ascii_uppercase + string.digits


def round_half_up(q: float) -> int:
    """Clover's ``stockCount``: the quantity "rounded to the nearest whole number" (160.5 -> 161)."""
    return math.floor(q + 0.5)


# --------------------------------------------------------------------------
# State


@dataclass
class SimItem:
    id: str
    name: str
    sku: str | None
    price: int  # cents
    price_type: str = "FIXED"
    code: str | None = None
    quantity: float | None = None  # None: no stock record
    stock_modified: int = 0
    modified: int = 0
    created: int = 0
    group_id: str | None = None
    hidden: bool = False
    auto_manage: bool = False
    deleted: bool = False
    unavailable: bool = False  # marked unavailable by the merchant (auto-managed stock at 0 is unavailable too)


@dataclass
class SimItemGroup:
    id: str
    name: str
    attributes: dict[str, list[str]]  # attribute name -> option names
    item_ids: list[str] = field(default_factory=list)
    modified: int = 0


@dataclass
class SimOrder:
    id: str
    line_items: list[dict[str, Any]]
    total: int
    payment_state: str  # OPEN | PAID | REFUNDED ...
    created: int
    modified: int
    payments: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    state: str = "locked"


@dataclass
class SimMerchant:
    id: str
    name: str
    token: str
    track_stock: bool = True
    update_stock: bool = True
    items: dict[str, SimItem] = field(default_factory=dict)
    item_groups: dict[str, SimItemGroup] = field(default_factory=dict)
    orders: dict[str, SimOrder] = field(default_factory=dict)


@dataclass
class RateLimits:
    """Clover's documented limits (§3); mutable so tests can tighten them at run time."""

    token_rate: float = 16.0
    token_burst: float = 16.0
    token_concurrent: int = 5
    app_rate: float = 50.0
    app_burst: float = 50.0
    app_concurrent: int = 10
    early_retry_penalty: float = 1.0  # seconds added when a client comes back before retry-after
    rate_retry_after: bool = True  # False: rate (not concurrency) 429s omit retry-after, as older docs allow
    enabled: bool = True


class LimitStats(msgspec.Struct, frozen=True):
    """What one limit scope (a token, or the app) has seen."""

    requests: int  # authenticated requests that arrived
    rejected_429: int
    max_concurrency: int  # most requests in the server at once (rejected ones included)
    max_rate_1s: int  # most arrivals within any one-second window


class StockOverwrite(msgspec.Struct, frozen=True):
    """An absolute stock write that replaced what changed since the item's stock was last read.

    ``lost`` is that change in units (a sale inside the read-to-write window: negative), gone from
    Clover's count because the write was computed from the older read.
    """

    merchant_id: str
    item_id: str
    read: float  # what the last GET item_stocks/{id} answered
    replaced: float  # what the item held when the write landed
    written: float
    lost: float
    window: float  # seconds from that read to this write (trio clock)
    at: float = 0.0  # unix time of the write (matched against the daemon's flags)


class StockWrite(msgspec.Struct, frozen=True):
    """One ``POST item_stocks/{id}`` the sim applied: which item, what it wrote, and when (unix seconds).

    Kept so a test can say which items were written and when, not only how many
    writes reached the merchant (``count``): no write loop, nothing written for an
    item that must be left alone.
    """

    merchant_id: str
    item_id: str
    quantity: float
    at: float


class WebhookAttempt(msgspec.Struct, frozen=True):
    """One webhook the sim sent, or meant to send."""

    outcome: str  # sent | failed | dropped | disabled | no_url
    payload: dict[str, Any]
    status: int | None = None
    error: str | None = None
    at: float = 0.0  # trio time


class _Scope:
    """Limit state for one token, or for the whole app."""

    def __init__(self) -> None:
        self.bucket: TokenBucket | None = None
        self.admitted = 0  # in the server now, past the limit checks
        self.present = 0  # in the server now, all arrivals
        self.requests = 0
        self.rejected = 0
        self.max_concurrency = 0
        self.arrivals: collections.deque[float] = collections.deque()
        self.max_rate = 0
        self.penalty_until = -math.inf
        self.penalty_header = ""
        self.penalty_limit = ""

    def bucket_for(self, rate: float, burst: float) -> TokenBucket:
        if self.bucket is None or self.bucket.rate != rate or self.bucket.burst != burst:
            self.bucket = TokenBucket(rate, burst)
        return self.bucket

    def arrive(self, now: float) -> None:
        self.requests += 1
        self.present += 1
        self.max_concurrency = max(self.max_concurrency, self.present)
        self.arrivals.append(now)
        while self.arrivals and self.arrivals[0] < now - 1.0:
            self.arrivals.popleft()
        self.max_rate = max(self.max_rate, len(self.arrivals))

    def stats(self) -> LimitStats:
        return LimitStats(
            requests=self.requests,
            rejected_429=self.rejected,
            max_concurrency=self.max_concurrency,
            max_rate_1s=self.max_rate,
        )


class SimError(Exception):
    """A simulation action was asked for something that does not exist."""


# --------------------------------------------------------------------------
# Helpers


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(obj), status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"message": message}, status, headers)


def _num(text: str) -> str:
    return str(int(float(text))) if float(text).is_integer() else text  # "16.0" -> "16"


class _BadRequest(Exception):
    pass


def _parse_filters(raw: list[str], allowed: Iterable[str]) -> list[tuple[str, str, str]]:
    allowed = tuple(allowed)
    out = []
    for f in raw:
        m = _FILTER.match(f.strip())
        if not m:
            raise _BadRequest(f"Invalid filter: {f}")
        name, op, value = m.groups()
        if name not in allowed:
            raise _BadRequest(f"Invalid filter field: {name}")
        out.append((name, op, value))
    return out


def _compare(actual: Any, op: str, raw: str) -> bool:
    if actual is None:
        return op == "!=" if raw not in ("", "null") else op == "="
    try:
        if isinstance(actual, bool):
            want: Any = raw.lower() == "true"
        elif isinstance(actual, int | float):
            want = float(raw)
        else:
            want = raw
    except ValueError as exc:
        raise _BadRequest(f"Invalid filter value: {raw}") from exc
    match op:
        case "=":
            return bool(actual == want)
        case "!=":
            return bool(actual != want)
        case ">=":
            return bool(actual >= want)
        case "<=":
            return bool(actual <= want)
        case ">":
            return bool(actual > want)
        case "<":
            return bool(actual < want)
    raise _BadRequest(f"Invalid filter operator: {op}")


def _page(elements: list[Any]) -> tuple[list[Any], int, int]:
    try:
        limit = int(request.args.get("limit", DEFAULT_LIMIT))
        offset = int(request.args.get("offset", 0))
    except ValueError as exc:
        raise _BadRequest("limit and offset must be integers") from exc
    if limit < 0 or offset < 0:
        raise _BadRequest("limit and offset must not be negative")
    limit = min(limit, MAX_LIMIT)
    return elements[offset : offset + limit], limit, offset


def _expands() -> set[str]:
    out: set[str] = set()
    for value in request.args.getlist("expand"):
        out.update(v.strip() for v in value.split(",") if v.strip())
    return out


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


# --------------------------------------------------------------------------
# The simulator


class CloverSim:
    """One simulated Clover app: its merchants, their inventory and orders, limits and webhooks.

    Resource handling: ``run`` owns the HTTP server and the webhook sender;
    cancelling it (or ``stop()``) ends both.
    """

    def __init__(
        self,
        *,
        app_id: str = "SIMCLOVERAPP1",
        auth_code: str | None = None,
        faults: Faults | None = None,
        limits: RateLimits | None = None,
        seed: int = 0,
        webhook_url: str | None = None,
        webhook_batch_window: float = 0.005,
        emit_on_api_write: bool = True,
        refund_restocks: bool = True,
        webhook_style: str = "legacy",
        new_events_ts: bool = True,
        subscribed: frozenset[str] | None = None,
    ) -> None:
        if webhook_style not in WEBHOOK_STYLES:
            raise ValueError(f"webhook_style must be one of {WEBHOOK_STYLES}, not {webhook_style!r}")
        self.app_id = app_id
        self.auth_code = auth_code or str(uuid.UUID(int=random.Random(seed).getrandbits(128)))
        self.injector = FaultInjector(faults)
        self.limits = limits or RateLimits()
        self.rng = random.Random(seed)
        self._webhook_rng = random.Random(seed + 1)
        self.webhook_url = webhook_url
        self.webhook_batch_window = webhook_batch_window
        self.emit_on_api_write = emit_on_api_write
        self.refund_restocks = refund_restocks
        self.webhook_style = webhook_style  # "legacy" (I for everything) | "split" (I, IS, IA)
        self.new_events_ts = new_events_ts  # whether IS and IA entries carry "ts"
        self.subscribed = subscribed  # event type keys sent (None: all)
        self.merchants: dict[str, SimMerchant] = {}
        self._tokens: dict[str, str] = {}  # token -> merchant id
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()  # (mId, "GET items") -> n
        self.down_merchants: set[str] = set()  # these merchants answer every call 503 (one store down)
        self._scopes: dict[str, _Scope] = collections.defaultdict(_Scope)  # token -> scope
        self._app_scope = _Scope()
        self.webhook_log: list[WebhookAttempt] = []
        self.stock_overwrites: list[StockOverwrite] = []
        self.stock_writes: list[StockWrite] = []  # every POST item_stocks/{id} applied, in order
        self.stock_write_windows: list[float] = []  # read-to-write seconds of every write that followed a read
        self._stock_reads: dict[tuple[str, str], tuple[float, float]] = {}  # (mId, item) -> (last GET answer, when)
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._wake = trio.Event()
        self._deliveries_in_flight = 0
        self._stop = trio.Event()
        self._last_ms = 0
        self.base_url: str | None = None
        # Webhooks go to HTTPS receivers too (a TLS proxy in front of the daemon); like Clover, the sender
        # checks the receiver's certificate, against the public CAs and whatever trust_certificate() added.
        self._tls = httpx.create_ssl_context()  # httpx's default: certifi's CAs
        self.oauth = OAuthSim(self)  # OAuth v2 endpoints and expiring tokens (block at the end)
        self.app = self._build_app()

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    # ---------------------------------------------------------------- clock

    def now_ms(self) -> int:
        """Unix ms, never going backwards (two changes in one ms share it)."""
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    def _new_id(self) -> str:
        return "".join(self.rng.choice(_ID_ALPHABET) for _ in range(13))

    # ---------------------------------------------------------------- actions

    def add_merchant(
        self,
        name: str = "Sim Store",
        *,
        merchant_id: str | None = None,
        token: str | None = None,
        track_stock: bool = True,
        update_stock: bool = True,
    ) -> SimMerchant:
        mid = merchant_id or self._new_id()
        tok = token or str(uuid.UUID(int=self.rng.getrandbits(128)))
        if mid in self.merchants or tok in self._tokens:
            raise SimError("merchant id or token already in use")
        m = SimMerchant(id=mid, name=name, token=tok, track_stock=track_stock, update_stock=update_stock)
        self.merchants[mid] = m
        self._tokens[tok] = mid
        return m

    def _merchant(self, mid: str) -> SimMerchant:
        try:
            return self.merchants[mid]
        except KeyError:
            raise SimError(f"no merchant {mid}") from None

    def item_id_of(self, mid: str, key: str) -> str:
        """``key`` itself when it is an item id at ``mid``, else the id of the live item with that SKU."""
        m = self._merchant(mid)
        if key in m.items:
            return key
        for it in m.items.values():
            if not it.deleted and it.sku is not None and it.sku.lower() == key.lower():
                return it.id
        raise SimError(f"no item with id or SKU {key} at merchant {mid}")

    def _item(self, mid: str, item_id: str) -> SimItem:
        it = self._merchant(mid).items.get(item_id)
        if it is None or it.deleted:
            raise SimError(f"no item {item_id} at merchant {mid}")
        return it

    def add_item(
        self,
        mid: str,
        name: str,
        *,
        sku: str | None = None,
        quantity: float | None = None,
        price: int = 1000,
        price_type: str = "FIXED",
        code: str | None = None,
        item_group_id: str | None = None,
        hidden: bool = False,
        auto_manage: bool = False,
        item_id: str | None = None,
    ) -> str:
        """A new item; ``quantity=None`` means no stock record. Emits ``I: CREATE``."""
        m = self._merchant(mid)
        iid = item_id or self._new_id()
        now = self.now_ms()
        m.items[iid] = SimItem(
            id=iid, name=name, sku=sku, price=price, price_type=price_type, code=code,
            quantity=None if quantity is None else float(quantity),
            stock_modified=now, modified=now, created=now, group_id=item_group_id,
            hidden=hidden, auto_manage=auto_manage,
        )
        if item_group_id is not None:
            m.item_groups[item_group_id].item_ids.append(iid)
        self._emit(mid, "I", iid, "CREATE")
        return iid

    def add_item_group(
        self, mid: str, name: str, variants: list[dict[str, Any]]
    ) -> tuple[str, list[str]]:
        """An item group whose variant items are named by Clover's rule: group name + option names.

        Each variant is ``{"options": {"Size": "L"}, "sku": ..., "quantity": ..., "price": ...}``.
        """
        m = self._merchant(mid)
        gid = self._new_id()
        attributes: dict[str, list[str]] = {}
        for v in variants:
            for attr, opt in v.get("options", {}).items():
                if opt not in attributes.setdefault(attr, []):
                    attributes[attr].append(opt)
        m.item_groups[gid] = SimItemGroup(id=gid, name=name, attributes=attributes, modified=self.now_ms())
        ids = []
        for v in variants:
            vname = " ".join([name, *v.get("options", {}).values()])
            ids.append(
                self.add_item(
                    mid, vname, sku=v.get("sku"), quantity=v.get("quantity"),
                    price=v.get("price", 1000), item_group_id=gid,
                )
            )
        return gid, ids

    def stock(self, mid: str, item_id: str) -> float | None:
        return self._item(mid, item_id).quantity

    @staticmethod
    def _available(m: SimMerchant, it: SimItem) -> bool:
        return not it.unavailable and not (it.auto_manage and m.track_stock and (it.quantity or 0) <= 0)

    def _set_quantity(self, m: SimMerchant, it: SimItem, quantity: float | None) -> bool:
        """Set the stock; returns whether the item was available before (for the availability event)."""
        was_available = self._available(m, it)
        now = self.now_ms()
        it.quantity = quantity
        it.stock_modified = now
        it.modified = now
        return was_available

    def _stock_changed(self, m: SimMerchant, it: SimItem, was_available: bool) -> None:
        """The webhooks of a stock change, in the current style."""
        if self.webhook_style == "legacy":
            self._emit(m.id, "I", it.id, "UPDATE")
            return
        stock = self._stock_json(it) if it.quantity is not None else None
        self._emit(m.id, "IS", it.id, "UPDATE", itemStock=stock)
        if self._available(m, it) != was_available:
            self._availability_changed(m, it)

    def _availability_changed(self, m: SimMerchant, it: SimItem) -> None:
        if self.webhook_style == "legacy":
            self._emit(m.id, "I", it.id, "UPDATE")
            return
        self._emit(m.id, "IA", it.id, "UPDATE",
                   item={"id": it.id, "available": self._available(m, it), "autoManage": it.auto_manage})

    def adjust(self, mid: str, item_id: str, quantity: float | None) -> None:
        """A manual recount on the dashboard (absolute; None removes the stock record).

        Emits ``I: UPDATE`` (legacy) or ``IS: UPDATE`` (split; and ``IA`` if the availability flipped).
        """
        m = self._merchant(mid)
        it = self._item(mid, item_id)
        was = self._set_quantity(m, it, None if quantity is None else float(quantity))
        self._stock_changed(m, it, was)

    def set_available(self, mid: str, item_id: str, available: bool) -> None:
        """The merchant marks the item (un)available. Emits ``I: UPDATE`` (legacy) or ``IA: UPDATE`` (split)."""
        m = self._merchant(mid)
        it = self._item(mid, item_id)
        was = self._available(m, it)
        it.unavailable = not available
        it.modified = self.now_ms()
        if self._available(m, it) != was:
            self._availability_changed(m, it)

    def delete_item(self, mid: str, item_id: str) -> None:
        """Deletes the item (it then 404s and leaves the lists). Emits ``I: DELETE``."""
        it = self._item(mid, item_id)
        it.deleted = True
        it.modified = self.now_ms()
        self._emit(mid, "I", item_id, "DELETE")

    def pos_sale(self, mid: str, items: dict[str, int], *, paid: bool = True) -> str:
        """A sale on the register: one line item per unit; returns the order id."""
        m = self._merchant(mid)
        sold = {iid: (self._item(mid, iid), int(n)) for iid, n in items.items() if int(n) > 0}
        if not sold:
            raise SimError("a sale needs at least one unit")
        now = self.now_ms()
        oid = self._new_id()
        line_items = []
        total = 0
        for it, n in sold.values():
            for _ in range(n):
                line_items.append({
                    "id": self._new_id(), "orderRef": {"id": oid}, "item": {"id": it.id},
                    "name": it.name, "price": it.price, "itemCode": it.code, "printed": False,
                    "createdTime": now, "orderClientCreatedTime": now, "exchanged": False,
                    "refunded": False, "isRevenue": True,
                })
                total += it.price
        payments = []
        if paid:
            payments.append({"id": self._new_id(), "order": {"id": oid}, "amount": total, "result": "SUCCESS",
                             "createdTime": now})
        m.orders[oid] = SimOrder(
            id=oid, line_items=line_items, total=total, payment_state="PAID" if paid else "OPEN",
            created=now, modified=now, payments=payments, state="locked" if paid else "open",
        )
        self._emit(mid, "O", oid, "CREATE")
        if paid and m.track_stock and m.update_stock:
            for it, n in sold.values():
                if it.quantity is not None:
                    was = self._set_quantity(m, it, it.quantity - n)
                    self._stock_changed(m, it, was)
        return oid

    def refund(self, mid: str, order_id: str) -> None:
        """A full refund: line items marked refunded, order REFUNDED, stock put back."""
        m = self._merchant(mid)
        order = m.orders.get(order_id)
        if order is None:
            raise SimError(f"no order {order_id}")
        if order.payment_state == "REFUNDED":
            raise SimError(f"order {order_id} is already refunded")
        now = self.now_ms()
        back: collections.Counter[str] = collections.Counter()
        for li in order.line_items:
            if not li["refunded"]:
                li["refunded"] = True
                back[li["item"]["id"]] += 1
        order.refunds.append({
            "id": self._new_id(), "orderRef": {"id": order_id}, "amount": order.total, "createdTime": now,
            "lineItems": {"elements": [{"id": li["id"]} for li in order.line_items]}, "status": "SUCCESS",
        })
        order.payment_state = "REFUNDED"
        order.modified = now
        self._emit(mid, "O", order_id, "UPDATE")
        if self.refund_restocks and m.track_stock and m.update_stock:
            for iid, n in back.items():
                it = m.items.get(iid)
                if it is not None and not it.deleted and it.quantity is not None:
                    was = self._set_quantity(m, it, it.quantity + n)
                    self._stock_changed(m, it, was)

    # ---------------------------------------------------------------- stats

    def count(self, method_endpoint: str, merchant_id: str | None = None) -> int:
        """Requests seen for e.g. ``"POST item_stocks/{id}"``, for one merchant or all."""
        return sum(n for (mid, key), n in self.counts.items()
                   if key == method_endpoint and (merchant_id is None or mid == merchant_id))

    def token_stats(self, merchant_id: str) -> LimitStats:
        return self._scopes[self._merchant(merchant_id).token].stats()

    def app_stats(self) -> LimitStats:
        return self._app_scope.stats()

    def reset_stats(self) -> None:
        self.counts.clear()
        for scope in [*self._scopes.values(), self._app_scope]:
            scope.requests = scope.rejected = scope.max_concurrency = scope.max_rate = 0
            scope.arrivals.clear()

    # ---------------------------------------------------------------- webhooks

    def _emit(self, mid: str, kind: str, object_id: str, type_: str, **rich: Any) -> None:
        """Queue one entry; ``rich`` is the payload of Clover's newer events (see the module docstring)."""
        if not self.faults.webhooks_enabled:
            return
        if self.subscribed is not None and kind not in self.subscribed:
            return
        entry: dict[str, Any] = {"objectId": f"{kind}:{object_id}", "type": type_, "ts": self.now_ms()}
        if kind in ("IS", "IA") and not self.new_events_ts:
            del entry["ts"]
        entry.update({k: v for k, v in rich.items() if v is not None})
        self._pending.append((mid, entry))
        self._wake.set()

    def set_webhook_url(self, url: str | None) -> None:
        self.webhook_url = url

    def trust_certificate(self, path: str | Path) -> None:
        """Accept receivers whose certificate chains to this one (PEM): a test's self-signed proxy, standing in
        for the public CA a real receiver's certificate comes from. Applies to every connection opened after."""
        self._tls.load_verify_locations(cafile=str(path))

    def _payload(self, batch: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        merchants: dict[str, list[dict[str, Any]]] = {}
        for mid, ev in batch:
            merchants.setdefault(mid, []).append(ev)
        return {"appId": self.app_id, "merchants": merchants}

    async def _webhook_sender(self, client: httpx.AsyncClient, nursery: trio.Nursery) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self.webhook_batch_window)
            batch, self._pending = self._pending, []
            if batch:
                self._deliveries_in_flight += 1
                nursery.start_soon(self._deliver, client, self._payload(batch))

    async def webhooks_idle(self) -> None:
        """Wait until every event emitted so far has been sent (or dropped); for tests and demos."""
        while self._pending or self._deliveries_in_flight:
            await trio.sleep(0.002)

    async def _deliver(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        try:
            await self._deliver_one(client, payload)
        finally:
            self._deliveries_in_flight -= 1

    async def _deliver_one(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        f = self.faults
        rng = self._webhook_rng
        if not f.webhooks_enabled:
            self.webhook_log.append(WebhookAttempt("disabled", payload, at=trio.current_time()))
            return
        if f.webhook_drop_rate and rng.random() < f.webhook_drop_rate:
            self.webhook_log.append(WebhookAttempt("dropped", payload, at=trio.current_time()))
            return
        copies = 2 if f.webhook_duplicate_rate and rng.random() < f.webhook_duplicate_rate else 1
        if f.webhook_delay > 0:
            await trio.sleep(f.webhook_delay)
        for _ in range(copies):
            await self._post(client, payload, {"X-Clover-Auth": self.auth_code})

    async def _post(self, client: httpx.AsyncClient, payload: dict[str, Any], headers: dict[str, str]) -> int | None:
        url = self.webhook_url
        if url is None:
            self.webhook_log.append(WebhookAttempt("no_url", payload, at=trio.current_time()))
            return None
        try:
            resp = await client.post(url, content=msgspec.json.encode(payload),
                                     headers={"Content-Type": "application/json", **headers})
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self.webhook_log.append(
                WebhookAttempt("failed", payload, error=type(exc).__name__, at=trio.current_time())
            )
            return None
        outcome = "sent" if resp.status_code == 200 else "failed"
        self.webhook_log.append(WebhookAttempt(outcome, payload, status=resp.status_code, at=trio.current_time()))
        return resp.status_code

    async def send_verification_code(self) -> tuple[str, int | None]:
        """The dashboard's "Send Verification Code": returns (code, status the receiver answered)."""
        code = str(uuid.UUID(int=self._webhook_rng.getrandbits(128)))
        async with httpx.AsyncClient(timeout=10.0, verify=self._tls) as client:
            status = await self._post(client, {"verificationCode": code}, {})
        return code, status

    def webhook_events(self, outcome: str = "sent") -> list[tuple[str, dict[str, Any]]]:
        """Every (mId, event) in webhooks with this outcome, in order (duplicates repeated)."""
        return [(mid, ev) for a in self.webhook_log if a.outcome == outcome
                for mid, evs in a.payload.get("merchants", {}).items() for ev in evs]

    # ---------------------------------------------------------------- serving

    async def run(
        self, *, host: str = "127.0.0.1", port: int = 0, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the API and send webhooks until cancelled or ``stop()``; reports the base URL."""
        async with httpx.AsyncClient(timeout=10.0, verify=self._tls) as client, trio.open_nursery() as nursery:
            nursery.start_soon(self._webhook_sender, client, nursery)
            url = await nursery.start(partial(serve_app, self.app, host=host, port=port,
                                              shutdown_trigger=self._stop.wait))
            self.base_url = url
            task_status.started(url)
            await self._stop.wait()
            await trio.sleep(0)
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- the REST API

    def _check_limits(self, scope: _Scope, now: float) -> Response | None:
        lim = self.limits
        app = self._app_scope
        for sc in (scope, app):
            if now < sc.penalty_until:  # came back before retry-after: the wait grows
                sc.penalty_until += lim.early_retry_penalty
                retry = sc.penalty_until - now if lim.rate_retry_after else None
                return self._too_many(sc.penalty_header, sc.penalty_limit, retry)
        for sc, header, climit in ((scope, "X-RateLimit-tokenConcurrentLimit", lim.token_concurrent),
                                   (app, "X-RateLimit-crossTokenConcurrentLimit", lim.app_concurrent)):
            if sc.admitted >= climit:
                return self._too_many(header, str(climit), 1.0)
        tb = scope.bucket_for(lim.token_rate, lim.token_burst)
        ab = app.bucket_for(lim.app_rate, lim.app_burst)
        for sc, bucket, header, rate in ((scope, tb, "X-RateLimit-tokenLimit", lim.token_rate),
                                         (app, ab, "X-RateLimit-crossTokenLimit", lim.app_rate)):
            wait = bucket.wait_time(now)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                sc.penalty_until = now + retry
                sc.penalty_header = header
                sc.penalty_limit = _num(str(rate))
                return self._too_many(header, sc.penalty_limit, retry if lim.rate_retry_after else None)
        tb.take(now)
        ab.take(now)
        return None

    @staticmethod
    def _too_many(header: str, limit: str, retry_after: float | None) -> Response:
        headers = {header: limit}
        if retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        return _error(429, "Too Many Requests", headers)

    async def _guard(self, endpoint: str, mid: str, handler: Callable[..., Awaitable[Response]],
                     kwargs: dict[str, Any]) -> Response:
        self.counts[(mid, f"{request.method} {endpoint}")] += 1
        token = _bearer(request.headers.get("Authorization"))
        owner = (self._tokens.get(token) or self.oauth.owner(token)) if token is not None else None
        m = self.merchants.get(mid)
        if m is None or owner is None or not hmac.compare_digest(owner, mid):
            return _error(401, "Unauthorized")
        if not self.oauth.permitted(mid, request.method, endpoint):
            return _error(401, "Unauthorized")
        assert token is not None
        scope = self._scopes[token]
        now = trio.current_time()
        scope.arrive(now)
        self._app_scope.arrive(now)
        admitted = False
        try:
            if self.limits.enabled:
                refused = self._check_limits(scope, now)
                if refused is not None:
                    scope.rejected += 1
                    self._app_scope.rejected += 1
                    return refused
            admitted = True
            scope.admitted += 1
            self._app_scope.admitted += 1
            status = await self.injector.before_request()
            if mid in self.down_merchants:
                status = 503
            if status is not None:
                return _error(status, "Service Unavailable" if status == 503 else "Internal Server Error")
            try:
                return await handler(m, **kwargs)
            except _BadRequest as exc:
                return _error(400, str(exc))
        finally:
            scope.present -= 1
            self._app_scope.present -= 1
            if admitted:
                scope.admitted -= 1
                self._app_scope.admitted -= 1

    def _build_app(self) -> QuartTrio:
        app = QuartTrio("cloverwoo_sim_clover")
        sim = self

        def api(rule: str, endpoint: str, methods: tuple[str, ...] = ("GET",)) -> Callable[..., Any]:
            def deco(fn: Callable[..., Awaitable[Response]]) -> Callable[..., Any]:
                async def view(mid: str, **kwargs: Any) -> Response:
                    return await sim._guard(endpoint, mid, fn, kwargs)

                app.add_url_rule("/v3/merchants/<mid>" + rule, endpoint=f"api {endpoint}",
                                 view_func=view, methods=list(methods))
                return fn

            return deco

        @app.errorhandler(404)
        async def not_found(_e: Exception) -> Response:
            return _error(404, "Not Found")

        @app.errorhandler(405)
        async def not_allowed(_e: Exception) -> Response:
            return _error(405, "Method Not Allowed")

        @api("", "merchant")
        async def merchant(m: SimMerchant) -> Response:
            return _json({"id": m.id, "name": m.name, "href": f"{sim.base_url}/v3/merchants/{m.id}"})

        @api("/properties", "properties")
        async def properties(m: SimMerchant) -> Response:
            return _json({"id": m.id, "trackStock": m.track_stock, "updateStock": m.update_stock,
                          "stockUnits": False, "timezone": "America/Los_Angeles"})

        @api("/items", "items")
        async def items(m: SimMerchant) -> Response:
            filters = _parse_filters(request.args.getlist("filter"), ITEM_FILTER_FIELDS)
            want_deleted = any(f[0] == "deleted" for f in filters)
            if filters:
                rows = [it for it in m.items.values()
                        if (want_deleted or not it.deleted) and all(
                            _compare(sim._item_field(it, name), op, val) for name, op, val in filters)]
            else:  # the import's list: one cheap pass per page, even over 50,000 items
                rows = [it for it in m.items.values() if not it.deleted]
            page, _, _ = _page(rows)
            ex = _expands()
            return _json({"elements": [sim._item_json(m, it, ex) for it in page], "href": sim._href()},
                         headers={"X-Clover-Allowed-Filter-Fields": ",".join(ITEM_FILTER_FIELDS)})

        @api("/items/<item_id>", "items/{id}")
        async def item(m: SimMerchant, item_id: str) -> Response:
            it = m.items.get(item_id)
            if it is None or it.deleted:
                return _error(404, f"Item {item_id} not found")
            return _json(sim._item_json(m, it, _expands()))

        @api("/item_stocks", "item_stocks")
        async def item_stocks(m: SimMerchant) -> Response:
            rows = [it for it in m.items.values() if not it.deleted and it.quantity is not None]
            page, _, _ = _page(rows)
            return _json({"elements": [sim._stock_json(it) for it in page], "href": sim._href()})

        @api("/item_stocks/<item_id>", "item_stocks/{id}", ("GET", "POST"))
        async def item_stock(m: SimMerchant, item_id: str) -> Response:
            it = m.items.get(item_id)
            if it is None or it.deleted:
                return _error(404, f"Item {item_id} not found")
            if request.method == "GET":
                if it.quantity is None:
                    return _error(404, f"No item stock for item {item_id}")
                sim._stock_reads[(m.id, it.id)] = (it.quantity, trio.current_time())
                return _json(sim._stock_json(it))
            try:
                body = msgspec.json.decode(await request.get_data())
                quantity = body["quantity"]
                if isinstance(quantity, bool) or not isinstance(quantity, int | float) or not math.isfinite(quantity):
                    raise TypeError
            except (msgspec.DecodeError, KeyError, TypeError):
                return _error(400, "Body must be JSON with a numeric quantity")
            sim.stock_writes.append(StockWrite(m.id, it.id, float(quantity), time.time()))  # applied below
            last_read = sim._stock_reads.pop((m.id, it.id), None)
            if last_read is not None:
                read, window = last_read[0], trio.current_time() - last_read[1]
                sim.stock_write_windows.append(window)
                if it.quantity is not None and it.quantity != read:
                    sim.stock_overwrites.append(StockOverwrite(m.id, it.id, read, it.quantity, float(quantity),
                                                               it.quantity - read, window, time.time()))
            was = sim._set_quantity(m, it, float(quantity))
            if sim.emit_on_api_write:
                sim._stock_changed(m, it, was)
            return _json({"item": {"id": it.id}, "stockCount": round_half_up(float(quantity)),
                          "quantity": float(quantity)})

        @api("/item_groups", "item_groups")
        async def item_groups(m: SimMerchant) -> Response:
            filters = _parse_filters(request.args.getlist("filter"), GROUP_FILTER_FIELDS)
            rows = [g for g in m.item_groups.values()
                    if all(_compare({"modifiedTime": g.modified, "name": g.name, "id": g.id}[n], op, v)
                           for n, op, v in filters)]
            page, _, _ = _page(rows)
            ex = _expands()
            return _json({"elements": [sim._group_json(g, ex) for g in page], "href": sim._href()})

        @api("/orders", "orders")
        async def orders(m: SimMerchant) -> Response:
            filters = _parse_filters(request.args.getlist("filter"), ORDER_FILTER_FIELDS)
            rows = [o for o in m.orders.values()
                    if all(_compare(sim._order_field(o, n), op, v) for n, op, v in filters)]
            page, _, _ = _page(rows)
            ex = _expands()
            return _json({"elements": [sim._order_json(o, ex) for o in page], "href": sim._href()})

        @api("/orders/<order_id>", "orders/{id}")
        async def order(m: SimMerchant, order_id: str) -> Response:
            o = m.orders.get(order_id)
            if o is None:
                return _error(404, f"Order {order_id} not found")
            return _json(sim._order_json(o, _expands()))

        @api("/orders/<order_id>/line_items", "orders/{id}/line_items")
        async def line_items(m: SimMerchant, order_id: str) -> Response:
            o = m.orders.get(order_id)
            if o is None:
                return _error(404, f"Order {order_id} not found")
            page, _, _ = _page(o.line_items)
            return _json({"elements": page, "href": sim._href()})

        self._add_admin_routes(app)
        self.oauth.add_routes(app)
        return app

    def _href(self) -> str:
        return str(request.url)

    @staticmethod
    def _item_field(it: SimItem, name: str) -> Any:
        return getattr(it, _ITEM_FIELD_ATTRS[name])

    @staticmethod
    def _order_field(o: SimOrder, name: str) -> Any:
        return {"modifiedTime": o.modified, "createdTime": o.created, "clientCreatedTime": o.created,
                "id": o.id, "state": o.state}[name]

    @staticmethod
    def _stock_json(it: SimItem) -> dict[str, Any]:
        q = it.quantity if it.quantity is not None else 0.0
        return {"item": {"id": it.id}, "stockCount": round_half_up(q), "quantity": q,
                "modifiedTime": it.stock_modified}

    def _item_json(self, m: SimMerchant, it: SimItem, expand: set[str]) -> dict[str, Any]:
        available = self._available(m, it)
        d: dict[str, Any] = {
            "id": it.id, "hidden": it.hidden, "available": available, "autoManage": it.auto_manage,
            "name": it.name, "alternateName": "", "price": it.price, "priceType": it.price_type,
            "defaultTaxRates": True, "cost": 0, "isRevenue": True, "stockCount": 0,
            "modifiedTime": it.modified, "deleted": it.deleted,
        }
        if it.sku is not None:
            d["sku"] = it.sku
        if it.code is not None:
            d["code"] = it.code
        if it.group_id is not None:
            ref: dict[str, Any] = {"id": it.group_id}
            if "itemGroup" in expand:
                ref["name"] = m.item_groups[it.group_id].name
            d["itemGroup"] = ref
        if "itemStock" in expand and it.quantity is not None:
            d["itemStock"] = self._stock_json(it)
        return d

    @staticmethod
    def _group_json(g: SimItemGroup, expand: set[str]) -> dict[str, Any]:
        d: dict[str, Any] = {"id": g.id, "name": g.name, "modifiedTime": g.modified}
        if "items" in expand:
            d["items"] = {"elements": [{"id": i} for i in g.item_ids[:NESTED_LIMIT]]}
        if "attributes" in expand:
            d["attributes"] = {"elements": [
                {"name": a, "options": {"elements": [{"name": o} for o in opts]}} for a, opts in g.attributes.items()
            ]}
        return d

    @staticmethod
    def _order_json(o: SimOrder, expand: set[str]) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": o.id, "currency": "USD", "total": o.total, "paymentState": o.payment_state, "state": o.state,
            "testMode": False, "manualTransaction": False, "createdTime": o.created,
            "clientCreatedTime": o.created, "modifiedTime": o.modified,
        }
        if "lineItems" in expand:
            d["lineItems"] = {"elements": o.line_items[:NESTED_LIMIT]}
        if "payments" in expand:
            d["payments"] = {"elements": o.payments[:NESTED_LIMIT]}
        if "refunds" in expand:
            d["refunds"] = {"elements": o.refunds[:NESTED_LIMIT]}
        return d

    # ---------------------------------------------------------------- /_sim admin routes

    def _add_admin_routes(self, app: QuartTrio) -> None:
        sim = self

        async def body() -> dict[str, Any]:
            raw = await request.get_data()
            if not raw:
                return {}
            data = msgspec.json.decode(raw)
            if not isinstance(data, dict):
                raise _BadRequest("body must be a JSON object")
            return data

        def admin(rule: str, methods: tuple[str, ...] = ("POST",)) -> Callable[..., Any]:
            def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
                async def view(**kwargs: Any) -> Response:
                    try:
                        result = await fn(**kwargs)
                    except (SimError, KeyError) as exc:
                        return _error(404, str(exc))
                    except (_BadRequest, msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
                        return _error(400, str(exc))
                    return result if isinstance(result, Response) else _json(result)

                app.add_url_rule("/_sim" + rule, endpoint="sim " + rule + " " + ",".join(methods),
                                 view_func=view, methods=list(methods))
                return fn

            return deco

        @admin("/merchants", ("GET",))
        async def merchants() -> Any:
            return [{"id": m.id, "name": m.name, "token": m.token, "trackStock": m.track_stock,
                     "updateStock": m.update_stock, "items": sum(not i.deleted for i in m.items.values())}
                    for m in sim.merchants.values()]

        @admin("/merchants")
        async def new_merchant() -> Any:
            b = await body()
            m = sim.add_merchant(b.get("name", "Sim Store"), merchant_id=b.get("id"), token=b.get("token"),
                                 track_stock=bool(b.get("trackStock", True)),
                                 update_stock=bool(b.get("updateStock", True)))
            return {"id": m.id, "token": m.token}

        @admin("/merchants/<mid>/items")
        async def new_item(mid: str) -> Any:
            b = await body()
            iid = sim.add_item(mid, str(b["name"]), sku=b.get("sku"), quantity=b.get("quantity"),
                               price=int(b.get("price", 1000)))
            return {"id": iid}

        @admin("/merchants/<mid>/items/<item_id>", ("DELETE",))
        async def del_item(mid: str, item_id: str) -> Any:
            sim.delete_item(mid, item_id)
            return {"deleted": item_id}

        @admin("/merchants/<mid>/items/<item_id>/stock", ("GET",))
        async def get_stock(mid: str, item_id: str) -> Any:
            return {"id": item_id, "quantity": sim.stock(mid, item_id)}

        @admin("/merchants/<mid>/items/<item_id>/stock")
        async def set_stock(mid: str, item_id: str) -> Any:
            b = await body()
            q = b.get("quantity")
            sim.adjust(mid, item_id, None if q is None else float(q))
            return {"id": item_id, "quantity": sim.stock(mid, item_id)}

        @admin("/merchants/<mid>/items/<item_id>/available")
        async def set_available(mid: str, item_id: str) -> Any:
            b = await body()
            sim.set_available(mid, item_id, bool(b.get("available", True)))
            return {"id": item_id, "available": not sim._item(mid, item_id).unavailable}

        @admin("/webhook_style")
        async def webhook_style() -> Any:
            b = await body()
            style = str(b.get("style", ""))
            if style not in WEBHOOK_STYLES:
                raise _BadRequest(f"style must be one of {', '.join(WEBHOOK_STYLES)}")
            sim.webhook_style = style
            return {"style": sim.webhook_style}

        @admin("/merchants/<mid>/sales")
        async def sale(mid: str) -> Any:
            b = await body()
            items = b.get("items")
            if not isinstance(items, dict):
                raise _BadRequest('body must be {"items": {"<item id or SKU>": <units>}}')
            return {"orderId": sim.pos_sale(mid, {sim.item_id_of(mid, str(k)): int(v) for k, v in items.items()})}

        @admin("/merchants/<mid>/orders/<order_id>/refund")
        async def refund(mid: str, order_id: str) -> Any:
            sim.refund(mid, order_id)
            return {"refunded": order_id}

        @admin("/faults", ("GET",))
        async def get_faults() -> Any:
            return msgspec.to_builtins(sim.faults)

        @admin("/faults")
        async def set_faults() -> Any:
            b = await body()
            merged = msgspec.convert({**msgspec.to_builtins(sim.faults), **b}, Faults)
            for name in Faults.__struct_fields__:
                setattr(sim.faults, name, getattr(merged, name))
            return msgspec.to_builtins(sim.faults)

        @admin("/webhook_url")
        async def webhook_url() -> Any:
            b = await body()
            url = b.get("url")
            sim.set_webhook_url(None if url is None else str(url))
            return {"url": sim.webhook_url}

        @admin("/verification_code")
        async def verification() -> Any:
            code, status = await sim.send_verification_code()
            return {"verificationCode": code, "status": status}

        @admin("/stats", ("GET",))
        async def stats() -> Any:
            return {
                "requests": [{"merchant": mid, "endpoint": key, "count": n} for (mid, key), n in sim.counts.items()],
                "tokens": {mid: msgspec.to_builtins(sim.token_stats(mid)) for mid in sim.merchants},
                "app": msgspec.to_builtins(sim.app_stats()),
                "webhooks": collections.Counter(a.outcome for a in sim.webhook_log),
            }


# ==========================================================================
# OAuth v2: expiring access tokens, single-use refresh tokens (clover-api.md §4.2)
#
# OAuth and preflight surfaces, reached from CloverSim only
# through ``self.oauth`` (token lookup and permissions in ``_guard``, routes in
# ``_build_app``). Static merchant tokens (``add_merchant(token=...)``) keep
# working unchanged.


@dataclass
class OAuthSettings:
    """The app's OAuth credentials and the token lifetimes; mutable so tests can change them at run time.

    Clover says lifetimes are dynamic and not to be hard-coded: the defaults
    are plausible values, not documented ones.
    """

    client_secret: str = ""
    access_ttl: float = 1800.0
    refresh_ttl: float = 30 * 86400.0
    code_ttl: float = 600.0
    refresh_cap: int = 5  # active refresh tokens per merchant-app; more invalidate the oldest (number undocumented)
    revoke_access_on_refresh: bool = False  # undocumented either way; False keeps the old access token until expiry
    refresh_answer_delay: float = 0.0  # seconds between a refresh taking effect and its answer (lost-answer tests)
    clock: Callable[[], float] = time.time  # unix seconds; tests inject a fake one to expire tokens


@dataclass
class _Issued:
    merchant_id: str
    expires_at: float
    seq: int = 0


class OAuthSim:
    """The OAuth side of one simulated Clover app.

    Simulation actions: ``code_for`` (the merchant approves the app),
    ``issue`` (a pair without the code dance), ``expire_access`` (the access
    tokens of a merchant expire now), ``revoke`` (the merchant uninstalls the
    app: every token of that merchant dies), ``deny`` (a permission the
    merchant did not grant, e.g. ``"INVENTORY_R"``).
    """

    def __init__(self, sim: CloverSim) -> None:
        self.sim = sim
        secret = str(uuid.UUID(int=random.Random("secret:" + sim.app_id).getrandbits(128)))
        self.settings = OAuthSettings(client_secret=secret)
        self.codes: dict[str, _Issued] = {}
        self.access: dict[str, _Issued] = {}
        self.refresh: dict[str, _Issued] = {}  # active refresh tokens only; a used one is gone
        self.used_refresh: set[str] = set()
        self.denied: dict[str, set[str]] = collections.defaultdict(set)
        self.calls: collections.Counter[str] = collections.Counter()  # "token", "refresh", "refresh_rejected", ...
        self._seq = 0
        self._rng = random.Random(sim.rng.getrandbits(64))

    @property
    def client_id(self) -> str:
        return self.sim.app_id

    def _now(self) -> float:
        return self.settings.clock()

    def _token(self, prefix: str) -> str:
        return f"{prefix}-{uuid.UUID(int=self._rng.getrandbits(128))}"

    # ------------------------------------------------------------ lookups (from CloverSim._guard)

    def owner(self, token: str) -> str | None:
        """The merchant an OAuth access token belongs to, if it is known and not expired."""
        issued = self.access.get(token)
        if issued is None or self._now() >= issued.expires_at:
            return None
        return issued.merchant_id

    @staticmethod
    def permission_for(method: str, endpoint: str) -> str:
        area = "MERCHANT"
        if endpoint.startswith(("items", "item_stocks", "item_groups")):
            area = "INVENTORY"
        elif endpoint.startswith("orders"):
            area = "ORDERS"
        return f"{area}_{'R' if method in ('GET', 'HEAD') else 'W'}"

    def permitted(self, merchant_id: str, method: str, endpoint: str) -> bool:
        denied = self.denied.get(merchant_id)
        return not denied or self.permission_for(method, endpoint) not in denied

    # ------------------------------------------------------------ simulation actions

    def code_for(self, merchant_id: str) -> str:
        """The merchant approved the app: a one-time code, as Clover appends to the redirect."""
        self.sim._merchant(merchant_id)
        code = self._token("code")
        self.codes[code] = _Issued(merchant_id, self._now() + self.settings.code_ttl)
        return code

    def issue(self, merchant_id: str, *, with_refresh: bool = True) -> dict[str, Any]:
        """A new pair for the merchant (what a successful code exchange or refresh answers)."""
        s = self.settings
        now = self._now()
        access = self._token("acc")
        self.access[access] = _Issued(merchant_id, now + s.access_ttl)
        body: dict[str, Any] = {"access_token": access, "access_token_expiration": int(now + s.access_ttl)}
        if with_refresh:
            refresh = self._token("ref")
            self._seq += 1
            self.refresh[refresh] = _Issued(merchant_id, now + s.refresh_ttl, self._seq)
            body |= {"refresh_token": refresh, "refresh_token_expiration": int(now + s.refresh_ttl)}
            mine = sorted((i.seq, t) for t, i in self.refresh.items() if i.merchant_id == merchant_id)
            for _, old in mine[: max(0, len(mine) - s.refresh_cap)]:
                del self.refresh[old]  # over the cap: the oldest stop working
        return body

    def expire_access(self, merchant_id: str) -> None:
        for issued in self.access.values():
            if issued.merchant_id == merchant_id:
                issued.expires_at = min(issued.expires_at, self._now() - 1)

    def revoke(self, merchant_id: str) -> None:
        for table in (self.access, self.refresh, self.codes):
            for t in [t for t, i in table.items() if i.merchant_id == merchant_id]:
                del table[t]

    def deny(self, merchant_id: str, permission: str) -> None:
        self.denied[merchant_id].add(permission)

    def active_refresh_tokens(self, merchant_id: str) -> int:
        return sum(1 for i in self.refresh.values() if i.merchant_id == merchant_id)

    # ------------------------------------------------------------ HTTP

    def add_routes(self, app: QuartTrio) -> None:
        oauth = self

        async def body() -> dict[str, Any]:
            try:
                data = msgspec.json.decode(await request.get_data())
            except msgspec.DecodeError:
                return {}
            return data if isinstance(data, dict) else {}

        @app.route("/oauth/v2/authorize", methods=["GET"])
        async def authorize() -> Response:
            """No login page: the simulated merchant approves at once (named by merchant_id, or the only one)."""
            args = request.args
            if args.get("client_id") != oauth.client_id:
                return _error(400, "Unknown client_id")
            mid = args.get("merchant_id") or ""
            if not mid and len(oauth.sim.merchants) == 1:
                mid = next(iter(oauth.sim.merchants))
            if mid not in oauth.sim.merchants:
                return _error(400, "Unknown merchant (pass merchant_id)")
            code = oauth.code_for(mid)
            answer = {"merchant_id": mid, "client_id": oauth.client_id, "code": code}
            redirect = args.get("redirect_uri")
            if redirect:
                if args.get("state"):
                    answer["state"] = args["state"]
                sep = "&" if "?" in redirect else "?"
                return Response("", status=302,
                                headers={"Location": redirect + sep + urlencode(answer)})
            return _json(answer)

        @app.route("/oauth/v2/token", methods=["POST"])
        async def token() -> Response:
            oauth.calls["token"] += 1
            status = await oauth.sim.injector.before_request()
            if status is not None:
                return _error(status, "Service Unavailable")
            b = await body()
            if b.get("client_id") != oauth.client_id or not hmac.compare_digest(
                    str(b.get("client_secret", "")), oauth.settings.client_secret):
                return _error(401, "Invalid client credentials")
            issued = oauth.codes.pop(str(b.get("code", "")), None)  # one use, right or wrong
            if issued is None or oauth._now() >= issued.expires_at:
                return _error(400, "Invalid or expired code")
            no_refresh = request.args.get("no_refresh_token", "").lower() == "true"
            return _json(oauth.issue(issued.merchant_id, with_refresh=not no_refresh))

        @app.route("/oauth/v2/refresh", methods=["POST"])
        async def refresh() -> Response:
            oauth.calls["refresh"] += 1
            status = await oauth.sim.injector.before_request()
            if status is not None:
                return _error(status, "Service Unavailable")
            b = await body()
            if b.get("client_id") != oauth.client_id:
                return _error(401, "Invalid client_id")
            old = str(b.get("refresh_token", ""))
            issued = oauth.refresh.pop(old, None)
            if issued is None or oauth._now() >= issued.expires_at:
                oauth.calls["refresh_rejected"] += 1
                return _error(401, "Invalid refresh token")
            oauth.used_refresh.add(old)
            if oauth.settings.revoke_access_on_refresh:
                for t in [t for t, i in oauth.access.items() if i.merchant_id == issued.merchant_id]:
                    del oauth.access[t]
            answer = oauth.issue(issued.merchant_id)
            if oauth.settings.refresh_answer_delay > 0:  # it took effect; the answer is still on its way
                await trio.sleep(oauth.settings.refresh_answer_delay)
            return _json(answer)

        @app.route("/_sim/oauth_app", methods=["GET"])
        async def oauth_app() -> Response:
            """The simulated app's App ID and App Secret, for trying `cloverwoo clover connect` by hand."""
            return _json({"client_id": oauth.client_id, "client_secret": oauth.settings.client_secret})
