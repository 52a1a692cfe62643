"""core.tokens: refresh timing, token answers, authorize URLs, pasted codes (pure, no I/O)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.tokens import (
    MAX_LEAD,
    MIN_LEAD,
    TokenPair,
    TokenResponseError,
    authorize_base,
    authorize_url,
    code_from_paste,
    decode_pair,
    encode_pair,
    next_wakeup,
    pair_from_response,
    refresh_at,
    refresh_lead,
    token_state,
)

T0 = 1_700_000_000.0


def pair(access_ttl: float | None = 1800.0, refresh_ttl: float | None = 86400.0, *, refresh: str = "ref-1",
         obtained: float = T0) -> TokenPair:
    return TokenPair(
        merchant_id="M1", access_token="acc-1",
        access_expires_at=None if access_ttl is None else obtained + access_ttl,
        refresh_token=refresh,
        refresh_expires_at=None if refresh_ttl is None else obtained + refresh_ttl,
        obtained_at=obtained,
    )


def test_lead_scales_with_lifetime_and_is_bounded():
    assert refresh_lead(pair(1800)) == MAX_LEAD  # a fifth would be 360 s: capped
    assert refresh_lead(pair(600)) == 120  # a fifth
    assert refresh_lead(pair(100)) == MIN_LEAD  # a fifth is 20 s: raised to the minimum
    assert refresh_lead(pair(20)) == 10  # the minimum would be more than half: half
    assert refresh_lead(pair(None)) == 0


@given(st.floats(min_value=0.001, max_value=10 * 365 * 86400.0))
def test_refresh_is_before_expiry_but_never_before_half_life(lifetime):
    p = pair(lifetime)
    lead = refresh_lead(p)
    assert 0 < lead <= lifetime / 2 + 1e-6  # (T0 + lifetime) - T0 rounds at ~2e-7
    assert lead <= MAX_LEAD
    if lifetime >= 2 * MIN_LEAD:
        assert lead >= MIN_LEAD  # room for a round trip and clock skew
    assert refresh_at(p) == pytest.approx(p.access_expires_at - lead)


def test_states_through_a_tokens_life():
    p = pair(1800, 86400)
    assert token_state(p, T0) == "fresh"
    assert token_state(p, T0 + 1800 - MAX_LEAD - 1) == "fresh"
    assert token_state(p, T0 + 1800 - MAX_LEAD) == "refresh_due"
    assert token_state(p, T0 + 1800) == "expired"  # the refresh token still works
    assert token_state(p, T0 + 86400) == "dead"


def test_refresh_token_about_to_expire_forces_a_refresh_even_if_access_is_fresh():
    # an idle daemon must spend the refresh token while it still works
    p = pair(access_ttl=7 * 86400, refresh_ttl=3600)
    assert token_state(p, T0) == "fresh"
    assert token_state(p, T0 + 3600 - 1) == "refresh_due"
    assert next_wakeup(p, T0) == pytest.approx(3600 - refresh_lead(p))


def test_pair_without_refresh_token_is_used_until_it_expires_then_dead():
    p = pair(600, None, refresh="")
    assert token_state(p, T0 + 590) == "fresh"  # nothing to refresh with: no "due"
    assert token_state(p, T0 + 600) == "dead"
    assert next_wakeup(p, T0) == pytest.approx(600 - refresh_lead(p))


def test_no_expiry_known_means_never_refresh_by_itself():
    p = pair(None, None)
    assert token_state(p, T0 + 10**9) == "fresh"
    assert next_wakeup(p, T0) is None


def test_next_wakeup_is_zero_once_due():
    p = pair(1800)
    assert next_wakeup(p, T0 + 1800) == 0.0


def test_pair_from_clover_answer():
    body = {"access_token": "A", "access_token_expiration": 1_700_001_800,
            "refresh_token": "R", "refresh_token_expiration": 1_700_086_400, "extra": 1}
    p = pair_from_response(body, merchant_id="M9", now=T0)
    assert (p.merchant_id, p.access_token, p.refresh_token) == ("M9", "A", "R")
    assert p.access_expires_at == 1_700_001_800.0 and p.refresh_expires_at == 1_700_086_400.0
    assert p.obtained_at == T0
    # milliseconds are recognised rather than read as the year 55000
    ms = pair_from_response({**body, "access_token_expiration": 1_700_001_800_000}, merchant_id="M", now=T0)
    assert ms.access_expires_at == 1_700_001_800.0
    # no_refresh_token=true: no refresh token, no refresh expiry
    bare = pair_from_response({"access_token": "A", "access_token_expiration": 5}, merchant_id="M", now=0)
    assert bare.refresh_token == "" and bare.refresh_expires_at is None


@pytest.mark.parametrize("body,field", [
    ([], "JSON object"),
    ({}, "access_token"),
    ({"access_token": ""}, "access_token"),
    ({"access_token": "A", "refresh_token": 5}, "refresh_token"),
    ({"access_token": "A", "access_token_expiration": "soon"}, "access_token_expiration"),
    ({"access_token": "A", "access_token_expiration": True}, "access_token_expiration"),
])
def test_bad_answers_name_the_field_never_the_value(body, field):
    with pytest.raises(TokenResponseError, match=field) as info:
        pair_from_response(body, merchant_id="M", now=0)
    assert "soon" not in str(info.value)


def test_repr_and_encoding_keep_tokens_out_of_sight():
    p = pair()
    assert "acc-1" not in repr(p) and "ref-1" not in str(p)
    assert decode_pair(encode_pair(p)) == p
    assert p.values() == ["acc-1", "ref-1"]
    with pytest.raises(TokenResponseError):
        decode_pair('{"merchant_id": 1}')
    with pytest.raises(TokenResponseError):
        decode_pair("not json")


@pytest.mark.parametrize("api,expected", [
    ("https://api.clover.com", "https://www.clover.com"),
    ("https://api.eu.clover.com/", "https://www.eu.clover.com"),
    ("https://api.la.clover.com", "https://www.la.clover.com"),
    ("https://apisandbox.dev.clover.com", "https://sandbox.dev.clover.com"),
    ("http://127.0.0.1:8788", "http://127.0.0.1:8788"),  # the simulator serves both
])
def test_authorize_host_follows_the_api_host(api, expected):
    assert authorize_base(api) == expected


def test_authorize_url():
    url = authorize_url("https://api.clover.com", "APP1", merchant_id="MID1", redirect_uri="https://x.example/cb",
                        state="s1")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "www.clover.com", "/oauth/v2/authorize")
    assert parse_qs(parts.query) == {"client_id": ["APP1"], "merchant_id": ["MID1"],
                                     "redirect_uri": ["https://x.example/cb"], "state": ["s1"]}
    assert parse_qs(urlsplit(authorize_url("https://api.clover.com", "APP1")).query) == {"client_id": ["APP1"]}


@pytest.mark.parametrize("text,expected", [
    ("  abc-123  ", ("abc-123", None)),
    ("https://app.example/cb?merchant_id=M1&client_id=A&code=C0DE", ("C0DE", "M1")),
    ("merchant_id=M1&client_id=A&code=C0DE", ("C0DE", "M1")),
    ("https://app.example/cb?code=C0DE", ("C0DE", None)),
])
def test_code_from_paste(text, expected):
    assert code_from_paste(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "https://app.example/cb?code=", "two words", "x" * 600])
def test_code_from_paste_refuses_what_is_not_a_code(text):
    with pytest.raises(ValueError):
        code_from_paste(text)
