"""A real TLS proxy in front of the daemon, configured exactly as the documents say: nginx and Caddy.

docs/SETUP.md step 5 (and the README) tell a merchant to put the daemon behind a TLS proxy that
passes on only ``/webhooks/``. Here that proxy is Debian's nginx (and Debian's Caddy), configured
with the example taken from the document itself (``tests/real/proxies.py``: only the certificate
paths, the server name, the listen port and the daemon's address are substituted), with a
self-signed certificate (nginx) or Caddy's own local CA. One world for the module: the realwoo
store, the Clover simulator and the daemon (``DaemonWorld``), its ``server.public_url`` the nginx
address, so ``cloverwoo webhooks register`` points the REAL store's webhooks at nginx over HTTPS,
and the Clover simulator posts there too, checking the certificate. Caddy sits in front of the
same daemon on a port of its own.

Proven for each proxy: the real store's signed deliveries and Clover's posts reach the daemon
through it (a sale each way); bodies up to ``server.max_body_bytes`` pass and one byte more is
refused by the proxy itself, whose limit in the example equals the daemon's default (nginx's
``client_max_body_size 1m``: 413; Caddy's ``request_body max_size 1MiB``: 502 from Caddy 2.6), and
the next delivery is answered at once; ``/metrics`` and ``/healthz`` answer 404 through it (also by
``..`` tricks) while the daemon's own address serves them.

Without nginx (and no way to install it: root and apt-get) the module is skipped, saying why.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from cloverwoo_daemon.config import ServerConfig, load_config
from cloverwoo_daemon.core.signatures import woo_signature
from tests.e2e.daemon_proc import free_port
from tests.real.daemon_world import DaemonWorld
from tests.real.proxies import (
    README,
    Proxy,
    binary,
    caddy_config,
    caddy_example,
    caddy_routes,
    ensure_installed,
    nginx_example,
    post_reading_early,
    render_nginx,
    start_caddy,
    start_nginx,
)
from tests.real.stores import RealStore, Rig

WOO, CLOVER = "/webhooks/woocommerce", "/webhooks/clover"


@dataclass
class Proxied:
    world: DaemonWorld
    proxies: dict[str, Proxy]
    missing: dict[str, str]  # proxy kind -> why it is not here

    def proxy(self, kind: str) -> Proxy:
        if kind not in self.proxies:
            pytest.skip(self.missing[kind])
        return self.proxies[kind]


@pytest.fixture(scope="module")
def proxied(realwoo_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    nginx, why = ensure_installed("nginx")
    if nginx is None:
        pytest.skip(why)
    caddy, caddy_why = ensure_installed("caddy")
    port = free_port()
    upstream = f"127.0.0.1:{port}"
    with ExitStack() as stack:
        proxies = {"nginx": stack.enter_context(start_nginx(nginx, upstream))}
        if caddy:
            proxies["caddy"] = stack.enter_context(start_caddy(caddy, upstream))
        # closed first (its webhooks deleted, the daemon stopped), then the proxies
        world = stack.enter_context(DaemonWorld.start(realwoo_rig, tmp_path_factory.mktemp("proxied-world"),
                                                      listen_port=port, public_url=proxies["nginx"].url))
        for proxy in proxies.values():
            world.loop.call(world.clover.trust_certificate, proxy.ca)
        world.loop.call(world.clover.set_webhook_url, proxies["nginx"].url + CLOVER)
        yield Proxied(world, proxies, {} if caddy else {"caddy": caddy_why})


def delta(before: dict[str, float], after: dict[str, float], source: str, *results: str) -> float:
    return sum(DaemonWorld.metric(after, "cloverwoo_events_received_total", source=source, result=r)
               - DaemonWorld.metric(before, "cloverwoo_events_received_total", source=source, result=r)
               for r in results)


def raw_get(proxy: Proxy, path: str) -> tuple[int, str, str]:
    """GET ``path`` exactly as given (no client normalises ``..`` or ``%2e``): (status, Server header, body)."""
    context = proxy.ssl_context()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock, \
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    server = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("server:")), "")
    return int(lines[0].split()[1]), server, body.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# the examples themselves (no store needed)


def test_nginx_accepts_the_docs_example(tmp_path: Any) -> None:
    nginx = binary("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (tests/real/install-proxies installs it as root)")
    site = render_nginx(nginx_example(), cert=tmp_path / "c.pem", key=tmp_path / "k.pem", port=8443,
                        server_name="127.0.0.1", upstream="127.0.0.1:8787")
    assert "location /webhooks/" in site and "return 404" in site
    assert "/etc/letsencrypt" not in site and "sync.example.com" not in site  # every merchant value replaced


def _handlers(route: dict[str, Any]) -> list[str]:
    """Every handler a Caddy route runs, subroutes flattened."""
    out = []
    for h in route.get("handle", []):
        out.append(h["handler"])
        for sub in h.get("routes", []):
            out += _handlers(sub)
    return out


@pytest.mark.parametrize("doc", ["docs/SETUP.md", "README.md"])
def test_caddy_reads_the_example_as_only_webhooks_proxied(doc: str, tmp_path: Any) -> None:
    """Caddy's own reading of the example (``caddy adapt``), in the order Caddy runs it: the body limit, then
    the first route that answers proxies exactly ``/webhooks/*``, then 404 for everything else. (Caddy
    orders directives itself: ``respond`` runs before ``reverse_proxy``, so a bare
    ``reverse_proxy /webhooks/*`` beside ``respond 404`` answers 404 to the webhooks too.) The proxied
    tests below run it."""
    caddy = binary("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (tests/real/install-proxies installs Debian's package as root)")
    example = caddy_example(README) if doc == "README.md" else caddy_example()
    config = caddy_config(example, upstream="127.0.0.1:8787", port=8443, http_port=8080, d=tmp_path, doc=doc)
    routes = caddy_routes(caddy, config)
    assert len(routes) == 1 and routes[0]["match"] == [{"host": ["127.0.0.1"]}], routes
    inner = routes[0]["handle"][0]["routes"]
    answering = [r for r in inner if set(_handlers(r)) - {"request_body", "subroute"}]
    assert [_handlers(r)[-1] for r in answering] == ["reverse_proxy", "static_response"], inner
    proxy, rest = answering
    assert proxy.get("match") == [{"path": ["/webhooks/*"]}], f"{doc}: the proxy is not limited to /webhooks/*"
    assert "match" not in rest and rest["handle"] == [{"handler": "static_response", "status_code": 404}], inner
    limits = [h for r in inner[: inner.index(proxy)] for h in r["handle"] if h["handler"] == "request_body"]
    assert [h.get("max_size") for h in limits] == [ServerConfig().max_body_bytes], \
        f"{doc}: no request_body max_size equal to the daemon's max_body_bytes before the proxy: {inner}"


# --------------------------------------------------------------------------------------------------
# through the proxy, with the real store


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_a_sale_each_way_through_the_proxy(proxied: Proxied, realwoo: RealStore, kind: str) -> None:
    """The real store's signed deliveries (HTTPS, WooCommerce's own sender) and the Clover simulator's posts
    (HTTPS, certificate checked) reach the daemon through the proxy, and carry a sale each way."""
    proxy, world = proxied.proxy(kind), proxied.world
    hooks = await world.webhooks()
    assert hooks and all(h["delivery_url"] == proxied.proxies["nginx"].url + WOO for h in hooks), hooks
    p = await world.pair(realwoo, stock=12, label=kind[:3].upper())
    await world.bind(p)
    paused: list[int] = []
    try:
        if kind != "nginx":  # the registered webhooks go to nginx: this proxy gets one of its own, alone
            for h in hooks:
                await realwoo.set_webhook_status(int(h["id"]), "paused")
                paused.append(int(h["id"]))
            await realwoo.create_webhook("product.updated", proxy.url + WOO, world.webhook_secret,
                                         name=f"cloverwoo-test via {kind}")  # WooCommerce pings it through the proxy
        await world.loop.acall(world.clover.set_webhook_url, proxy.url + CLOVER)
        await realwoo.set_sync_webhooks(True)
        before = await world.metrics()
        t0 = time.time()
        await world.clover_sale(p.clover, 2)
        pos = await world.wait_woo(realwoo, p.woo, 10, since=t0, what=f"after a POS sale posted through {kind} ")
        t1 = time.time()
        await realwoo.order({p.woo: 3})
        online = await world.wait_clover(p.clover, 7, since=t1, what=f"after an online order delivered via {kind} ")
        await world.wait_idle()
        after = await world.metrics()
    finally:
        await world.loop.acall(world.clover.set_webhook_url, proxied.proxies["nginx"].url + CLOVER)
        for hook_id in paused:
            await realwoo.set_webhook_status(hook_id, "active")
    woo_in, clover_in = delta(before, after, "woocommerce", "accepted"), delta(before, after, "clover", "accepted")
    sent = await world.loop.acall(lambda: [a for a in world.clover.webhook_log if a.at and a.outcome != "dropped"])
    print(f"\n[{kind}] POS sale -> WooCommerce {pos.seconds:.2f} s; online order -> Clover {online.seconds:.2f} s; "
          f"through {proxy.url}: WooCommerce events accepted {woo_in:g}, Clover events accepted {clover_in:g}")
    assert clover_in >= 1, "no Clover post reached the daemon through the proxy"
    assert woo_in >= 1, "no delivery of the real store reached the daemon through the proxy"
    assert sent and sent[-1].outcome == "sent" and sent[-1].status == 200, sent[-3:]
    online_merge = [m for m in await world.merges(p.sku) if m["detail"]["write"]["clover"]]
    assert online_merge and online_merge[-1]["trigger"].startswith("webhook:woo"), online_merge
    assert await realwoo.stock(p.woo) == 7 and await world.clover_stock(p.clover) == 7
    if kind == "nginx":
        seen = proxy.accesses()
        from_store = [a for a in seen if a["request"].startswith(f"POST {WOO} ")
                      and a["user_agent"].startswith("WooCommerce/")]
        from_clover = [a for a in seen if a["request"].startswith(f"POST {CLOVER} ")]
        assert from_store and all(a["status"] == 200 and a["upstream_status"] == "200" for a in from_store), seen
        assert from_clover and all(a["status"] == 200 for a in from_clover), seen


def _woo_body(product: dict[str, Any], size: int) -> bytes:
    """A product.updated delivery of exactly ``size`` bytes: the product as the store sends it, with a long
    description (what makes real deliveries large)."""
    body = dict(product, description="")
    empty = len(json.dumps(body, separators=(",", ":")).encode())
    assert empty < size
    body["description"] = "x" * (size - empty)
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


def _clover_body(app_id: str, merchant_id: str, item_id: str, size: int) -> bytes:
    """A Clover post of exactly ``size`` bytes: one inventory event, padded with JSON whitespace."""
    core = json.dumps({"appId": app_id, "merchants": {merchant_id: [
        {"objectId": f"I:{item_id}", "type": "UPDATE", "ts": int(time.time() * 1000)}]}}).encode()
    assert len(core) < size
    return b"{" + b" " * (size - len(core)) + core[1:]


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_bodies_up_to_max_body_bytes_pass_and_one_byte_more_is_refused(proxied: Proxied, realwoo: RealStore,
                                                                           kind: str) -> None:
    """Signed deliveries of exactly ``max_body_bytes`` pass (WooCommerce's and Clover's); one byte more is
    refused by the proxy itself, before the daemon (nginx 413; Caddy 2.6 502, its ``request_body`` limit);
    and a delivery right after a refused one is answered at once (a proxy's kept-alive connection to the
    daemon is not left waiting for the rest of a refused body). Sent as curl sends (WooCommerce's sender):
    reading an early answer while the body goes out."""
    proxy, world = proxied.proxy(kind), proxied.world
    limit = load_config(str(world.config_path)).server.max_body_bytes
    item = await realwoo.create_product(stock=3)
    product = await realwoo.read(item)
    clover_item = await world.clover_item(f"Proxy body {item.sku}", sku=item.sku, quantity=3)
    app_id, secret, auth = world.clover.app_id, world.webhook_secret, world.clover.auth_code

    def woo_headers(raw: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-WC-Webhook-Topic": "product.updated",
                "X-WC-Webhook-Resource": "product", "X-WC-Webhook-Event": "updated",
                "X-WC-Webhook-Source": realwoo.rig.url + "/", "X-WC-Webhook-Signature": woo_signature(raw, secret)}

    clover_headers = {"Content-Type": "application/json", "X-Clover-Auth": auth}

    async def post(path: str, raw: bytes, headers: dict[str, str], base: str | None = None) -> tuple[int, str]:
        url = (base or proxy.url) + path
        status, fields, _ = await trio.to_thread.run_sync(
            partial(post_reading_early, url, raw, headers, ca=None if base else proxy.ca, timeout=30.0))
        return status, fields.get("server", "")

    small = json.dumps(product, separators=(",", ":")).encode()
    answers: dict[str, tuple[int, str]] = {}
    before = await world.metrics()
    for size in (limit, limit + 1):
        raw = _woo_body(product, size)
        answers[f"woo {size}"] = await post(WOO, raw, woo_headers(raw))
        answers[f"woo {size}, then a small one"] = await post(WOO, small, woo_headers(small))
        raw = _clover_body(app_id, world.merchant_id, clover_item, size)
        answers[f"clover {size}"] = await post(CLOVER, raw, clover_headers)
        raw = _clover_body(app_id, world.merchant_id, clover_item, 300)
        answers[f"clover {size}, then a small one"] = await post(CLOVER, raw, clover_headers)
    after = await world.metrics()
    too_large = {s: delta(before, after, s, "too_large") for s in ("woocommerce", "clover")}
    reached = {s: delta(before, after, s, "accepted", "duplicate") for s in ("woocommerce", "clover")}
    print(f"\n[{kind}] max_body_bytes {limit}: " + "; ".join(f"{k}: {v[0]} ({v[1]})" for k, v in answers.items())
          + f"; the daemon's too_large count went up by {too_large}")
    for source in ("woo", "clover"):
        assert answers[f"{source} {limit}"][0] == 200, answers
        for size in (limit, limit + 1):
            assert answers[f"{source} {size}, then a small one"][0] == 200, answers
        over, server = answers[f"{source} {limit + 1}"]
        if kind == "nginx":
            assert over == 413 and server.startswith("nginx"), answers
        else:  # whichever is first: Caddy's request_body limit (Caddy 2.6: 502) or the daemon's 413, passed on
            assert (over, server) in ((502, "Caddy"), (413, "Caddy, hypercorn-h11"), (413, "hypercorn-h11")), answers
    assert reached == {"woocommerce": 3, "clover": 3}, reached
    if kind == "nginx":  # client_max_body_size: the daemon never sees the body
        assert too_large == {"woocommerce": 0, "clover": 0}, too_large
        refused = [a for a in proxy.accesses() if a["status"] == 413]
        assert len(refused) == 2 and all(a["upstream_status"] == "" for a in refused), refused
    # the daemon's own limit, on its own address: the same line
    raw = _woo_body(product, limit + 1)
    assert (await post(WOO, raw, woo_headers(raw), base=world.listen_url))[0] == 413


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_metrics_and_healthz_are_not_reachable_through_the_proxy(proxied: Proxied, kind: str) -> None:
    proxy, world = proxied.proxy(kind), proxied.world
    async with httpx.AsyncClient(timeout=30.0) as http:
        own = {path: (await http.get(world.listen_url + path)).status_code for path in ("/metrics", "/healthz")}
    assert own == {"/metrics": 200, "/healthz": 200}, own
    paths = ["/metrics", "/healthz", "/", "/webhooks", "/webhooks/../metrics", "/webhooks/%2e%2e/metrics",
             "/webhooks/..%2fmetrics", "/webhooks/%2E%2E/healthz", "//metrics", "/webhooks/clover/../../healthz"]
    answers = {path: await trio.to_thread.run_sync(raw_get, proxy, path) for path in paths}
    print(f"\n[{kind}] through {proxy.url}: " + ", ".join(f"{p} {s}" for p, (s, _, _) in answers.items()))
    for path, (status, _, body) in answers.items():
        # nginx redirects /webhooks to /webhooks/ (a prefix location ending in a slash), which is not proxied either
        allowed = (404, 301) if kind == "nginx" and path == "/webhooks" else (404,)
        assert status in allowed, f"{kind}: GET {path} answered {status} through the proxy:\n{body[:300]}"
        assert "cloverwoo_" not in body and '"status"' not in body, f"{kind}: GET {path} leaked the daemon's page"
    if kind == "nginx":
        leaked = [a for a in proxy.accesses() if a["request"].startswith("GET ") and a["upstream_status"]]
        assert leaked == [], f"nginx passed these GETs on to the daemon: {leaked}"


def test_the_nginx_example_and_the_daemon_agree_on_the_body_limit() -> None:
    """``client_max_body_size`` in the example is the daemon's default ``max_body_bytes``: a delivery the
    daemon would take is never refused by the proxy, and the proxy refuses what the daemon would (the
    Caddy example's ``request_body`` is checked by Caddy's own reading above)."""
    m = re.search(r"client_max_body_size\s+(\d+)([kKmM]?);", nginx_example())
    assert m, "docs/SETUP.md's nginx example sets no client_max_body_size"
    size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    assert size == ServerConfig().max_body_bytes

