"""OAuth 1.0a one-legged signing, exactly as WooCommerce checks it over plain HTTP.

Rules this module keeps:

- Pure: no clock, no randomness, no I/O. The caller passes the timestamp and
  the nonce, so a signature is a function of its inputs and tests are exact.
- WooCommerce (``WC_REST_Authentication::check_oauth_signature``) builds the
  base string as ``METHOD & rawurlencode(url) & rawurlencode(k=v joined by &)``
  over every query parameter plus the ``oauth_*`` ones (never the JSON body),
  each key and value RFC 3986-encoded first, sorted by raw key (``strcmp``);
  the URL is scheme, host and path without the query. The signing key is the
  consumer secret followed by ``&`` (no token secret: one-legged).
- HMAC-SHA1 and HMAC-SHA256 are the only methods WooCommerce accepts.
- A parameter name appears once (PHP arrays merge duplicate keys; the last
  wins), so parameters are a mapping here.
- The secret only ever enters ``hmac``; it is never part of a returned string
  other than the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

SignatureMethod = Literal["HMAC-SHA1", "HMAC-SHA256"]

_ALGORITHMS = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}


def percent_encode(value: str) -> str:
    """RFC 3986 encoding (PHP ``rawurlencode``): everything but ``A-Z a-z 0-9 - . _ ~``."""
    return quote(value, safe="-._~")


def base_url(url: str) -> str:
    """The URL as signed: lower-case scheme and host, default port dropped, no query or fragment."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", "", ""))


def signature_base_string(method: str, url: str, params: Mapping[str, str]) -> str:
    """The string WooCommerce hashes; ``params`` are query plus ``oauth_*`` parameters, without the signature."""
    pairs = [
        percent_encode(f"{percent_encode(k)}={percent_encode(v)}")
        for k, v in sorted(params.items(), key=lambda kv: kv[0].encode("utf-8"))
        if k != "oauth_signature"
    ]
    return f"{method.upper()}&{percent_encode(base_url(url))}&{'%26'.join(pairs)}"


def sign(base_string: str, consumer_secret: str, method: SignatureMethod = "HMAC-SHA256") -> str:
    """Base64 HMAC of the base string with key ``consumer_secret + '&'``."""
    digest = hmac.new(
        (consumer_secret + "&").encode("utf-8"), base_string.encode("utf-8"), _ALGORITHMS[method]
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def oauth_params(
    method: str,
    url: str,
    query: Mapping[str, str],
    *,
    consumer_key: str,
    consumer_secret: str,
    timestamp: int,
    nonce: str,
    signature_method: SignatureMethod = "HMAC-SHA256",
) -> dict[str, str]:
    """The ``oauth_*`` parameters (signature included) to add to the query string of one request."""
    params = {
        "oauth_consumer_key": consumer_key,
        "oauth_timestamp": str(timestamp),
        "oauth_nonce": nonce,
        "oauth_signature_method": signature_method,
    }
    signed = {**query, **params}
    params["oauth_signature"] = sign(signature_base_string(method, url, signed), consumer_secret, signature_method)
    return params


def verify(method: str, url: str, params: Mapping[str, str], consumer_secret: str) -> bool:
    """True when ``params['oauth_signature']`` is right for this request (constant-time compare)."""
    sig_method: SignatureMethod
    match params.get("oauth_signature_method", ""):
        case "HMAC-SHA1":
            sig_method = "HMAC-SHA1"
        case "HMAC-SHA256":
            sig_method = "HMAC-SHA256"
        case _:
            return False
    expected = sign(signature_base_string(method, url, params), consumer_secret, sig_method)
    return hmac.compare_digest(expected, params.get("oauth_signature", ""))
