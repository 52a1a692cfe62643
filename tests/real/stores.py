"""Helpers of the real-store tier: one WooCommerce, real or simulated, behind one small API.

``WooStore`` speaks only REST, so the same helper code drives the realwoo rig's
real WordPress + WooCommerce (``RealStore``) and ``sim/woocommerce.py``
(``SimStore``). What only the store itself can do (switch webhook delivery,
hold or drive WP-Cron, add an API key) is implemented per kind. ``Rig`` is
the session's realwoo store (``up`` once, ``down --purge`` at the end);
``WebhookListener`` receives deliveries on loopback and checks every
signature. The fixtures in ``conftest.py`` build these: read its docstring
first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from quart import request
from quart_trio import QuartTrio

from cloverwoo_daemon.core import oauth1
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.signatures import verify_woo_signature
from cloverwoo_daemon.core.webhook_parse import MalformedPayload, WooParsed, parse_woo
from cloverwoo_daemon.io.woocommerce import WooClient
from cloverwoo_daemon.sim.common import serve_app
from cloverwoo_daemon.sim.woocommerce import WooSim

REPO = Path(__file__).resolve().parents[2]
SYNC_PLUGIN = "realwoo-sync-webhooks.php"  # the file the rig's `up --sync-webhooks` writes
SYNC_PLUGIN_CODE = "<?php add_filter('woocommerce_webhook_deliver_async','__return_false');\n"
HOLD_PLUGIN = "cloverwoo-test-hold-cron.php"
HOLD_PLUGIN_CODE = "<?php add_filter('pre_get_ready_cron_jobs', function () { return array(); });\n"
TIMEOUT = 60.0  # a real store on a busy 2-core machine: a batch of 100 creations takes 5-15 s


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# --------------------------------------------------------------------------
# The session's store


def find_rig() -> tuple[Path | None, str]:
    """The realwoo rig directory, or None and the reason (which names every place looked at).

    ``$CLOVERWOO_REALWOO_RIG`` wins alone when set; otherwise ``<repo>/../shared/realwoo``
    (the layout of a work tree next to the shared folder), then ``/work/shared/realwoo``
    (where CI finds it whatever directory it cloned into).
    """
    explicit = os.environ.get("CLOVERWOO_REALWOO_RIG")
    places = [Path(explicit)] if explicit else [REPO.parent / "shared" / "realwoo", Path("/work/shared/realwoo")]
    for place in places:
        up = place / "up"
        if up.is_file() and os.access(up, os.X_OK):
            return place, ""
    looked = ", ".join(str(p / "up") for p in places)
    return None, f"no realwoo rig (looked for {looked}; set CLOVERWOO_REALWOO_RIG)"


@dataclass
class Rig:
    """The realwoo store of one test session.

    Resource handling: ``start`` runs ``up DIR`` (a fresh temporary directory, or
    ``$CLOVERWOO_REALWOO_DIR`` kept between runs); ``stop`` runs ``down DIR
    --purge`` only for a directory ``start`` created, and puts a kept store's
    webhook delivery mode back as it found it.
    """

    rig: Path
    dir: Path
    env: dict[str, str]
    created: bool
    up_seconds: float
    sync_at_start: bool
    down_seconds: float = 0.0

    @classmethod
    def start(cls, rig: Path, kept: Path | None = None) -> Rig:
        created = kept is None
        store = Path(tempfile.mkdtemp(prefix="cloverwoo-realwoo-")) if kept is None else kept
        t0 = time.monotonic()
        done = subprocess.run([str(rig / "up"), str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=900, check=False)
        if done.returncode != 0:
            if created:
                subprocess.run([str(rig / "down"), str(store), "--purge"], capture_output=True, check=False)
                shutil.rmtree(store, ignore_errors=True)
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{rig / 'up'} {store} failed (exit {done.returncode}):\n{tail}")
        env = json.loads((store / "env.json").read_text())
        self = cls(rig=rig, dir=store, env=env, created=created, up_seconds=time.monotonic() - t0,
                   sync_at_start=(store / "www/wp-content/mu-plugins" / SYNC_PLUGIN).exists())
        if not created:
            self._forget_loopback_webhooks()
        self.set_sync_webhooks(False)
        self.hold_cron(False)
        return self

    def stop(self) -> None:
        t0 = time.monotonic()
        if self.created:
            subprocess.run([str(self.rig / "down"), str(self.dir), "--purge"], capture_output=True, timeout=300,
                           check=False)
        else:
            self.hold_cron(False)
            self.set_sync_webhooks(self.sync_at_start)
        self.down_seconds = time.monotonic() - t0

    @property
    def url(self) -> str:
        return self.env["REALWOO_URL"]

    @property
    def mu_plugins(self) -> Path:
        """``wp-content/mu-plugins``: a PHP file written here is live on the next request."""
        return self.dir / "www/wp-content/mu-plugins"

    def set_sync_webhooks(self, on: bool) -> None:
        """Synchronous delivery (inside the request that fires) when on, WooCommerce's async default when off.

        The same one-line mu-plugin as ``up --sync-webhooks``; mu-plugins load on
        every request, so writing or removing it switches delivery live.
        """
        path = self.mu_plugins / SYNC_PLUGIN
        if on:
            path.write_text(SYNC_PLUGIN_CODE)
        else:
            path.unlink(missing_ok=True)

    def hold_cron(self, on: bool) -> None:
        """While held, WP-Cron finds no job ready, so no async webhook delivery goes out (they stay queued)."""
        path = self.mu_plugins / HOLD_PLUGIN
        if on:
            path.write_text(HOLD_PLUGIN_CODE)
        else:
            path.unlink(missing_ok=True)

    def sql(self, query: str) -> list[list[str]]:
        """Rows of one query on the store's database (tab-separated columns, as strings)."""
        done = subprocess.run(["mariadb", f"--defaults-file={self.dir / 'my.cnf'}", self.env["REALWOO_DB_NAME"],
                               "-N", "-B", "-e", query], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb: {done.stderr.strip()}")
        return [line.split("\t") for line in done.stdout.splitlines()]

    def _forget_loopback_webhooks(self) -> None:
        """A kept store may hold webhooks of an interrupted run, pointing at listeners long gone: delete them."""
        api = self.env["REALWOO_API"]
        with httpx.Client(auth=(self.env["REALWOO_CK"], self.env["REALWOO_CS"]), timeout=TIMEOUT) as http:
            hooks = http.get(f"{api}/webhooks", params={"per_page": "100", "status": "all"}).raise_for_status()
            for hook in hooks.json():
                if str(hook.get("delivery_url", "")).startswith(("http://127.0.0.1:", "http://localhost:")):
                    http.delete(f"{api}/webhooks/{hook['id']}", params={"force": "true"}).raise_for_status()


# --------------------------------------------------------------------------
# One store, real or simulated, for one test


@dataclass(frozen=True)
class Item:
    """A product or variation a test created: its ref (as the daemon names it), SKU and REST answer."""

    ref: WooRef
    sku: str
    data: dict[str, Any] = field(compare=False)

    @property
    def id(self) -> int:
        return self.ref.variation_id or self.ref.product_id

    @property
    def path(self) -> str:
        """Where it is read and written (a variation only through its parent's route)."""
        if self.ref.variation_id:
            return f"/products/{self.ref.product_id}/variations/{self.ref.variation_id}"
        return f"/products/{self.ref.product_id}"


class WooStore:
    """REST helpers over one WooCommerce; ``RealStore`` and ``SimStore`` add what is store-specific.

    Every request is authenticated with the store's read_write key: Basic, or
    OAuth 1.0a one-legged (query-string signature) when ``oauth`` is true.
    Products get unique SKUs (``sku()``), so tests never depend on what else
    the store holds.

    Resource handling: owns an ``httpx.AsyncClient``; ``aclose`` deletes the
    webhooks and API keys this object created, then closes it.
    """

    kind = "?"

    def __init__(self, base_url: str, consumer_key: str, consumer_secret: str, *, oauth: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/wp-json/wc/v3"
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.oauth = oauth
        self.http = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        self._webhooks: list[int] = []

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for wid in self._webhooks:
                try:
                    await self.request("DELETE", f"/webhooks/{wid}", params={"force": "true"})
                except httpx.HTTPError:
                    pass
            await self._forget_keys()
            await self.http.aclose()

    async def _forget_keys(self) -> None:
        """Undo ``add_key`` (a kind-specific act)."""

    def client(self, **kwargs: Any) -> WooClient:
        """The daemon's own client for this store (Basic unless ``auth=`` says otherwise)."""
        kwargs.setdefault("auth", "oauth1" if self.oauth else "basic")
        kwargs.setdefault("timeout", TIMEOUT)
        key = kwargs.pop("key", self.consumer_key)
        secret = kwargs.pop("secret", self.consumer_secret)
        return WooClient(self.base_url, key, secret, **kwargs)

    # -- raw requests

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None,
        auth: bool = True, key: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """One request to ``/wp-json/wc/v3`` + ``path`` (or to ``path`` itself when it starts with
        ``/wp-json/``: another namespace, e.g. a plugin's); ``auth=False`` sends no credentials at all."""
        url = (self.base_url if path.startswith("/wp-json/") else self.api_url) + path
        query = {k: str(v) for k, v in (params or {}).items()}
        ck, cs = key or (self.consumer_key, self.consumer_secret)
        basic = None
        if auth and self.oauth:
            query.update(oauth1.oauth_params(method, url, query, consumer_key=ck, consumer_secret=cs,
                                             timestamp=int(time.time()), nonce=secrets.token_hex(16)))
        elif auth:
            basic = httpx.BasicAuth(ck, cs)
        return await self.http.request(method, url, params=query or None, json=json, auth=basic)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` that must succeed (2xx); returns the decoded JSON."""
        resp = await self.request(method, path, **kwargs)
        assert resp.is_success, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()

    # -- catalogue

    @staticmethod
    def sku(label: str = "P") -> str:
        """A SKU no other test (nor an earlier run on a kept store) uses."""
        return f"CT-{label}-{secrets.token_hex(4)}".upper()

    async def create_product(
        self, *, stock: int | None = 10, manage_stock: bool = True, backorders: str = "no", sku: str | None = None,
        name: str | None = None, price: str = "10.00",
    ) -> Item:
        """A published simple product; ``manage_stock=False`` makes it untracked (no stock figure)."""
        sku = self.sku() if sku is None else sku
        body: dict[str, Any] = {"name": name or f"Contract {sku}", "type": "simple", "sku": sku,
                                "regular_price": price, "manage_stock": manage_stock, "backorders": backorders}
        if manage_stock and stock is not None:
            body["stock_quantity"] = stock
        data = await self.ok("POST", "/products", json=body)
        return Item(WooRef(int(data["id"])), sku, data)

    async def create_variable_product(
        self, options: Mapping[str, int | None], *, sku: str | None = None, name: str | None = None,
        attribute: str = "Size",
    ) -> tuple[Item, list[Item]]:
        """A variable product and one variation per option (SKU ``<sku>-<option>``; None: stock not managed)."""
        sku = self.sku("V") if sku is None else sku
        parent = await self.ok("POST", "/products", json={
            "name": name or f"Contract {sku}", "type": "variable", "sku": sku,
            "attributes": [{"name": attribute, "options": list(options), "variation": True, "visible": True}]})
        pid = int(parent["id"])
        variations = []
        for option, stock in options.items():
            body: dict[str, Any] = {"sku": f"{sku}-{option}", "regular_price": "10.00",
                                    "manage_stock": stock is not None,
                                    "attributes": [{"name": attribute, "option": option}]}
            if stock is not None:
                body["stock_quantity"] = stock
            v = await self.ok("POST", f"/products/{pid}/variations", json=body)
            variations.append(Item(WooRef(pid, int(v["id"])), body["sku"], v))
        return Item(WooRef(pid), sku, parent), variations

    async def read(self, item: Item, **params: str) -> dict[str, Any]:
        """The item as its own route answers it (the variation schema for a variation)."""
        return await self.ok("GET", item.path, params=params)

    async def stock(self, item: Item) -> int | None:
        return (await self.read(item))["stock_quantity"]

    async def set_stock(self, item: Item, quantity: int) -> dict[str, Any]:
        """An absolute stock figure, as a merchant's hand edit in wp-admin leaves it."""
        return await self.ok("PUT", item.path, json={"stock_quantity": quantity})

    # -- orders

    async def order(self, lines: Mapping[Item, int], *, set_paid: bool = True) -> dict[str, Any]:
        """A REST order; ``set_paid`` makes it ``processing`` and reduces stock, as a paid checkout does."""
        line_items = []
        for item, qty in lines.items():
            line = {"product_id": item.ref.product_id, "quantity": qty}
            if item.ref.variation_id:
                line["variation_id"] = item.ref.variation_id
            line_items.append(line)
        return await self.ok("POST", "/orders", json={"set_paid": set_paid, "payment_method": "bacs",
                                                      "payment_method_title": "Bank transfer",
                                                      "line_items": line_items})

    async def refund(
        self, order: Mapping[str, Any], lines: Mapping[Item, int], *, restock: bool = True
    ) -> dict[str, Any]:
        """A refund of ``{item: units}`` from ``order`` (no payment gateway call); ``restock`` puts them back."""
        by_ref = {WooRef(int(li["product_id"]), int(li.get("variation_id") or 0)): int(li["id"])
                  for li in order["line_items"]}
        body = {"api_refund": False, "api_restock": restock,
                "line_items": [{"id": by_ref[item.ref], "quantity": qty, "refund_total": 0}
                               for item, qty in lines.items()]}
        return await self.ok("POST", f"/orders/{order['id']}/refunds", json=body)

    async def set_order_status(self, order_id: int, status: str) -> dict[str, Any]:
        """``cancelled`` (or ``pending``) restocks what the order reduced."""
        return await self.ok("PUT", f"/orders/{order_id}", json={"status": status})

    # -- webhooks

    async def create_webhook(self, topic: str, delivery_url: str, secret: str, *, name: str = "") -> dict[str, Any]:
        """An active webhook (WooCommerce pings it first); deleted again when the test ends."""
        data = await self.ok("POST", "/webhooks", json={"topic": topic, "delivery_url": delivery_url,
                                                        "secret": secret, "name": name or f"cloverwoo-test {topic}"})
        self._webhooks.append(int(data["id"]))
        return data

    def adopt_webhook(self, webhook_id: int) -> None:
        """Delete this webhook too when the test ends (one created another way, e.g. by the daemon)."""
        self._webhooks.append(webhook_id)

    async def set_webhook_status(self, webhook_id: int, status: str) -> dict[str, Any]:
        """``paused`` stops deliveries, ``active`` resumes them."""
        return await self.ok("PUT", f"/webhooks/{webhook_id}", json={"status": status})

    async def delete_webhook(self, webhook_id: int) -> None:
        await self.ok("DELETE", f"/webhooks/{webhook_id}", params={"force": "true"})
        if webhook_id in self._webhooks:
            self._webhooks.remove(webhook_id)

    # -- the store itself (per kind)

    async def set_sync_webhooks(self, on: bool) -> None:
        """Deliver webhooks inside the request that fires them (on) or WooCommerce's async default (off)."""
        raise NotImplementedError

    def cron_ticking(self, interval: float = 1.0) -> Any:
        """While inside: the traffic async deliveries need (a real store sends nothing on an idle site)."""
        raise NotImplementedError

    def deliveries_held(self) -> Any:
        """While inside, async deliveries wait (and coalesce); they go out after it, given traffic."""
        raise NotImplementedError

    async def add_key(self, permission: str) -> tuple[str, str]:
        """A new REST API key (``read``, ``write`` or ``read_write``): (consumer key, consumer secret)."""
        raise NotImplementedError

    async def oauth_twin(self, nursery: trio.Nursery) -> WooStore:
        """A store whose helpers sign every request with OAuth 1.0a (close it too).

        The real store checks OAuth on the same URL (the rig gives signed requests
        no fake HTTPS); the simulator needs a plain-http instance of its own.
        """
        raise NotImplementedError


class RealStore(WooStore):
    """The session's realwoo store, for one test: webhook delivery async and WP-Cron free at the start."""

    kind = "real"

    def __init__(self, rig: Rig, *, oauth: bool = False) -> None:
        super().__init__(rig.url, rig.env["REALWOO_CK"], rig.env["REALWOO_CS"], oauth=oauth)
        self.rig = rig
        self._keys: list[str] = []

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            self.rig.hold_cron(False)
            self.rig.set_sync_webhooks(False)
            await super().aclose()

    async def set_sync_webhooks(self, on: bool) -> None:
        self.rig.set_sync_webhooks(on)

    @asynccontextmanager
    async def cron_ticking(self, interval: float = 1.0) -> AsyncIterator[None]:
        """Requests ``/wp-cron.php`` every ``interval`` s: WP-Cron runs Action Scheduler's queue (once a
        minute at most), which sends the queued deliveries. Expect them 20-60 s late."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick, interval)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _tick(self, interval: float) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            while True:
                try:
                    await http.get(self.base_url + "/wp-cron.php")
                except httpx.HTTPError:
                    pass
                await trio.sleep(interval)

    @asynccontextmanager
    async def deliveries_held(self) -> AsyncIterator[None]:
        self.rig.hold_cron(True)
        try:
            yield
        finally:
            self.rig.hold_cron(False)

    async def pending_deliveries(self, resource_id: int) -> int:
        """Async deliveries about one product (or order) queued in Action Scheduler and not sent yet."""
        rows = await trio.to_thread.run_sync(self.rig.sql, (
            "SELECT COUNT(*) FROM wp_actionscheduler_actions WHERE hook = 'woocommerce_deliver_webhook_async' "
            f"AND status = 'pending' AND args LIKE '%\"arg\":{int(resource_id)}}}'"))
        return int(rows[0][0])

    async def add_key(self, permission: str) -> tuple[str, str]:
        assert permission in ("read", "write", "read_write"), permission
        ck, cs = "ck_" + secrets.token_hex(20), "cs_" + secrets.token_hex(20)
        hashed = hmac.new(b"wc-api", ck.encode(), hashlib.sha256).hexdigest()  # wc_api_hash()
        await trio.to_thread.run_sync(self.rig.sql, (
            "INSERT INTO wp_woocommerce_api_keys (user_id, description, permissions, consumer_key, consumer_secret,"
            f" truncated_key) VALUES (1, 'cloverwoo-test', '{permission}', '{hashed}', '{cs}', '{ck[-7:]}')"))
        self._keys.append(hashed)
        return ck, cs

    async def oauth_twin(self, nursery: trio.Nursery) -> WooStore:
        return RealStore(self.rig, oauth=True)

    async def _forget_keys(self) -> None:
        for hashed in self._keys:
            await trio.to_thread.run_sync(self.rig.sql,
                                          f"DELETE FROM wp_woocommerce_api_keys WHERE consumer_key = '{hashed}'")
        self._keys.clear()


class SimStore(WooStore):
    """``sim/woocommerce.py`` served on loopback, driven exactly like the real store.

    The simulator sends async deliveries ``Faults.webhook_delay`` seconds after
    the change without needing traffic, so ``cron_ticking`` does nothing and
    ``deliveries_held`` lengthens that delay.
    """

    kind = "sim"

    def __init__(self, sim: WooSim, *, oauth: bool = False) -> None:
        super().__init__(sim.base_url, sim.consumer_key, sim.consumer_secret, oauth=oauth)
        self.sim = sim

    @classmethod
    async def start(cls, nursery: trio.Nursery, **kwargs: Any) -> SimStore:
        """A fresh simulator in ``nursery``; ``https=False`` makes it an OAuth-only store, like plain http."""
        sim = WooSim(**kwargs)
        await nursery.start(sim.run)
        return cls(sim, oauth=not sim.https)

    async def set_sync_webhooks(self, on: bool) -> None:
        self.sim.async_webhooks = not on

    @asynccontextmanager
    async def cron_ticking(self, interval: float = 1.0) -> AsyncIterator[None]:
        yield

    @asynccontextmanager
    async def deliveries_held(self) -> AsyncIterator[None]:
        before = self.sim.faults.webhook_delay
        self.sim.faults.webhook_delay = max(before, 8.0)
        try:
            yield
        finally:
            self.sim.faults.webhook_delay = before

    async def add_key(self, permission: str) -> tuple[str, str]:
        return self.sim.add_key(permission)

    async def oauth_twin(self, nursery: trio.Nursery) -> WooStore:
        return await SimStore.start(nursery, https=False)


# --------------------------------------------------------------------------
# A webhook receiver


@dataclass
class Received:
    """One POST the listener got: raw body and headers (lower-case names), and what they proved."""

    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes
    verified: bool  # X-WC-Webhook-Signature is right for the body under the listener's secret
    parsed: WooParsed | str  # the daemon's own parse (core.webhook_parse), or why it refused the body

    @property
    def topic(self) -> str:
        return self.headers.get("x-wc-webhook-topic", "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookListener:
    """A loopback webhook endpoint that checks every signature, as the daemon does.

    A ping (``webhook_id=N``, unsigned) is answered 200; a delivery whose
    signature is right is answered ``status`` (200); a wrong or missing
    signature gets 401. Everything is recorded in ``received``.
    """

    secret: str = field(default_factory=lambda: secrets.token_hex(24))
    status: int = 200
    url: str = ""
    received: list[Received] = field(default_factory=list)

    async def start(self, nursery: trio.Nursery) -> str:
        app = QuartTrio("cloverwoo-test-listener")

        @app.route("/hook", methods=["POST"])
        async def hook() -> tuple[str, int]:
            body = await request.get_data()
            headers = {k.lower(): v for k, v in request.headers.items()}
            verified = verify_woo_signature(body, headers.get("x-wc-webhook-signature"), self.secret)
            try:
                parsed: WooParsed | str = parse_woo(body, headers.get("x-wc-webhook-topic"))
            except MalformedPayload as exc:
                parsed = exc.reason
            self.received.append(Received(time.monotonic(), headers, body, verified, parsed))
            if "x-wc-webhook-topic" not in headers:
                return "", 200  # the ping: WooCommerce wants exactly 200
            return "", self.status if verified else 401

        base = await nursery.start(serve_app, app)
        self.url = f"{base}/hook"
        return self.url

    def pings(self) -> list[Received]:
        return [r for r in self.received if "x-wc-webhook-topic" not in r.headers]

    def deliveries(self, topic: str | None = None, resource_id: int | None = None) -> list[Received]:
        """Deliveries (not pings), optionally of one topic and of one resource id (the body's ``id``)."""
        out = []
        for r in self.received:
            if "x-wc-webhook-topic" not in r.headers or (topic is not None and r.topic != topic):
                continue
            if resource_id is not None and r.json().get("id") != resource_id:
                continue
            out.append(r)
        return out
