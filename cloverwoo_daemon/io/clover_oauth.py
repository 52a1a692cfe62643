"""Clover OAuth v2 for one location: the code exchange, refreshes, and where the token pair lives.

Rules (clover-api.md section 4.2; the timing maths is ``core.tokens``):

- The pair lives in the state store's key/value table under
  ``clover.oauth.<location>`` (``KeyValue``: the store's ``get_kv``/``set_kv``,
  durable when they return), so it sits in the state directory with the rest
  of the daemon's state and needs no migration. Nothing else holds it: no
  second copy that could disagree after a crash.
- Refresh tokens are single-use: the moment Clover answers a refresh, the old
  refresh token is dead. So the refresh call and the commit of its answer are
  one step that cancellation cannot split (a shielded scope: a shutdown
  deadline waits for it), and the new pair is committed before it replaces
  the old one in memory. A crash after that step leaves the new pair in the
  store; a crash before the request went out leaves the old pair, still
  valid. The one window no client can close is a process killed between
  Clover spending the old token and our commit (milliseconds): the stored
  access token then still works until it expires, after which the refresh
  is refused and reported as below.
- One refresh at a time per location (a lock), and a caller that waited for
  the lock takes the pair the other caller got instead of refreshing again:
  two refreshes racing with one refresh token lock the daemon out.
- Before refreshing, the store is read again: another process
  (``cloverwoo clover connect``, ``check-config``) may have stored a newer
  pair, which is adopted instead of spending the old refresh token.
- Refreshes happen ahead of expiry (``keep_fresh``, and lazily on use). A
  transient failure (timeout, 5xx, 429) is retried with backoff; while the
  access token is still valid it keeps being used. A refresh token Clover
  refuses is final (``ReconnectRequired``): alerted once, never retried, and
  the access token is used until it expires; the location then reports
  itself unreachable until ``clover connect`` stores a new pair, which is
  picked up without a restart.
- Clover answers 401 for a missing permission as for an expired token, so a
  401 on a token we believe valid refreshes at most once per
  ``min_401_interval``; refreshing cannot fix a permission.
- No token, secret or code ever appears in a log line, an exception message
  or a ``repr``. Every token this module learns (an answer from Clover, a
  pair read back from the store, a code about to be exchanged) is handed to
  ``io.logs.redact_also`` before anything else is done with it, so even a
  line that would quote one by mistake is redacted.

Error handling: every failure leaves as ``ports.RemoteError`` (transient:
``OAuthUnavailable``) or ``ports.PermanentError`` (``ReconnectRequired``,
``NotConnected``, a refused code exchange); ``trio.Cancelled`` passes through.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import msgspec
import structlog
import trio

from cloverwoo_daemon.config import Config, Secrets, parse_duration
from cloverwoo_daemon.core.backoff import Backoff, parse_retry_after
from cloverwoo_daemon.core.tokens import (
    TokenPair,
    TokenResponseError,
    decode_pair,
    encode_pair,
    next_wakeup,
    pair_from_response,
    token_state,
)
from cloverwoo_daemon.io.clover import AppGate, CloverClient
from cloverwoo_daemon.io.logs import redact_also
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.ports import PermanentError, RemoteError

__all__ = [
    "CloverOAuth",
    "KeyValue",
    "NotConnected",
    "OAuthStatus",
    "OAuthTokens",
    "OAuthUnavailable",
    "ReconnectRequired",
    "TokenStore",
    "connect",
    "connect_location",
    "oauth_providers",
    "token_key",
]

log = structlog.get_logger("cloverwoo.clover_oauth")


class OAuthUnavailable(RemoteError):
    """Clover's OAuth endpoint could not be reached or failed (timeout, 5xx, 429); try again later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReconnectRequired(PermanentError):
    """Clover refused the refresh token (revoked, expired, already used): only a new code exchange helps."""


class NotConnected(ReconnectRequired):
    """No token pair is stored for this location yet."""


class KeyValue(Protocol):
    """The part of ``io.store.Store`` the tokens need; ``set_kv`` returns once the value is durable."""

    async def get_kv(self, key: str) -> str | None: ...

    async def set_kv(self, key: str, value: str) -> None: ...


def token_key(location: str) -> str:
    return f"clover.oauth.{location}"


def _reconnect_hint(location: str) -> str:
    return f"run `cloverwoo clover connect {location}`"


class TokenStore:
    """One location's pair in the key/value table."""

    def __init__(self, kv: KeyValue, location: str, merchant_id: str) -> None:
        self.kv = kv
        self.location = location
        self.merchant_id = merchant_id
        self.key = token_key(location)

    async def load(self) -> TokenPair | None:
        """The stored pair; None when there is none, it is unreadable, or it belongs to another merchant."""
        raw = await self.kv.get_kv(self.key)
        if raw is None:
            return None
        _learn_raw(raw)
        try:
            pair = decode_pair(raw)
        except TokenResponseError as exc:
            log.error("clover_oauth_stored_pair_unreadable", location=self.location, error=str(exc))
            return None
        _learn(pair)
        if pair.merchant_id != self.merchant_id:
            log.error("clover_oauth_stored_pair_other_merchant", location=self.location,
                      stored_merchant=pair.merchant_id, merchant_id=self.merchant_id)
            return None
        return pair

    async def save(self, pair: TokenPair) -> None:
        await self.kv.set_kv(self.key, encode_pair(pair))


def _learn(pair: TokenPair) -> None:
    redact_also(pair.access_token, pair.refresh_token)


def _learn_raw(answer: object) -> None:
    """The token fields of an answer (or a stored pair) that may not decode: they are secrets all the same."""
    if isinstance(answer, str):
        try:
            answer = msgspec.json.decode(answer)
        except msgspec.DecodeError:
            return
    if isinstance(answer, dict):
        redact_also(*(v for k, v in answer.items() if isinstance(v, str) and "token" in k.lower()))


class _Refused(Exception):
    """Clover answered 4xx to a token request; ``status`` and Clover's short message, never the body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status} {message}".strip())
        self.status = status


def _message(resp: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(resp.content)
    except msgspec.DecodeError:
        return ""
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg)[:200] if msg else ""


class CloverOAuth:
    """The two token calls of one Clover app, one HTTP attempt each (retries are the caller's).

    Resource handling: owns an ``httpx.AsyncClient``; call ``aclose()``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str = "",  # needed for the code exchange only
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout), transport=transport,
                                       headers={"Accept": "application/json"}, follow_redirects=False)

    def __repr__(self) -> str:
        return f"CloverOAuth(base_url={self.base_url!r}, client_id={self.client_id!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, str], what: str, merchant_id: str,
                    params: dict[str, str] | None = None) -> TokenPair:
        try:
            resp = await self._http.post(path, json=body, params=params)
        except httpx.TransportError as exc:
            raise OAuthUnavailable(f"clover {what}: {type(exc).__name__}") from None
        status = resp.status_code
        if status == 429 or status >= 500:
            raise OAuthUnavailable(f"clover {what}: HTTP {status}",
                                   retry_after=parse_retry_after(resp.headers.get("retry-after")))
        if status >= 400:
            raise _Refused(status, _message(resp))
        if status != 200:
            raise OAuthUnavailable(f"clover {what}: unexpected HTTP {status}")
        try:
            answer = msgspec.json.decode(resp.content)
            _learn_raw(answer)
            pair = pair_from_response(answer, merchant_id=merchant_id, now=self._clock())
        except (msgspec.DecodeError, TokenResponseError) as exc:
            raise OAuthUnavailable(f"clover {what}: unusable answer ({exc})") from None
        _learn(pair)
        return pair

    async def exchange_code(self, code: str, *, merchant_id: str) -> TokenPair:
        """``POST /oauth/v2/token``: the one-time code the merchant's approval produced, for a pair.

        Error handling: a refused code or app secret is ``PermanentError``
        (a code works once and expires quickly: get a new one).
        """
        if not self._client_secret:
            raise PermanentError("clover token exchange: the app secret (client_secret_file) is not configured")
        redact_also(code.strip())
        try:
            return await self._post("/oauth/v2/token", {"client_id": self.client_id,
                                                        "client_secret": self._client_secret, "code": code.strip()},
                                    "token exchange", merchant_id)
        except _Refused as exc:
            raise PermanentError(f"clover token exchange refused: {exc} (check client_id and the app secret; "
                                 "a code works once and expires quickly, so get a new one)") from None

    async def refresh(self, pair: TokenPair) -> TokenPair:
        """``POST /oauth/v2/refresh``: spends ``pair.refresh_token`` for a new pair.

        Error handling: a refused refresh token is ``ReconnectRequired``.
        """
        if not pair.refresh_token:
            raise ReconnectRequired("clover refresh: the stored pair has no refresh token")
        try:
            return await self._post("/oauth/v2/refresh", {"client_id": self.client_id,
                                                          "refresh_token": pair.refresh_token},
                                    "token refresh", pair.merchant_id)
        except _Refused as exc:
            raise ReconnectRequired(f"clover token refresh refused: {exc}") from None


class OAuthStatus(msgspec.Struct, frozen=True):
    """For ``status`` and the dashboard: where this location's tokens stand (no token text)."""

    location: str
    connected: bool
    reconnect_required: bool
    access_expires_at: float | None
    refresh_expires_at: float | None
    refreshes: int
    failures: int
    last_error: str


Alert = Callable[[str, str], None]  # (kind, message)


def _log_alert(kind: str, message: str) -> None:
    log.error("clover_oauth_alert", kind=kind, message=message)


class OAuthTokens:
    """``io.clover.TokenProvider`` for one OAuth location: always a valid access token, or a clear error.

    Resource handling: holds no resources of its own (the ``CloverOAuth`` and
    the store are the caller's); ``keep_fresh`` runs until cancelled.
    """

    def __init__(
        self,
        *,
        location: str,
        merchant_id: str,
        oauth: CloverOAuth,
        kv: KeyValue,
        clock: Callable[[], float] = time.time,  # unix seconds, the clock Clover's expirations are in
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_alert: Alert = _log_alert,
        min_401_interval: float = 300.0,
    ) -> None:
        self.location = location
        self.merchant_id = merchant_id
        self.oauth = oauth
        self.store = TokenStore(kv, location, merchant_id)
        self._clock = clock
        self.backoff = backoff or Backoff(base=1.0, cap=60.0, max_attempts=6)
        self._rng = rng or random.Random()
        self._on_alert = on_alert
        self.min_401_interval = min_401_interval
        self._lock = trio.Lock()
        self._pair: TokenPair | None = None
        self._refused: TokenPair | None = None  # the pair whose refresh token Clover refused
        self._unsaved = False  # refreshed but the commit failed: the store still has a spent token
        self._last_forced = -float("inf")
        self._last_failure = -float("inf")
        self._failing = False
        self.refreshes = 0
        self.failures = 0
        self.last_error = ""
        self._log = log.bind(location=location, merchant_id=merchant_id)

    def __repr__(self) -> str:
        return f"OAuthTokens(location={self.location!r}, merchant_id={self.merchant_id!r})"

    # ------------------------------------------------------------ status

    def statistics(self) -> OAuthStatus:
        p = self._pair
        return OAuthStatus(
            location=self.location, connected=p is not None, reconnect_required=self._dead(p),
            access_expires_at=p.access_expires_at if p else None,
            refresh_expires_at=p.refresh_expires_at if p else None,
            refreshes=self.refreshes, failures=self.failures, last_error=self.last_error,
        )

    def _dead(self, pair: TokenPair | None) -> bool:
        if pair is None:
            return True
        return pair is self._refused or token_state(pair, self._clock()) == "dead"

    # ------------------------------------------------------------ TokenProvider

    async def access_token(self) -> str:
        pair = await self._current()
        now = self._clock()
        state = token_state(pair, now)
        if pair is self._refused:  # no refresh possible: use what is left, then say so
            if state == "expired" or state == "dead":
                raise ReconnectRequired(f"clover {self.location}: the access token expired and the refresh "
                                        f"token was refused; {_reconnect_hint(self.location)}")
            return pair.access_token
        if state == "fresh":
            return pair.access_token
        if state == "refresh_due":
            # Still valid: one try now unless one is under way or failed lately, and on
            # failure keep using it (keep_fresh retries with backoff).
            if self._lock.locked() or now - self._last_failure < self.backoff.cap:
                return pair.access_token
            try:
                return (await self._refresh(pair, attempts=1)).access_token
            except RemoteError:
                return pair.access_token
        if state == "dead":
            raise ReconnectRequired(f"clover {self.location}: the stored tokens have expired; "
                                    f"{_reconnect_hint(self.location)}")
        return (await self._refresh(pair, attempts=self.backoff.max_attempts)).access_token

    async def refreshed_after_401(self) -> str:
        pair = await self._current()
        now = self._clock()
        if pair is self._refused:
            raise ReconnectRequired(f"clover {self.location}: the token was refused and so was the refresh "
                                    f"token; {_reconnect_hint(self.location)}")
        if token_state(pair, now) == "fresh" and now - self._last_forced < self.min_401_interval:
            return pair.access_token  # refreshed a moment ago: this 401 is a permission, not an expiry
        self._last_forced = now
        return (await self._refresh(pair, attempts=self.backoff.max_attempts, force=True)).access_token

    # ------------------------------------------------------------ the refresh

    async def _current(self) -> TokenPair:
        """The pair in use; on first use (and while dead) the one in the store."""
        pair = self._pair
        if pair is None or self._dead(pair):
            stored = await self.store.load()
            if stored is not None and stored != pair:
                self._adopt(stored, "store")
                pair = stored
        if pair is None:
            raise NotConnected(f"clover {self.location}: no OAuth tokens stored yet; {_reconnect_hint(self.location)}")
        return pair

    def _adopt(self, pair: TokenPair, source: str) -> None:
        was_dead = self._dead(self._pair) and self._pair is not None
        self._pair = pair
        self._refused = None
        if was_dead:
            self._log.warning("clover_oauth_reconnected", source=source)

    async def _refresh(self, seen: TokenPair, *, attempts: int, force: bool = False) -> TokenPair:
        """A new pair, committed; ``seen`` is the pair the caller judged stale."""
        async with self._lock:
            if self._pair is not seen and self._pair is not None:
                return self._pair  # another caller refreshed while we waited
            stored = await self.store.load()
            if stored is not None and stored != self._pair and (
                    self._pair is None or stored.obtained_at >= self._pair.obtained_at):
                self._adopt(stored, "store")  # a newer pair from `clover connect` or another process
                if token_state(stored, self._clock()) == "fresh" and not (
                        force and stored.access_token == seen.access_token):
                    return stored
            current = self._pair
            assert current is not None
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await self._refresh_and_commit(current)
                except ReconnectRequired as exc:
                    self._refused = current
                    self._note_failure(str(exc))
                    self._on_alert("clover_token_refused",
                                   f"clover {self.location}: {exc}; {_reconnect_hint(self.location)}")
                    raise ReconnectRequired(f"clover {self.location}: {exc}; "
                                            f"{_reconnect_hint(self.location)}") from None
                except OAuthUnavailable as exc:
                    self._note_failure(str(exc))
                    delay = self.backoff.next_delay(attempt, retry_after=exc.retry_after,
                                                    rng=self._rng)
                    if attempt >= attempts or delay is None:
                        if not self._failing:
                            self._failing = True
                            self._on_alert("clover_token_refresh_failing",
                                           f"clover {self.location}: token refresh failing: {exc}")
                        raise OAuthUnavailable(f"clover {self.location}: token refresh failed after "
                                               f"{attempt} attempt(s): {exc}") from None
                    self._log.info("clover_oauth_retry", attempt=attempt, reason=str(exc), delay=round(delay, 3))
                    await trio.sleep(delay)

    async def _refresh_and_commit(self, current: TokenPair) -> TokenPair:
        # Shielded: once the request is out, Clover may spend the old refresh
        # token at any moment, so its answer must reach the store even if we
        # are being cancelled (bounded by the client's timeout).
        with trio.CancelScope(shield=True):
            new = await self.oauth.refresh(current)
            await self._commit(new)
        self.refreshes += 1
        self._failing = False
        self._log.info("clover_oauth_refreshed", access_expires_at=new.access_expires_at,
                       refresh_expires_at=new.refresh_expires_at)
        return new

    async def _commit(self, new: TokenPair) -> None:
        try:
            await self.store.save(new)
        except Exception as exc:  # the store is down: keep the pair in memory, retry the save
            self._unsaved = True
            self._note_failure(f"refreshed tokens not saved: {type(exc).__name__}")
            self._on_alert("clover_token_not_saved",
                           f"clover {self.location}: refreshed tokens could not be saved ({type(exc).__name__}); "
                           "a restart now would need `clover connect`")
        else:
            self._unsaved = False
        self._pair = new  # only now: the store had it first (or we said loudly that it does not)

    def _note_failure(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        self._last_failure = self._clock()
        self._log.warning("clover_oauth_refresh_failed", error=message)

    # ------------------------------------------------------------ background

    async def keep_fresh(
        self, *, max_sleep: float = 60.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Refresh ahead of expiry even when the location is idle, until cancelled.

        Never raises for a token problem: it is logged, alerted and counted,
        and the loop waits (``max_sleep``) for a retry or for a new pair in
        the store.
        """
        task_status.started()
        while True:
            try:
                await self._tend(max_sleep)
            except RemoteError:  # logged and alerted where it happened
                await trio.sleep(max_sleep)

    async def _tend(self, max_sleep: float) -> None:
        pair = await self._current()
        if self._unsaved:
            async with self._lock:
                if self._pair is not None and self._unsaved:
                    with trio.CancelScope(shield=True):
                        await self._commit(self._pair)
        if self._dead(pair):
            raise ReconnectRequired("waiting for `clover connect`")
        wait = next_wakeup(pair, self._clock())
        if wait is None or wait > 0:
            await trio.sleep(min(wait if wait is not None else max_sleep, max_sleep))
            return
        await self._refresh(pair, attempts=self.backoff.max_attempts)


async def connect(oauth: CloverOAuth, kv: KeyValue, *, location: str, merchant_id: str, code: str) -> TokenPair:
    """The code exchange of ``cloverwoo clover connect``: the new pair is committed before this returns."""
    with trio.CancelScope(shield=True):  # the code is spent once Clover answers
        pair = await oauth.exchange_code(code, merchant_id=merchant_id)
        await TokenStore(kv, location, merchant_id).save(pair)
    log.info("clover_oauth_connected", location=location, merchant_id=merchant_id,
             access_expires_at=pair.access_expires_at, refresh_expires_at=pair.refresh_expires_at)
    return pair


def _make_private(path: str) -> None:
    """The state file now holds tokens: owner-only (SQLite gives its -wal and -shm files the same mode)."""
    for p in (path, f"{path}-wal", f"{path}-shm"):
        try:
            os.chmod(p, 0o600)
        except FileNotFoundError:
            continue


async def connect_location(
    cfg: Config,
    secrets: Secrets,
    location: str,
    code: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[TokenPair, str]:
    """``cloverwoo clover connect``: exchange ``code``, commit the pair to the state store, prove it works.

    Returns the pair and the merchant's name. The state file is made
    owner-only (0600). Works while the daemon runs: the daemon picks the new
    pair up from the store.

    Error handling: ``PermanentError`` for a refused code or a token that
    does not open its merchant (the pair is stored all the same: the code is
    spent), ``RemoteError`` when Clover cannot be reached; ``StoreError``
    (``io.store``) when the state file cannot be opened.
    """
    loc = next((x for x in cfg.clover.locations if x.name == location), None)
    if loc is None or not loc.oauth:
        raise PermanentError(f"location {location!r} is not an OAuth location of this config")
    secret = secrets.clover_client_secrets.get(location, "")
    timeout = parse_duration(cfg.clover.timeout, key="clover.timeout") or 30.0
    oauth = CloverOAuth(base_url=cfg.clover.base_url, client_id=loc.client_id, client_secret=secret,
                        timeout=timeout, transport=transport, clock=clock)
    store = Store(cfg.state.path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            try:
                pair = await connect(oauth, store, location=location, merchant_id=loc.merchant_id, code=code)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await oauth.aclose()
    _make_private(cfg.state.path)
    client = CloverClient(location=location, merchant_id=loc.merchant_id, token=pair.access_token,
                          base_url=cfg.clover.base_url, app_gate=AppGate(), timeout=timeout,
                          backoff=Backoff(base=0.5, cap=2.0, max_attempts=3), transport=transport)
    try:
        record = await client.merchant()
    finally:
        await client.aclose()
    if record.get("id") != loc.merchant_id:
        raise PermanentError(f"the new token opens merchant {record.get('id')}, not {loc.merchant_id}: "
                             "approve the app as the right merchant and connect again")
    return pair, str(record.get("name") or "")


def oauth_providers(
    cfg: Config,
    kv: KeyValue,
    *,
    on_alert: Alert = _log_alert,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[dict[str, OAuthTokens], list[CloverOAuth]]:
    """A provider per OAuth location (for ``app.py``), and the HTTP clients to close at release.

    Every configured location, active or not: ``cloverwoo mode`` can make an inactive one active at run
    time, and its client needs a token then. An inactive location's API is never called; its tokens are
    kept fresh all the same (``keep_fresh`` calls Clover's OAuth endpoint only), so the switch finds them
    valid.

    Resource handling: the caller closes the returned ``CloverOAuth``
    clients, and runs each provider's ``keep_fresh`` in its nursery.
    """
    timeout = parse_duration(cfg.clover.timeout, key="clover.timeout") or 30.0
    providers: dict[str, OAuthTokens] = {}
    clients: list[CloverOAuth] = []
    for loc in cfg.clover.locations:
        if not loc.oauth:
            continue
        oauth = CloverOAuth(base_url=cfg.clover.base_url, client_id=loc.client_id, timeout=min(timeout, 15.0),
                            transport=transport)
        clients.append(oauth)
        providers[loc.name] = OAuthTokens(location=loc.name, merchant_id=loc.merchant_id, oauth=oauth, kv=kv,
                                          on_alert=on_alert)
    return providers, clients
