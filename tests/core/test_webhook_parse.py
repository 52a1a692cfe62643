"""Parsing webhook bodies: the documented shapes, the two unauthenticated bodies, dedup keys, and hostile input."""

from __future__ import annotations

import json
import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.webhook_parse import (
    CLOVER_ITEM_KINDS,
    CLOVER_ORDER_KINDS,
    MAX_DEPTH,
    CloverDelivery,
    CloverVerification,
    MalformedPayload,
    SkippedEntry,
    WooDelivery,
    WooIgnored,
    WooPing,
    check_depth,
    parse_clover,
    parse_woo,
)
from cloverwoo_daemon.messages import CloverChange, WooChange

FUZZ_SCALE = max(1, int(os.environ.get("CLOVERWOO_FUZZ_SCALE", "1")))  # multiplies the fuzz examples
RX = 1_790_000_000_000  # when a test body "arrived" (unix ms)

CLOVER_SAMPLE = {
    "appId": "DRKVJT2ZRRRSC",
    "merchants": {
        "XYZVJT2ZRRRSC": [
            {"objectId": "O:GHIVJT2ABCRSC", "type": "CREATE", "ts": 1537970958000},
            {"objectId": "I:ABCVJTABCRRSC", "type": "UPDATE", "ts": 1536156558000},
        ],
        "MNOVJT2ZRRRSC": [{"objectId": "IC:X:Y", "type": "DELETE", "ts": 1}],
    },
}

WOO_VARIATION = {
    "id": 734,
    "name": "Tee - Blue",
    "type": "variation",
    "parent_id": 733,
    "sku": "TEE-BLU-M",
    "date_modified_gmt": "2025-01-10T14:03:22",
    "manage_stock": True,
    "stock_quantity": 7,
    "meta_data": [{"id": 1, "key": "_x", "value": {"a": [1, {"b": None}]}}],
    "_links": {"self": [{"href": "https://shop.example/wp-json/wc/v3/products/734"}]},
}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------- Clover


def test_clover_sample_payload() -> None:
    parsed = parse_clover(enc(CLOVER_SAMPLE), received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    assert parsed.app_id == "DRKVJT2ZRRRSC"
    changes = [c for _, c in parsed.items]
    assert changes == [
        CloverChange("XYZVJT2ZRRRSC", "O", "GHIVJT2ABCRSC", "CREATE", 1537970958000),
        CloverChange("XYZVJT2ZRRRSC", "I", "ABCVJTABCRRSC", "UPDATE", 1536156558000),
    ]
    keys = [k for k, _ in parsed.items]
    assert keys[1] == '["clover","XYZVJT2ZRRRSC","I:ABCVJTABCRRSC","UPDATE",1536156558000]'
    assert len(set(keys)) == 2
    # a category event is not used for stock: skipped (and said so), not stored
    assert parsed.skipped == (SkippedEntry("MNOVJT2ZRRRSC", "IC:X:Y", "event type 'IC' is not used for stock",
                                           unused=True),)


def test_clover_new_stock_events_are_used_like_inventory_events() -> None:
    """Clover's split of the inventory topic: ``IS`` (item stock) and ``IA`` (availability) name an item as ``I``
    does. Their rich payload (the stock figures) is tolerated and never read; an entry without ``ts`` is dated by
    its arrival, so two of them arriving apart keep apart in the dedup window."""
    body = {"appId": "A", "merchants": {"M": [
        {"objectId": "IS:ITEM1", "type": "UPDATE", "ts": 1790000000123,
         "itemStock": {"item": {"id": "ITEM1"}, "quantity": 4.0, "modifiedTime": 1790000000120}},
        {"objectId": "IA:ITEM2", "type": "UPDATE", "item": {"id": "ITEM2", "available": False}},
        {"objectId": "IS:ITEM3"},
    ]}}
    parsed = parse_clover(enc(body), received_ms=RX)
    assert isinstance(parsed, CloverDelivery) and parsed.skipped == ()
    assert [c for _, c in parsed.items] == [
        CloverChange("M", "IS", "ITEM1", "UPDATE", 1790000000123),
        CloverChange("M", "IA", "ITEM2", "UPDATE", RX),
        CloverChange("M", "IS", "ITEM3", "", RX),
    ]
    keys = [json.loads(k) for k, _ in parsed.items]
    assert keys == [["clover", "M", "IS:ITEM1", "UPDATE", 1790000000123],
                    ["clover", "M", "IA:ITEM2", "UPDATE", None, RX],
                    ["clover", "M", "IS:ITEM3", "", None, RX]]
    later = parse_clover(enc(body), received_ms=RX + 1)
    assert isinstance(later, CloverDelivery)
    assert later.items[0][0] == parsed.items[0][0]  # dated by Clover: a redelivery is a duplicate
    assert later.items[1][0] != parsed.items[1][0]  # dated by arrival: another change, kept


def test_clover_dedup_key_is_stable_and_discriminating() -> None:
    one = {"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 5, "extra": 1}]}}
    again = {"merchants": {"M": [{"ts": 5, "type": "UPDATE", "objectId": "I:1"}]}, "appId": "B"}
    later = {"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 6}]}}
    other_merchant = {"appId": "A", "merchants": {"N": [{"objectId": "I:1", "type": "UPDATE", "ts": 5}]}}
    key = lambda body: parse_clover(enc(body), received_ms=RX).items[0][0]  # noqa: E731
    assert key(one) == key(again)
    assert len({key(one), key(later), key(other_merchant)}) == 3


def test_clover_tolerates_unknown_fields_and_empty_lists() -> None:
    parsed = parse_clover(enc({"appId": "A", "merchants": {"M": []}, "future": {"x": [1]}}), received_ms=RX)
    assert parsed == CloverDelivery(app_id="A", items=())


def test_clover_verification_handshake_is_exact() -> None:
    code = "5220ecf5-7dea-4396-b0ba-a1659c182887"
    assert parse_clover(enc({"verificationCode": code}), received_ms=RX) == CloverVerification(code)
    # Anything more than the one key is not a handshake, and not a delivery either.
    for body in (
        {"verificationCode": code, "merchants": {}},
        {"verificationCode": code, "x": 1},
        {"verificationCode": 5},
        {"verificationCode": ""},
        {"verificationCode": "a b"},
        {"verificationCode": "x" * 129},
    ):
        with pytest.raises(MalformedPayload):
            parse_clover(enc(body), received_ms=RX)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"appId": "A"}',
        b'{"appId": 1, "merchants": {}}',
        b'{"merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 5}]}}',
        b'{"appId": "A", "merchants": []}',
        b'{"appId": "A", "merchants": null}',
        b'\xff\xfe{"appId"',
        b'{"appId": "A", "merchants": {"M": []}',
    ],
)
def test_clover_not_a_delivery_is_malformed(body: bytes) -> None:
    """Only a body that is not a Clover delivery at all is refused: not JSON, not an object, no ``merchants``."""
    with pytest.raises(MalformedPayload):
        parse_clover(body, received_ms=RX)


GOOD = {"objectId": "I:GOOD", "type": "UPDATE", "ts": 7}


@pytest.mark.parametrize(
    ("entry", "used", "reason"),
    [
        ({"objectId": "I:1", "type": "UPDATE", "ts": "5"}, True, ""),  # a ts we cannot read: dated by arrival
        ({"objectId": "I:1", "type": "UPDATE", "ts": 5.5}, True, ""),
        ({"objectId": "I:1", "type": "UPDATE", "ts": -1}, True, ""),
        ({"objectId": "I:1", "type": "UPDATE", "ts": 10**30}, True, ""),
        ({"objectId": "I:1", "type": 5, "ts": 5}, True, ""),
        ({"objectId": "I:1"}, True, ""),
        ({"objectId": "I1", "type": "UPDATE", "ts": 5}, False, "objectId is not '<type key>:<id>'"),
        ({"objectId": ":1", "type": "UPDATE", "ts": 5}, False, "objectId is not '<type key>:<id>'"),
        ({"objectId": "I:", "type": "UPDATE", "ts": 5}, False, "objectId is not '<type key>:<id>'"),
        ({"type": "UPDATE", "ts": 5}, False, "objectId missing, not a string, or too long"),
        ({"objectId": 12, "type": "UPDATE", "ts": 5}, False, "objectId missing, not a string, or too long"),
        ({"objectId": "I:" + "x" * 300}, False, "objectId missing, not a string, or too long"),
        ("I:1", False, "entry is not an object"),
        (None, False, "entry is not an object"),
        ([{"objectId": "I:1"}], False, "entry is not an object"),
        ({"objectId": "P:PAY1", "type": "CREATE", "ts": 5}, False, "event type 'P' is not used for stock"),
        ({"objectId": "CA:1", "type": "CREATE", "ts": 5}, False, "event type 'CA' is not used for stock"),
    ],
)
def test_clover_one_odd_entry_never_costs_the_others(entry: object, used: bool, reason: str) -> None:
    """Before, any of these entries made the whole delivery a 400, and the good events beside it were lost."""
    body = enc({"appId": "A", "merchants": {"M": [GOOD, entry, GOOD | {"objectId": "O:ORD"}],
                                            "N": [GOOD]}})
    parsed = parse_clover(body, received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    kept = [(c.merchant_id, c.kind, c.object_id) for _, c in parsed.items]
    good = [("M", "I", "GOOD"), ("M", "O", "ORD"), ("N", "I", "GOOD")]
    if used:
        assert kept == [good[0], ("M", "I", "1"), *good[1:]] and parsed.skipped == ()
        ts = parsed.items[1][1].ts
        assert ts == (5 if isinstance(entry, dict) and entry.get("ts") == 5 else RX)
    else:
        assert kept == good
        (skip,) = parsed.skipped
        assert skip.merchant_id == "M" and skip.reason == reason
        assert skip.unused == reason.startswith("event type")
        assert len(skip.object_id) <= 64


def test_clover_a_ts_out_of_any_range_is_dated_by_arrival() -> None:
    body = b'{"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 1e400}]}}'
    parsed = parse_clover(body, received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    assert [c for _, c in parsed.items] == [CloverChange("M", "I", "1", "UPDATE", RX)]


def test_clover_a_merchant_whose_events_are_not_a_list_is_skipped_alone() -> None:
    body = enc({"appId": "A", "merchants": {"M": {"objectId": "I:1"}, "": [GOOD, GOOD], "N": [GOOD]}})
    parsed = parse_clover(body, received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    assert [c.merchant_id for _, c in parsed.items] == ["N"]
    assert [s.reason for s in parsed.skipped] == ["the merchant's events are not a list",
                                                 "merchant id empty or too long", "merchant id empty or too long"]


_entries = st.recursive(  # any JSON value (NaN is not JSON: such a body is not a delivery at all)
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from(["I:1", "IS:2", "IA:3", "O:4", "P:5", "I:", ":x", "UPDATE"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["objectId", "type", "ts", "itemStock", "quantity"]) | st.text(max_size=4), c, max_size=4),
    max_leaves=12,
)
_good_entry = st.fixed_dictionaries(
    {"objectId": st.builds(lambda k, i: f"{k}:{i}", st.sampled_from(sorted(CLOVER_ITEM_KINDS | CLOVER_ORDER_KINDS)),
                           st.text(min_size=1, max_size=20)),
     "type": st.sampled_from(["CREATE", "UPDATE", "DELETE"])},
    optional={"ts": st.integers(0, 2**53),
              "itemStock": st.fixed_dictionaries({"quantity": st.floats(allow_nan=False, allow_infinity=False)})})


@settings(max_examples=400 * FUZZ_SCALE, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["M1", "M2", "M3"]), st.booleans(), _good_entry, _entries),
                min_size=1, max_size=12),
       st.dictionaries(st.text(max_size=6), _entries, max_size=2))
def test_fuzz_no_entry_shape_makes_the_good_ones_vanish(
        plan: list[tuple[str, bool, dict[str, object], object]], odd_merchants: dict[str, object]) -> None:
    """Good entries mixed with entries of any shape, and merchants whose value is anything: every good entry is
    kept, in order, with its own key; every other entry is accounted for (kept or skipped), none is lost silently."""
    merchants: dict[str, list[object]] = {}
    good: dict[str, list[dict[str, object]]] = {}
    for mid, odd_first, entry, odd in plan:
        pair = [odd, entry] if odd_first else [entry, odd]
        merchants.setdefault(mid, []).extend(pair)
        good.setdefault(mid, []).append(entry)
    body_merchants: dict[str, object] = {f"X{k}": v for k, v in odd_merchants.items()} | merchants
    try:
        body = json.dumps({"appId": "A", "merchants": body_merchants, "extra": odd_merchants}).encode()
    except ValueError:  # an integer too long for json's default limits
        return
    parsed = parse_clover(body, received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    kept = {mid: [(c.kind, c.object_id) for _, c in parsed.items if c.merchant_id == mid] for mid in merchants}
    for mid, entries in good.items():
        wanted = [tuple(e["objectId"].partition(":")[::2]) for e in entries]  # type: ignore[union-attr]
        it = iter(kept[mid])
        assert all(w in it for w in wanted), f"a good entry of {mid} vanished: {wanted} not in {kept[mid]}"
    accounted = sum(len(v) if isinstance(v, list) else 1 for v in body_merchants.values())
    assert len(parsed.items) + len(parsed.skipped) == accounted


# ---------------------------------------------------------------- WooCommerce


def test_woo_ping() -> None:
    assert parse_woo(b"webhook_id=12", None) == WooPing(12)
    assert parse_woo(b"webhook_id=12\n", "") == WooPing(12)
    for body in (b"webhook_id=", b"webhook_id=12&x=1", b"webhook_id=-1", b"webhook_id=1" + b"0" * 30):
        with pytest.raises(MalformedPayload):
            parse_woo(body, None)


def test_woo_variation_update() -> None:
    parsed = parse_woo(enc(WOO_VARIATION), "product.updated")
    assert parsed == WooDelivery(
        key='["woo","product.updated",734,"2025-01-10T14:03:22",7]',
        change=WooChange("product.updated", 734, parent_id=733, date_modified_gmt="2025-01-10T14:03:22",
                         stock_quantity=7),
    )


def test_woo_simple_product_ignores_parent_of_grouped_child() -> None:
    body = {"id": 5, "type": "simple", "parent_id": 99, "date_modified_gmt": "t", "stock_quantity": None}
    parsed = parse_woo(enc(body), "product.updated")
    assert isinstance(parsed, WooDelivery)
    assert parsed.change.parent_id == 0
    assert parsed.key == '["woo","product.updated",5,"t",null]'


def test_woo_deleted_payload_is_only_the_id() -> None:
    parsed = parse_woo(b'{"id": 44}', "product.deleted")
    assert isinstance(parsed, WooDelivery)
    assert parsed.change == WooChange("product.deleted", 44)


def test_woo_dedup_key_ignores_delivery_and_tracks_stock() -> None:
    def key(**changes: object) -> str:
        parsed = parse_woo(enc(WOO_VARIATION | changes), "product.updated")
        assert isinstance(parsed, WooDelivery)
        return parsed.key

    assert key() == key(name="renamed")  # same state, redelivered: same key
    assert key() != key(stock_quantity=6)  # coalesced delivery with new stock, same second
    assert key() != key(date_modified_gmt="2025-01-10T14:03:23")
    other_topic = parse_woo(enc(WOO_VARIATION), "product.created")
    assert isinstance(other_topic, WooDelivery) and other_topic.key != key()


def test_woo_order_refs() -> None:
    order = {
        "id": 901,
        "status": "processing",
        "date_modified_gmt": "2025-01-10T14:03:22",
        "line_items": [
            {"id": 1, "product_id": 733, "variation_id": 734, "quantity": 2},
            {"id": 2, "product_id": 10, "variation_id": 0, "quantity": 1},
            {"id": 3, "product_id": 733, "variation_id": 734, "quantity": 1},
            {"id": 4, "product_id": 0, "variation_id": 0, "quantity": 1},  # product deleted since
        ],
    }
    parsed = parse_woo(enc(order), "order.created")
    assert isinstance(parsed, WooDelivery)
    assert parsed.change == WooChange(
        "order.created", 901, refs=(WooRef(10, 0), WooRef(733, 734)), date_modified_gmt="2025-01-10T14:03:22"
    )
    assert parse_woo(b'{"id": 5}', "order.deleted") == WooDelivery(
        '["woo","order.deleted",5,"",null]', WooChange("order.deleted", 5)
    )


def test_woo_other_topics_are_ignored_not_refused() -> None:
    assert parse_woo(b'{"id": 3, "email": "a@b"}', "customer.updated") == WooIgnored("customer.updated")


@pytest.mark.parametrize(
    ("body", "topic"),
    [
        (b'{"id": 1}', None),
        (b'{"id": 1}', ""),
        (b'{"id": 1}', "product"),
        (b'{"id": 1}', "Product.Updated!"),
        (b"", "product.updated"),
        (b"[]", "product.updated"),
        (b'{"code": "woocommerce_rest_invalid", "message": "x"}', "product.updated"),
        (b'{"id": "734"}', "product.updated"),
        (b'{"id": 0}', "product.updated"),
        (b'{"id": 1, "parent_id": -1}', "product.updated"),
        (b'{"id": 1, "stock_quantity": 5.5}', "product.updated"),
        (b'{"id": 1, "stock_quantity": "5"}', "product.updated"),
        (b'{"id": 1, "date_modified_gmt": 7}', "product.updated"),
        (b'{"id": 1, "line_items": {}}', "order.updated"),
        (b'{"id": 1, "line_items": [{"product_id": "3"}]}', "order.updated"),
        (b'{"id": 1, "line_items": [5]}', "order.updated"),
        (b'{"id": 99999999999999999999999}', "product.updated"),
    ],
)
def test_woo_malformed(body: bytes, topic: str | None) -> None:
    with pytest.raises(MalformedPayload):
        parse_woo(body, topic)


# ---------------------------------------------------------------- bounded decoding


def test_depth_limit() -> None:
    check_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(MalformedPayload, match="deeper"):
        check_depth(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    # Brackets inside strings (with escaped quotes) do not count.
    check_depth(b'{"a": "' + b"[" * 500 + b'\\"{{{"}')
    with pytest.raises(MalformedPayload):
        check_depth(b'{"a": "unterminated')
    with pytest.raises(MalformedPayload):
        check_depth(b"[[]")


def test_deep_body_refused_before_decoding() -> None:
    deep = b'{"id": 1, "meta_data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(MalformedPayload, match="deeper"):
        parse_woo(deep, "product.updated")
    deep_clover = b'{"appId": "A", "merchants": {"M": []}, "x": ' + b"{" * 5000
    with pytest.raises(MalformedPayload):
        parse_clover(deep_clover, received_ms=RX)


def test_hostile_quotes_stay_linear() -> None:
    # A run of escaped quotes with no closing quote would make a naive regex quadratic.
    check_time_body = b'"' + b'\\"' * 200_000
    with pytest.raises(MalformedPayload):
        parse_clover(check_time_body, received_ms=RX)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)
known_keys = st.sampled_from(
    ["appId", "merchants", "verificationCode", "objectId", "type", "ts", "id", "parent_id", "date_modified_gmt",
     "stock_quantity", "line_items", "product_id", "variation_id"]
)
shaped = st.recursive(
    st.none() | st.integers(-5, 2**64) | st.text(max_size=8) | st.sampled_from(["I:1", "O:x:y", "UPDATE", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(known_keys | st.text(max_size=4), children,
                                                                       max_size=4),
    max_leaves=25,
)
topics = st.none() | st.sampled_from(["product.updated", "order.created", "coupon.updated", "x"]) | st.text(max_size=20)


def _only_malformed(body: bytes, topic: str | None) -> None:
    try:
        parse_clover(body, received_ms=RX)
    except MalformedPayload:
        pass
    try:
        parse_woo(body, topic)
    except MalformedPayload:
        pass


@settings(max_examples=300 * FUZZ_SCALE)
@given(st.binary(max_size=300), topics)
def test_fuzz_random_bytes(body: bytes, topic: str | None) -> None:
    _only_malformed(body, topic)


@settings(max_examples=300 * FUZZ_SCALE)
@given(json_values | shaped, topics)
def test_fuzz_random_json(value: object, topic: str | None) -> None:
    _only_malformed(msgspec.json.encode(value), topic)


# ---------------------------------------------------------------- hostile input, by kind (hypothesis)
# ``CLOVERWOO_FUZZ_SCALE`` multiplies the examples (a long run); ``make test`` uses the numbers below.

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)


@st.composite
def nested(draw: st.DrawFn) -> tuple[bytes, int]:
    """A JSON text and its true nesting depth: lists and objects mixed, strings full of brackets and escapes."""
    depth = draw(st.integers(0, 3 * MAX_DEPTH))
    noise = st.text(alphabet='[]{}"\\:,ab\u00e9\U0001f455', max_size=6)
    body = json.dumps(draw(noise))
    for _ in range(depth):
        key = json.dumps(draw(noise))
        body = f"{{{key}: {body}}}" if draw(st.booleans()) else f"[{body}, {json.dumps(draw(noise))}]"
    return body.encode(), depth


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(nested())
def test_fuzz_depth_limit_is_exact(case: tuple[bytes, int]) -> None:
    """The structural scan refuses exactly the bodies nested deeper than MAX_DEPTH, brackets in strings aside."""
    body, depth = case
    if depth > MAX_DEPTH:
        with pytest.raises(MalformedPayload, match="deeper"):
            check_depth(body)
    else:
        check_depth(body)
    _only_malformed(body, "product.updated")


CLOVER_TEMPLATE = {"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 5}]}}
WOO_PRODUCT = {"id": 734, "type": "variation", "parent_id": 733, "date_modified_gmt": "2025-01-10T14:03:22",
               "stock_quantity": 7}
WOO_ORDER = {"id": 901, "date_modified_gmt": "2025-01-10T14:03:22",
             "line_items": [{"product_id": 733, "variation_id": 734}]}
# (template, topic, path to a known field, what the field accepts). A Clover entry's own fields never refuse the
# body: CLOVER_ENTRY_FIELDS say whether the entry is kept (else it is skipped) while the body is always accepted.
_int = lambda lo, hi: lambda v: type(v) is int and lo <= v <= hi  # noqa: E731
_used = CLOVER_ITEM_KINDS | CLOVER_ORDER_KINDS
KNOWN_FIELDS = [
    (CLOVER_TEMPLATE, None, ("appId",), lambda v: isinstance(v, str)),
    (CLOVER_TEMPLATE, None, ("merchants",), lambda v: isinstance(v, dict)),
    (WOO_PRODUCT, "product.updated", ("id",), _int(1, 2**63 - 1)),
    (WOO_PRODUCT, "product.updated", ("parent_id",), _int(0, 2**63 - 1)),
    (WOO_PRODUCT, "product.updated", ("type",), lambda v: isinstance(v, str)),
    (WOO_PRODUCT, "product.updated", ("date_modified_gmt",),
     lambda v: v is None or isinstance(v, str) and len(v) <= 64),
    (WOO_PRODUCT, "product.updated", ("stock_quantity",), lambda v: v is None or type(v) is int),
    (WOO_ORDER, "order.created", ("id",), _int(1, 2**63 - 1)),
    (WOO_ORDER, "order.created", ("line_items",), lambda v: v == []),
    (WOO_ORDER, "order.created", ("line_items", 0, "product_id"), _int(0, 2**63 - 1)),
    (WOO_ORDER, "order.created", ("line_items", 0, "variation_id"), _int(0, 2**63 - 1)),
]
CLOVER_ENTRY_FIELDS = [
    (("merchants", "M"), lambda v: False),  # the template's one entry replaced by anything: never that entry
    (("merchants", "M", 0), lambda v: isinstance(v, dict) and isinstance(v.get("objectId"), str)
     and v["objectId"].partition(":")[0] in _used and all(v["objectId"].partition(":")[::2])
     and len(v["objectId"]) <= 256),
    (("merchants", "M", 0, "objectId"),
     lambda v: isinstance(v, str) and len(v) <= 256 and v.partition(":")[0] in _used and all(v.partition(":")[::2])),
    (("merchants", "M", 0, "type"), lambda v: True),
    (("merchants", "M", 0, "ts"), lambda v: True),
]


def _replaced(template: object, path: tuple[object, ...], value: object) -> object:
    doc = json.loads(json.dumps(template))
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


@settings(max_examples=500 * FUZZ_SCALE, deadline=None)
@given(st.sampled_from(range(len(KNOWN_FIELDS))),
       _SCALARS | st.integers(-(2**70), 2**70) | st.lists(_SCALARS, max_size=3)
       | st.dictionaries(st.text(max_size=5), _SCALARS, max_size=3))
def test_fuzz_wrong_types_in_known_fields_are_refused(which: int, value: object) -> None:
    """Each field the parser uses, set to any JSON value: accepted exactly when the value has the field's type and
    range; otherwise the whole body is refused (MalformedPayload), never half-used and never a crash."""
    template, topic, path, accepts = KNOWN_FIELDS[which]
    try:
        body = json.dumps(_replaced(template, path, value), allow_nan=True).encode()
    except ValueError:
        return
    parse = (lambda: parse_clover(body, received_ms=RX)) if topic is None else (lambda: parse_woo(body, topic))
    if accepts(value) and _is_json(value):
        parsed = parse()
        assert isinstance(parsed, CloverDelivery | WooDelivery)
    else:
        with pytest.raises(MalformedPayload):
            parse()


@settings(max_examples=500 * FUZZ_SCALE, deadline=None)
@given(st.sampled_from(range(len(CLOVER_ENTRY_FIELDS))),
       _SCALARS | st.integers(-(2**70), 2**70) | st.lists(_SCALARS, max_size=3)
       | st.dictionaries(st.sampled_from(["objectId", "type", "ts"]) | st.text(max_size=5), _SCALARS, max_size=3))
def test_fuzz_any_value_in_a_clover_entry_skips_that_entry_only(which: int, value: object) -> None:
    """A Clover entry's fields, set to any JSON value: the delivery is accepted; the entry is kept exactly when its
    objectId names a kind the sync uses (type and ts are optional), otherwise it is skipped and said so."""
    path, kept = CLOVER_ENTRY_FIELDS[which]
    doc = _replaced(CLOVER_TEMPLATE, path, value)
    doc["merchants"]["N"] = [{"objectId": "I:OTHER", "type": "UPDATE", "ts": 9}]  # type: ignore[index]
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except ValueError:
        return
    if not _is_json(value):  # NaN and Infinity are not JSON: not a delivery at all
        with pytest.raises(MalformedPayload):
            parse_clover(body, received_ms=RX)
        return
    parsed = parse_clover(body, received_ms=RX)
    assert isinstance(parsed, CloverDelivery)
    assert parsed.items[-1][1] == CloverChange("N", "I", "OTHER", "UPDATE", 9)
    m_items = [c for _, c in parsed.items if c.merchant_id == "M"]
    if kept(value):
        assert len(m_items) == 1 and parsed.skipped == ()
    elif path == ("merchants", "M"):
        assert len(m_items) + len(parsed.skipped) == (len(value) if isinstance(value, list) else 1)
    else:
        assert m_items == [] and len(parsed.skipped) == 1


def _is_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(max_size=40), st.integers(0, 10**6), st.booleans())
def test_fuzz_unicode_skus_and_names_parse_and_replays_keep_their_key(sku: str, name: str, stock: int,
                                                                       ascii_only: bool) -> None:
    """A product delivery with any unicode SKU and name (escaped or raw UTF-8, as PHP's json_encode may send) is
    accepted; the fields the sync ignores do not change its dedup key, so a replay is stored once; a Clover
    object id in any script keeps its text through the key."""
    product = WOO_PRODUCT | {"sku": sku, "name": name, "stock_quantity": stock}
    first = parse_woo(json.dumps(product, ensure_ascii=ascii_only).encode(), "product.updated")
    again = parse_woo(json.dumps(product | {"name": name + "!", "sku": sku[::-1]}, ensure_ascii=not ascii_only)
                      .encode(), "product.updated")
    assert isinstance(first, WooDelivery) and isinstance(again, WooDelivery)
    assert first.key == again.key and first.change == again.change
    oid = f"I:{sku}"
    if len(oid) <= 256 and name:
        body = {"appId": "A", "merchants": {name[:256]: [{"objectId": oid, "type": "UPDATE", "ts": stock}]}}
        parsed = parse_clover(json.dumps(body, ensure_ascii=ascii_only).encode(), received_ms=RX)
        assert isinstance(parsed, CloverDelivery)
        (key, change), = parsed.items
        assert json.loads(key) == ["clover", name[:256], oid, "UPDATE", stock]
        assert change.object_id == sku and change.merchant_id == name[:256]
        replay = parse_clover(json.dumps(body, ensure_ascii=not ascii_only).encode(), received_ms=RX)
        assert isinstance(replay, CloverDelivery) and replay.items[0][0] == key


@settings(max_examples=100 * FUZZ_SCALE, deadline=None)
@given(st.integers(1, 3000), st.sampled_from(["updates", "digits", "string", "keys"]))
def test_fuzz_huge_bodies_stay_bounded(n: int, kind: str) -> None:
    """Big but shallow JSON: thousands of updates, a number of thousands of digits, a long string, many keys.
    Parsing returns or refuses; it never raises anything else (msgspec refuses an integer over 4300 digits)."""
    if kind == "updates":
        body = json.dumps({"appId": "A", "merchants": {"M": [{"objectId": f"I:{i}", "type": "UPDATE", "ts": i}
                                                             for i in range(n)]}}).encode()
        parsed = parse_clover(body, received_ms=RX)
        assert isinstance(parsed, CloverDelivery) and len(parsed.items) == n
        return
    if kind == "digits":
        body = b'{"id": 5, "stock_quantity": 1' + b"0" * (n * 2) + b"}"
    elif kind == "string":
        body = b'{"id": 5, "date_modified_gmt": "' + b"x" * (n * 30) + b'"}'
    else:
        body = json.dumps({f"k{i}": i for i in range(n)} | {"id": 5}).encode()
    _only_malformed(body, "product.updated")


@pytest.mark.parametrize("body", [b'{"\xc3(appId": "", "merchants": {}}', b'{"verificationCode": "\xff"}',
                                  b'{"appId": "\xff", "merchants": {}}', b'{"id": 1, "date_modified_gmt": "\xff"}',
                                  b'{"id": 1, "type": "\xed\xa0\x80"}'])
def test_invalid_utf8_is_malformed(body: bytes) -> None:
    """Found by the HTTP fuzz: msgspec raises UnicodeDecodeError (not DecodeError) for a string that is not UTF-8.
    It escaped both parsers; the server answered 503 and logged a traceback, even for an unauthenticated body
    (the handshake check parses it)."""
    _only_malformed(body, "product.updated")
    _only_malformed(body, "order.updated")
    with pytest.raises(MalformedPayload):
        parse_clover(body, received_ms=RX)


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(st.sampled_from([CLOVER_TEMPLATE, WOO_PRODUCT, WOO_ORDER, {"verificationCode": "abc"}]), st.data())
def test_fuzz_bytes_spliced_into_valid_bodies(doc: dict[str, object], data: st.DataObject) -> None:
    """A valid body with bytes spliced in anywhere (invalid UTF-8, lone surrogates, BOMs, NULs, brackets)."""
    body = json.dumps(doc).encode()
    at = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
        [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"[", b"}", b'"', b"\\"]))
    _only_malformed(body[:at] + junk + body[at:], data.draw(topics))
