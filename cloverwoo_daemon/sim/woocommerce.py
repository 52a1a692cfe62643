"""A simulated WooCommerce REST API (``/wp-json/wc/v3``) that misbehaves like the real one.

Rules this module keeps (woocommerce-api.md; where section 9, observed on a
real WooCommerce 11, says otherwise, section 9 wins):

- It is a real HTTP server (hypercorn + quart-trio on port 0), so clients are
  tested exactly as in production; tests drive the store through Python
  methods (``add_product``, ``online_order``, ...) or the ``/_sim/`` admin
  routes, never by reaching into the client.
- Stock writes are NOT atomic: a REST write reads the stock, waits
  ``write_window`` seconds (the PHP request), then writes the value computed
  from what it read, so two overlapping writes to one product lose an update
  exactly as WooCommerce does. Orders and refunds use the SQL path and are
  atomic.
- Every save bumps ``date_modified_gmt`` (1-second resolution, even for a
  no-op write) and fires ``product.updated`` for the saved object; a
  variation's save also bumps its parent's date but fires nothing for it.
  ``modified_after`` is strictly after, at 1-second resolution.
- Webhook payloads are built at send time. Async delivery (the default) waits
  ``Faults.webhook_delay`` and coalesces pending deliveries per (webhook,
  resource id); sync delivery sends the events of one request before its
  response. No retries; a response outside 200-302 is a failure, and the 7th
  consecutive failure disables the webhook. Bodies are PHP-style JSON
  (``\\/`` escaped), signed with base64 HMAC-SHA256 of the raw bytes.
- Auth: Basic or query-string keys when ``https`` (is_ssl() true); otherwise
  only OAuth 1.0a one-legged. Key permissions are enforced. Errors are
  ``{"code", "message", "data": {"status"}}``.
- The simulated clock (``clock``) is injectable so tests can put two changes
  in the same second without sleeping.
- Companion mode (``companion=True``) serves the WordPress companion's routes
  (``wordpress/cloverwoo-companion.php``) under ``/wp-json/wc-cloverwoo/v1``
  with its semantics: each change goes through the atomic path orders use,
  its write id remembered with the result, so a resend is a no-op answering
  the same; ``POST .../settings`` switches webhooks to synchronous delivery.
  Without it those routes answer 404 ``rest_no_route``, as a store without
  the file does.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import msgspec
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from cloverwoo_daemon.core import oauth1
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.sim.common import FaultInjector, Faults, serve_app

API = "/wp-json/wc/v3"
COMPANION_API = "/wp-json/wc-cloverwoo/v1"
COMPANION_VERSION = "1.0.0"  # the version wordpress/cloverwoo-companion.php reports
_WRITE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
BATCH_LIMIT = 100
OAUTH_WINDOW = 15 * 60
MAX_WEBHOOK_FAILURES = 5  # woocommerce_max_webhook_delivery_failures: the 7th failure disables
USER_AGENT = "WooCommerce/11.0.1 Hookshot (WordPress/7.0.4)"
_VALID_RESOURCES = {"coupon", "customer", "order", "product"}
_VALID_EVENTS = {"created", "updated", "deleted", "restored"}


class ApiError(Exception):
    """A WP REST error answer: ``{"code", "message", "data": {"status", ...}}``."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}}


def _invalid_param(name: str, why: str) -> ApiError:
    return ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: why})


def _intval(value: Any) -> int:
    """PHP ``intval``, which is what ``wc_stock_amount`` applies: truncates, parses a leading integer."""
    if value is None:
        return 0
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    text = str(value).strip()
    digits = ""
    for i, ch in enumerate(text):
        if ch.isdigit() or (i == 0 and ch in "+-"):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0


def _is_integer(value: Any) -> bool:
    """WP ``rest_is_integer``: numeric, and a whole number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f == round(f)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _fmt(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))


def _parse_date(name: str, text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _invalid_param(name, "Invalid date.") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())  # MySQL DATETIME: whole seconds


def php_json(payload: Any) -> bytes:
    """``wp_json_encode`` as WooCommerce sends it: compact, ``\\/`` and ``\\uXXXX`` escaped."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode("ascii")


def webhook_signature(body: bytes, secret: str) -> str:
    """What ``X-WC-Webhook-Signature`` carries: base64 HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode("ascii")


# --------------------------------------------------------------------------
# Public records tests inspect


class StockWrite(msgspec.Struct, frozen=True):
    """One save that touched stock (even when the number did not change)."""

    product_id: int
    before: int | None
    after: int | None
    source: str  # rest, batch, order, refund, admin
    ts: float


class LostUpdate(msgspec.Struct, frozen=True):
    """A REST stock write that erased a change landing inside its read-modify-write window.

    WooCommerce's REST controller loads the product (``read``), and saves the
    stock it computed from that load; a checkout or refund that went through
    the atomic SQL path meanwhile (``replaced`` differs from ``read``) is gone.
    ``lost`` is that change in units (a checkout: negative).
    """

    product_id: int
    read: int | None
    replaced: int | None
    written: int | None
    lost: int
    window: float  # seconds from the load to the save (the simulated clock)
    source: str  # rest | batch
    at: float = 0.0  # when it saved (the simulated clock: unix seconds unless a test injects one)


class Delivery(msgspec.Struct, frozen=True):
    """One webhook send attempt (pings included, topic ``ping``)."""

    webhook_id: int
    topic: str
    resource_id: int
    status: int | None  # None: connection error or timeout
    body: bytes
    headers: dict[str, str]


class Latency(msgspec.Struct, kw_only=True):
    """Seconds each kind of call takes before it answers (mutable: tests tune it)."""

    get_one: float = 0.0
    list_page: float = 0.0
    put: float = 0.0  # includes the write window
    batch_item: float = 0.0  # per item; the item's read-modify-write window
    other: float = 0.0


# --------------------------------------------------------------------------
# Internal mutable state (the "database")


@dataclass
class _Product:
    id: int
    name: str
    type: str  # simple | variable | variation
    created: int
    modified: int
    status: str = "publish"
    sku: str = ""
    price: str = "10.00"
    manage_stock: bool = False
    stock_quantity: int | None = None
    stock_status: str = "instock"
    backorders: str = "no"
    low_stock_amount: int | None = None
    catalog_visibility: str = "visible"  # products only (the out-of-stock "hide" behaviour)
    parent_id: int = 0
    variations: list[int] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _LineItem:
    id: int
    product_id: int
    variation_id: int
    quantity: int
    name: str
    sku: str
    price: str
    meta: list[dict[str, Any]] = field(default_factory=list)

    def reduced(self) -> int | None:
        for m in self.meta:
            if m["key"] == "_reduced_stock":
                return _intval(m["value"])
        return None

    def set_reduced(self, qty: int | None, next_meta_id: Callable[[], int]) -> None:
        self.meta = [m for m in self.meta if m["key"] != "_reduced_stock"]
        if qty:
            self.meta.append({"id": next_meta_id(), "key": "_reduced_stock", "value": str(qty)})


@dataclass
class _Order:
    id: int
    status: str
    created: int
    modified: int
    line_items: list[_LineItem]
    refunds: list[dict[str, Any]] = field(default_factory=list)
    stock_reduced: bool = False
    paid: int | None = None  # date_paid_gmt
    notes: list[dict[str, Any]] = field(default_factory=list)  # order notes (WooCommerce's own, e.g. stock)


@dataclass
class _Webhook:
    id: int
    name: str
    topic: str
    delivery_url: str
    secret: str
    created: int
    modified: int
    status: str = "active"
    failure_count: int = 0
    pending_delivery: bool = True


@dataclass
class _Key:
    secret: str
    permission: str  # read | write | read_write
    nonces: dict[int, str] = field(default_factory=dict)


_SCOPE: contextvars.ContextVar[list[tuple[int, str, int]] | None] = contextvars.ContextVar("wc_scope", default=None)


def _settings_defaults() -> dict[str, dict[str, Any]]:
    def opt(id_: str, label: str, type_: str, default: str) -> dict[str, Any]:
        return {"id": id_, "label": label, "description": "", "type": type_, "default": default, "value": default}

    items = [
        opt("woocommerce_manage_stock", "Manage stock", "checkbox", "yes"),
        opt("woocommerce_hold_stock_minutes", "Hold stock (minutes)", "number", "60"),
        opt("woocommerce_notify_low_stock", "Notifications", "checkbox", "yes"),
        opt("woocommerce_notify_no_stock", "Out of stock notifications", "checkbox", "yes"),
        opt("woocommerce_notify_low_stock_amount", "Low stock threshold", "number", "2"),
        opt("woocommerce_notify_no_stock_amount", "Out of stock threshold", "number", "0"),
        opt("woocommerce_hide_out_of_stock_items", "Out of stock visibility", "checkbox", "no"),
        opt("woocommerce_stock_format", "Stock display format", "select", ""),
    ]
    return {o["id"]: o for o in items}


class WooSim:
    """One simulated store. Mutable on purpose: tests change it while the daemon runs.

    Resource handling: ``run`` owns the HTTP server, the webhook sender's
    ``httpx.AsyncClient`` and the nursery that holds pending deliveries;
    cancelling it stops all three.
    """

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        https: bool = True,
        write_window: float = 0.0,
        async_webhooks: bool = True,
        latency: Latency | None = None,
        store_wide_variations: bool = True,
        webhook_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        companion: bool = False,
    ) -> None:
        self.injector = FaultInjector(faults)
        self.https = https
        self.write_window = write_window
        self.async_webhooks = async_webhooks
        self.latency = latency or Latency()
        self.store_wide_variations = store_wide_variations  # False: a WooCommerce before 10.3
        self.webhook_timeout = webhook_timeout
        self.clock = clock
        self.base_url = ""
        self.consumer_key = "ck_" + secrets.token_hex(20)
        self.consumer_secret = "cs_" + secrets.token_hex(20)
        self._keys: dict[str, _Key] = {self.consumer_key: _Key(self.consumer_secret, "read_write")}
        self._products: dict[int, _Product] = {}
        # SKU (lower case) -> ids of the products and variations holding it, trashed ones included: the
        # uniqueness check and SKU lookups cost one dict probe, not a scan of the catalogue.
        self._skus: dict[str, set[int]] = {}
        self._orders: dict[int, _Order] = {}
        self._webhooks: dict[int, _Webhook] = {}
        self._settings = _settings_defaults()
        self._next_post = 10
        self._next_order = 1000
        self._next_webhook = 1
        self._next_line = 1
        self._next_meta = 1
        self._pending: set[tuple[int, int]] = set()
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight_seen = 0  # API requests being handled at once (tests check a client's cap)
        self.stock_writes: list[StockWrite] = []
        self.lost_updates: list[LostUpdate] = []  # REST stock writes that erased a concurrent change
        self.php_runs_on = True  # a batch write goes on to its end after its client hung up, as PHP does
        self.batch_queue_delays: list[float] = []  # the next /products/batch requests wait this long to start
        self.deliveries: list[Delivery] = []
        self.deliveries_dropped = 0
        # The WordPress companion (off: its routes answer 404 rest_no_route, as without the file)
        self.companion = companion
        self.companion_writes: dict[str, dict[str, Any]] = {}  # write id -> the recorded change and result
        self.companion_lose_answers = 0  # the next N /stock answers are replaced by a 503 after applying
        self.write_ids_kept_days = 30
        self._async_before_sync: bool | None = None  # async_webhooks before the companion made them sync
        self.app = self._build_app()

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @classmethod
    def realistic(cls, **kwargs: Any) -> WooSim:
        """Latencies of the section-9 medians (2 vCPU, PHP built-in server) and a ~70 ms write window."""
        kwargs.setdefault("latency", Latency(get_one=0.050, list_page=0.257, put=0.072, batch_item=0.020, other=0.050))
        kwargs.setdefault("write_window", 0.070)
        return cls(**kwargs)

    # ------------------------------------------------------------------
    # Running

    async def run(
        self, *, host: str = "127.0.0.1", port: int = 0, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the API and send webhooks until cancelled; reports the base URL (``http://host:port``)."""
        async with httpx.AsyncClient(timeout=self.webhook_timeout, follow_redirects=False) as http:
            async with trio.open_nursery() as nursery:
                self._http = http
                self._nursery = nursery
                try:
                    url = await nursery.start(partial(serve_app, self.app, host=host, port=port))
                    self.base_url = str(url).rstrip("/")
                    task_status.started(self.base_url)
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._http = None

    @property
    def api_url(self) -> str:
        return self.base_url + API

    def add_key(self, permission: str = "read_write") -> tuple[str, str]:
        """A new API key with ``read``, ``write`` or ``read_write`` permission; returns (key, secret)."""
        ck, cs = "ck_" + secrets.token_hex(20), "cs_" + secrets.token_hex(20)
        self._keys[ck] = _Key(cs, permission)
        return ck, cs

    def _now(self) -> int:
        return int(self.clock())

    def _meta_id(self) -> int:
        self._next_meta += 1
        return self._next_meta

    # ------------------------------------------------------------------
    # Simulation actions (what happens in the store without the daemon)

    def add_product(
        self,
        name: str,
        *,
        sku: str = "",
        stock: int | None = 0,
        manage_stock: bool = True,
        backorders: str = "no",
        status: str = "publish",
        price: str = "10.00",
    ) -> WooRef:
        """A simple product, as the merchant creates it in wp-admin."""
        p = self._create_product(
            {"name": name, "type": "simple", "sku": sku, "manage_stock": manage_stock, "stock_quantity": stock,
             "backorders": backorders, "status": status, "regular_price": price}
        )
        return WooRef(p.id)

    def add_variable_product(
        self,
        name: str,
        variations: dict[str, int | None],
        *,
        attribute: str = "Size",
        sku: str = "",
        manage_stock: bool = True,
        backorders: str = "no",
    ) -> list[WooRef]:
        """A variable product with one variation per ``{option: stock}`` (SKU ``<sku>-<option>``)."""
        parent = self._create_product(
            {"name": name, "type": "variable", "sku": sku,
             "attributes": [{"name": attribute, "options": list(variations), "variation": True}]}
        )
        refs = []
        for option, stock in variations.items():
            v = self._create_variation(
                parent,
                {"sku": f"{sku}-{option}" if sku else "", "manage_stock": manage_stock and stock is not None,
                 "stock_quantity": stock, "backorders": backorders,
                 "attributes": [{"name": attribute, "option": option}]},
            )
            refs.append(WooRef(parent.id, v.id))
        return refs

    def online_order(self, items: dict[WooRef | int | str, int], *, set_paid: bool = True) -> int:
        """A checkout: a REST order with ``set_paid`` (reduces stock, fires order.created + product.updated)."""
        line_items = []
        for ref, qty in items.items():
            p = self._resolve(ref)
            line_items.append({"product_id": p.parent_id or p.id, "variation_id": p.id if p.parent_id else 0,
                               "quantity": qty})
        return self._create_order({"line_items": line_items, "set_paid": set_paid}).id

    def refund(self, order_id: int, items: dict[WooRef | int | str, int] | None = None, *, restock: bool = True) -> int:
        """A refund of ``{ref: qty}`` (every line in full when None); restocks like ``api_restock``."""
        order = self._order(order_id)
        lines = []
        for li in order.line_items:
            target = self._products.get(li.variation_id or li.product_id)
            if items is None:
                lines.append({"id": li.id, "quantity": li.quantity})
                continue
            for ref, qty in items.items():
                if target is not None and self._resolve(ref).id == target.id:
                    lines.append({"id": li.id, "quantity": qty})
        return int(self._create_refund(order, {"line_items": lines, "api_restock": restock})["id"])

    def set_order_status(self, order_id: int, status: str) -> None:
        self._update_order(self._order(order_id), {"status": status})

    def admin_set_stock(self, ref: WooRef | int | str, quantity: int) -> None:
        """The merchant types a number in wp-admin and saves: absolute, fires product.updated."""
        p = self._resolve(ref)
        before = p.stock_quantity
        if p.manage_stock:
            p.stock_quantity = quantity
        self._saved(p, source="admin", stock_before=before)

    def trash_product(self, ref: WooRef | int | str) -> None:
        p = self._resolve(ref)
        p.status = "trash"
        p.modified = self._now()
        self._fire("product", "deleted", p.id)

    def stock(self, ref: WooRef | int | str) -> int | None:
        return self._resolve(ref).stock_quantity

    def product(self, ref: WooRef | int | str) -> dict[str, Any]:
        """The REST representation (``GET /products/{id}``) of a product or variation."""
        return self._product_json(self._resolve(ref))

    def stock_writes_for(self, ref: WooRef | int | str) -> list[StockWrite]:
        pid = self._resolve(ref).id
        return [w for w in self.stock_writes if w.product_id == pid]

    def webhook(self, webhook_id: int) -> dict[str, Any]:
        return self._webhook_json(self._webhooks[webhook_id])

    def _resolve(self, ref: WooRef | int | str) -> _Product:
        if isinstance(ref, WooRef):
            pid = ref.variation_id or ref.product_id
        elif isinstance(ref, int):
            pid = ref
        else:
            if ref.startswith("woo:"):
                _, p, v = ref.split(":")
                pid = int(v) or int(p)
            else:
                found = self._with_sku(ref)
                if not found:
                    raise KeyError(ref)
                pid = found[0].id
        return self._products[pid]

    # ------------------------------------------------------------------
    # The data layer

    def _create_product(self, body: dict[str, Any]) -> _Product:
        ptype = body.get("type", "simple")
        if ptype not in ("simple", "variable", "grouped", "external"):
            raise _invalid_param("type", "type is not one of simple, grouped, external, and variable.")
        sku = str(body.get("sku") or "")
        self._check_sku(sku, None)
        now = self._now()
        self._next_post += 1
        p = _Product(id=self._next_post, name=str(body.get("name", "Product")), type=ptype, created=now, modified=now,
                     sku=sku, status=str(body.get("status", "publish")),
                     price=str(body.get("regular_price") or "10.00"))
        for a in body.get("attributes", []) or []:
            p.attributes.append({"id": 0, "name": a.get("name", ""), "position": len(p.attributes),
                                 "visible": True, "variation": bool(a.get("variation", ptype == "variable")),
                                 "options": list(a.get("options", []))})
        self._apply_plain_fields(p, body)
        self._apply_stock_fields(p, body, before=None)
        self._products[p.id] = p
        self._index_sku(p)
        self._recompute_status(p)
        self._fire("product", "created", p.id)
        return p

    def _create_variation(self, parent: _Product, body: dict[str, Any]) -> _Product:
        sku = str(body.get("sku") or "")
        self._check_sku(sku, None)
        now = self._now()
        self._next_post += 1
        attrs = [{"id": 0, "name": a.get("name", ""), "option": a.get("option", "")}
                 for a in body.get("attributes", []) or []]
        v = _Product(id=self._next_post, name=parent.name, type="variation", created=now, modified=now,
                     sku=sku, parent_id=parent.id, attributes=attrs,
                     price=str(body.get("regular_price") or parent.price))
        if attrs:
            v.name = f"{parent.name} - {', '.join(a['option'] for a in attrs)}"
        self._apply_plain_fields(v, body)
        self._apply_stock_fields(v, body, before=None)
        self._products[v.id] = v
        self._index_sku(v)
        parent.variations.append(v.id)
        parent.modified = now
        self._recompute_status(v)
        self._recompute_status(parent)
        self._fire("product", "created", v.id)
        return v

    def _check_sku(self, sku: str, own_id: int | None) -> None:
        """``wc_product_has_unique_sku``: another product or variation not in the trash holds it: 400."""
        if not sku:
            return
        for p in self._with_sku(sku):
            if p.id != own_id and p.status != "trash":
                raise ApiError(400, "product_invalid_sku", "Invalid or duplicated SKU.", resource_id=p.id)

    def _with_sku(self, sku: str) -> list[_Product]:
        """Every product and variation whose SKU is ``sku`` (case-insensitive), trashed ones too, by id."""
        key = sku.lower()
        found = []
        for pid in sorted(self._skus.get(key, ())):
            p = self._products.get(pid)
            if p is not None and p.sku and p.sku.lower() == key:
                found.append(p)
        return found

    def _sku_query(self, arg: str) -> list[_Product]:
        """The candidates of a ``sku=A,B`` list query, by id (``_filter_sort`` still applies its filters)."""
        found = {p.id: p for s in arg.split(",") if s for p in self._with_sku(s)}
        return [found[pid] for pid in sorted(found)]

    def _index_sku(self, p: _Product) -> None:
        if p.sku:
            self._skus.setdefault(p.sku.lower(), set()).add(p.id)

    def _unindex_sku(self, p: _Product) -> None:
        key = p.sku.lower()
        ids = self._skus.get(key)
        if ids is not None:
            ids.discard(p.id)
            if not ids:
                del self._skus[key]

    def _apply_plain_fields(self, p: _Product, body: dict[str, Any]) -> None:
        if "name" in body and p.type != "variation":
            p.name = str(body["name"])
        if "status" in body:
            p.status = str(body["status"])
        if "sku" in body and str(body["sku"] or "") != p.sku:
            self._check_sku(str(body["sku"] or ""), p.id)
            self._unindex_sku(p)
            p.sku = str(body["sku"] or "")
            if p.id in self._products:  # (a product being created is indexed once it is stored)
                self._index_sku(p)
        if body.get("regular_price"):
            p.price = str(body["regular_price"])
        if "catalog_visibility" in body and p.type != "variation":  # out-of-stock "hide"
            p.catalog_visibility = str(body["catalog_visibility"])
        if "low_stock_amount" in body:
            p.low_stock_amount = None if body["low_stock_amount"] in (None, "") else _intval(body["low_stock_amount"])
        for m in body.get("meta_data", []) or []:
            if not isinstance(m, dict) or "key" not in m:
                continue
            if m.get("value") is None:
                # update_meta_data(key, null) nulls every entry of the key and save_meta_data() deletes them
                # (WC_Data); a key that was never there stays absent.
                p.meta = [e for e in p.meta if e["key"] != m["key"]]
                continue
            for existing in p.meta:
                if existing["key"] == m["key"]:
                    existing["value"] = m.get("value")
                    break
            else:
                p.meta.append({"id": self._meta_id(), "key": m["key"], "value": m.get("value")})

    def _apply_stock_fields(self, p: _Product, body: dict[str, Any], *, before: int | None) -> bool:
        """The products controller's stock rules; ``before`` is the stock as read at request start.

        Returns True when the save touched stock (so it counts as a stock write).
        """
        if self._settings["woocommerce_manage_stock"]["value"] != "yes":
            return False
        touched = False
        if "manage_stock" in body and body["manage_stock"] != "parent":
            p.manage_stock = _as_bool(body["manage_stock"])
            touched = True
        if body.get("backorders") in ("no", "notify", "yes"):
            p.backorders = body["backorders"]
        if not p.manage_stock:
            if "stock_status" in body and body["stock_status"] in ("instock", "outofstock", "onbackorder"):
                p.stock_status = body["stock_status"]
            p.stock_quantity = None
            return touched
        if body.get("stock_quantity") is not None:
            p.stock_quantity = _intval(body["stock_quantity"])
            return True
        if "inventory_delta" in body:
            p.stock_quantity = _intval(before) + _intval(body["inventory_delta"])
            return True
        if p.stock_quantity is None:
            p.stock_quantity = 0
        return touched

    def _recompute_status(self, p: _Product) -> None:
        if p.type == "variable":
            kids = [self._products[v] for v in p.variations if v in self._products]
            if kids:
                p.stock_status = "instock" if any(k.stock_status == "instock" for k in kids) else (
                    "onbackorder" if any(k.stock_status == "onbackorder" for k in kids) else "outofstock")
            return
        if not p.manage_stock:
            return
        no_stock = _intval(self._settings["woocommerce_notify_no_stock_amount"]["value"])
        if (p.stock_quantity or 0) > no_stock:
            p.stock_status = "instock"
        elif p.backorders != "no":
            p.stock_status = "onbackorder"
        else:
            p.stock_status = "outofstock"

    def _saved(self, p: _Product, *, source: str, stock_before: int | None, stock_touched: bool = True) -> None:
        """After any save: bump dates, recompute status, record the stock write, fire product.updated."""
        now = self._now()
        p.modified = now
        self._recompute_status(p)
        if p.parent_id and p.parent_id in self._products:
            parent = self._products[p.parent_id]
            parent.modified = now
            self._recompute_status(parent)
        if stock_touched:
            self.stock_writes.append(StockWrite(p.id, stock_before, p.stock_quantity, source, self.clock()))
        self._fire("product", "updated", p.id)

    async def _rest_update(self, p: _Product, body: dict[str, Any], *, source: str, window: float) -> None:
        """One REST update of a product or variation: read, the PHP request's window, write."""
        before = p.stock_quantity  # WC_Product loaded at request start
        started = self.clock()
        if window > 0:
            await trio.sleep(window)
        self._apply_plain_fields(p, body)
        replaced = p.stock_quantity
        touched = self._apply_stock_fields(p, body, before=before)
        relative = body.get("stock_quantity") is None and "inventory_delta" in body  # computed from the load
        if relative and touched and replaced != before and p.manage_stock and None not in (replaced, before):
            assert replaced is not None and before is not None
            self.lost_updates.append(LostUpdate(p.id, before, replaced, p.stock_quantity, replaced - before,
                                                self.clock() - started, source, self.clock()))
        self._saved(p, source=source, stock_before=before, stock_touched=touched)

    def _stock_holder(self, p: _Product) -> _Product:
        """``get_stock_managed_by_id``: a variation without its own stock uses the parent's."""
        if p.type == "variation" and not p.manage_stock and p.parent_id in self._products:
            parent = self._products[p.parent_id]
            if parent.manage_stock:
                return parent
        return p

    def _change_stock_atomic(self, p: _Product, delta: int, source: str) -> None:
        """``wc_update_product_stock`` (orders, refunds): the atomic SQL path, then a save."""
        holder = self._stock_holder(p)
        if not holder.manage_stock or self._settings["woocommerce_manage_stock"]["value"] != "yes":
            return
        before = holder.stock_quantity
        holder.stock_quantity = (before or 0) + delta
        self._saved(holder, source=source, stock_before=before)

    def _product(self, pid: int, status: int = 404) -> _Product:
        """A missing id is 404 to a read or a delete, 400 to an update (WooCommerce's own split)."""
        p = self._products.get(pid)
        if p is None:
            raise ApiError(status, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return p

    def _variation(self, pid: int, vid: int) -> _Product:
        v = self._products.get(vid)
        if v is None or v.type != "variation" or v.parent_id != pid:
            raise ApiError(404, "woocommerce_rest_product_variation_invalid_id", "Invalid ID.")
        return v

    def _order(self, oid: int, status: int = 404) -> _Order:
        o = self._orders.get(oid)
        if o is None:
            message = "Invalid ID." if status == 404 else "ID is invalid."
            raise ApiError(status, "woocommerce_rest_shop_order_invalid_id", message)
        return o

    # Orders ------------------------------------------------------------

    def _create_order(self, body: dict[str, Any]) -> _Order:
        lines = []
        for item in body.get("line_items", []) or []:
            pid, vid = _intval(item.get("product_id")), _intval(item.get("variation_id"))
            target = self._products.get(vid or pid)
            if target is None or (vid and target.parent_id != pid and pid):
                raise ApiError(400, "woocommerce_rest_invalid_product_id", "Product ID provided is invalid.")
            if target.type == "variation":
                pid, vid = target.parent_id, target.id
            self._next_line += 1
            lines.append(_LineItem(id=self._next_line, product_id=pid, variation_id=vid,
                                   quantity=_intval(item.get("quantity", 1)), name=target.name, sku=target.sku,
                                   price=target.price))
        now = self._now()
        self._next_order += 1
        order = _Order(id=self._next_order, status="pending", created=now, modified=now, line_items=lines)
        self._orders[order.id] = order
        self._fire("order", "created", order.id)
        status = "processing" if _as_bool(body.get("set_paid", False)) else str(body.get("status", "pending"))
        self._set_status(order, status)
        return order

    def _set_status(self, order: _Order, status: str) -> None:
        order.status = status
        order.modified = self._now()
        if status in ("processing", "completed") and order.paid is None:
            order.paid = order.modified  # payment_complete sets the paid date
        if status in ("processing", "completed", "on-hold") and not order.stock_reduced:
            order.stock_reduced = True
            changes = []
            for li in order.line_items:
                p = self._products.get(li.variation_id or li.product_id)
                if p is None or li.reduced() is not None or not self._stock_holder(p).manage_stock:
                    continue
                before = self._stock_holder(p).stock_quantity
                self._change_stock_atomic(p, -li.quantity, "order")
                li.set_reduced(li.quantity, self._meta_id)
                changes.append(f"{li.name} ({before or 0}&rarr;{self._stock_holder(p).stock_quantity})")
            if changes:  # wc_reduce_stock_levels' note, figures from its own SQL
                self._note(order, "Stock levels reduced: " + ", ".join(changes))
        elif status in ("cancelled", "pending") and order.stock_reduced:
            order.stock_reduced = False
            for li in order.line_items:
                p = self._products.get(li.variation_id or li.product_id)
                qty = li.reduced()
                if p is None or not qty:
                    continue
                self._change_stock_atomic(p, qty, "order")
                li.set_reduced(None, self._meta_id)

    def _note(self, order: _Order, text: str) -> None:
        self._next_meta += 1
        order.notes.append({"id": self._next_meta, "author": "WooCommerce", "date_created_gmt": _fmt(self._now()),
                            "note": text, "customer_note": False})

    def _update_order(self, order: _Order, body: dict[str, Any]) -> None:
        if "status" in body:
            self._set_status(order, str(body["status"]))
        order.modified = self._now()
        self._fire("order", "updated", order.id)

    def _create_refund(self, order: _Order, body: dict[str, Any]) -> dict[str, Any]:
        restock = body.get("api_restock", True)
        restock = restock if isinstance(restock, bool) else True
        by_id = {li.id: li for li in order.line_items}
        refunded = []
        amount = 0.0
        for item in body.get("line_items", []) or []:
            li = by_id.get(_intval(item.get("id")))
            qty = _intval(item.get("quantity", 0))
            if li is None:
                raise ApiError(400, "woocommerce_rest_invalid_line_item_id", "Invalid line item ID.")
            amount += float(item.get("refund_total", float(li.price) * qty))
            refunded.append({"id": li.id, "name": li.name, "product_id": li.product_id,
                             "variation_id": li.variation_id, "quantity": -qty, "sku": li.sku})
            reduced = li.reduced()
            p = self._products.get(li.variation_id or li.product_id)
            if restock and qty and reduced and p is not None and self._stock_holder(p).manage_stock:
                self._change_stock_atomic(p, qty, "refund")
                li.set_reduced(max(0, reduced - qty), self._meta_id)
        if body.get("amount") is not None:
            amount = float(body["amount"])
        self._next_order += 1
        refund = {"id": self._next_order, "date_created_gmt": _fmt(self._now()), "amount": f"{amount:.2f}",
                  "reason": str(body.get("reason", "")), "refunded_by": 1, "refunded_payment": False,
                  "line_items": refunded}
        order.refunds.append({"id": refund["id"], "reason": refund["reason"], "total": f"-{amount:.2f}"})
        order.modified = self._now()
        self._fire("order", "updated", order.id)
        return refund

    # ------------------------------------------------------------------
    # REST representations

    def _links(self, path: str) -> dict[str, Any]:
        return {"self": [{"href": f"{self.api_url}{path}"}], "collection": [{"href": f"{self.api_url}/products"}]}

    def _meta_json(self, p: _Product) -> list[dict[str, Any]]:
        return [dict(m) for m in p.meta]

    def _product_json(self, p: _Product) -> dict[str, Any]:
        """The product schema (also for a variation, as ``GET /products/<variation_id>`` and webhooks give it)."""
        return {
            "id": p.id, "name": p.name, "slug": p.name.lower().replace(" ", "-"),
            "permalink": f"{self.base_url}/?p={p.id}",
            "date_created": _fmt(p.created), "date_created_gmt": _fmt(p.created),
            "date_modified": _fmt(p.modified), "date_modified_gmt": _fmt(p.modified),
            "type": p.type, "status": p.status, "featured": False, "catalog_visibility": p.catalog_visibility,
            "description": "", "short_description": "", "sku": p.sku, "price": p.price,
            "regular_price": p.price, "sale_price": "", "on_sale": False, "purchasable": True, "total_sales": 0,
            "virtual": False, "downloadable": False, "tax_status": "taxable", "tax_class": "",
            "manage_stock": p.manage_stock, "stock_quantity": p.stock_quantity if p.manage_stock else None,
            "stock_status": p.stock_status, "backorders": p.backorders,
            "backorders_allowed": p.backorders != "no",
            "backordered": p.stock_status == "onbackorder" or bool(
                p.manage_stock and (p.stock_quantity or 0) < 0 and p.backorders != "no"),
            "low_stock_amount": p.low_stock_amount, "sold_individually": False, "weight": "",
            "parent_id": p.parent_id, "categories": [], "tags": [], "images": [],
            "attributes": [dict(a) for a in p.attributes], "default_attributes": [],
            "variations": list(p.variations), "menu_order": 0, "meta_data": self._meta_json(p),
            "_links": self._links(f"/products/{p.id}"),
        }

    def _variation_json(self, v: _Product) -> dict[str, Any]:
        """The variation schema (``/products/<pid>/variations/<id>`` and ``/variations``)."""
        parent = self._products.get(v.parent_id)
        manage: bool | str = v.manage_stock
        if not v.manage_stock and parent is not None and parent.manage_stock:
            manage = "parent"
        return {
            "id": v.id, "name": ", ".join(str(a.get("option", "")) for a in v.attributes), "type": "variation",
            "parent_id": v.parent_id,
            "date_created": _fmt(v.created), "date_created_gmt": _fmt(v.created),
            "date_modified": _fmt(v.modified), "date_modified_gmt": _fmt(v.modified),
            "description": "", "permalink": f"{self.base_url}/?p={v.parent_id}&variation={v.id}",
            "sku": v.sku, "price": v.price, "regular_price": v.price, "sale_price": "", "on_sale": False,
            "status": v.status, "purchasable": True, "virtual": False, "downloadable": False,
            "tax_status": "taxable", "tax_class": "", "manage_stock": manage,
            "stock_quantity": v.stock_quantity if v.manage_stock else None, "stock_status": v.stock_status,
            "backorders": v.backorders, "backorders_allowed": v.backorders != "no",
            "backordered": v.stock_status == "onbackorder" or bool(
                v.manage_stock and (v.stock_quantity or 0) < 0 and v.backorders != "no"),
            "low_stock_amount": v.low_stock_amount, "weight": "",
            "attributes": [dict(a) for a in v.attributes], "menu_order": 0, "meta_data": self._meta_json(v),
            "_links": self._links(f"/products/{v.parent_id}/variations/{v.id}"),
        }

    def _order_json(self, o: _Order) -> dict[str, Any]:
        total = sum(float(li.price) * li.quantity for li in o.line_items)
        return {
            "id": o.id, "parent_id": 0, "status": o.status, "currency": "USD", "version": "11.0.1",
            "date_created": _fmt(o.created), "date_created_gmt": _fmt(o.created),
            "date_modified": _fmt(o.modified), "date_modified_gmt": _fmt(o.modified),
            "date_paid": _fmt(o.paid) if o.paid is not None else None,
            "date_paid_gmt": _fmt(o.paid) if o.paid is not None else None,
            "total": f"{total:.2f}", "customer_id": 0, "set_paid": False,
            "line_items": [
                {"id": li.id, "name": li.name, "product_id": li.product_id, "variation_id": li.variation_id,
                 "quantity": li.quantity, "tax_class": "", "subtotal": f"{float(li.price) * li.quantity:.2f}",
                 "total": f"{float(li.price) * li.quantity:.2f}", "sku": li.sku, "price": float(li.price),
                 "meta_data": [dict(m, display_key=m["key"], display_value=m["value"]) for m in li.meta]}
                for li in o.line_items
            ],
            "refunds": [dict(r) for r in o.refunds],
            "_links": {"self": [{"href": f"{self.api_url}/orders/{o.id}"}]},
        }

    def _webhook_json(self, w: _Webhook) -> dict[str, Any]:
        resource, _, event = w.topic.partition(".")
        return {
            "id": w.id, "name": w.name, "status": w.status, "topic": w.topic, "resource": resource,
            "event": event, "hooks": [], "delivery_url": w.delivery_url,
            "date_created": _fmt(w.created), "date_created_gmt": _fmt(w.created),
            "date_modified": _fmt(w.modified), "date_modified_gmt": _fmt(w.modified),
            "_links": {"self": [{"href": f"{self.api_url}/webhooks/{w.id}"}]},
        }

    # ------------------------------------------------------------------
    # Webhooks: firing, coalescing, sending

    def _fire(self, resource: str, event: str, rid: int) -> None:
        topic = f"{resource}.{event}"
        if self._nursery is None or not self.faults.webhooks_enabled:
            return
        for wh in self._webhooks.values():
            if wh.status != "active" or wh.topic != topic:
                continue
            if self.async_webhooks:
                key = (wh.id, rid)
                if key in self._pending:  # one pending Action Scheduler action per (webhook, arg)
                    continue
                self._pending.add(key)
                self._nursery.start_soon(self._deliver_later, wh.id, topic, rid)
            else:
                scope = _SCOPE.get()
                if scope is None:
                    self._nursery.start_soon(self._deliver, wh.id, topic, rid)
                elif (wh.id, topic, rid) not in scope:  # is_already_processed() within one request
                    scope.append((wh.id, topic, rid))

    async def _deliver_later(self, wh_id: int, topic: str, rid: int) -> None:
        try:
            if self.faults.webhook_delay > 0:
                await trio.sleep(self.faults.webhook_delay)
        finally:
            self._pending.discard((wh_id, rid))  # a running action does not block a new one
        await self._deliver(wh_id, topic, rid)

    def _payload(self, topic: str, rid: int) -> Any:
        resource, _, event = topic.partition(".")
        if event == "deleted":
            return {"id": rid}
        try:
            if resource == "product":
                return self._product_json(self._product(rid))
            if resource == "order":
                return self._order_json(self._order(rid))
        except ApiError as exc:  # the internal GET failed: the payload is that error
            return exc.body()
        return {"id": rid}

    async def _deliver(self, wh_id: int, topic: str, rid: int) -> None:
        wh = self._webhooks.get(wh_id)
        if wh is None or wh.status != "active" or not self.faults.webhooks_enabled or self._http is None:
            return
        rng = self.injector.rng
        if self.faults.webhook_drop_rate and rng.random() < self.faults.webhook_drop_rate:
            self.deliveries_dropped += 1
            return
        if wh.pending_delivery:  # a webhook whose ping never got a 200 pings again on each delivery
            await self._ping(wh)
        copies = 2 if self.faults.webhook_duplicate_rate and rng.random() < self.faults.webhook_duplicate_rate else 1
        for _ in range(copies):
            body = php_json(self._payload(topic, rid))  # built at send time
            resource, _, event = topic.partition(".")
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-WC-Webhook-Source": self.base_url + "/",
                "X-WC-Webhook-Topic": topic,
                "X-WC-Webhook-Resource": resource,
                "X-WC-Webhook-Event": event,
                "X-WC-Webhook-Signature": webhook_signature(body, wh.secret),
                "X-WC-Webhook-ID": str(wh.id),
                "X-WC-Webhook-Delivery-ID": hashlib.md5(f"{wh.id}{self._now()}".encode()).hexdigest(),
            }
            status = await self._post(wh, topic, rid, body, headers)
            if status is not None and 200 <= status < 303:
                wh.failure_count = 0
            elif wh.failure_count > MAX_WEBHOOK_FAILURES:
                wh.status = "disabled"
                return
            else:
                wh.failure_count += 1

    async def _post(self, wh: _Webhook, topic: str, rid: int, body: bytes, headers: dict[str, str]) -> int | None:
        assert self._http is not None
        try:
            resp = await self._http.post(wh.delivery_url, content=body, headers=headers)
            status: int | None = resp.status_code
        except (httpx.HTTPError, httpx.InvalidURL):  # WC logs a WP_Error as a failed delivery
            status = None
        self.deliveries.append(Delivery(wh.id, topic, rid, status, body, headers))
        return status

    async def _ping(self, wh: _Webhook) -> None:
        """``deliver_ping``: ``webhook_id=N`` form-encoded, unsigned; only exactly 200 clears pending_delivery."""
        if self._http is None:
            return
        body = f"webhook_id={wh.id}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT}
        status = await self._post(wh, "ping", 0, body, headers)
        if status == 200:
            wh.pending_delivery = False

    # ------------------------------------------------------------------
    # The WordPress companion (companion mode)

    def _companion_status(self) -> dict[str, Any]:
        return {"companion": COMPANION_VERSION, "woocommerce": "11.0.1", "wordpress": "7.0.4", "php": "8.2.36",
                "sync_webhooks": not self.async_webhooks, "sync_webhooks_setting": self._async_before_sync is not None,
                "write_ids_kept_days": self.write_ids_kept_days, "max_changes": BATCH_LIMIT, "transactional": True,
                "manage_stock": self._settings["woocommerce_manage_stock"]["value"] == "yes"}

    def _companion_settings(self, body: dict[str, Any]) -> None:
        unknown = set(body) - {"sync_webhooks", "write_ids_kept_days"}
        if not body or unknown:
            raise ApiError(400, "rest_invalid_param", "unknown setting(s): " + ", ".join(sorted(unknown)) if unknown
                           else "the body must be a JSON object with sync_webhooks and/or write_ids_kept_days")
        if "sync_webhooks" in body and not isinstance(body["sync_webhooks"], bool):
            raise ApiError(400, "rest_invalid_param", "sync_webhooks must be true or false")
        days = body.get("write_ids_kept_days", self.write_ids_kept_days)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise ApiError(400, "rest_invalid_param",
                           "write_ids_kept_days must be a whole number of days from 1 to 3650")
        self.write_ids_kept_days = days
        if body.get("sync_webhooks") is True and self._async_before_sync is None:
            self._async_before_sync, self.async_webhooks = self.async_webhooks, False
        elif body.get("sync_webhooks") is False and self._async_before_sync is not None:
            self.async_webhooks, self._async_before_sync = self._async_before_sync, None

    def _companion_change(self, change: Any) -> dict[str, Any]:
        """One change, as the companion applies it: validated, replayed by write id, or applied atomically."""
        write_id = change.get("write_id") if isinstance(change, dict) else None
        pid = change.get("product_id") if isinstance(change, dict) else None
        out: dict[str, Any] = {"write_id": write_id if isinstance(write_id, str) else None,
                               "product_id": pid if isinstance(pid, int) and not isinstance(pid, bool) else None}

        def refuse(code: str, message: str) -> dict[str, Any]:
            return {**out, "ok": False, "error": {"code": code, "message": message}}

        if not isinstance(change, dict):
            return refuse("cloverwoo_invalid_change", "each change must be an object {write_id, product_id, delta}")
        if not isinstance(write_id, str) or not 1 <= len(write_id) <= 64 or not set(write_id) <= _WRITE_ID_CHARS:
            return refuse("cloverwoo_invalid_write_id", "write_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
        if out["product_id"] is None or pid <= 0:
            return refuse("cloverwoo_invalid_product_id",
                          "product_id must be a positive whole number (a product or variation id)")
        delta = change.get("delta")
        if isinstance(delta, float) and math.isfinite(delta) and delta == int(delta):
            delta = int(delta)
        if isinstance(delta, float):
            return refuse("cloverwoo_decimal_delta", "delta must be a whole number: WooCommerce stock is an integer")
        if isinstance(delta, bool) or not isinstance(delta, int):
            return refuse("cloverwoo_invalid_delta", "delta must be a number")
        if delta == 0:
            return refuse("cloverwoo_zero_delta", "delta must not be 0 (a no-op write still fires product.updated)")
        seen = self.companion_writes.get(write_id)
        if seen is not None:
            if (seen["product_id"], seen["delta"]) != (pid, delta):
                return refuse("cloverwoo_write_id_reused",
                              f"write id already used for product {seen['product_id']} with delta {seen['delta']}")
            return {"write_id": write_id, "product_id": pid, "ok": True, "new": False, "delta": delta,
                    "stock": seen["stock"], "stock_product_id": seen["stock_product_id"]}
        p = self._products.get(pid)
        if p is None:
            return refuse("cloverwoo_unknown_product", f"no product or variation with id {pid}")
        if p.status == "trash":
            return refuse("cloverwoo_product_trashed", f"product {pid} is in the trash")
        holder = self._stock_holder(p)
        if not holder.manage_stock or self._settings["woocommerce_manage_stock"]["value"] != "yes":
            return refuse("cloverwoo_stock_not_managed",
                          f"product {pid} does not manage stock (or stock management is off in WooCommerce)")
        self._change_stock_atomic(p, delta, "companion")  # no await: nothing interleaves, as in one transaction
        self.companion_writes[write_id] = {"product_id": pid, "delta": delta, "stock": holder.stock_quantity,
                                           "stock_product_id": holder.id, "ts": self.clock()}
        return {"write_id": write_id, "product_id": pid, "ok": True, "new": True, "delta": delta,
                "stock": holder.stock_quantity, "stock_product_id": holder.id}

    def _companion_cleanup(self) -> None:
        oldest = self.clock() - self.write_ids_kept_days * 86400
        for wid in [w for w, rec in self.companion_writes.items() if rec["ts"] < oldest]:
            del self.companion_writes[wid]

    # ------------------------------------------------------------------
    # HTTP layer

    def _authenticate(self) -> None:
        """``WC_REST_Authentication``: Basic/query keys when HTTPS, then OAuth 1.0a; then permissions.

        Over HTTPS a Basic key that does not exist is no key at all (no error of
        its own), and OAuth is still tried after Basic found nobody, signed
        against the ``https://`` URL. Without credentials the route's own
        permission check answers (``_unauthenticated``).
        """
        args = request.args
        key: _Key | None = None
        if self.https:
            ck, cs = args.get("consumer_key"), args.get("consumer_secret")
            if not ck or not cs:
                auth = request.authorization
                if auth is not None and auth.type == "basic":
                    ck, cs = auth.username, auth.password
            found = self._keys.get(ck) if ck and cs else None
            if found is not None:
                if not hmac.compare_digest(found.secret, cs or ""):
                    raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
                key = found
        if key is None:
            key = self._authenticate_oauth()
        if key is None:
            raise self._unauthenticated()
        needs = "read" if request.method in ("GET", "HEAD") else "write"
        if key.permission not in (needs, "read_write"):
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           f"The API key provided does not have {needs} permissions.")

    def _unauthenticated(self) -> ApiError:
        """What a route's permission check answers a request without a user, by the route and the method."""
        rule = request.url_rule.rule if request.url_rule is not None else request.path
        single = rule.endswith(">") and "/settings/" not in rule  # settings say "list" even for one
        if rule.endswith("/batch"):
            return ApiError(401, "woocommerce_rest_cannot_batch",
                            "Sorry, you are not allowed to batch manipulate this resource.")
        if request.method in ("GET", "HEAD"):
            return ApiError(401, "woocommerce_rest_cannot_view",
                            "Sorry, you cannot view this resource." if single else "Sorry, you cannot list resources.")
        if request.method == "DELETE":
            return ApiError(401, "woocommerce_rest_cannot_delete",
                            "Sorry, you are not allowed to delete this resource.")
        if single:
            return ApiError(401, "woocommerce_rest_cannot_edit", "Sorry, you are not allowed to edit this resource.")
        return ApiError(401, "woocommerce_rest_cannot_create", "Sorry, you are not allowed to create resources.")

    def _authenticate_oauth(self) -> _Key | None:
        params = {k: v for k, v in request.args.items()}
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("oauth "):
            for part in header[6:].split(","):
                name, _, value = part.strip().partition("=")
                if name:
                    params[name] = unquote(value.strip().strip('"'))
        names = ["oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature", "oauth_signature_method"]
        missing = [n for n in names if not params.get(n)]
        if len(missing) == len(names):
            return None  # not even trying OAuth: unauthenticated
        if missing:
            raise ApiError(401, "woocommerce_rest_authentication_missing_parameter",
                           f"Missing OAuth parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        key = self._keys.get(params["oauth_consumer_key"])
        if key is None:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if params["oauth_signature_method"] not in ("HMAC-SHA1", "HMAC-SHA256"):
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - signature method is invalid.")
        params["oauth_signature"] = params["oauth_signature"].replace(" ", "+")
        url = self.base_url + request.path
        if self.https:  # get_home_url(..., is_ssl() ? 'https' : 'http')
            url = "https://" + url.split("://", 1)[1]
        if not oauth1.verify(request.method, url, params, key.secret):
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - provided signature does not match.")
        ts, now = _intval(params["oauth_timestamp"]), self._now()
        if ts < now - OAUTH_WINDOW or ts > now + OAUTH_WINDOW:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Invalid timestamp.")
        if params["oauth_nonce"] in key.nonces.values():
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid nonce - nonce has already been used.")
        key.nonces[ts] = params["oauth_nonce"]
        for old in [t for t in key.nonces if t < now - OAUTH_WINDOW]:
            del key.nonces[old]
        return key

    def _paginate(self, items: list[Any], path: str, render: Callable[[Any], Any] | None = None) -> Response:
        """One page of ``items``; ``render`` turns only that page into JSON (a real store does not build
        10,000 products to answer for 100, and neither should the simulator)."""
        args = request.args
        per_page = args.get("per_page", "10")
        if not _is_integer(per_page) or not 1 <= int(float(per_page)) <= 100:
            raise _invalid_param("per_page", "per_page must be between 1 (inclusive) and 100 (inclusive)")
        page_arg = args.get("page", "1")
        if not _is_integer(page_arg) or int(float(page_arg)) < 1:
            raise _invalid_param("page", "page must be greater than or equal to 1")
        per, page = int(float(per_page)), int(float(page_arg))
        total = len(items)
        pages = math.ceil(total / per) if total else 0
        chunk = items[(page - 1) * per : page * per]  # a page past the last is an empty 200
        if render is not None:
            chunk = [render(x) for x in chunk]
        fields = _requested_fields(args)
        if fields is not None:
            chunk = [{k: v for k, v in row.items() if k in fields} for row in chunk]
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        rest = [(k, v) for k, v in args.items(multi=True) if k not in ("page", "consumer_key", "consumer_secret")
                and not k.startswith("oauth_")]
        if page > 1 and pages:
            prev = min(page - 1, pages)
            links.append(f'<{self.api_url}{path}?{urlencode(rest + [("page", str(prev))])}>; rel="prev"')
        if page < pages:
            links.append(f'<{self.api_url}{path}?{urlencode(rest + [("page", str(page + 1))])}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return _json(chunk, 200, headers)

    def _filter_sort(self, items: list[_Product]) -> list[_Product]:
        """Shared list filters: include, sku, status, modified_after/before, orderby, order.

        ``items`` come in id order (every caller's source is: ids only grow and a product is stored
        once, at creation), so ``orderby=id`` needs no sort: a list of 50,000 products then costs a
        pass over them per page, not a sort.
        """
        args = request.args
        if args.get("include"):
            ids = {_intval(x) for x in args["include"].split(",")}
            items = [p for p in items if p.id in ids]
        if "sku" in args:
            wanted = {s.lower() for s in args["sku"].split(",") if s}
            items = [p for p in items if p.sku and p.sku.lower() in wanted]
        status = args.get("status", "any")
        if status == "any":
            items = [p for p in items if p.status not in ("trash", "auto-draft")]
        else:
            items = [p for p in items if p.status == status]
        if args.get("modified_after"):
            after = _parse_date("modified_after", args["modified_after"])
            items = [p for p in items if p.modified > after]
        if args.get("modified_before"):
            before = _parse_date("modified_before", args["modified_before"])
            items = [p for p in items if p.modified < before]
        orderby = args.get("orderby", "date")
        keys: dict[str, Callable[[_Product], Any]] = {
            "date": lambda p: (p.created, p.id), "id": lambda p: p.id, "modified": lambda p: (p.modified, p.id),
            "title": lambda p: (p.name, p.id), "include": lambda p: p.id, "slug": lambda p: (p.name, p.id),
        }
        if orderby not in keys:
            raise _invalid_param("orderby", "orderby is not one of " + ", ".join(keys) + ".")
        order = args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _invalid_param("order", "order is not one of asc and desc.")
        if orderby in ("id", "include"):
            return items if order == "asc" else items[::-1]
        return sorted(items, key=keys[orderby], reverse=order == "desc")

    async def _body(self) -> dict[str, Any]:
        data = await request.get_data()
        if not data:
            form = await request.form
            return dict(form)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise ApiError(400, "rest_invalid_json", "Invalid JSON body passed.") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "rest_invalid_json", "Invalid JSON body passed.")
        return body

    def _validate_update(self, body: dict[str, Any]) -> None:
        """Schema validation WordPress runs on a single request (batch items skip it)."""
        if body.get("stock_quantity") is not None and not _is_integer(body["stock_quantity"]):
            raise _invalid_param("stock_quantity", "stock_quantity is not of type integer.")
        if "backorders" in body and body["backorders"] not in ("no", "notify", "yes"):
            raise _invalid_param("backorders", "backorders is not one of no, notify, and yes.")
        if body.get("catalog_visibility", "visible") not in ("visible", "catalog", "search", "hidden"):
            raise _invalid_param("catalog_visibility",
                                 "catalog_visibility is not one of visible, catalog, search, and hidden.")

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await trio.sleep(seconds)

    async def _to_the_end(self, work: Any) -> Any:
        """Await ``work``; with ``php_runs_on`` it runs to its end even when the client hangs up.

        PHP does not stop a request whose client went away (it notices only
        when it writes output): a write whose answer the client gave up on
        (a timeout) may still land afterwards. Off, the request dies with its
        connection, as it does in a server that cancels the handler.
        """
        if not self.php_runs_on or self._nursery is None:
            return await work
        done = trio.Event()
        box: dict[str, Any] = {}

        async def run() -> None:
            try:
                box["result"] = await work
            except Exception as exc:  # handed to the request, if it is still there
                box["error"] = exc
            finally:
                done.set()

        self._nursery.start_soon(run)
        await done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]

    async def _queued(self, work: Any) -> Any:
        """``work`` after the next of ``batch_queue_delays``: the request waited for a free PHP worker."""
        if self.batch_queue_delays:
            await trio.sleep(self.batch_queue_delays.pop(0))
        return await work

    def _item_window(self) -> float:
        return self.latency.batch_item if self.latency.batch_item > 0 else self.write_window

    async def _batch(
        self, body: dict[str, Any], *, create: Callable[[dict[str, Any]], _Product],
        lookup: Callable[[int], _Product], render: Callable[[_Product], dict[str, Any]],
    ) -> dict[str, Any] | list[Any]:
        ops = {k: list(body.get(k) or []) for k in ("create", "update", "delete")}
        if sum(len(v) for v in ops.values()) > BATCH_LIMIT:
            raise ApiError(413, "woocommerce_rest_request_entity_too_large",
                           f"Unable to accept more than {BATCH_LIMIT} items for this request.")
        out: dict[str, Any] = {}
        if ops["create"]:
            out["create"] = []
            for item in ops["create"]:
                try:
                    out["create"].append(render(create(item)))
                except ApiError as exc:
                    out["create"].append({"id": 0, "error": exc.body()})
                await self._sleep(self.latency.batch_item)
        if ops["update"]:
            out["update"] = []
            for item in ops["update"]:
                item_id = _intval(item.get("id")) if isinstance(item, dict) else 0
                try:
                    p = lookup(item_id)
                    await self._rest_update(p, item, source="batch", window=self._item_window())
                    out["update"].append(render(p))
                except ApiError as exc:
                    out["update"].append({"id": item_id, "error": exc.body()})
        if ops["delete"]:
            out["delete"] = []
            for raw in ops["delete"]:
                item_id = _intval(raw)
                try:
                    p = lookup(item_id)
                    rendered = render(p)
                    self._delete(p)
                    out["delete"].append(rendered)
                except ApiError as exc:
                    out["delete"].append({"id": item_id, "error": exc.body()})
        return out or []  # PHP's empty array()

    def _delete(self, p: _Product) -> None:
        """A forced delete: gone for good (no product.deleted: that hook is wp_trash_post only)."""
        for vid in p.variations:
            v = self._products.pop(vid, None)
            if v is not None:
                self._unindex_sku(v)
        if p.parent_id in self._products:
            parent = self._products[p.parent_id]
            parent.variations = [v for v in parent.variations if v != p.id]
        if self._products.pop(p.id, None) is not None:
            self._unindex_sku(p)

    def _product_for_write(self, pid: int, status: int = 400) -> _Product:
        p = self._product(pid, status)
        if p.type == "variation":
            raise ApiError(404, "woocommerce_rest_invalid_product_id",
                           "To manipulate product variations you should use the "
                           "/products/&lt;product_id&gt;/variations/&lt;id&gt; endpoint.")
        return p

    def _build_app(self) -> QuartTrio:
        app = QuartTrio(__name__)
        sim = self

        @app.before_request
        async def _gate() -> Response | None:
            if not request.path.startswith("/wp-json/"):
                return None
            rule = request.url_rule.rule if request.url_rule is not None else request.path
            sim.requests[(request.method, rule)] += 1
            sim.in_flight += 1
            sim.max_in_flight_seen = max(sim.max_in_flight_seen, sim.in_flight)
            g.counted = True
            status = await sim.injector.before_request()
            if status is not None:
                return _json({"code": "internal_server_error", "message": "Simulated failure.",
                              "data": {"status": status}}, status)
            try:
                sim._authenticate()
            except ApiError as exc:
                # no WWW-Authenticate: WooCommerce adds it only while its auth method is still "basic_auth",
                # and the OAuth attempt after a failed Basic one has changed it
                return _json(exc.body(), exc.status)
            if not sim.async_webhooks:
                _SCOPE.set([])
            return None

        @app.after_request
        async def _flush(response: Response) -> Response:
            if g.get("counted"):
                sim.in_flight -= 1
                g.counted = False
            scope = _SCOPE.get()
            if scope:
                _SCOPE.set(None)
                for wh_id, topic, rid in scope:  # wc_webhook_execute_queue() at shutdown, before the response
                    await sim._deliver(wh_id, topic, rid)
            return response

        @app.errorhandler(ApiError)
        async def _api_error(exc: ApiError) -> Response:
            return _json(exc.body(), exc.status)

        @app.errorhandler(404)
        async def _no_route(_: Exception) -> Response:
            return _json({"code": "rest_no_route", "message": "No route was found matching the URL and request method.",
                          "data": {"status": 404}}, 404)

        @app.errorhandler(405)
        async def _no_method(_: Exception) -> Response:
            return await _no_route(_)

        # Products ---------------------------------------------------------

        @app.route(f"{API}/products", methods=["GET"])
        async def list_products() -> Response:
            await sim._sleep(sim.latency.list_page)
            args = request.args
            if args.get("type") == "variation":
                raise _invalid_param("type", "type is not one of simple, grouped, external, and variable.")
            if "sku" in args:  # only a sku query covers post type product_variation
                items = sim._sku_query(args["sku"])
            else:
                items = [p for p in sim._products.values() if p.type != "variation"]
            if args.get("type"):
                items = [p for p in items if p.type == args["type"]]
            return sim._paginate(sim._filter_sort(items), "/products", sim._product_json)

        @app.route(f"{API}/products", methods=["POST"])
        async def create_product() -> Response:
            await sim._sleep(sim.latency.put)
            body = await sim._body()
            sim._validate_update(body)
            return _json(sim._product_json(sim._create_product(body)), 201)

        @app.route(f"{API}/products/<int:pid>", methods=["GET"])
        async def get_product(pid: int) -> Response:
            await sim._sleep(sim.latency.get_one)
            return _one(sim._product_json(sim._product(pid)))

        @app.route(f"{API}/products/<int:pid>", methods=["PUT", "PATCH", "POST"])
        async def put_product(pid: int) -> Response:
            body = await sim._body()
            p = sim._product_for_write(pid)
            sim._validate_update(body)
            await sim._sleep(sim.latency.put - sim.write_window)
            await sim._rest_update(p, body, source="rest", window=sim.write_window)
            return _one(sim._product_json(p))

        @app.route(f"{API}/products/<int:pid>", methods=["DELETE"])
        async def delete_product(pid: int) -> Response:
            p = sim._product_for_write(pid, 404)
            rendered = sim._product_json(p)  # prepared before the delete: a trashed product still says "publish"
            if _as_bool(request.args.get("force", "false")):
                sim._delete(p)
            else:
                sim.trash_product(p.id)
            return _json(rendered)

        @app.route(f"{API}/products/batch", methods=["POST", "PUT", "PATCH"])
        async def products_batch() -> Response:
            body = await sim._body()
            return _json(await sim._to_the_end(sim._queued(sim._batch(
                body, create=sim._create_product, lookup=sim._product_for_write, render=sim._product_json))))

        # Variations -------------------------------------------------------

        @app.route(f"{API}/products/<int:pid>/variations", methods=["GET"])
        async def list_variations(pid: int) -> Response:
            await sim._sleep(sim.latency.list_page)
            parent = sim._products.get(pid)  # a missing parent lists nothing (200 [])
            items = [sim._products[v] for v in parent.variations if v in sim._products] if parent else []
            return sim._paginate(sim._filter_sort(items), render=sim._variation_json, path=
                                 f"/products/{pid}/variations")

        @app.route(f"{API}/products/<int:pid>/variations", methods=["POST"])
        async def create_variation(pid: int) -> Response:
            body = await sim._body()
            sim._validate_update(body)
            return _json(sim._variation_json(sim._create_variation(sim._product(pid), body)), 201)

        @app.route(f"{API}/products/<int:pid>/variations/<int:vid>", methods=["GET"])
        async def get_variation(pid: int, vid: int) -> Response:
            await sim._sleep(sim.latency.get_one)
            return _one(sim._variation_json(sim._variation(pid, vid)))

        @app.route(f"{API}/products/<int:pid>/variations/<int:vid>", methods=["PUT", "PATCH", "POST"])
        async def put_variation(pid: int, vid: int) -> Response:
            body = await sim._body()
            v = sim._variation(pid, vid)
            sim._validate_update(body)
            await sim._sleep(sim.latency.put - sim.write_window)
            await sim._rest_update(v, body, source="rest", window=sim.write_window)
            return _one(sim._variation_json(v))

        @app.route(f"{API}/products/<int:pid>/variations/batch", methods=["POST", "PUT", "PATCH"])
        async def variations_batch(pid: int) -> Response:
            body = await sim._body()
            parent = sim._products.get(pid)

            def create(item: dict[str, Any]) -> _Product:
                if parent is None:  # WooCommerce answers items under a missing parent one by one
                    raise ApiError(404, "woocommerce_rest_product_variation_invalid_id", "Invalid ID.")
                return sim._create_variation(parent, item)

            return _json(await sim._batch(body, create=create, lookup=partial(sim._variation, pid),
                                          render=sim._variation_json))

        @app.route(f"{API}/variations", methods=["GET"])
        async def all_variations() -> Response:
            if not sim.store_wide_variations:
                return await _no_route(Exception())
            await sim._sleep(sim.latency.list_page)
            source = sim._sku_query(request.args["sku"]) if "sku" in request.args else sim._products.values()
            items = [p for p in source if p.type == "variation"]
            return sim._paginate(sim._filter_sort(items), "/variations", sim._variation_json)

        # Orders -----------------------------------------------------------

        @app.route(f"{API}/orders", methods=["POST"])
        async def create_order() -> Response:
            await sim._sleep(sim.latency.other)
            return _json(sim._order_json(sim._create_order(await sim._body())), 201)

        @app.route(f"{API}/orders", methods=["GET"])
        async def list_orders() -> Response:
            await sim._sleep(sim.latency.list_page)
            rows = list(sim._orders.values())
            after = request.args.get("modified_after")
            if after:  # strictly after, at 1-second resolution (section 9)
                cut = _parse_date("modified_after", after)
                rows = [o for o in rows if o.modified > cut]
            if request.args.get("orderby") == "modified":
                rows.sort(key=lambda o: (o.modified, o.id), reverse=request.args.get("order", "desc") == "desc")
            else:
                rows.sort(key=lambda o: o.id, reverse=request.args.get("order", "desc") == "desc")
            return sim._paginate(rows, "/orders", sim._order_json)

        @app.route(f"{API}/orders/<int:oid>/notes", methods=["GET"])
        async def order_notes(oid: int) -> Response:
            await sim._sleep(sim.latency.get_one)
            return _json([dict(n) for n in reversed(sim._order(oid).notes)])  # newest first, as WooCommerce lists

        @app.route(f"{API}/orders/<int:oid>", methods=["GET"])
        async def get_order(oid: int) -> Response:
            await sim._sleep(sim.latency.get_one)
            return _one(sim._order_json(sim._order(oid)))

        @app.route(f"{API}/orders/<int:oid>", methods=["PUT", "PATCH", "POST"])
        async def put_order(oid: int) -> Response:
            await sim._sleep(sim.latency.other)
            order = sim._order(oid, 400)
            sim._update_order(order, await sim._body())
            return _json(sim._order_json(order))

        @app.route(f"{API}/orders/<int:oid>/refunds", methods=["POST"])
        async def create_refund(oid: int) -> Response:
            await sim._sleep(sim.latency.other)
            return _json(sim._create_refund(sim._order(oid), await sim._body()), 201)

        # Webhooks ---------------------------------------------------------

        @app.route(f"{API}/webhooks", methods=["POST"])
        async def create_webhook() -> Response:
            body = await sim._body()
            topic = str(body.get("topic", ""))
            resource, _, event = topic.partition(".")
            valid = (resource in _VALID_RESOURCES and event in _VALID_EVENTS) or (
                resource == "action" and event.startswith(("woocommerce_", "wc_")))
            if not valid:
                raise ApiError(400, "woocommerce_rest_shop_webhook_invalid_topic", "Webhook topic is invalid.")
            url = str(body.get("delivery_url", ""))
            if not url.startswith(("http://", "https://")):
                raise ApiError(400, "woocommerce_rest_shop_webhook_invalid_delivery_url",
                               "Webhook delivery URL must be a valid URL starting with http:// or https://.")
            now = sim._now()
            sim._next_webhook += 1
            wh = _Webhook(id=sim._next_webhook, name=str(body.get("name") or f"Webhook created on {_fmt(now)}"),
                          topic=topic, delivery_url=url, secret=str(body.get("secret") or secrets.token_urlsafe(37)),
                          created=now, modified=now)
            sim._webhooks[wh.id] = wh
            await sim._ping(wh)  # result ignored: 201 regardless
            return _json(sim._webhook_json(wh), 201)

        @app.route(f"{API}/webhooks", methods=["GET"])
        async def list_webhooks() -> Response:
            status = request.args.get("status", "all")
            hooks = [w for w in sim._webhooks.values() if status == "all" or w.status == status]
            return sim._paginate([sim._webhook_json(w) for w in sorted(hooks, key=lambda w: w.id)], "/webhooks")

        def _hook(wid: int, status: int = 404) -> _Webhook:
            wh = sim._webhooks.get(wid)
            if wh is None:
                raise ApiError(status, "woocommerce_rest_shop_webhook_invalid_id", "ID is invalid.")
            return wh

        @app.route(f"{API}/webhooks/<int:wid>", methods=["GET"])
        async def get_webhook(wid: int) -> Response:
            return _json(sim._webhook_json(_hook(wid)))

        @app.route(f"{API}/webhooks/<int:wid>", methods=["PUT", "PATCH", "POST"])
        async def put_webhook(wid: int) -> Response:
            wh = _hook(wid, 400)
            body = await sim._body()
            if body.get("status") is not None:
                if body["status"] not in ("active", "paused", "disabled"):
                    raise _invalid_param("status", "status is not one of active, paused, and disabled.")
                wh.status = body["status"]  # the failure count stays: only a successful delivery resets it
            url_changed = "delivery_url" in body and body["delivery_url"] != wh.delivery_url
            for name in ("name", "delivery_url", "secret", "topic"):
                if body.get(name):
                    setattr(wh, name, str(body[name]))
            wh.modified = sim._now()
            if wh.status == "active" and (url_changed or wh.pending_delivery):
                await sim._ping(wh)
            return _json(sim._webhook_json(wh))

        @app.route(f"{API}/webhooks/<int:wid>", methods=["DELETE"])
        async def delete_webhook(wid: int) -> Response:
            wh = _hook(wid)
            if not _as_bool(request.args.get("force", "false")):
                raise ApiError(501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing.")
            del sim._webhooks[wid]
            return _json(sim._webhook_json(wh))

        # Settings ---------------------------------------------------------

        def _group(group: str) -> dict[str, dict[str, Any]]:
            if group != "products":
                raise ApiError(404, "rest_setting_setting_group_invalid", "Invalid setting group.")
            return sim._settings

        def _setting_json(opt: dict[str, Any]) -> dict[str, Any]:
            return dict(opt, group_id="products")

        @app.route(f"{API}/settings/<group>", methods=["GET"])
        async def get_settings(group: str) -> Response:
            return _json([_setting_json(o) for o in _group(group).values()])

        @app.route(f"{API}/settings/<group>/<sid>", methods=["GET", "PUT", "PATCH", "POST"])
        async def one_setting(group: str, sid: str) -> Response:
            opts = _group(group)
            if sid not in opts:
                raise ApiError(404, "rest_setting_setting_invalid", "Invalid setting.")
            if request.method != "GET":
                body = await sim._body()
                if "value" in body:
                    opts[sid]["value"] = str(body["value"])
            return _json(_setting_json(opts[sid]))

        # The WordPress companion (companion mode) ---------------------------

        def _companion_on() -> None:
            if not sim.companion:
                raise ApiError(404, "rest_no_route", "No route was found matching the URL and request method.")

        @app.route(f"{COMPANION_API}/status", methods=["GET"])
        async def companion_status() -> Response:
            _companion_on()
            return _json(sim._companion_status())

        @app.route(f"{COMPANION_API}/settings", methods=["POST"])
        async def companion_settings() -> Response:
            _companion_on()
            sim._companion_settings(await sim._body())
            return _json(sim._companion_status())

        @app.route(f"{COMPANION_API}/stock", methods=["POST"])
        async def companion_stock() -> Response:
            _companion_on()
            body = await sim._body()
            changes = body.get("changes")
            if not isinstance(changes, list):
                raise ApiError(400, "rest_invalid_param", 'the body must be {"changes": [{"write_id": "...", '
                                                          '"product_id": 123, "delta": -1}, ...]}')
            if len(changes) > BATCH_LIMIT:
                raise ApiError(413, "woocommerce_rest_request_entity_too_large",
                               f"Unable to accept more than {BATCH_LIMIT} changes for this request.")
            await sim._sleep(sim.latency.other)
            results = []
            for change in changes:
                await sim._sleep(sim.latency.batch_item)  # each change is its own short transaction
                results.append(sim._companion_change(change))
            sim._companion_cleanup()
            if sim.companion_lose_answers > 0:  # applied, and then a proxy answers 503 instead
                sim.companion_lose_answers -= 1
                return _json({"code": "service_unavailable", "message": "Simulated proxy failure after PHP ran.",
                              "data": {"status": 503}}, 503)
            return _json({"results": results})

        # Simulation admin (unauthenticated, JSON) ---------------------------

        @app.route("/_sim/products", methods=["POST"])
        async def sim_add_product() -> Response:
            b = await sim._body()
            ref = sim.add_product(b["name"], sku=b.get("sku", ""), stock=b.get("stock", 0),
                                  manage_stock=b.get("manage_stock", True), backorders=b.get("backorders", "no"))
            return _json({"ref": ref.key, "product_id": ref.product_id})

        @app.route("/_sim/variable_products", methods=["POST"])
        async def sim_add_variable() -> Response:
            b = await sim._body()
            refs = sim.add_variable_product(b["name"], b["variations"], sku=b.get("sku", ""),
                                            attribute=b.get("attribute", "Size"))
            return _json({"refs": [r.key for r in refs]})

        @app.route("/_sim/orders", methods=["POST"])
        async def sim_order() -> Response:
            b = await sim._body()
            items = b.get("items")
            if not isinstance(items, dict) or not items:
                raise ApiError(400, "sim_bad_order", 'body must be {"items": {"<product id or SKU>": <units>}}')
            try:
                return _json({"order_id": sim.online_order({_ref_arg(str(k)): int(v) for k, v in items.items()})})
            except KeyError as exc:
                raise ApiError(404, "sim_unknown_product", f"no product with id or SKU {exc.args[0]!r}") from None

        @app.route("/_sim/orders/<int:oid>/refund", methods=["POST"])
        async def sim_refund(oid: int) -> Response:
            b = await sim._body()
            return _json({"refund_id": sim.refund(oid, b.get("items"), restock=b.get("restock", True))})

        @app.route("/_sim/stock/<ref>", methods=["GET"])
        async def sim_stock(ref: str) -> Response:
            return _json({"ref": ref, "stock": sim.stock(_ref_arg(ref))})

        @app.route("/_sim/stock/<ref>", methods=["PUT", "POST"])
        async def sim_set_stock(ref: str) -> Response:
            b = await sim._body()
            sim.admin_set_stock(_ref_arg(ref), int(b["quantity"]))
            return _json({"ref": ref, "stock": sim.stock(_ref_arg(ref))})

        @app.route("/_sim/trash/<ref>", methods=["POST"])
        async def sim_trash(ref: str) -> Response:
            sim.trash_product(_ref_arg(ref))
            return _json({"ref": ref, "status": "trash"})

        @app.route("/_sim/faults", methods=["GET", "PUT", "POST"])
        async def sim_faults() -> Response:
            if request.method != "GET":
                for k, v in (await sim._body()).items():
                    if not hasattr(sim.faults, k):
                        raise ApiError(400, "sim_unknown_fault", f"Unknown fault {k!r}.")
                    setattr(sim.faults, k, v)
            return _json(msgspec.to_builtins(sim.faults))

        @app.route("/_sim/companion", methods=["GET", "PUT", "POST"])
        async def sim_companion() -> Response:
            if request.method != "GET":
                on = (await sim._body()).get("on")
                if not isinstance(on, bool):
                    raise ApiError(400, "sim_bad_companion", 'body must be {"on": true|false}')
                sim.companion = on
            return _json({"on": sim.companion, "write_ids": len(sim.companion_writes)})

        @app.route("/_sim/stats", methods=["GET"])
        async def sim_stats() -> Response:
            return _json({
                "requests": {f"{m} {r}": n for (m, r), n in sorted(sim.requests.items())},
                "stock_writes": len(sim.stock_writes), "deliveries": len(sim.deliveries),
                "deliveries_dropped": sim.deliveries_dropped,
            })

        return app


def _requested_fields(args: Any) -> set[str] | None:
    """WordPress's global ``_fields`` parameter (core since 4.9.8): a comma list or ``_fields[]=`` repeated.

    Only the top-level name of a nested ``a.b`` counts here (WordPress 5.3 also trims inside ``a``).
    """
    raw = [*args.getlist("_fields"), *args.getlist("_fields[]")]
    if not raw:
        return None
    return {part.strip().split(".", 1)[0] for value in raw for part in value.split(",") if part.strip()}


def _one(data: dict[str, Any], status: int = 200) -> Response:
    """One object's answer; ``_fields`` trims it as it trims lists, but ``_links`` stay."""
    fields = _requested_fields(request.args)
    if fields is not None:
        data = {k: v for k, v in data.items() if k in fields or k == "_links"}
    return _json(data, status)


def _ref_arg(text: str) -> WooRef | int | str:
    return int(text) if text.isdigit() else text


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=headers or {}, mimetype="application/json")
