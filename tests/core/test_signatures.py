"""Webhook authentication: known vectors, tamper detection, and refusal of anything unconfigured."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.signatures import verify_clover_auth, verify_woo_signature, woo_signature

BODY = b'{"id":734,"name":"Tee \\/ Blue","stock_quantity":7}'
SECRET = "s3cretAlnum0123"


def test_woo_signature_matches_php_algorithm() -> None:
    # base64_encode(hash_hmac('sha256', $body, $secret, true))
    expected = base64.b64encode(hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()).decode()
    assert woo_signature(BODY, SECRET) == expected
    # A fixed vector (openssl dgst -sha256 -hmac key -binary | base64) so a change of algorithm cannot go unnoticed.
    assert woo_signature(b"webhook body", "key") == "lmsEhZUggOQE2yjg9Z05sJ2+1Styx1zUbjqcxCe1C3A="


def test_woo_signature_verifies_exact_bytes_only() -> None:
    sig = woo_signature(BODY, SECRET)
    assert verify_woo_signature(BODY, sig, SECRET)
    assert verify_woo_signature(BODY, f" {sig} ", SECRET)  # header whitespace is not part of the value
    assert not verify_woo_signature(BODY + b" ", sig, SECRET)  # re-serialised or trailing byte: refused
    assert not verify_woo_signature(BODY.replace(b"\\/", b"/"), sig, SECRET)
    assert not verify_woo_signature(BODY, sig, SECRET + "x")
    assert not verify_woo_signature(BODY, None, SECRET)
    assert not verify_woo_signature(BODY, "", SECRET)
    assert not verify_woo_signature(BODY, sig, "")  # unconfigured secret never authenticates


def test_clover_auth() -> None:
    code = "0307e264-b33a-4913-88aa-37b10014a0b8"
    assert verify_clover_auth(code, code)
    assert not verify_clover_auth(code[:-1], code)
    assert not verify_clover_auth(code + "0", code)
    assert not verify_clover_auth(None, code)
    assert not verify_clover_auth("", code)
    assert not verify_clover_auth("", "")  # unconfigured: refuse everything
    assert not verify_clover_auth("é\udcff", code)  # non-ASCII and lone surrogates do not raise


@given(st.binary(max_size=200), st.text(max_size=60), st.text(min_size=1, max_size=40))
def test_signature_round_trip_and_no_crash(body: bytes, header: str, secret: str) -> None:
    assert verify_woo_signature(body, woo_signature(body, secret), secret)
    assert verify_woo_signature(body, header, secret) == (header.strip() == woo_signature(body, secret))
    assert verify_clover_auth(header, secret) == (header.strip() == secret)
