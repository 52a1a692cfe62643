"""Clover OAuth v2 against CloverSim's OAuth endpoints and a real state store, over loopback HTTP.

Time: the simulator's token clock and the provider's clock are one fake
clock, moved by the tests; nothing here waits for a token to expire.
"""

from __future__ import annotations

import os
import random
import stat
import sys
from pathlib import Path

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from cloverwoo_daemon.config import load_config, load_secrets
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.tokens import decode_pair, refresh_at
from cloverwoo_daemon.io.clover import AppGate, CloverClient
from cloverwoo_daemon.io.clover_oauth import (
    CloverOAuth,
    NotConnected,
    OAuthTokens,
    OAuthUnavailable,
    ReconnectRequired,
    connect,
    connect_location,
    token_key,
)
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.ports import PermanentError, RemoteError
from cloverwoo_daemon.sim.clover import CloverSim

MID = "MERCHANTAAAAA"
LOC = "downtown"
FAST = Backoff(base=0.001, cap=0.01, max_attempts=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(nursery, clock):
    s = CloverSim(seed=3)
    s.oauth.settings.clock = clock
    s.add_merchant("Downtown", merchant_id=MID, token="static-token-a")
    s.add_merchant("Airport", merchant_id="MERCHANTBBBBB", token="static-token-b")
    await nursery.start(s.run)
    return s


async def open_store(nursery: trio.Nursery, path: Path) -> Store:
    store = Store(str(path))
    await nursery.start(store.run)
    return store


@pytest.fixture
async def store(nursery, tmp_path):
    return await open_store(nursery, tmp_path / "state.sqlite3")


class World:
    """What one test needs: the sim, the store, and makers for the objects under test."""

    def __init__(self, sim: CloverSim, store: Store, clock: Clock) -> None:
        self.sim, self.store, self.clock = sim, store, clock
        self.alerts: list[tuple[str, str]] = []
        self._closers: list[object] = []

    def oauth(self) -> CloverOAuth:
        o = CloverOAuth(base_url=self.sim.base_url or "", client_id=self.sim.app_id,
                        client_secret=self.sim.oauth.settings.client_secret, clock=self.clock, timeout=5.0)
        self._closers.append(o)
        return o

    def tokens(self, store: Store | None = None, **kw: object) -> OAuthTokens:
        kw.setdefault("backoff", FAST)
        return OAuthTokens(location=LOC, merchant_id=MID, oauth=self.oauth(), kv=store or self.store,
                           clock=self.clock, rng=random.Random(0),
                           on_alert=lambda kind, msg: self.alerts.append((kind, msg)), **kw)  # type: ignore[arg-type]

    def client(self, tokens: OAuthTokens) -> CloverClient:
        c = CloverClient(location=LOC, merchant_id=MID, token=tokens, base_url=self.sim.base_url or "",
                         app_gate=AppGate(), backoff=FAST, rng=random.Random(0))
        self._closers.append(c)
        return c

    async def connect(self) -> None:
        await connect(self.oauth(), self.store, location=LOC, merchant_id=MID, code=self.sim.oauth.code_for(MID))

    async def stored(self, store: Store | None = None):
        raw = await (store or self.store).get_kv(token_key(LOC))
        return None if raw is None else decode_pair(raw)

    async def aclose(self) -> None:
        for c in self._closers:
            await c.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def world(sim, store, clock):
    w = World(sim, store, clock)
    yield w
    await w.aclose()


# -------------------------------------------------------------------- the simulator's OAuth


async def test_sim_expired_access_token_is_401_and_refresh_tokens_are_single_use_and_capped(sim, clock):
    sim.oauth.settings.refresh_cap = 2
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        first = sim.oauth.issue(MID)
        headers = {"Authorization": f"Bearer {first['access_token']}"}
        assert (await http.get(f"/v3/merchants/{MID}", headers=headers)).status_code == 200
        clock.now = first["access_token_expiration"]
        assert (await http.get(f"/v3/merchants/{MID}", headers=headers)).status_code == 401
        spend = {"client_id": sim.app_id, "refresh_token": first["refresh_token"]}
        r = await http.post("/oauth/v2/refresh", json=spend)
        assert r.status_code == 200 and set(r.json()) == {"access_token", "access_token_expiration", "refresh_token",
                                                          "refresh_token_expiration"}
        again = await http.post("/oauth/v2/refresh", json=spend)
        assert again.status_code == 401  # single use
        second, third = sim.oauth.issue(MID), sim.oauth.issue(MID)
        assert sim.oauth.active_refresh_tokens(MID) == 2  # the cap: the oldest active one was dropped
        assert r.json()["refresh_token"] not in sim.oauth.refresh
        assert {second["refresh_token"], third["refresh_token"]} <= set(sim.oauth.refresh)
        # a code works once; no_refresh_token=true issues no refresh token
        code = sim.oauth.code_for(MID)
        body = {"client_id": sim.app_id, "client_secret": sim.oauth.settings.client_secret, "code": code}
        r = await http.post("/oauth/v2/token", params={"no_refresh_token": "true"}, json=body)
        assert r.status_code == 200 and "refresh_token" not in r.json()
        assert (await http.post("/oauth/v2/token", json=body)).status_code == 400
        # the authorize page of the sim hands the code to the redirect, with the merchant
        r = await http.get("/oauth/v2/authorize", params={"client_id": sim.app_id, "merchant_id": MID,
                                                          "redirect_uri": "https://app.example/cb", "state": "s"})
        assert r.status_code == 302 and r.headers["location"].startswith("https://app.example/cb?merchant_id=")


# -------------------------------------------------------------------- code exchange


async def test_code_exchange_commits_the_pair_and_the_client_uses_it(world, sim):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    stored = await world.stored()
    assert stored is not None and stored.merchant_id == MID and stored.refresh_token in sim.oauth.refresh
    tokens = world.tokens()
    c = world.client(tokens)
    assert await c.get_stock(item) == 4
    assert await c.set_stock(item, 6) == 6
    assert sim.oauth.calls["refresh"] == 0
    assert tokens.statistics().connected and not tokens.statistics().reconnect_required


async def test_code_exchange_refusals_say_what_to_do_and_quote_no_secret(world, sim):
    code = sim.oauth.code_for(MID)
    oauth = world.oauth()
    await oauth.exchange_code(code, merchant_id=MID)
    with pytest.raises(PermanentError, match="a code works once") as info:
        await oauth.exchange_code(code, merchant_id=MID)
    assert code not in str(info.value)
    bad = CloverOAuth(base_url=sim.base_url, client_id=sim.app_id, client_secret="wrong-secret-123")
    try:
        with pytest.raises(PermanentError, match="check client_id and the app secret") as info:
            await bad.exchange_code(sim.oauth.code_for(MID), merchant_id=MID)
        assert "wrong-secret-123" not in str(info.value)
    finally:
        await bad.aclose()
    no_secret = CloverOAuth(base_url=sim.base_url, client_id=sim.app_id)
    try:
        with pytest.raises(PermanentError, match="client_secret_file"):
            await no_secret.exchange_code("c", merchant_id=MID)
    finally:
        await no_secret.aclose()


async def test_not_connected_is_a_clear_remote_error(world):
    c = world.client(world.tokens())
    with pytest.raises(NotConnected, match="cloverwoo clover connect downtown"):
        await c.get_stock("X")


# -------------------------------------------------------------------- refresh


async def test_token_expiring_mid_run_is_refreshed_with_no_failed_call(world, sim):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    before = await world.stored()
    c = world.client(world.tokens())
    assert await c.get_stock(item) == 4
    sim.oauth.expire_access(MID)  # Clover's idea of expiry, earlier than ours: the first we hear is a 401
    sim.adjust(MID, item, 9)
    assert await c.get_stock(item) == 9  # 401, one refresh, the same call again: no failure
    assert await c.set_stock(item, 8) == 8
    assert sim.oauth.calls["refresh"] == 1
    after = await world.stored()
    assert after != before and before.refresh_token in sim.oauth.used_refresh
    assert after.refresh_token in sim.oauth.refresh


async def test_refresh_happens_ahead_of_expiry_without_a_401(world, sim, clock):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    tokens = world.tokens()
    c = world.client(tokens)
    assert await c.get_stock(item) == 4
    first = await world.stored()
    clock.now = refresh_at(first) + 1  # due, still valid
    reads_before = sim.count("GET item_stocks/{id}", MID)
    assert await c.get_stock(item) == 4
    assert sim.count("GET item_stocks/{id}", MID) == reads_before + 1  # no 401 and retry
    assert tokens.refreshes == 1
    clock.now = first.access_expires_at + 10  # the old access token is dead by now; the new one is not
    assert await c.get_stock(item) == 4
    assert tokens.refreshes == 1


async def test_concurrent_callers_share_one_refresh(world, sim, clock):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    c = world.client(world.tokens())
    assert await c.get_stock(item) == 4
    clock.now = (await world.stored()).access_expires_at + 1  # expired for both sides
    results: list[int | None] = []

    async def read() -> None:
        results.append(await c.get_stock(item))

    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(read)
    assert results == [4] * 5
    assert sim.oauth.calls["refresh"] == 1 and sim.oauth.calls["refresh_rejected"] == 0

    sim.oauth.expire_access(MID)  # and five 401s at once: still one refresh
    results.clear()
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(read)
    assert results == [4] * 5
    assert sim.oauth.calls["refresh"] == 2 and sim.oauth.calls["refresh_rejected"] == 0


async def test_crash_right_after_a_refresh_leaves_a_usable_token_in_the_store(nursery, world, sim, clock, tmp_path):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    old = await world.stored()
    clock.now = old.access_expires_at + 1
    tokens = world.tokens()
    await tokens.access_token()  # the refresh returned: from here on a crash must not lose the pair
    # "crash": that process and its store are gone without any goodbye; a new one opens the same file
    other = await open_store(nursery, tmp_path / "state.sqlite3")
    fresh = world.tokens(store=other)
    assert await world.client(fresh).get_stock(item) == 4
    assert sim.oauth.calls["refresh"] == 1 and fresh.refreshes == 0  # the new process refreshed nothing
    assert old.refresh_token in sim.oauth.used_refresh


async def test_cancelled_while_clover_answers_the_refresh_still_commits(world, sim, clock):
    """The refresh took effect at Clover; the answer is on its way when we are cancelled (a shutdown)."""
    await world.connect()
    old = await world.stored()
    clock.now = old.access_expires_at + 1
    sim.oauth.settings.refresh_answer_delay = 0.2
    tokens = world.tokens()
    with trio.move_on_after(10) as outer:
        async with trio.open_nursery() as n:
            cancel = trio.CancelScope()

            async def refresh() -> None:
                with cancel:
                    await tokens.access_token()

            n.start_soon(refresh)
            while not sim.oauth.used_refresh:  # Clover has spent the old refresh token
                await trio.sleep(0.005)
            cancel.cancel()
    assert not outer.cancelled_caught
    new = await world.stored()
    assert new.refresh_token != old.refresh_token
    assert new.refresh_token in sim.oauth.refresh  # the store holds the live one, not the spent one


async def test_revoked_token_is_reported_alerted_once_and_a_new_connect_is_picked_up(world, sim):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    secrets_seen = (await world.stored()).values()
    tokens = world.tokens()
    c = world.client(tokens)
    assert await c.get_stock(item) == 4
    sim.oauth.revoke(MID)  # the merchant uninstalled the app
    with capture_logs() as logs:
        with pytest.raises(ReconnectRequired, match="cloverwoo clover connect downtown") as info:
            await c.get_stock(item)
        assert isinstance(info.value, RemoteError)  # the actors' "location unreachable", not a crash
        refreshes = sim.oauth.calls["refresh"]
        with pytest.raises(ReconnectRequired):
            await c.get_stock(item)
        assert sim.oauth.calls["refresh"] == refreshes  # a refused refresh token is never tried again
    assert [k for k, _ in world.alerts] == ["clover_token_refused"]
    assert tokens.statistics().reconnect_required
    text = repr(logs) + str(info.value) + repr(world.alerts) + repr(tokens.statistics())
    assert not any(s in text for s in secrets_seen)
    await world.connect()  # `cloverwoo clover connect downtown`, from another process
    assert await c.get_stock(item) == 4
    assert not tokens.statistics().reconnect_required


async def test_transient_refresh_failures_are_retried_then_alerted_and_recovered(world, sim, clock):
    await world.connect()
    pair = await world.stored()
    tokens = world.tokens()
    clock.now = refresh_at(pair) + 1  # due but valid: a failing refresh must not stop the location
    sim.faults.down = True
    assert await tokens.access_token() == pair.access_token
    assert sim.oauth.calls["refresh"] == 1
    clock.now = pair.access_expires_at + 1  # now it must refresh, and cannot
    with pytest.raises(OAuthUnavailable, match="after 3 attempt"):
        await tokens.access_token()
    assert sim.oauth.calls["refresh"] == 1 + FAST.max_attempts
    assert [k for k, _ in world.alerts] == ["clover_token_refresh_failing"]
    sim.faults.down = False
    assert await tokens.access_token() != pair.access_token
    assert (await world.stored()).refresh_token in sim.oauth.refresh


async def test_a_permission_401_does_not_spend_refresh_tokens_again_and_again(world, sim):
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    await world.connect()
    c = world.client(world.tokens())
    sim.oauth.deny(MID, "INVENTORY_R")
    for _ in range(3):
        with pytest.raises(PermanentError, match="401"):
            await c.get_stock(item)
    assert sim.oauth.calls["refresh"] == 1  # one try (it might have been an expiry), then no more


async def test_a_newer_pair_in_the_store_is_adopted_instead_of_refreshing(world, sim, clock):
    await world.connect()
    first = await world.stored()
    tokens = world.tokens()
    assert await tokens.access_token() == first.access_token
    clock.now = refresh_at(first) + 1
    await world.connect()  # another process stored a new pair meanwhile
    second = await world.stored()
    assert await tokens.access_token() == second.access_token
    assert sim.oauth.calls["refresh"] == 0 and first.refresh_token in sim.oauth.refresh


async def test_keep_fresh_refreshes_an_idle_location_and_waits_for_connect(nursery, world, sim, clock):
    tokens = world.tokens()
    await nursery.start(lambda task_status: tokens.keep_fresh(max_sleep=0.01, task_status=task_status))
    await trio.sleep(0.05)  # not connected yet: the loop waits, it does not crash
    await world.connect()
    pair = await world.stored()
    clock.now = refresh_at(pair) + 1
    with trio.fail_after(10):
        while tokens.refreshes == 0:
            await trio.sleep(0.01)
    stored = await world.stored()
    assert stored.access_token != pair.access_token and stored.refresh_token in sim.oauth.refresh


async def test_static_token_path_is_unchanged(sim):
    c = CloverClient(location=LOC, merchant_id=MID, token="static-token-a", base_url=sim.base_url,
                     app_gate=AppGate(), backoff=FAST)
    bad = CloverClient(location=LOC, merchant_id=MID, token="nope", base_url=sim.base_url, app_gate=AppGate(),
                       backoff=FAST)
    try:
        assert (await c.merchant())["id"] == MID
        with pytest.raises(PermanentError, match="401"):
            await bad.merchant()
    finally:
        await c.aclose()
        await bad.aclose()
    assert sim.oauth.calls["refresh"] == 0


# -------------------------------------------------------------------- connect_location and the CLI


def write_config(tmp_path: Path, sim: CloverSim) -> Path:
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, value in {"woo_key": "ck", "woo_secret": "cs", "hook": "wh", "auth": "ac",
                        "app_secret": sim.oauth.settings.client_secret}.items():
        (creds / name).write_text(value)
        (creds / name).chmod(0o600)
    path = tmp_path / "cloverwoo.toml"
    path.write_text(f"""
[state]
path = "{tmp_path / 'state.sqlite3'}"
[woocommerce]
base_url = "https://shop.invalid"
consumer_key_file = "{creds / 'woo_key'}"
consumer_secret_file = "{creds / 'woo_secret'}"
webhook_secret_file = "{creds / 'hook'}"
[clover]
base_url = "{sim.base_url}"
auth_code_file = "{creds / 'auth'}"
[[clover.locations]]
name = "{LOC}"
merchant_id = "{MID}"
oauth = true
client_id = "{sim.app_id}"
client_secret_file = "{creds / 'app_secret'}"
""")
    return path


async def test_connect_location_stores_a_private_pair_and_proves_it(sim, tmp_path):
    cfg = load_config(write_config(tmp_path, sim))
    secrets = load_secrets(cfg)
    assert secrets.clover_tokens == {} and sim.oauth.settings.client_secret in secrets.values()
    pair, name = await connect_location(cfg, secrets, LOC, sim.oauth.code_for(MID))
    assert name == "Downtown"
    assert stat.S_IMODE(os.stat(cfg.state.path).st_mode) == 0o600
    assert pair.refresh_token in sim.oauth.refresh
    with pytest.raises(PermanentError, match="not an OAuth location"):
        await connect_location(cfg, secrets, "elsewhere", "code")


async def test_cli_clover_connect_with_a_pasted_redirect_address(sim, tmp_path):
    config = write_config(tmp_path, sim)
    code = sim.oauth.code_for(MID)
    pasted = f"https://app.example/cb?merchant_id={MID}&client_id={sim.app_id}&code={code}\n"
    argv = [sys.executable, "-m", "cloverwoo_daemon.cli", "--config", str(config), "clover", "connect", LOC]
    done = await trio.run_process(argv, stdin=pasted.encode(), capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert f"/oauth/v2/authorize?client_id={sim.app_id}&merchant_id={MID}" in out
    assert f"✓ Clover {LOC}: connected to merchant {MID} (Downtown)" in out
    assert code not in out + done.stderr.decode()
    assert sim.oauth.settings.client_secret not in out + done.stderr.decode()
    # a code for another merchant is refused before it is spent
    other = sim.oauth.code_for("MERCHANTBBBBB")
    argv[-1:] = [LOC, "--code", f"merchant_id=MERCHANTBBBBB&code={other}"]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 1 and "approve the app as the right merchant" in done.stderr.decode()
    assert other in sim.oauth.codes


@pytest.mark.parametrize("extra,error", [
    ('oauth = true\n', "clover.locations[0].client_id: required when oauth = true"),
    ('oauth = true\nclient_id = "A"\ntoken_file = "t"\n', "clover.locations[0].token_file: not used with oauth"),
])
def test_config_refuses_an_incomplete_oauth_location(extra, error):
    from cloverwoo_daemon.config import ConfigError, parse_config

    text = f"""
[woocommerce]
base_url = "https://shop.example.com"
[clover]
[[clover.locations]]
name = "a"
merchant_id = "M"
{extra}"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith(error)


@pytest.fixture
def log_stream():
    """The daemon's own logging pipeline (io.logs), into a buffer; put back as it was afterwards."""
    import io
    import logging

    import structlog

    from cloverwoo_daemon.io import logs

    stream = io.StringIO()
    logs.configure_logging(stream=stream, json=True, secrets=["configured-secret-value"])
    yield stream
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h).__name__ == "_Handler":
            root.removeHandler(h)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()
    logs._active = None


async def test_every_token_learned_at_run_time_is_redacted_from_the_moment_it_is_learned(
        world, sim, clock, log_stream, nursery, tmp_path):
    """A code being exchanged, the pair Clover answers, each refreshed pair, and a pair read back from the store
    by a new process: each is a secret the config never held. Before, the redaction list was the configured
    secrets only, so any line quoting a refreshed token (an error text, a header echoed back) printed it."""
    import structlog

    log = structlog.get_logger("test")
    code = sim.oauth.code_for(MID)
    await connect(world.oauth(), world.store, location=LOC, merchant_id=MID, code=code)
    connected = await world.stored()
    tokens = world.tokens()
    c = world.client(tokens)
    item = sim.add_item(MID, "Mug", sku="MUG", quantity=4)
    assert await c.get_stock(item) == 4
    clock.now = refresh_at(connected) + 1  # due: the next call refreshes
    assert await c.get_stock(item) == 4 and tokens.refreshes == 1
    refreshed = await world.stored()
    assert refreshed.access_token != connected.access_token
    # the leak this guards against: a line that quotes a token (an upstream error, a header echoed back)
    for pair in (connected, refreshed):
        log.error("upstream_error", detail=f"Authorization: Bearer {pair.access_token}",
                  body={"refresh_token": pair.refresh_token})
    log.warning("exchange_echo", error=f"code {code} already used")
    # a new process reads the pair from the store: learned when read, before any use
    other = Store(str(tmp_path / "other.sqlite3"))
    await nursery.start(other.run)
    await other.set_kv(token_key(LOC), await world.store.get_kv(token_key(LOC)) or "")
    from cloverwoo_daemon.io import logs

    logs._active = None  # a fresh process: its pipeline has learned nothing yet
    logs.configure_logging(stream=log_stream, json=True, secrets=["configured-secret-value"])
    assert (await world.tokens(store=other).store.load()) == refreshed
    log.error("stored_pair_quoted", detail=refreshed.access_token + " " + refreshed.refresh_token)
    text = log_stream.getvalue()
    for secret in (code, connected.access_token, connected.refresh_token, refreshed.access_token,
                   refreshed.refresh_token):
        assert secret not in text, "a token learned at run time appeared in the log"
    assert text.count("[redacted]") == 7
    assert "upstream_error" in text and "stored_pair_quoted" in text

