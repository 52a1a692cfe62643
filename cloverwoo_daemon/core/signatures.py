"""Authenticating webhook deliveries: Clover's static auth code, WooCommerce's body HMAC.

Rules this module keeps:

- Pure: bytes and strings in, a bool or a string out. No I/O, no logging.
- Every comparison of a secret against attacker-controlled input goes through
  ``hmac.compare_digest`` on bytes, so the time taken does not depend on how
  many leading characters matched. Text is encoded to UTF-8 (with surrogates
  passed through) first, because ``compare_digest`` refuses non-ASCII ``str``
  and a header can hold anything.
- A missing header or an empty configured secret never authenticates: an
  unconfigured daemon refuses every delivery rather than accepting all.
- WooCommerce signs the exact raw request body (``trim(wp_json_encode(...))``
  with PHP's escaping), so the HMAC is always taken over the bytes received,
  never over a re-serialisation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["verify_clover_auth", "verify_woo_signature", "woo_signature"]


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def verify_clover_auth(header: str | None, auth_code: str) -> bool:
    """True when ``X-Clover-Auth`` equals the app's Clover Auth Code.

    Clover sends the same static code with every delivery (no body signature
    exists for platform webhooks, clover-api.md 1.3), so this is the whole
    check; integrity rests on TLS.
    """
    if header is None or not auth_code:
        return False
    return hmac.compare_digest(_b(header.strip()), _b(auth_code))


def woo_signature(raw_body: bytes, secret: str) -> str:
    """``X-WC-Webhook-Signature`` for a body: standard base64 of the raw HMAC-SHA256 digest."""
    digest = hmac.new(_b(secret), raw_body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_woo_signature(raw_body: bytes, header: str | None, secret: str) -> bool:
    """True when ``header`` is WooCommerce's signature of exactly ``raw_body`` under ``secret``."""
    if header is None or not secret:
        return False
    expected = woo_signature(raw_body, secret)
    return hmac.compare_digest(_b(expected), _b(header.strip()))
