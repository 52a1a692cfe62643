"""The Clover REST client for one location (``ports.CloverPort``).

Rules:

- One ``httpx.AsyncClient`` per location (httpcore degrades with many
  requests on one client; see stack.md), its transport injectable for tests.
- Every request passes two gates before it goes: the location's token gate
  (16 req/s, 5 in flight) and the app gate shared by all locations (50 req/s,
  10 in flight). The in-flight slot of the token is taken first and the app
  slot only once the token's own rate allows, so a location waiting on its
  own limit never sits on app capacity the other locations could use. A
  request is booked in a bucket at the moment it is sent, never earlier.
- Bounded retries (``core.backoff``) on 429, 5xx, timeouts and connection
  errors. A 429 honours ``retry-after`` (1 s when absent, as Clover asks) and
  closes the gate named by its ``X-RateLimit-*`` header until then, so the
  other requests of that scope stop too instead of earning a longer penalty.
  After the last attempt: ``ports.RemoteError``. 404: ``ports.NotFound``;
  any other 4xx: ``ports.PermanentError``. A stock write is never resent
  once it was sent and not answered (a 5xx, a timeout, a reset): it is
  absolute, so a resend would set the count again over a sale that landed
  after the first attempt. Only a write that certainly never arrived (a
  connection that never opened, a 429) is sent again.
- Payloads are decoded into msgspec structs that ignore unknown fields.
  Clover holds decimal quantities (items sold by weight); the daemon counts
  whole units, the whole part toward minus infinity (``whole_units``: 2.4 is
  2, -0.5 is -1), so a shop never shows more than Clover holds. A change is
  applied to the quantity as read, fraction kept (2.4 less 1 is 1.4, not 1).
  An item with no stock record has quantity ``None`` (unknown), never 0.
- The token goes in the ``Authorization`` header only: never in a log line,
  an exception message or a ``repr``. It is either static (a sandbox or
  dashboard token) or asked of a ``TokenProvider`` before every request
  (OAuth v2, expiring); with a provider, a 401 gets one new token and one
  more try, and a second 401 is a ``PermanentError``.

Every 429, retry and stock write is told to ``hooks`` (``io.metrics.ClientHooks``),
for ``/metrics``.

Error handling: only ``ports.RemoteError`` and its subclasses leave the
public methods; ``trio.Cancelled`` passes through untouched.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import httpx
import msgspec
import structlog
import trio

from cloverwoo_daemon.core.backoff import Backoff, parse_retry_after
from cloverwoo_daemon.core.model import CloverItem
from cloverwoo_daemon.core.ratelimit import TokenBucket
from cloverwoo_daemon.core.witness import CloverOrderSeen
from cloverwoo_daemon.io.metrics import ClientHooks
from cloverwoo_daemon.ports import NotFound, PermanentError, RemoteError

__all__ = ["AppGate", "CloverClient", "Gate", "TokenProvider", "whole_units"]

log = structlog.get_logger("cloverwoo.clover")

T = TypeVar("T")

PAGE = 1000  # Clover's hard limit per page
NESTED_LIMIT = 100  # expanded collections are cut at this many elements

# Which gate a 429 names. Values are Clover's header names (§3 of the reference).
_TOKEN_HEADERS = ("X-RateLimit-tokenLimit", "X-RateLimit-tokenConcurrentLimit")
_APP_HEADERS = ("X-RateLimit-crossTokenLimit", "X-RateLimit-crossTokenConcurrentLimit")


def whole_units(q: float | None) -> int | None:
    """Clover's decimal stock as the whole units a shop may sell: the floor (2.4 -> 2, -0.5 -> -1).

    Not Clover's ``stockCount`` (rounded half up: 2.5 -> 3), which would show
    a half-sold unit as whole and sell it online.
    """
    if q is None or not math.isfinite(q):
        return None
    return math.floor(q + 1e-9)  # 2.9999999999 from float arithmetic on 3 is still 3


# --------------------------------------------------------------------------
# Gates


class Gate:
    """One Clover limit scope: a request rate (token bucket) and a cap on requests in flight.

    Uses ``trio.current_time()``, so tests with an autojumping clock see
    paced requests without waiting for them.
    """

    def __init__(self, *, rate: float, in_flight: int, burst: float | None = None, name: str = "gate") -> None:
        # The bucket grants at most pace * T + burst in any window of length T
        # (core.ratelimit). Clover says "16 per second" and documents no burst,
        # so a server counting in a sliding one-second window must never see
        # more than ``rate``: pace at ``rate - burst`` with a burst of one
        # (15/s for 16/s: a 5,000-item push, a read and a write per item, takes 1.07x its floor). A
        # merge's read and write need no burst: ``read_then_write`` books both
        # slots before the read, so they still go back to back.
        b = burst if burst is not None else 1.0
        self.bucket = TokenBucket(max(rate - b, rate / 2), b)
        self.slots = trio.Semaphore(in_flight)
        self.in_flight_limit = in_flight
        self.name = name
        self.max_in_flight = 0
        self.blocked_until = -math.inf

    @property
    def in_flight(self) -> int:
        return self.in_flight_limit - self.slots.value

    def block_for(self, seconds: float) -> None:
        """Nothing goes through this gate for ``seconds`` (a 429's ``retry-after``)."""
        until = trio.current_time() + seconds
        self.blocked_until = max(self.blocked_until, until)
        self.bucket.block_until(until)

    async def wait_rate(self) -> None:
        """Sleep until the bucket would let one request go (books nothing)."""
        while (wait := self.bucket.wait_time(trio.current_time())) > 0:
            await trio.sleep(wait)

    def _note_in_flight(self) -> None:
        self.max_in_flight = max(self.max_in_flight, self.in_flight)


class AppGate(Gate):
    """The per-app limits, shared by every location of one daemon (one per daemon)."""

    def __init__(self, *, rate: float = 50.0, in_flight: int = 10, burst: float | None = None) -> None:
        super().__init__(rate=rate, in_flight=in_flight, burst=burst, name="app")


@asynccontextmanager
async def _admitted(token: Gate, app: Gate) -> AsyncIterator[None]:
    async with token.slots:
        token._note_in_flight()
        await token.wait_rate()
        async with app.slots:
            app._note_in_flight()
            while True:
                now = trio.current_time()
                wait = max(token.bucket.wait_time(now), app.bucket.wait_time(now))
                if wait <= 0:
                    token.bucket.take(now)
                    app.bucket.take(now)
                    break
                await trio.sleep(wait)
            yield


# --------------------------------------------------------------------------
# Payloads (unknown fields are ignored by msgspec)


class _Ref(msgspec.Struct):
    id: str


class _ItemStock(msgspec.Struct):
    quantity: float | None = None
    modifiedTime: int | None = None


class _Item(msgspec.Struct):
    id: str
    name: str = ""
    sku: str | None = None
    # The docs once show ``"itemStock": 0``; a bare number is not trusted as a count.
    itemStock: _ItemStock | float | None = None
    itemGroup: _Ref | None = None
    modifiedTime: int | None = None
    deleted: bool = False


class _Items(msgspec.Struct):
    elements: list[_Item] = msgspec.field(default_factory=list)


class _StockWrite(msgspec.Struct):
    quantity: float | None = None
    stockCount: float | None = None
    modifiedTime: int | None = None  # when the stock last changed (Clover's clock, unix ms)


class _LineItem(msgspec.Struct):
    item: _Ref | None = None  # absent for a custom (manual) line
    unitQty: int | None = None  # PER_UNIT items only: units x 1000


class _LineItems(msgspec.Struct):
    elements: list[_LineItem] = msgspec.field(default_factory=list)


class _Elements(msgspec.Struct):
    elements: list[Any] = msgspec.field(default_factory=list)


class _Order(msgspec.Struct):
    id: str
    modifiedTime: int | None = None
    lineItems: _LineItems | None = None
    paymentState: str | None = None
    refunds: _Elements | None = None


class _Orders(msgspec.Struct):
    elements: list[_Order] = msgspec.field(default_factory=list)


def _to_item(raw: _Item) -> CloverItem:
    quantity = raw.itemStock.quantity if isinstance(raw.itemStock, _ItemStock) else None
    sku = raw.sku.strip() if raw.sku else None
    return CloverItem(
        item_id=raw.id,
        name=raw.name,
        sku=sku or None,
        quantity=whole_units(quantity),
        item_group_id=raw.itemGroup.id if raw.itemGroup else None,
        modified_time=raw.modifiedTime or 0,
        deleted=raw.deleted,
    )


# --------------------------------------------------------------------------
# The client


class TokenProvider(Protocol):
    """Where an expiring (OAuth v2) access token comes from (``io.clover_oauth.OAuthTokens``).

    Both methods raise ``ports.RemoteError`` (or a subclass) when no usable
    token can be had, so the location is reported unreachable, not crashed.
    """

    async def access_token(self) -> str:
        """A token to send now (refreshed first if it is about to expire)."""
        ...

    async def refreshed_after_401(self) -> str:
        """Clover refused the token: a new one (or the same, if refreshing cannot help)."""
        ...


class CloverClient:
    """``ports.CloverPort`` for one location (one merchant, one token).

    Resource handling: owns its ``httpx.AsyncClient``; call ``aclose()``.
    """

    def __init__(
        self,
        *,
        location: str,
        merchant_id: str,
        token: str | TokenProvider,  # a static token, or a provider of expiring ones
        base_url: str,
        app_gate: AppGate,
        rate: float = 16.0,  # this token's requests per second
        in_flight: int = 5,  # this token's concurrent requests
        burst: float | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        hooks: ClientHooks | None = None,  # 429s, retries and stock writes, for /metrics
    ) -> None:
        self.location = location
        self.hooks = hooks or ClientHooks()
        self.merchant_id = merchant_id
        self.app_gate = app_gate
        self.token_gate = Gate(rate=rate, in_flight=in_flight, burst=burst, name="token")
        self.backoff = backoff or Backoff(base=1.0, cap=30.0, max_attempts=6)
        self._rng = rng or random.Random()
        self._log = log.bind(location=location, merchant_id=merchant_id)
        # told of every attempt's outcome (True: answered; False: 5xx, timeout, connection error),
        # so the location's reachability is known after seconds, not after a call's whole retry budget.
        self.on_attempt: Callable[[bool, str], None] | None = None
        self._prefix = f"/v3/merchants/{merchant_id}"
        limits = httpx.Limits(max_connections=in_flight + 1, max_keepalive_connections=in_flight + 1)
        self._tokens: TokenProvider | None = None if isinstance(token, str) else token
        headers = {"Accept": "application/json"}
        if isinstance(token, str):
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=limits,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"CloverClient(location={self.location!r}, merchant_id={self.merchant_id!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ transport

    async def _request(
        self, method: str, path: str, *, what: str, params: Any = None, json: Any = None,
        resend_unanswered: bool = True,
    ) -> bytes:
        """One call with gates and bounded retries; returns the body of a 2xx answer.

        ``what`` names the endpoint in logs and errors (``"GET items"``), so no
        message carries a full URL or a header. With ``resend_unanswered``
        False, an attempt that was sent and not answered (a 5xx, a timeout, a
        reset) ends the call with ``RemoteError`` instead of a resend.
        """
        attempt = 0
        renewed = False  # one new token per call after a 401; a second 401 is final
        while True:
            attempt += 1
            retry_after: float | None = None
            unanswered = False  # sent, and no answer that says whether it was applied
            headers = None
            if self._tokens is not None:  # fetched outside the gates: a refresh must not hold a slot
                headers = {"Authorization": f"Bearer {await self._tokens.access_token()}"}
            try:
                async with _admitted(self.token_gate, self.app_gate):
                    resp = await self._http.request(method, self._prefix + path, params=params, json=json,
                                                    headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                reason = f"connection error ({type(exc).__name__})"  # never sent: safe to send again
            except httpx.TimeoutException as exc:
                reason = f"timeout ({type(exc).__name__})"
                unanswered = True
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__})"
                unanswered = True
            else:
                status = resp.status_code
                if self.on_attempt is not None and status < 500:  # it answered
                    self.on_attempt(True, "")
                if 200 <= status < 300:
                    return resp.content
                if status == 429:
                    retry_after = self._on_429(resp, what, attempt)
                    reason = "429 Too Many Requests"
                elif status >= 500:
                    reason = f"HTTP {status}"
                    unanswered = True
                elif status == 404:
                    raise NotFound(f"clover {self.location}: {what}: 404 {_message(resp)}")
                elif status == 401 and self._tokens is not None and not renewed:
                    renewed = True
                    sent = headers["Authorization"] if headers else ""
                    if f"Bearer {await self._tokens.refreshed_after_401()}" != sent:
                        attempt -= 1  # a token change is not a failed attempt
                        continue
                    raise PermanentError(f"clover {self.location}: {what}: HTTP 401 {_message(resp)}")
                else:
                    raise PermanentError(f"clover {self.location}: {what}: HTTP {status} {_message(resp)}")
            if self.on_attempt is not None and retry_after is None:  # no answer (a 429 is an answer)
                self.on_attempt(False, reason)
            if unanswered and not resend_unanswered:
                self._log.warning("clover_write_outcome_unknown", what=what, reason=reason)
                raise RemoteError(f"clover {self.location}: {what}: {reason} (it may have been applied; "
                                  "not resent)")
            delay = self.backoff.next_delay(attempt, retry_after=retry_after, rng=self._rng)
            if delay is None:
                self._log.warning("clover_request_failed", what=what, attempts=attempt, reason=reason)
                raise RemoteError(f"clover {self.location}: {what}: {reason} after {attempt} attempts")
            self._log.info("clover_retry", what=what, attempt=attempt, reason=reason, delay=round(delay, 3))
            self.hooks.retried()
            await trio.sleep(delay)

    def _on_429(self, resp: httpx.Response, what: str, attempt: int) -> float:
        header, limit = next(
            ((h, resp.headers[h]) for h in (*_TOKEN_HEADERS, *_APP_HEADERS) if h in resp.headers), ("", "")
        )
        given = parse_retry_after(resp.headers.get("retry-after"))
        wait = given if given is not None else 1.0
        gate = self.app_gate if header in _APP_HEADERS else self.token_gate
        gate.block_for(wait)
        self.hooks.rate_limited()
        self._log.warning(
            "clover_rate_limited", what=what, attempt=attempt, limit_header=header or None, limit=limit or None,
            retry_after=given, gate=gate.name,
        )
        return wait

    async def _get(self, path: str, *, what: str, params: Any = None) -> bytes:
        return await self._request("GET", path, what=what, params=params)

    def _decode(self, raw: bytes, type_: Any, what: str) -> Any:
        try:
            return msgspec.json.decode(raw, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RemoteError(f"clover {self.location}: {what}: unexpected payload ({exc})") from None

    # ------------------------------------------------------------ CloverPort

    async def get_stock(self, item_id: str) -> int | None:
        """Fresh stock of one item; None when it has no stock record (Clover answers 404 then).

        A 404 here is ambiguous: the item may be gone, or merely untracked.
        So on 404 the item itself is fetched: if it exists the answer is None,
        and if it does not, ``NotFound`` is raised.
        """
        what = "GET item_stocks/{id}"
        try:
            raw = await self._get(f"/item_stocks/{item_id}", what=what)
        except NotFound:
            await self._get(f"/items/{item_id}", what="GET items/{id}")  # raises NotFound if the item is gone
            return None
        return whole_units(self._decode(raw, _StockWrite, what).quantity)

    async def read_then_write(
        self, item_id: str, delta: int, before_write: Callable[[int], Awaitable[None]]
    ) -> tuple[int, int, int | None] | None:
        """Read an item's stock fresh and write ``read + delta``, back to back; returns (read, written, the
        stock's ``modifiedTime`` as read: the witness's lower bound, see ``core.witness``).

        The change is applied to the quantity as Clover holds it, fraction
        kept (2.4 read, -1: 1.4 written); the figures returned and given to
        ``before_write`` are whole units (``whole_units``), 2 and 1 there.

        Clover has no relative or conditional write, so a POS sale landing
        between the read and the write is overwritten. This keeps that window
        to one round trip: both requests are admitted together (one in-flight
        slot held across both, both rate slots booked and waited for before
        the read), so the write never queues behind other traffic, and
        ``before_write(target)`` (the caller records its target durably) runs
        concurrently with the write instead of in front of it. None when the
        item has no stock record.

        Error handling: any failure raises ``RemoteError`` (no retry here: the
        caller's merge is retried as a whole, from fresh reads).
        """
        headers = None
        if self._tokens is not None:
            headers = {"Authorization": f"Bearer {await self._tokens.access_token()}"}
        async with self.token_gate.slots:
            self.token_gate._note_in_flight()
            async with self.app_gate.slots:
                self.app_gate._note_in_flight()
                now = trio.current_time()
                last = max(max(self.token_gate.bucket.reserve(now), self.app_gate.bucket.reserve(now))
                           for _ in range(2))
                await trio.sleep_until(now + last)  # both slots are ours from here: no wait in between
                read = await self._raw("GET", f"/item_stocks/{item_id}", "GET item_stocks/{id}", headers)
                if read is None:
                    return None
                stock = self._decode(read, _StockWrite, "GET item_stocks/{id}")
                raw_q = stock.quantity
                fresh = whole_units(raw_q)
                if fresh is None or raw_q is None:
                    return None
                target = fresh + delta
                exact = round(raw_q + delta, 6)  # the fraction stays; floats are cleaned to Clover's precision
                # the nursery wraps a failed POST in an ExceptionGroup (strict groups), which slipped
                # past every ``except RemoteError`` and crashed the shard actor; a lone failure comes out bare.
                try:
                    async with trio.open_nursery() as n:
                        n.start_soon(before_write, target)
                        raw = await self._counted_write(self._raw(
                            "POST", f"/item_stocks/{item_id}", "POST item_stocks/{id}", headers,
                            json={"quantity": int(exact) if exact == int(exact) else exact}))
                except ExceptionGroup as group:
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
                if raw is None:
                    raise RemoteError(f"clover {self.location}: POST item_stocks/{{id}}: 404")
                return fresh, target, stock.modifiedTime

    async def _raw(
        self, method: str, path: str, what: str, headers: dict[str, str] | None, json: Any = None
    ) -> bytes | None:
        """One request inside an admission the caller holds; None on 404; RemoteError on anything else."""
        try:
            resp = await self._http.request(method, self._prefix + path, json=json, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise RemoteError(f"clover {self.location}: {what}: {type(exc).__name__}") from None
        if 200 <= resp.status_code < 300:
            return resp.content
        if resp.status_code == 404:
            return None
        if resp.status_code == 429:
            self._on_429(resp, what, 1)
        raise RemoteError(f"clover {self.location}: {what}: HTTP {resp.status_code}")

    async def _counted_write(self, write: Awaitable[T]) -> T:
        """A stock write's outcome for ``hooks.wrote``: ok, or error when it raised or found no item (None)."""
        try:
            result = await write
        except RemoteError:
            self.hooks.wrote(False, 1)
            raise
        self.hooks.wrote(result is not None, 1)
        return result

    async def set_stock(self, item_id: str, quantity: int) -> int:
        """An absolute count (a CSV row); never resent after an unanswered attempt (see the module rules)."""
        what = "POST item_stocks/{id}"
        raw = await self._counted_write(
            self._request("POST", f"/item_stocks/{item_id}", what=what, json={"quantity": quantity},
                          resend_unanswered=False))
        body = self._decode(raw, _StockWrite, what)
        q = body.quantity if body.quantity is not None else body.stockCount
        result = whole_units(q)
        return result if result is not None else quantity

    async def list_items(self, *, modified_since_ms: int | None = None) -> list[CloverItem]:
        params: list[tuple[str, str | int]] = [("expand", "itemStock")]
        if modified_since_ms is not None:
            params.append(("filter", f"modifiedTime>={modified_since_ms}"))
        return await self._pages("/items", "GET items", params, _Items, _to_item)

    async def changed_item_ids_from_orders(self, *, since_ms: int) -> tuple[set[str], int]:
        orders = await self.changed_orders(since_ms=since_ms)
        ids: set[str] = set().union(*(items for _, items in orders.values()))
        return ids, max([since_ms, *(modified for modified, _ in orders.values())])

    async def changed_orders(self, *, since_ms: int) -> dict[str, tuple[int, set[str]]]:
        params: list[tuple[str, str | int]] = [("filter", f"modifiedTime>={since_ms}"), ("expand", "lineItems")]
        out: dict[str, tuple[int, set[str]]] = {}
        for order in await self._pages("/orders", "GET orders", params, _Orders):
            out[order.id] = (order.modifiedTime or 0, await self._ids_of(order))
        return out

    async def order_lines(self, *, since_ms: int) -> list[CloverOrderSeen]:
        """Orders modified since ``since_ms`` with their units per item (the witness of our writes' windows).

        A FIXED-price item sold N times is N lines; a PER_UNIT line counts its
        ``unitQty`` (x 1000). An order with a refund is marked ``refunded``.
        """
        params: list[tuple[str, str | int]] = [("filter", f"modifiedTime>={since_ms}"),
                                               ("expand", "lineItems,refunds")]
        out: list[CloverOrderSeen] = []
        for order in await self._pages("/orders", "GET orders", params, _Orders):
            lines = order.lineItems.elements if order.lineItems else []
            if len(lines) >= NESTED_LIMIT:
                lines = await self._pages(f"/orders/{order.id}/line_items", "GET orders/{id}/line_items", [],
                                          _LineItems)
            units: dict[str, float] = {}
            for li in lines:
                if li.item is not None:
                    units[li.item.id] = units.get(li.item.id, 0.0) + (li.unitQty / 1000 if li.unitQty else 1.0)
            refunded = bool(order.refunds and order.refunds.elements) or (order.paymentState or "").endswith(
                "REFUNDED")
            out.append(CloverOrderSeen(order.id, order.modifiedTime or 0, units, refunded))
        return out

    async def order_item_ids(self, order_id: str) -> set[str]:
        what = "GET orders/{id}"
        raw = await self._get(f"/orders/{order_id}", what=what, params={"expand": "lineItems"})
        return await self._ids_of(self._decode(raw, _Order, what))

    async def _ids_of(self, order: _Order) -> set[str]:
        lines = order.lineItems.elements if order.lineItems else []
        if len(lines) >= NESTED_LIMIT:
            # Expanded collections stop at 100: page the rest from the order's own list.
            lines = await self._pages(f"/orders/{order.id}/line_items", "GET orders/{id}/line_items", [], _LineItems)
        return {li.item.id for li in lines if li.item is not None}

    async def _pages(
        self, path: str, what: str, params: list[tuple[str, str | int]], type_: Any,
        convert: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """Every element of every page, ``PAGE`` at a time, until a short page (Clover gives no total).

        ``convert`` maps each element as its page arrives, so that a page's
        decoded payload is freed before the next one is read rather than held
        beside the converted catalogue (50 pages at 50,000 items).
        """
        out: list[Any] = []
        offset = 0
        while True:
            raw = await self._get(path, what=what, params=[*params, ("limit", PAGE), ("offset", offset)])
            elements = self._decode(raw, type_, what).elements
            out.extend(elements if convert is None else map(convert, elements))
            if len(elements) < PAGE:
                return out
            offset += PAGE

    # ------------------------------------------------------------ preflight

    async def properties(self) -> dict[str, Any]:
        """The merchant's properties (``trackStock``, ``updateStock``, ...)."""
        props: dict[str, Any] = self._decode(
            await self._get("/properties", what="GET properties"), dict[str, Any], "GET properties"
        )
        return props

    async def probe_inventory_read(self) -> None:
        """``GET items?limit=1``: proves the token may read inventory (Clover answers 401 when it may not)."""
        await self._get("/items", what="GET items", params={"limit": 1})

    async def merchant(self) -> dict[str, Any]:
        """The merchant record (``id``, ``name``): proves the token and merchant id belong together."""
        record: dict[str, Any] = self._decode(await self._get("", what="GET merchant"), dict[str, Any], "GET merchant")
        return record


def _message(resp: httpx.Response) -> str:
    """Clover's ``{"message": ...}``, shortened; never the request (it carries the token)."""
    try:
        body = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return ""
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg)[:200] if msg else ""
