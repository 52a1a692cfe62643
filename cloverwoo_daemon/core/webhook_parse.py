"""Turning a webhook body into inbound events, or refusing it.

Rules this module keeps:

- Pure: ``bytes`` in, frozen values out; no I/O. Authentication is not done
  here (see ``core.signatures``); this module only says what a body *means*.
- Bounded: a body nested deeper than ``MAX_DEPTH`` is refused before any
  decoding, by a structural scan that is linear in the body size (it never
  builds objects), so a hostile body costs at most a few passes over bytes
  the server already limited in size.
- Strict on the envelope, tolerant of the rest: a body that is not a
  delivery at all (not a JSON object, no ``merchants`` object, an ``appId``
  that is not a string; for Woo, a field we use with the wrong type) refuses
  the whole body (``MalformedPayload``); fields we do not know are skipped
  (WooCommerce sends 71 keys per product, plugins add more). Nothing but
  ``MalformedPayload`` ever escapes ``parse_clover`` or ``parse_woo``,
  whatever the input.
- A Clover delivery is many entries (several merchants, several events each,
  and Clover documents no retry), so it is judged entry by entry: an entry of
  a kind the sync does not use, or of a shape it cannot read, is *skipped*
  (returned in ``CloverDelivery.skipped`` with the reason, for the log and the
  metrics), and every other entry of the same body is kept. An entry is used
  when its ``objectId`` is ``<kind>:<id>`` with a kind in ``CLOVER_ITEM_KINDS``
  or ``CLOVER_ORDER_KINDS``; ``type`` and ``ts`` are read when they have the
  expected type and otherwise left out, and nothing else of the entry is
  read. Clover's newer stock events (``IS``, ``IA``) carry the item's figures
  in the entry itself; those figures are never read: the merge always reads
  fresh.
- Every event comes with its dedup key, a JSON array text, so the store can
  acknowledge a redelivery and apply it once:
    Clover: ``["clover", mId, objectId, type, ts]``, or, for an entry
    without a usable ``ts``, ``["clover", mId, objectId, type, null,
    received_ms]``: with no time of its own, two such entries are told apart
    by when they arrived (a redelivery then runs one more merge, which finds
    nothing to do; collapsing two real changes into one key would lose one);
    Woo: ``["woo", topic, id, date_modified_gmt, stock_quantity]``.
  Woo's ``X-WC-Webhook-Delivery-ID`` is *not* used: it is a hash of the
  webhook id and the current second, 100 deliveries carried 2 distinct values
  (woocommerce-api.md section 9).
- The two unauthenticated bodies the endpoints accept are recognised here
  and nowhere else, with narrow shapes: Clover's handshake is exactly
  ``{"verificationCode": "<printable, <= 128 chars>"}``; Woo's ping is exactly
  ``webhook_id=<digits>`` (form-encoded).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, TypeVar

import msgspec

from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.messages import CloverChange, WooChange

__all__ = [
    "CLOVER_ITEM_KINDS",
    "CLOVER_ORDER_KINDS",
    "MAX_DEPTH",
    "CloverDelivery",
    "CloverParsed",
    "CloverVerification",
    "MalformedPayload",
    "SkippedEntry",
    "WooDelivery",
    "WooIgnored",
    "WooParsed",
    "WooPing",
    "check_depth",
    "parse_clover",
    "parse_woo",
]

MAX_DEPTH: Final = 32
"""Deepest JSON nesting accepted. A Woo product is about 5 deep (``_links``, ``meta_data``); plugins' meta add some."""


class MalformedPayload(Exception):
    """The body is not a delivery we understand; ``reason`` says why (safe to log: no secrets, no body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# Bounded structure check

# A JSON string: quote, then any run of non-quote/non-backslash or escape pairs,
# then a quote. Possessive quantifiers: no backtracking, so both the full
# match and the substitution are linear in the input length.
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_WELL_QUOTED = re.compile(rb'(?:' + _STRING + rb'|[^"]++)*+', re.DOTALL)
_STRINGS = re.compile(_STRING, re.DOTALL)
_T = TypeVar("_T")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")


def check_depth(body: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse a body whose brackets nest deeper than ``limit`` (or do not pair up).

    Strings are removed first so brackets inside them do not count; then each
    pass removes the innermost ``[]`` pairs (C-speed ``bytes.replace``), and
    anything left after ``limit`` passes is either too deep or unbalanced.
    """
    if _WELL_QUOTED.fullmatch(body) is None:
        raise MalformedPayload("unterminated string")
    skeleton = _STRINGS.sub(b"", body).translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    for _ in range(limit):
        if not skeleton:
            return
        shorter = skeleton.replace(b"[]", b"")
        if len(shorter) == len(skeleton):
            raise MalformedPayload("unbalanced brackets")
        skeleton = shorter
    if skeleton:
        raise MalformedPayload(f"nested deeper than {limit}")


def _decode(body: bytes, decoder: msgspec.json.Decoder[_T]) -> _T:
    """Decode a body already through ``check_depth``."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise MalformedPayload(f"invalid field: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec raises it, not DecodeError, for a string that is not UTF-8
        raise MalformedPayload("not UTF-8") from None


def _key(*parts: object) -> str:
    return msgspec.json.encode(parts).decode()


# --------------------------------------------------------------------------
# Clover


class CloverVerification(msgspec.Struct, frozen=True):
    """The URL-verification POST: the admin pastes ``code`` into the Clover dashboard."""

    code: str


CLOVER_ITEM_KINDS: Final = frozenset({"I", "IS", "IA"})
"""Event kinds that mean "this item's stock may have changed": ``I`` (inventory item; before Clover split the
topic, every stock change too), ``IS`` (item stock: manual edits, ``POST item_stocks``, the low-stock
threshold) and ``IA`` (item availability)."""
CLOVER_ORDER_KINDS: Final = frozenset({"O"})
"""Event kinds that name an order, whose line items say which items sold."""
_USED_KINDS = CLOVER_ITEM_KINDS | CLOVER_ORDER_KINDS
_NAME_MAX = 256
_SHOWN_MAX = 64  # how much of an unusable objectId a SkippedEntry keeps (for the log line)
_TS_MAX = 2**53


class SkippedEntry(msgspec.Struct, frozen=True):
    """One entry of a Clover delivery that was not stored, and why (safe to log: ids only, truncated).

    ``unused`` tells a well-formed entry of a kind the sync does not use (a payment, a customer) from one
    whose shape could not be read.
    """

    merchant_id: str
    object_id: str
    reason: str
    unused: bool


class CloverDelivery(msgspec.Struct, frozen=True):
    """A notification: each used change with its dedup key, in body order, and the entries skipped."""

    app_id: str
    items: tuple[tuple[str, CloverChange], ...]
    skipped: tuple[SkippedEntry, ...] = ()


CloverParsed = CloverVerification | CloverDelivery

_Code = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class _Handshake(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    verificationCode: _Code  # noqa: N815 (wire name)


class _CloverEntry(msgspec.Struct, frozen=True):
    """The fields of one entry the sync reads; each is checked by hand, so one bad field cannot refuse it."""

    objectId: msgspec.Raw = msgspec.Raw(b"null")  # noqa: N815
    type: msgspec.Raw = msgspec.Raw(b"null")
    ts: msgspec.Raw = msgspec.Raw(b"null")


class _CloverBody(msgspec.Struct, frozen=True):
    appId: str  # noqa: N815
    merchants: dict[str, msgspec.Raw]


_handshake_decoder = msgspec.json.Decoder(_Handshake)
_clover_decoder = msgspec.json.Decoder(_CloverBody)
_entries_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_entry_decoder = msgspec.json.Decoder(_CloverEntry)
_any_decoder = msgspec.json.Decoder()


def _scalar(raw: msgspec.Raw) -> object:
    """A field's value when it is a string or a number; None for anything else (an object, a list, null)."""
    try:
        value = _any_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def _shown(text: object) -> str:
    return text[:_SHOWN_MAX] if isinstance(text, str) else ""


def _entry(merchant_id: str, raw: msgspec.Raw, received_ms: int) -> tuple[str, CloverChange] | SkippedEntry:
    """One entry: the change and its key, or why it was skipped."""
    try:
        e = _entry_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError: not an object
        return SkippedEntry(merchant_id, "", "entry is not an object", unused=False)
    oid = _scalar(e.objectId)
    if not isinstance(oid, str) or not 1 <= len(oid) <= _NAME_MAX:
        return SkippedEntry(merchant_id, _shown(oid), "objectId missing, not a string, or too long", unused=False)
    kind, sep, object_id = oid.partition(":")
    if not sep or not kind or not object_id:
        return SkippedEntry(merchant_id, _shown(oid), "objectId is not '<type key>:<id>'", unused=False)
    if kind not in _USED_KINDS:
        return SkippedEntry(merchant_id, _shown(oid), f"event type {kind[:16]!r} is not used for stock", unused=True)
    type_ = _scalar(e.type)
    type_ = type_ if isinstance(type_, str) and len(type_) <= _NAME_MAX else ""
    ts = _scalar(e.ts)
    if type(ts) is int and 0 <= ts <= _TS_MAX:
        key = _key("clover", merchant_id, oid, type_, ts)
    else:
        ts = received_ms
        key = _key("clover", merchant_id, oid, type_, None, received_ms)
    return key, CloverChange(merchant_id=merchant_id, kind=kind, object_id=object_id, type=type_, ts=ts)


def parse_clover(body: bytes, *, received_ms: int) -> CloverParsed:
    """The handshake, or the used changes of one Clover delivery and the entries skipped.

    ``received_ms`` (unix ms, when the body arrived) stands in for the time of an entry without a usable
    ``ts`` (its dedup key and ``CloverChange.ts``).

    Error handling: raises ``MalformedPayload`` (the body is not a Clover delivery at all) and nothing else;
    an entry that cannot be read is skipped, never a reason to refuse the others.
    """
    check_depth(body)
    try:
        return CloverVerification(_handshake_decoder.decode(body).verificationCode)
    except msgspec.DecodeError:
        pass
    except UnicodeDecodeError:
        raise MalformedPayload("not UTF-8") from None
    parsed = _decode(body, _clover_decoder)
    items: list[tuple[str, CloverChange]] = []
    skipped: list[SkippedEntry] = []
    for merchant_id, raw_entries in parsed.merchants.items():
        shown = merchant_id[:_NAME_MAX]
        try:
            entries = _entries_decoder.decode(raw_entries)
        except (msgspec.DecodeError, UnicodeDecodeError):
            skipped.append(SkippedEntry(shown, "", "the merchant's events are not a list", unused=False))
            continue
        if not 1 <= len(merchant_id) <= _NAME_MAX:
            skipped.extend(SkippedEntry(shown, "", "merchant id empty or too long", unused=False) for _ in entries)
            continue
        for raw in entries:
            out = _entry(merchant_id, raw, received_ms)
            if isinstance(out, SkippedEntry):
                skipped.append(out)
            else:
                items.append(out)
    return CloverDelivery(app_id=parsed.appId, items=tuple(items), skipped=tuple(skipped))


# --------------------------------------------------------------------------
# WooCommerce


class WooPing(msgspec.Struct, frozen=True):
    """The unsigned test delivery sent when a webhook is created or its URL changes; must get a 200."""

    webhook_id: int


class WooDelivery(msgspec.Struct, frozen=True):
    """A product or order delivery reduced to the change, with its dedup key."""

    key: str
    change: WooChange


class WooIgnored(msgspec.Struct, frozen=True):
    """A well-formed delivery for a topic the sync does not use (coupon.*, customer.*, action.*)."""

    topic: str


WooParsed = WooPing | WooDelivery | WooIgnored

_PING = re.compile(rb"webhook_id=([0-9]{1,18})")
_TOPIC = re.compile(r"([a-z_]{1,32})\.([a-z_.]{1,64})")
_Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
_RefId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Stamp = Annotated[str, msgspec.Meta(max_length=64)]


class _WooProduct(msgspec.Struct, frozen=True):
    id: _Id
    type: str = ""
    parent_id: _RefId = 0
    date_modified_gmt: _Stamp | None = None
    stock_quantity: int | None = None


class _WooLine(msgspec.Struct, frozen=True):
    product_id: _RefId = 0
    variation_id: _RefId = 0


class _WooOrder(msgspec.Struct, frozen=True):
    id: _Id
    date_modified_gmt: _Stamp | None = None
    line_items: list[_WooLine] = msgspec.field(default_factory=list)


_product_decoder = msgspec.json.Decoder(_WooProduct)
_order_decoder = msgspec.json.Decoder(_WooOrder)


def parse_woo(body: bytes, topic: str | None) -> WooParsed:
    """The ping, or the change one WooCommerce delivery announces (``topic`` = ``X-WC-Webhook-Topic``).

    A product delivery names the product, or the variation and its parent;
    an order delivery names the order and the stock units on its lines. The
    payload's stock figures are never trusted for the merge (it reads fresh),
    only used in the dedup key.

    Error handling: raises ``MalformedPayload`` and nothing else.
    """
    ping = _PING.fullmatch(body.strip())
    if ping is not None:
        return WooPing(int(ping.group(1)))
    if not topic:
        raise MalformedPayload("missing X-WC-Webhook-Topic")
    m = _TOPIC.fullmatch(topic.strip())
    if m is None:
        raise MalformedPayload("bad X-WC-Webhook-Topic")
    topic = m.group(0)
    resource = m.group(1)
    check_depth(body)
    if resource == "product":
        p = _decode(body, _product_decoder)
        stamp = p.date_modified_gmt or ""
        change = WooChange(
            topic=topic,
            resource_id=p.id,
            parent_id=p.parent_id if p.type == "variation" else 0,
            date_modified_gmt=stamp,
            stock_quantity=p.stock_quantity,
        )
        return WooDelivery(_key("woo", topic, p.id, stamp, p.stock_quantity), change)
    if resource == "order":
        o = _decode(body, _order_decoder)
        stamp = o.date_modified_gmt or ""
        refs = sorted({WooRef(line.product_id, line.variation_id) for line in o.line_items if line.product_id})
        change = WooChange(topic=topic, resource_id=o.id, refs=tuple(refs), date_modified_gmt=stamp)
        return WooDelivery(_key("woo", topic, o.id, stamp, None), change)
    return WooIgnored(topic)
