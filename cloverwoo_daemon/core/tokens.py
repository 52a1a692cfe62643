"""Clover OAuth v2 token pairs: when to refresh, what a token answer means, where to authorize.

Rules (clover-api.md section 4.2):

- An access token expires; a refresh token is single-use and expires too.
  Expiry times and token lengths are dynamic, so nothing here assumes a
  lifetime: every decision is made from the ``*_expiration`` times Clover
  returned and the time the pair was obtained.
- A pair is refreshed *ahead* of its access expiry, by a lead that scales
  with the token's lifetime (a fifth of it, at most ``MAX_LEAD`` seconds and
  at least ``MIN_LEAD`` seconds when the lifetime allows), so a token never
  expires in the middle of a burst of requests and clock skew of a few
  seconds between us and Clover does not matter.
- A pair whose refresh token has expired (or was refused) cannot be
  refreshed: only the merchant can issue a new one (``cloverwoo clover
  connect``). That state is ``"dead"`` and never retried against Clover.
- A token's text never appears in a ``repr``, ``str`` or error message.

Times are unix seconds (floats); the caller supplies "now".
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec

__all__ = [
    "MAX_LEAD",
    "MIN_LEAD",
    "TokenPair",
    "TokenResponseError",
    "TokenState",
    "authorize_base",
    "authorize_url",
    "code_from_paste",
    "decode_pair",
    "encode_pair",
    "next_wakeup",
    "pair_from_response",
    "refresh_at",
    "refresh_lead",
    "token_state",
]

MIN_LEAD = 30.0  # seconds before access expiry: enough for a refresh round trip and clock skew
MAX_LEAD = 300.0  # a long-lived token need not be refreshed earlier than this
LEAD_FRACTION = 0.2

TokenState = Literal["fresh", "refresh_due", "expired", "dead"]
"""``fresh``: use it. ``refresh_due``: still valid, refresh now. ``expired``: the
access token is past its expiry but the refresh token is usable. ``dead``: the
refresh token is gone too; a new code exchange is the only way back."""


class TokenResponseError(ValueError):
    """Clover's token answer lacks a field we need (the message names the field, never a value)."""


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    """One merchant's OAuth v2 tokens, as committed to the store.

    ``merchant_id`` is kept with the pair so a location whose configured
    merchant changed cannot silently use another merchant's tokens.
    ``refresh_token`` is empty when the pair was issued without one
    (``no_refresh_token=true``); ``*_expires_at`` is None when Clover did not
    say (the token is then used until Clover answers 401).
    """

    merchant_id: str
    access_token: str
    access_expires_at: float | None
    refresh_token: str = ""
    refresh_expires_at: float | None = None
    obtained_at: float = 0.0

    def __repr__(self) -> str:
        return (f"TokenPair(merchant_id={self.merchant_id!r}, access_expires_at={self.access_expires_at!r}, "
                f"refresh_expires_at={self.refresh_expires_at!r}, <tokens redacted>)")

    __str__ = __repr__

    def values(self) -> list[str]:
        """The secret strings, for log redaction."""
        return [v for v in (self.access_token, self.refresh_token) if v]


def refresh_lead(pair: TokenPair) -> float:
    """Seconds before access expiry at which the pair is refreshed."""
    if pair.access_expires_at is None:
        return 0.0
    lifetime = max(0.0, pair.access_expires_at - pair.obtained_at)
    return min(MAX_LEAD, max(min(MIN_LEAD, lifetime / 2), lifetime * LEAD_FRACTION))


def refresh_at(pair: TokenPair) -> float | None:
    """The unix time to refresh at; None when the access token has no known expiry."""
    if pair.access_expires_at is None:
        return None
    return pair.access_expires_at - refresh_lead(pair)


def _refresh_usable(pair: TokenPair, now: float) -> bool:
    if not pair.refresh_token:
        return False
    return pair.refresh_expires_at is None or now < pair.refresh_expires_at


def token_state(pair: TokenPair, now: float) -> TokenState:
    """Where the pair stands at ``now`` (see ``TokenState``)."""
    expires = pair.access_expires_at
    access_ok = expires is None or now < expires
    if not _refresh_usable(pair, now):
        return "fresh" if access_ok else "dead"
    if not access_ok:
        return "expired"
    due = refresh_at(pair)
    # A refresh token about to expire is used while it still works, even if
    # the access token has time left (else an idle daemon locks itself out).
    refresh_soon = (pair.refresh_expires_at is not None
                    and now >= pair.refresh_expires_at - refresh_lead(pair))
    if (due is not None and now >= due) or refresh_soon:
        return "refresh_due"
    return "fresh"


def next_wakeup(pair: TokenPair, now: float) -> float | None:
    """Seconds from ``now`` until the pair needs attention (0 if it does now); None: never by itself."""
    times = []
    due = refresh_at(pair)
    if due is not None:
        times.append(due)
    if pair.refresh_expires_at is not None and pair.refresh_token:
        times.append(pair.refresh_expires_at - refresh_lead(pair))
    if not times:
        return None
    return max(0.0, min(times) - now)


def _expiry(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenResponseError(f"{name} is not a number")
    # Clover answers unix seconds; a value in milliseconds would mean "year 50000".
    return float(value) / 1000.0 if value > 100_000_000_000 else float(value)


def pair_from_response(body: Any, *, merchant_id: str, now: float) -> TokenPair:
    """The pair in a ``/oauth/v2/token`` or ``/oauth/v2/refresh`` answer.

    Error handling: ``TokenResponseError`` naming the missing or malformed
    field; the answer's values are never quoted.
    """
    if not isinstance(body, dict):
        raise TokenResponseError("the token answer is not a JSON object")
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenResponseError("access_token is missing")
    refresh = body.get("refresh_token") or ""
    if not isinstance(refresh, str):
        raise TokenResponseError("refresh_token is not a string")
    return TokenPair(
        merchant_id=merchant_id,
        access_token=access,
        access_expires_at=_expiry(body.get("access_token_expiration"), "access_token_expiration"),
        refresh_token=refresh,
        refresh_expires_at=_expiry(body.get("refresh_token_expiration"), "refresh_token_expiration")
        if refresh else None,
        obtained_at=now,
    )


def encode_pair(pair: TokenPair) -> str:
    return msgspec.json.encode(pair).decode()


def decode_pair(text: str) -> TokenPair:
    """Error handling: ``TokenResponseError`` for a stored value that is not a pair."""
    try:
        return msgspec.json.decode(text, type=TokenPair)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TokenResponseError(f"the stored token pair is unreadable ({type(exc).__name__})") from None


# Where the merchant approves the app: the API host's sibling (clover-api.md 4.2;
# docs.clover.com "High-trust apps - Auth code flow" lists the EU and LA hosts).
_AUTHORIZE_HOSTS = {
    "api.clover.com": "www.clover.com",
    "api.eu.clover.com": "www.eu.clover.com",
    "api.la.clover.com": "www.la.clover.com",
    "apisandbox.dev.clover.com": "sandbox.dev.clover.com",
    "sandbox.dev.clover.com": "sandbox.dev.clover.com",
}


def authorize_base(api_base_url: str) -> str:
    """The ``/oauth/v2/authorize`` origin for a REST base URL; an unknown host (a simulator) is its own."""
    parts = urlsplit(api_base_url.rstrip("/"))
    host = _AUTHORIZE_HOSTS.get((parts.hostname or "").lower())
    if host is None:
        return f"{parts.scheme}://{parts.netloc}"
    return f"https://{host}"


def authorize_url(api_base_url: str, client_id: str, *, merchant_id: str = "", redirect_uri: str = "",
                  state: str = "") -> str:
    """The URL the merchant opens to approve the app and get a one-time code."""
    params = {"client_id": client_id}
    if merchant_id:
        params["merchant_id"] = merchant_id
    if redirect_uri:
        params["redirect_uri"] = redirect_uri
    if state:
        params["state"] = state
    return f"{authorize_base(api_base_url)}/oauth/v2/authorize?{urlencode(params)}"


def code_from_paste(text: str) -> tuple[str, str | None]:
    """(code, merchant id or None) from what the operator pasted: the bare code, or the whole address
    Clover redirected to (``...?merchant_id=M&client_id=A&code=C``), or that address's query string.

    Error handling: ``ValueError`` when no code can be found (the message quotes nothing pasted).
    """
    text = text.strip()
    if not text:
        raise ValueError("nothing was pasted")
    if "code=" in text:
        query = urlsplit(text).query if "?" in text else text
        params = parse_qs(query)
        codes = params.get("code") or []
        if not codes or not codes[0].strip():
            raise ValueError("the pasted address has no code= value")
        mids = params.get("merchant_id") or []
        return codes[0].strip(), (mids[0].strip() or None) if mids else None
    if any(c.isspace() for c in text) or len(text) > 512:
        raise ValueError("that does not look like a code (paste the code, or the whole address)")
    return text, None
