"""Parsing webhook bodies: the documented shapes, the two unauthenticated bodies, dedup keys, and hostile input."""

from __future__ import annotations

import json

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


@settings(max_examples=300)
@given(st.binary(max_size=300), topics)
def test_fuzz_random_bytes(body: bytes, topic: str | None) -> None:
    _only_malformed(body, topic)


@settings(max_examples=300)
@given(json_values | shaped, topics)
def test_fuzz_random_json(value: object, topic: str | None) -> None:
    _only_malformed(msgspec.json.encode(value), topic)
