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
    MAX_DEPTH,
    CloverDelivery,
    CloverVerification,
    MalformedPayload,
    WooDelivery,
    WooIgnored,
    WooPing,
    check_depth,
    parse_clover,
    parse_woo,
)
from cloverwoo_daemon.messages import CloverChange, WooChange

FUZZ_SCALE = max(1, int(os.environ.get("CLOVERWOO_FUZZ_SCALE", "1")))  # multiplies the fuzz examples

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
    parsed = parse_clover(enc(CLOVER_SAMPLE))
    assert isinstance(parsed, CloverDelivery)
    assert parsed.app_id == "DRKVJT2ZRRRSC"
    changes = [c for _, c in parsed.items]
    assert changes == [
        CloverChange("XYZVJT2ZRRRSC", "O", "GHIVJT2ABCRSC", "CREATE", 1537970958000),
        CloverChange("XYZVJT2ZRRRSC", "I", "ABCVJTABCRRSC", "UPDATE", 1536156558000),
        CloverChange("MNOVJT2ZRRRSC", "IC", "X:Y", "DELETE", 1),  # split on the first ':' only
    ]
    keys = [k for k, _ in parsed.items]
    assert keys[1] == '["clover","XYZVJT2ZRRRSC","I:ABCVJTABCRRSC","UPDATE",1536156558000]'
    assert len(set(keys)) == 3


def test_clover_dedup_key_is_stable_and_discriminating() -> None:
    one = {"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 5, "extra": 1}]}}
    again = {"merchants": {"M": [{"ts": 5, "type": "UPDATE", "objectId": "I:1"}]}, "appId": "B"}
    later = {"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 6}]}}
    other_merchant = {"appId": "A", "merchants": {"N": [{"objectId": "I:1", "type": "UPDATE", "ts": 5}]}}
    key = lambda body: parse_clover(enc(body)).items[0][0]  # noqa: E731
    assert key(one) == key(again)
    assert len({key(one), key(later), key(other_merchant)}) == 3


def test_clover_tolerates_unknown_fields_and_empty_lists() -> None:
    parsed = parse_clover(enc({"appId": "A", "merchants": {"M": []}, "future": {"x": [1]}}))
    assert parsed == CloverDelivery(app_id="A", items=())


def test_clover_verification_handshake_is_exact() -> None:
    code = "5220ecf5-7dea-4396-b0ba-a1659c182887"
    assert parse_clover(enc({"verificationCode": code})) == CloverVerification(code)
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
            parse_clover(enc(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"appId": "A"}',
        b'{"appId": 1, "merchants": {}}',
        b'{"appId": "A", "merchants": []}',
        b'{"appId": "A", "merchants": {"M": {}}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": "5"}]}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 5.5}]}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": -1}]}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I1", "type": "UPDATE", "ts": 5}]}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": ":1", "type": "UPDATE", "ts": 5}]}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I:", "type": "UPDATE", "ts": 5}]}}',
        b'{"appId": "A", "merchants": {"M": [{"type": "UPDATE", "ts": 5}]}}',
        b'{"appId": "A", "merchants": {"": []}}',
        b'{"appId": "A", "merchants": {"M": [{"objectId": "I:1", "type": "UPDATE", "ts": 1e400}]}}',
        b'\xff\xfe{"appId"',
        b'{"appId": "A", "merchants": {"M": []}',
    ],
)
def test_clover_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_clover(body)


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
        parse_clover(deep_clover)


def test_hostile_quotes_stay_linear() -> None:
    # A run of escaped quotes with no closing quote would make a naive regex quadratic.
    check_time_body = b'"' + b'\\"' * 200_000
    with pytest.raises(MalformedPayload):
        parse_clover(check_time_body)


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
        parse_clover(body)
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
# (template, topic, path to a known field, what the field accepts)
_int = lambda lo, hi: lambda v: type(v) is int and lo <= v <= hi  # noqa: E731
KNOWN_FIELDS = [
    (CLOVER_TEMPLATE, None, ("appId",), lambda v: isinstance(v, str)),
    (CLOVER_TEMPLATE, None, ("merchants",), lambda v: isinstance(v, dict) and not v),
    (CLOVER_TEMPLATE, None, ("merchants", "M"), lambda v: v == []),
    (CLOVER_TEMPLATE, None, ("merchants", "M", 0, "objectId"),
     lambda v: isinstance(v, str) and 1 <= len(v) <= 256 and all(v.partition(":")[::2]) and ":" in v),
    (CLOVER_TEMPLATE, None, ("merchants", "M", 0, "type"), lambda v: isinstance(v, str) and 1 <= len(v) <= 256),
    (CLOVER_TEMPLATE, None, ("merchants", "M", 0, "ts"), _int(0, 2**53)),
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
    parse = (lambda: parse_clover(body)) if topic is None else (lambda: parse_woo(body, topic))
    if accepts(value):
        parsed = parse()
        assert isinstance(parsed, CloverDelivery | WooDelivery)
    else:
        with pytest.raises(MalformedPayload):
            parse()


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
        parsed = parse_clover(json.dumps(body, ensure_ascii=ascii_only).encode())
        assert isinstance(parsed, CloverDelivery)
        (key, change), = parsed.items
        assert json.loads(key) == ["clover", name[:256], oid, "UPDATE", stock]
        assert change.object_id == sku and change.merchant_id == name[:256]
        replay = parse_clover(json.dumps(body, ensure_ascii=not ascii_only).encode())
        assert isinstance(replay, CloverDelivery) and replay.items[0][0] == key


@settings(max_examples=100 * FUZZ_SCALE, deadline=None)
@given(st.integers(1, 3000), st.sampled_from(["updates", "digits", "string", "keys"]))
def test_fuzz_huge_bodies_stay_bounded(n: int, kind: str) -> None:
    """Big but shallow JSON: thousands of updates, a number of thousands of digits, a long string, many keys.
    Parsing returns or refuses; it never raises anything else (msgspec refuses an integer over 4300 digits)."""
    if kind == "updates":
        body = json.dumps({"appId": "A", "merchants": {"M": [{"objectId": f"I:{i}", "type": "UPDATE", "ts": i}
                                                             for i in range(n)]}}).encode()
        parsed = parse_clover(body)
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
        parse_clover(body)


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(st.sampled_from([CLOVER_TEMPLATE, WOO_PRODUCT, WOO_ORDER, {"verificationCode": "abc"}]), st.data())
def test_fuzz_bytes_spliced_into_valid_bodies(doc: dict[str, object], data: st.DataObject) -> None:
    """A valid body with bytes spliced in anywhere (invalid UTF-8, lone surrogates, BOMs, NULs, brackets)."""
    body = json.dumps(doc).encode()
    at = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
        [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"[", b"}", b'"', b"\\"]))
    _only_malformed(body[:at] + junk + body[at:], data.draw(topics))
