"""The WooCommerce REST client (``wc/v3``): the daemon's one way into the store.

Rules this module keeps:

- It implements ``ports.WooPort``; actors see only that. Every failure leaves
  as ``ports.RemoteError`` (try later), ``ports.PermanentError`` (4xx other
  than 429) or ``ports.NotFound`` (an invalid-id answer: WooCommerce says 400
  ``woocommerce_rest_product_invalid_id`` for a missing product, 404 for the
  rest). Nothing else escapes.
- Retries are bounded (``core.backoff.Backoff``). Reads retry on 429, 5xx,
  timeouts and connection errors. An ``inventory_delta`` write is not
  idempotent, so it is resent only when it certainly did not run: a
  connection that never opened, or 429. Every 5xx is ambiguous (a proxy or
  host answers 503 after PHP ran too), and so are a timeout or a connection
  reset after sending: the delta may have landed; that is
  ``WriteOutcomeUnknown``, and the caller re-reads (the version marker tells).
- The WordPress companion (``wordpress/cloverwoo-companion.php``, routes under
  ``wp-json/wc-cloverwoo/v1``, authenticated by the same key) makes a stock
  change exactly-once by its write id, so ``apply_changes`` resends on every
  retryable failure, the same ids each time.
- At most ``max_in_flight`` requests are in flight (one ``httpx.AsyncClient``
  degrades past about 10 concurrent requests, stack.md).
- Auth: Basic over HTTPS, OAuth 1.0a one-legged over HTTP (WooCommerce
  refuses Basic when ``is_ssl()`` is false); ``auth="auto"`` picks by scheme.
- The consumer key and secret never appear in a log line or an exception
  message: errors name the method and path, never the query string.
- Every 429, retry and item stock write is told to ``hooks``
  (``io.metrics.ClientHooks``), for ``/metrics``.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import msgspec
import structlog
import trio

from cloverwoo_daemon.core import oauth1
from cloverwoo_daemon.core.backoff import Backoff, parse_retry_after
from cloverwoo_daemon.core.model import (
    CompanionInfo,
    StockChange,
    StockChangeResult,
    WooItem,
    WooRef,
    WooStock,
    WooWriteResult,
)
from cloverwoo_daemon.core.stock_policy import CONTACT_META_KEY, Change, Presentation
from cloverwoo_daemon.core.witness import StockNote, WooOrderSeen, parse_stock_note
from cloverwoo_daemon.io.metrics import ClientHooks
from cloverwoo_daemon.ports import (
    CompanionMissing,
    NotFound,
    PermanentError,
    RemoteError,
    StockWrite,
    WriteOutcomeUnknown,
)

__all__ = ["COMPANION_FILE", "VERSION_META_KEY", "WooClient", "WooWebhook", "WriteOutcomeUnknown"]

log = structlog.get_logger(__name__)

VERSION_META_KEY = "_cloverwoo_version"
BATCH_LIMIT = 100
COMPANION_NAMESPACE = "wc-cloverwoo/v1"
COMPANION_FILE = "wordpress/cloverwoo-companion.php"
_WRITE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
PER_PAGE = 100
# What list reads keep of each product or variation (see ``_get_all``).
_CATALOGUE_FIELDS = ("id", "parent_id", "name", "sku", "type", "status", "manage_stock", "stock_quantity",
                     "attributes")
_CHANGE_FIELDS = ("id", "parent_id", "type", "status", "stock_quantity", "date_modified_gmt")
_ORDER_FIELDS = ("id", "status", "date_paid_gmt", "date_modified_gmt", "line_items", "refunds")

Auth = Literal["auto", "basic", "oauth1"]


class WooWebhook(msgspec.Struct, frozen=True):
    """A webhook as the REST API shows it (the secret is never returned)."""

    id: int
    topic: str
    delivery_url: str
    status: str  # active | paused | disabled
    name: str = ""


class _Retryable(Exception):
    """One attempt failed in a way worth another attempt."""

    def __init__(self, reason: str, *, retry_after: float | None = None, sent: bool = True,
                 ended: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.sent = sent  # False: the request certainly never reached the application
        self.ended = ended  # True: the store answered, so the request is over (applied or not)


def _error_text(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "", resp.reason_phrase
    if isinstance(body, dict):
        return str(body.get("code", "")), str(body.get("message", ""))
    return "", resp.reason_phrase


def _is_invalid_id(status: int, code: str) -> bool:
    return status == 404 or code.endswith("_invalid_id") or code == "woocommerce_rest_invalid_product_id"


def _quantity(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return None


def _marker(meta: Iterable[Any]) -> str | None:
    """The write id our last ``inventory_delta`` left on the product (older daemons wrote a version number)."""
    for m in meta or ():
        if isinstance(m, dict) and m.get("key") == VERSION_META_KEY:
            value = m.get("value")
            return None if value is None or isinstance(value, dict | list) else str(value)
    return None


# -- one stock write's batch entry; a zero delta with meta sends the meta only (no stock write). A marker of
# None leaves the product's marker alone (a meta-only write has nothing for recovery to tell).
def _stock_update(change: StockWrite) -> dict[str, Any]:
    ref, delta, marker = change[0], change[1], change[2]
    meta = [] if marker is None else [{"key": VERSION_META_KEY, "value": str(marker)}]
    if len(change) > 3:
        meta += [{"key": k, "value": v} for k, v in change[3].items()]  # type: ignore[misc]
    update: dict[str, Any] = {"id": ref.variation_id or ref.product_id, "meta_data": meta}
    if delta:
        update["inventory_delta"] = delta
    return update


def _unix(text: Any) -> int | None:
    """A WooCommerce GMT date (``YYYY-MM-DDTHH:MM:SS``) as unix seconds; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _shift_cursor(cursor: str, seconds: int) -> str:
    """The GMT cursor as ``YYYY-MM-DDTHH:MM:SS``, moved by whole seconds (the strict filter's overlap)."""
    dt = datetime.fromisoformat(cursor.strip().replace("Z", "+00:00"))
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return (dt + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


class WooClient:
    """``WooPort`` over HTTP.

    Resource handling: owns one ``httpx.AsyncClient``; close it with
    ``aclose()`` (or ``async with``).

    Error handling: see the module docstring; ``apply_deltas`` reports
    per-item refusals as ``ok=False`` results.
    """

    def __init__(
        self,
        base_url: str,
        consumer_key: str,
        consumer_secret: str,
        *,
        auth: Auth = "auto",
        max_in_flight: int = 4,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        oauth_method: oauth1.SignatureMethod = "HMAC-SHA256",
        hooks: ClientHooks | None = None,  # 429s, retries and stock writes, for /metrics
    ) -> None:
        self.hooks = hooks or ClientHooks()
        root = base_url.rstrip("/")
        self.api_url = root if root.endswith("/wc/v3") else root + "/wp-json/wc/v3"
        self.companion_url = self.api_url.removesuffix("/wc/v3") + "/" + COMPANION_NAMESPACE
        if auth == "auto":
            auth = "basic" if self.api_url.startswith("https://") else "oauth1"
        self.auth: Auth = auth
        self._key = consumer_key
        self._secret = consumer_secret
        self._oauth_method: oauth1.SignatureMethod = oauth_method
        self._backoff = backoff or Backoff(base=0.5, cap=10.0, max_attempts=4)
        self._rng = rng or random.Random()
        self._limiter = trio.CapacityLimiter(max_in_flight)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            auth=httpx.BasicAuth(consumer_key, consumer_secret) if auth == "basic" else None,
            headers={"User-Agent": "cloverwoo-daemon", "Accept": "application/json"},
            follow_redirects=False,
        )

    async def __aenter__(self) -> WooClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------
    # The request loop

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        idempotent: bool = True,
        base: str | None = None,
        unanswered: list[str] | None = None,
    ) -> httpx.Response:
        """One logical call with bounded retries; returns a 2xx/3xx response or raises a ports error.

        ``path`` is under ``base`` (default: the ``wc/v3`` API root). The
        reasons of attempts that were sent but not answered (a 5xx, a timeout,
        a reset) are appended to ``unanswered``, when given.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(method, path, params or {}, json, idempotent, base or self.api_url)
            except _Retryable as exc:
                if exc.sent and unanswered is not None:
                    unanswered.append(exc.reason)
                if exc.sent and not idempotent:
                    log.warning("woo_write_outcome_unknown", method=method, path=path, reason=exc.reason)
                    raise WriteOutcomeUnknown(
                        f"{method} {path}: {exc.reason} (the write may have been applied)",
                        may_still_land=not exc.ended,
                    ) from None
                delay = self._backoff.next_delay(attempt, retry_after=exc.retry_after, rng=self._rng)
                if delay is None:
                    log.warning("woo_gave_up", method=method, path=path, reason=exc.reason, attempts=attempt)
                    raise RemoteError(f"{method} {path}: {exc.reason} after {attempt} attempts") from None
                log.info("woo_retry", method=method, path=path, reason=exc.reason, attempt=attempt,
                         delay=round(delay, 3))
                self.hooks.retried()
                await trio.sleep(delay)

    async def _attempt(
        self, method: str, path: str, params: dict[str, str], body: Any, idempotent: bool, base: str
    ) -> httpx.Response:
        url = base + path
        query = dict(params)
        if self.auth == "oauth1":
            query.update(
                oauth1.oauth_params(
                    method, url, query, consumer_key=self._key, consumer_secret=self._secret,
                    timestamp=int(time.time()), nonce=secrets.token_hex(16), signature_method=self._oauth_method,
                )
            )
        async with self._limiter:
            try:
                resp = await self._http.request(method, url, params=query or None, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise _Retryable(type(exc).__name__, sent=False) from None
            except httpx.TimeoutException as exc:
                raise _Retryable(type(exc).__name__) from None
            except httpx.TransportError as exc:
                raise _Retryable(type(exc).__name__) from None
        status = resp.status_code
        if status < 400:
            return resp
        code, message = _error_text(resp)
        if status == 429:
            self.hooks.rate_limited()
            raise _Retryable("429", retry_after=parse_retry_after(resp.headers.get("retry-after")), sent=False)
        if status >= 500:
            # Even a 503 may come from a proxy after PHP ran: only a resend that is idempotent is safe. A 504
            # is a gateway that stopped waiting: PHP may still be running the request.
            raise _Retryable(str(status), retry_after=parse_retry_after(resp.headers.get("retry-after")),
                             ended=status != 504)
        text = f"{method} {path}: {status} {code}: {message}".rstrip(": ")
        if _is_invalid_id(status, code):
            raise NotFound(text)
        raise PermanentError(text)

    async def _json(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        """``_request`` and decode; a 2xx that is not JSON (a caching plugin's HTML page) is a RemoteError."""
        resp = await self._request(method, path, idempotent=idempotent, **kwargs)
        try:
            return resp.json()
        except ValueError:
            text = f"{method} {path}: {resp.status_code} answer is not JSON"
            if idempotent:
                raise RemoteError(text) from None
            raise WriteOutcomeUnknown(text, may_still_land=False) from None

    async def _get_all(
        self, path: str, params: dict[str, str] | None = None, fields: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Every page of a list (``per_page=100``), following ``X-WP-TotalPages``.

        With ``fields``, only those are asked for (WordPress's ``_fields``) and
        kept: a product is ~1-10 KB of JSON of which the sync reads a few
        names, and a 50,000-product catalogue held whole is hundreds of MB.
        Each page is trimmed as it arrives, so a store (or a plugin) that
        ignores ``_fields`` costs bandwidth, not memory.

        The first page tells how many there are; the rest are fetched
        concurrently (the client's ``max_in_flight`` caps them), since a page
        costs ~250 ms on a real store and a 10,000-product catalogue has 100.
        """
        if fields:
            params = {**(params or {}), "_fields": ",".join(fields)}
        first, pages = await self._page(path, params, 1, fields)
        if pages <= 1 or not first:
            return first
        results: dict[int, list[dict[str, Any]]] = {1: first}

        async def fetch(page: int) -> None:
            results[page], _ = await self._page(path, params, page, fields)

        try:
            async with trio.open_nursery() as n:
                for page in range(2, pages + 1):
                    n.start_soon(fetch, page)
        except BaseExceptionGroup as group:
            # strict groups wrap a failed page, past every ``except RemoteError`` (the poller, the jobs):
            # raised bare when every failure is remote
            remote, other = group.split(RemoteError)
            if remote is None or other is not None:
                raise
            bare: BaseException = remote
            while isinstance(bare, BaseExceptionGroup):
                bare = bare.exceptions[0]
            raise bare from None
        return [row for page in sorted(results) for row in results[page]]

    async def _page(
        self, path: str, params: dict[str, str] | None, page: int, fields: tuple[str, ...] = ()
    ) -> tuple[list[dict[str, Any]], int]:
        resp = await self._request("GET", path, params={**(params or {}), "per_page": str(PER_PAGE),
                                                         "page": str(page)})
        try:
            chunk = resp.json()
        except ValueError:
            chunk = None
        if not isinstance(chunk, list):
            raise RemoteError(f"GET {path}: page {page} is not a JSON list")
        if fields:
            chunk = [{k: row[k] for k in fields if k in row} if isinstance(row, dict) else row for row in chunk]
        try:
            pages = int(resp.headers.get("x-wp-totalpages", "1"))
        except ValueError:
            pages = 1
        return chunk, pages

    # ------------------------------------------------------------------
    # WooPort

    async def get_stock(self, ref: WooRef) -> WooStock:
        if ref.variation_id:
            data = await self._json("GET", f"/products/{ref.product_id}/variations/{ref.variation_id}")
        else:
            data = await self._json("GET", f"/products/{ref.product_id}")
        manage = data.get("manage_stock") is True
        return WooStock(
            ref=ref,
            manage_stock=manage,
            quantity=_quantity(data.get("stock_quantity")) if manage else None,
            version_marker=_marker(data.get("meta_data", [])),
            sku=data.get("sku") or None,
            status=str(data.get("status") or "publish"),
        )

    async def apply_deltas(self, changes: Sequence[StockWrite]) -> list[WooWriteResult]:
        """Batches per endpoint, ≤ 100 items each, results in the order of ``changes``.

        Error handling: an item WooCommerce refuses is ``ok=False`` with its
        error; a whole batch refused for good (4xx) makes all its items
        ``ok=False``. A retryable failure of the first batch raises (nothing
        was written); once a batch has been applied, later failures become
        ``ok=False`` items instead, so the applied results are not lost.
        """
        groups: dict[str, list[int]] = {}
        for i, (ref, *_) in enumerate(changes):
            path = f"/products/{ref.product_id}/variations/batch" if ref.variation_id else "/products/batch"
            groups.setdefault(path, []).append(i)
        results: list[WooWriteResult | None] = [None] * len(changes)
        applied_any = False
        failure: RemoteError | None = None
        for path, idxs in groups.items():
            for start in range(0, len(idxs), BATCH_LIMIT):
                chunk = idxs[start : start + BATCH_LIMIT]
                if failure is not None:
                    for i in chunk:
                        results[i] = WooWriteResult(changes[i][0], ok=False, error=f"not attempted: {failure}")
                    continue
                updates = [_stock_update(changes[i]) for i in chunk]  # optional extra meta
                try:
                    answer = await self._json("POST", path, json={"update": updates}, idempotent=False)
                except PermanentError as exc:
                    for i in chunk:
                        results[i] = WooWriteResult(changes[i][0], ok=False, error=str(exc))
                    continue
                except RemoteError as exc:
                    if not applied_any:
                        self.hooks.wrote(False, len(changes))  # nothing was written, or unknown: raised
                        raise
                    failure = exc
                    unknown = isinstance(exc, WriteOutcomeUnknown)
                    for i in chunk:
                        results[i] = WooWriteResult(
                            changes[i][0], ok=False, error=str(exc), unknown=unknown,
                            may_still_land=unknown and getattr(exc, "may_still_land", True))
                    continue
                applied_any = True
                answered = answer.get("update", []) if isinstance(answer, dict) else []
                for n, i in enumerate(chunk):
                    ref = changes[i][0]
                    item = answered[n] if n < len(answered) else None
                    results[i] = self._write_result(ref, item)
        done = [r for r in results if r is not None]
        failed = sum(1 for r in done if not r.ok)
        self.hooks.wrote(True, len(done) - failed)
        self.hooks.wrote(False, failed)
        log.info("woo_deltas_applied", items=len(changes), failed=failed)
        return done

    @staticmethod
    def _write_result(ref: WooRef, item: Any) -> WooWriteResult:
        if not isinstance(item, dict):
            return WooWriteResult(ref, ok=False, error="no answer for this item")
        if "error" in item:
            err = item["error"] if isinstance(item["error"], dict) else {}
            return WooWriteResult(ref, ok=False, error=f"{err.get('code', '')}: {err.get('message', '')}")
        if item.get("id") != (ref.variation_id or ref.product_id):
            return WooWriteResult(ref, ok=False, error=f"answer for id {item.get('id')} instead")
        return WooWriteResult(ref, ok=True, quantity=_quantity(item.get("stock_quantity")))

    # ------------------------------------------------------------------
    # The WordPress companion: exactly-once stock changes by write id

    async def companion(self) -> CompanionInfo | None:
        """The companion's status, or None when it is not installed (404, ``rest_no_route``).

        Error handling: a refused key is ``PermanentError``; an answer that is
        not the companion's status is ``RemoteError``.
        """
        try:
            data = await self._json("GET", "/status", base=self.companion_url)
        except NotFound:
            return None
        return self._companion_info(data)

    async def set_companion_settings(
        self, *, sync_webhooks: bool | None = None, write_ids_kept_days: int | None = None
    ) -> CompanionInfo:
        """Switch synchronous webhook delivery, or how long write ids are kept; returns the new status.

        Absolute values, so retried like a read. ``CompanionMissing`` when it is not installed.
        """
        body: dict[str, Any] = {}
        if sync_webhooks is not None:
            body["sync_webhooks"] = bool(sync_webhooks)
        if write_ids_kept_days is not None:
            body["write_ids_kept_days"] = int(write_ids_kept_days)
        if not body:
            raise ValueError("set_companion_settings: nothing to set")
        try:
            data = await self._json("POST", "/settings", json=body, base=self.companion_url)
        except NotFound as exc:
            raise CompanionMissing(f"the companion is not installed ({exc})") from None
        return self._companion_info(data)

    @staticmethod
    def _companion_info(data: Any) -> CompanionInfo:
        if not isinstance(data, dict) or not isinstance(data.get("companion"), str):
            raise RemoteError("the companion's status answer is not the companion's")
        sync = data.get("sync_webhooks")
        try:
            return CompanionInfo(
                version=data["companion"], woocommerce=str(data.get("woocommerce", "")),
                sync_webhooks=sync if isinstance(sync, bool) else None,
                write_ids_kept_days=int(data.get("write_ids_kept_days") or 0),
                transactional=data.get("transactional") is True,
                max_changes=int(data.get("max_changes") or BATCH_LIMIT),
            )
        except (TypeError, ValueError):
            raise RemoteError("the companion's status answer is malformed") from None

    async def apply_changes(self, changes: Sequence[StockChange]) -> list[StockChangeResult]:
        """Apply ``changes`` through the companion in batches of ≤ 100; results in the order of ``changes``.

        Every request is idempotent by write id, so it is retried on 5xx,
        timeouts and connection resets like a read, with the same ids.

        Error handling: a change that is not one (zero or non-integer delta, a
        malformed or repeated write id) is ``ValueError`` before anything is
        sent. ``CompanionMissing`` when the companion's route is gone;
        ``RemoteError``/``PermanentError`` when a batch failed for good: some
        earlier batches may have been applied, and calling again with the same
        changes finishes the job without applying any twice.
        """
        seen: set[str] = set()
        for c in changes:
            if not isinstance(c.delta, int) or isinstance(c.delta, bool) or c.delta == 0:
                raise ValueError(f"change {c.write_id!r}: the delta must be a non-zero whole number, not {c.delta!r}")
            if not _WRITE_ID.fullmatch(c.write_id):
                raise ValueError(f"write id {c.write_id!r}: 1-64 characters of A-Z a-z 0-9 . _ : -")
            if c.write_id in seen:
                raise ValueError(f"write id {c.write_id!r} appears twice in one call")
            seen.add(c.write_id)
        results: list[StockChangeResult] = []
        for start in range(0, len(changes), BATCH_LIMIT):
            chunk = list(changes[start : start + BATCH_LIMIT])
            body = {"changes": [{"write_id": c.write_id, "product_id": c.ref.variation_id or c.ref.product_id,
                                 "delta": c.delta} for c in chunk]}
            unanswered: list[str] = []
            try:
                answer = await self._json("POST", "/stock", json=body, base=self.companion_url, unanswered=unanswered)
            except NotFound as exc:
                self.hooks.wrote(False, len(chunk))
                if unanswered:
                    # an earlier attempt of this call may have been applied before the route went away:
                    # nobody can tell now, so this is not "nothing applied"
                    raise RemoteError(f"POST /stock: the companion went away after an attempt whose outcome is "
                                      f"unknown ({unanswered[-1]}); {exc}") from None
                raise CompanionMissing(f"the companion is not installed ({exc})") from None
            except RemoteError:
                self.hooks.wrote(False, len(chunk))
                raise
            answered = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(answered, list) or len(answered) != len(chunk):
                # applied or not, the same ids can be sent again
                raise RemoteError("POST /stock: the companion's answer does not list one result per change")
            for c, item in zip(chunk, answered, strict=True):
                results.append(self._change_result(c, item))
        failed = sum(1 for r in results if not r.ok)
        self.hooks.wrote(True, len(results) - failed)
        self.hooks.wrote(False, failed)
        log.info("woo_changes_applied", items=len(results), failed=failed,
                 replayed=sum(1 for r in results if r.ok and not r.new))
        return results

    @staticmethod
    def _change_result(change: StockChange, item: Any) -> StockChangeResult:
        if not isinstance(item, dict) or item.get("write_id") != change.write_id:
            raise RemoteError(f"POST /stock: no answer for write id {change.write_id!r} in its place")
        if item.get("ok") is not True:
            err = item.get("error") if isinstance(item.get("error"), dict) else {}
            code = str(err.get("code", ""))
            return StockChangeResult(change.write_id, change.ref, ok=False, code=code,
                                     error=f"{code}: {err.get('message', '')}")
        stock_id = item.get("stock_product_id")
        return StockChangeResult(change.write_id, change.ref, ok=True, new=item.get("new") is True,
                                 quantity=_quantity(item.get("stock")),
                                 stock_product_id=stock_id if isinstance(stock_id, int) else None)

    async def list_items(self) -> list[WooItem]:
        products = await self._get_all("/products", {"orderby": "id", "order": "asc"}, _CATALOGUE_FIELDS)
        items: list[WooItem] = []
        names: dict[int, str] = {}
        variable: list[int] = []
        for p in products:
            pid = int(p["id"])
            names[pid] = str(p.get("name", ""))
            ptype = str(p.get("type", "simple"))
            if ptype == "variable":
                variable.append(pid)
            manage = p.get("manage_stock") is True
            items.append(WooItem(ref=WooRef(pid), name=names[pid], sku=p.get("sku") or None, manage_stock=manage,
                                 quantity=_quantity(p.get("stock_quantity")) if manage else None,
                                 status=str(p.get("status", "publish")), type=ptype))
        for v in await self._variations(variable, {"orderby": "id", "order": "asc"}, _CATALOGUE_FIELDS):
            parent = int(v.get("parent_id") or 0)
            options = [str(a.get("option", "")) for a in v.get("attributes", []) if isinstance(a, dict)]
            base = names.get(parent) or str(v.get("name", ""))
            name = f"{base} - {', '.join(options)}" if options else base
            manage = v.get("manage_stock") is True
            items.append(WooItem(ref=WooRef(parent, int(v["id"])), name=name, sku=v.get("sku") or None,
                                 manage_stock=manage, quantity=_quantity(v.get("stock_quantity")) if manage else None,
                                 status=str(v.get("status", "publish")), type="variation"))
        return items

    async def _variations(
        self, parents: list[int], params: dict[str, str], fields: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        """Store-wide ``/variations`` (WooCommerce ≥ 10.3), else one list per variable parent."""
        try:
            return await self._get_all("/variations", params, fields)
        except NotFound:
            log.info("woo_no_store_wide_variations", parents=len(parents))
        out: list[dict[str, Any]] = []
        for pid in parents:
            try:
                for v in await self._get_all(f"/products/{pid}/variations", params, fields):
                    v.setdefault("parent_id", pid)
                    out.append(v)
            except NotFound:
                continue  # the parent went away between the two reads
        return out

    async def changed_refs(self, *, modified_after: str) -> tuple[set[WooRef], str]:
        """Refs modified after the cursor; the query overlaps by 1 s because the filter is strict per second."""
        items, newest = await self.changed_items(modified_after=modified_after)
        return set(items), newest

    async def changed_items(self, *, modified_after: str) -> tuple[dict[WooRef, str], str]:
        """Like ``changed_refs``, with a change stamp per ref so a poller can skip what it already saw.

        The stamp is ``date_modified_gmt|status|stock_quantity``: the date alone
        has a 1-second resolution, so two sales in one second would share it.
        """
        params = {"modified_after": _shift_cursor(modified_after, -1), "dates_are_gmt": "true",
                  "orderby": "modified", "order": "asc"}
        items: dict[WooRef, str] = {}
        newest = _shift_cursor(modified_after, 0)
        products = await self._get_all("/products", params, _CHANGE_FIELDS)
        variable: list[int] = []
        for p in products:
            modified = str(p.get("date_modified_gmt") or "")
            items[WooRef(int(p["id"]))] = f"{modified}|{p.get('status')}|{p.get('stock_quantity')}"
            if p.get("type") == "variable":
                variable.append(int(p["id"]))
            newest = max(newest, modified)
        for v in await self._variations(variable, params, _CHANGE_FIELDS):
            modified = str(v.get("date_modified_gmt") or "")
            items[WooRef(int(v.get("parent_id") or 0), int(v["id"]))] = (
                f"{modified}|{v.get('status')}|{v.get('stock_quantity')}"
            )
            newest = max(newest, modified)
        return items, newest

    async def orders_since(self, *, modified_after: str) -> list[WooOrderSeen]:
        """Orders modified after the ISO GMT cursor (overlapped by a second), as far as stock goes.

        For the witness of our ``inventory_delta`` writes: when each was paid,
        what its checkout took from each product (the ``_reduced_stock`` line
        meta WooCommerce writes as it reduces stock), and whether it has
        refunds.
        """
        params = {"modified_after": _shift_cursor(modified_after, -1), "dates_are_gmt": "true",
                  "orderby": "modified", "order": "asc"}
        out: list[WooOrderSeen] = []
        for o in await self._get_all("/orders", params, _ORDER_FIELDS):
            reduced: dict[int, int] = {}
            names: dict[int, str] = {}
            for li in o.get("line_items") or []:
                if not isinstance(li, dict):
                    continue
                pid = int(li.get("variation_id") or li.get("product_id") or 0)
                if not pid:
                    continue
                names[pid] = str(li.get("name") or "")
                for m in li.get("meta_data") or []:
                    if isinstance(m, dict) and m.get("key") == "_reduced_stock":
                        qty = _quantity(m.get("value"))
                        if qty:
                            reduced[pid] = reduced.get(pid, 0) + qty
            modified = _unix(o.get("date_modified_gmt"))
            out.append(WooOrderSeen(order_id=int(o["id"]), paid=_unix(o.get("date_paid_gmt")),
                                    modified=modified if modified is not None else 0, reduced=reduced,
                                    refunded=bool(o.get("refunds")), names=names))
        return out

    async def stock_notes(self, order_id: int) -> list[StockNote]:
        """What an order's notes say it did to stock: ``Stock levels reduced: Name (12→10)``, per item."""
        notes = await self._json("GET", f"/orders/{order_id}/notes")
        out: list[StockNote] = []
        for n in notes if isinstance(notes, list) else []:
            if isinstance(n, dict) and isinstance(n.get("note"), str):
                out.extend(parse_stock_note(n["note"]))
        return out

    async def order_refs(self, order_id: int) -> set[WooRef]:
        data = await self._json("GET", f"/orders/{order_id}")
        return {
            WooRef(int(li.get("product_id") or 0), int(li.get("variation_id") or 0))
            for li in data.get("line_items", [])
            if li.get("product_id")
        }

    # ------------------------------------------------------------------
    # Webhooks and settings (for `webhooks register`, health checks)

    @staticmethod
    def _webhook(data: dict[str, Any]) -> WooWebhook:
        return WooWebhook(id=int(data["id"]), topic=str(data.get("topic", "")),
                          delivery_url=str(data.get("delivery_url", "")), status=str(data.get("status", "")),
                          name=str(data.get("name", "")))

    async def list_webhooks(self, status: str = "all") -> list[WooWebhook]:
        return [self._webhook(w) for w in await self._get_all("/webhooks", {"status": status})]

    async def create_webhook(self, topic: str, delivery_url: str, secret: str, *, name: str = "") -> WooWebhook:
        body = {"topic": topic, "delivery_url": delivery_url, "secret": secret,
                "name": name or f"cloverwoo {topic}"}
        return self._webhook(await self._json("POST", "/webhooks", json=body, idempotent=False))

    async def set_webhook_status(self, webhook_id: int, status: str) -> WooWebhook:
        return self._webhook(await self._json("PUT", f"/webhooks/{webhook_id}", json={"status": status}))

    async def get_setting(self, group: str, setting_id: str) -> str:
        data = await self._json("GET", f"/settings/{group}/{setting_id}")
        return str(data.get("value", ""))

    # ------------------------------------------------------------------
    # Out-of-stock behaviour: catalog visibility, backorders, the contact message

    def _product_path(self, ref: WooRef) -> str:
        if ref.variation_id:
            return f"/products/{ref.product_id}/variations/{ref.variation_id}"
        return f"/products/{ref.product_id}"

    @staticmethod
    def _presentation(ref: WooRef, data: Any) -> Presentation:
        if not isinstance(data, dict):
            raise RemoteError("product answer is not a JSON object")
        message = ""
        for m in data.get("meta_data", []) or []:
            if isinstance(m, dict) and m.get("key") == CONTACT_META_KEY:
                message = "" if m.get("value") is None else str(m.get("value"))
        visibility = None if ref.variation_id else str(data.get("catalog_visibility") or "visible")
        return Presentation(catalog_visibility=visibility, backorders=str(data.get("backorders") or "no"),
                            contact_message=message)

    async def get_presentation(self, ref: WooRef) -> Presentation:
        """What the out-of-stock behaviour reads: visibility (None for a variation), backorders, our message."""
        return self._presentation(ref, await self._json("GET", self._product_path(ref)))

    async def set_presentation(self, ref: WooRef, change: Change) -> Presentation:
        """Write only the fields ``change`` names (no stock field: a concurrent stock write is not clobbered).

        Idempotent (absolute values), so it is retried like a read.
        """
        body: dict[str, Any] = {}
        if change.catalog_visibility is not None and not ref.variation_id:
            body["catalog_visibility"] = change.catalog_visibility
        if change.backorders is not None:
            body["backorders"] = change.backorders
        if change.contact_message is not None:
            body["meta_data"] = [{"key": CONTACT_META_KEY, "value": change.contact_message}]
        if not body:
            return await self.get_presentation(ref)
        return self._presentation(ref, await self._json("PUT", self._product_path(ref), json=body))

    async def update_webhook(self, webhook_id: int, *, secret: str | None = None, status: str | None = None) -> None:
        """Change a webhook's secret and/or status (``webhooks register``); the secret is never echoed."""
        body = {k: v for k, v in (("secret", secret), ("status", status)) if v}
        if body:
            await self._json("PUT", f"/webhooks/{webhook_id}", json=body)
