"""The daemon in the loop against the real WooCommerce: one *world*, as a merchant runs it, on loopback.

A ``DaemonWorld`` is:

- the session's real WordPress 7.1 + WooCommerce 11.0.1 (``conftest.realwoo_rig``);
- the Clover simulator (``sim/clover.py``) with one location, ``downtown``;
- the daemon, a subprocess started exactly as the systemd units start it
  (``cloverwoo run --config X``, by ``tests/e2e/daemon_proc.DaemonProc``), with its
  config, secret files (mode 0600), state file and control socket in a
  directory of its own, WooCommerce reached with Basic auth or OAuth 1.0a
  (``auth=``) and a webhook server on a fixed loopback port; the example
  config's timings (both polls every 2 s, a reconcile every 15 minutes);
- the WooCommerce webhooks, created by ``cloverwoo webhooks register`` run as
  an admin runs it: the real store delivers them to the daemon on loopback,
  signed with the world's secret (``server.public_url`` defaults to the
  daemon's own address; a proxy test gives its own).

Rules this harness keeps:

- It outlives a test: pytest-trio gives every test a trio run of its own, so
  the simulator and the daemon's process live on a trio loop in a thread of
  their own (``WorldLoop``). Tests touch them only through the ``async``
  methods here, which hop to that loop, so nothing is shared between loops.
- One world serves many tests that do not interfere: each test makes its own
  products, with unique SKUs and names (``pair``), and binds them
  (``bind``: a ``reconcile``, as an admin would after adding products). The
  store-wide switches (synchronous webhooks, WP-Cron held) are the
  ``realwoo`` fixture's, put back after each test.
- Figures (latencies, call counts) are measured here and printed by the
  tests, never asserted. Every wait has a generous timeout (a noisy 2-core
  machine) and fails naming what it waited for, with the daemon's log tail.
- What the world wrote is observable from outside, as a merchant would check
  it: the real store's access log (``store_writes``: every non-GET request the
  daemon's client made) and the simulator's write log (``clover_writes``).
- ``close`` deletes the world's webhooks from the store (a webhook left
  pointing at a daemon that is gone slows every later request with
  synchronous delivery), stops the daemon with SIGTERM as systemd does
  (its exit code is kept in ``exit_code``), then the simulator.

Fixtures (``conftest.py``): ``daemon_world`` (module scope, Basic auth). To
build another (a proxy in front, OAuth), use ``DaemonWorld.start(rig, dir,
...)`` as a context manager in a fixture of your own.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from cloverwoo_daemon.io.control import control_call, control_stream
from cloverwoo_daemon.messages import (
    ControlRequest,
    ExportCsvRequest,
    LogRequest,
    ReconcileRequest,
    StatusRequest,
)
from cloverwoo_daemon.sim.clover import CloverSim, StockWrite
from cloverwoo_daemon.sim.harness import write_config
from tests.e2e.daemon_proc import REPO, DaemonProc, daemon_env, free_port, is_idle
from tests.real.stores import TIMEOUT, Item, RealStore, Rig

T = TypeVar("T")

LOCATION = "downtown"
DAEMON_UA = "cloverwoo-daemon"  # the User-Agent of the daemon's WooCommerce client (and of the CLI's)
JOB_TIMEOUT = 180.0  # a catalogue job reads the whole real store (every test's products): pages of 100


# --------------------------------------------------------------------------
# A trio loop of its own


class WorldLoop:
    """A trio loop running on a thread of its own, for what must outlive one test's trio run.

    Resource handling: the thread starts in ``__init__`` and runs until
    ``close``, which cancels every task started in ``nursery``.

    Error handling: a task that crashes ends the loop; every later call then
    raises (``trio.RunFinishedError``), and ``close`` re-raises the crash.
    """

    def __init__(self, name: str = "daemon-world") -> None:
        self._ready = threading.Event()
        self._crash: BaseException | None = None
        self.nursery: trio.Nursery
        self.token: trio.lowlevel.TrioToken
        self._stop: trio.Event
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the world's trio loop did not start within 30 s")
        if self._crash is not None:
            raise RuntimeError("the world's trio loop failed to start") from self._crash

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # kept for close(): this thread has no one to raise to
            self._crash = exc
            self._ready.set()

    async def _run(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    # from plain (non-trio) code: fixtures
    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    # from a test's own trio run
    async def acall(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(self.call, fn, *args), abandon_on_cancel=True)

    async def arun(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(self.run, afn, *args), abandon_on_cancel=True)

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self._stop.set)
            except trio.RunFinishedError:
                pass
            self._thread.join(60)
        if self._crash is not None:
            raise RuntimeError("the world's trio loop crashed") from self._crash


# --------------------------------------------------------------------------
# What a test makes


@dataclass(frozen=True)
class Pair:
    """One product on both sides: the WooCommerce item (product or variation) and its Clover item."""

    woo: Item
    clover: str  # the item id at the world's location
    sku: str  # "" when matched by name
    name: str


@dataclass(frozen=True)
class Propagation:
    """How long a change took to show on the other side (seconds, measured from outside)."""

    seconds: float
    value: int | None


class DaemonWorld:
    """The real store, the Clover simulator and the daemon, wired as in production (module docstring)."""

    def __init__(self, rig: Rig, directory: Path, *, auth: str, listen_port: int, public_url: str) -> None:
        self.rig = rig
        self.dir = directory
        self.auth = auth
        self.listen_port = listen_port
        self.listen_url = f"http://127.0.0.1:{listen_port}"
        self.public_url = public_url
        self.delivery_url = public_url.rstrip("/") + "/webhooks/woocommerce"
        self.webhook_secret = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
                                      for _ in range(48))
        self.loop = WorldLoop()
        self.clover = CloverSim(auth_code=secrets.token_hex(16))
        self.merchant_id = ""
        self.config_path = directory / "cloverwoo.toml"
        self.daemon = DaemonProc(self.config_path)
        self.exit_code: int | None = None
        self.register_output = ""

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextmanager
    def start(
        cls, rig: Rig, directory: Path, *, auth: str = "basic", listen_port: int | None = None,
        public_url: str | None = None, register: bool = True, poll_every: str = "2s",
        seed: Callable[[CloverSim, str], object] | None = None,
    ) -> Iterator[DaemonWorld]:
        """Start a world in ``directory`` (new or empty); closed when the ``with`` block ends.

        ``auth``: ``woocommerce.auth`` (``basic`` or ``oauth1``; the rig takes both over
        plain http). ``public_url``: where ``webhooks register`` points the store (the
        daemon itself by default). ``register=False`` leaves the webhooks to the caller.
        ``seed(clover, merchant_id)`` runs on the world's loop before the daemon's first
        start: what the merchant's Clover holds on the day of the installation.
        """
        port = listen_port or free_port()
        world = cls(rig, directory, auth=auth, listen_port=port, public_url=public_url or f"http://127.0.0.1:{port}")
        try:
            world._start(register=register, poll_every=poll_every, seed=seed)
            yield world
        finally:
            world.close()

    def _start(self, *, register: bool, poll_every: str, seed: Callable[[CloverSim, str], object] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        clover_url = self.loop.run(self.loop.nursery.start, self.clover.run)
        merchant = self.loop.call(partial(self.clover.add_merchant, "Downtown", merchant_id="REALWOOSIM001"))
        self.merchant_id = merchant.id
        if seed is not None:
            self.loop.call(seed, self.clover, merchant.id)
        env = self.rig.env
        write_config(self.dir, clover_url=clover_url, woo_url=self.rig.url, locations={LOCATION: merchant.id},
                     tokens={LOCATION: merchant.token}, woo_key=env["REALWOO_CK"], woo_secret=env["REALWOO_CS"],
                     webhook_secret=self.webhook_secret, auth_code=self.clover.auth_code, poll_every=poll_every,
                     shards=8, reconcile_every="15m", listen=f"127.0.0.1:{self.listen_port}", woo_auth=self.auth,
                     public_url=self.public_url)
        self.loop.run(self.daemon.start, self.loop.nursery)
        self.loop.call(self.clover.set_webhook_url, self.listen_url + "/webhooks/clover")
        if register:
            done = subprocess.run([sys.executable, "-m", "cloverwoo_daemon.cli", "webhooks", "register",
                                   "--config", str(self.config_path)], capture_output=True, text=True,
                                  timeout=TIMEOUT * 2, cwd=REPO, env=daemon_env(), check=False)
            self.register_output = done.stdout + done.stderr
            if done.returncode != 0:
                raise RuntimeError(f"cloverwoo webhooks register exited {done.returncode}:\n{self.register_output}")
        self.loop.run(self._wait_started)

    async def _wait_started(self) -> None:
        """The start-up catalogue job and reconcile are done: the world is quiet."""
        await self.daemon.wait_status(lambda s: s["jobs"]["last"].get("reconcile") is not None,
                                      timeout=JOB_TIMEOUT, what="the start-up reconcile")
        await self.daemon.wait_idle(timeout=JOB_TIMEOUT)

    def close(self) -> None:
        try:
            self._delete_webhooks()
        finally:
            try:
                if self.daemon.running:
                    self.exit_code = self.loop.run(self.daemon.terminate)
            finally:
                try:
                    self.loop.call(self.clover.stop)
                except trio.RunFinishedError:
                    pass
                self.loop.close()

    def _delete_webhooks(self) -> None:
        api = self.rig.env["REALWOO_API"]
        with httpx.Client(auth=(self.rig.env["REALWOO_CK"], self.rig.env["REALWOO_CS"]), timeout=TIMEOUT) as http:
            for hook in self._our_webhooks(http):
                http.delete(f"{api}/webhooks/{hook['id']}", params={"force": "true"}).raise_for_status()

    def _our_webhooks(self, http: httpx.Client) -> list[dict[str, Any]]:
        """The store's webhooks that deliver to this world (every status)."""
        api = self.rig.env["REALWOO_API"]
        hooks = http.get(f"{api}/webhooks", params={"per_page": "100", "status": "all"}).raise_for_status().json()
        return [h for h in hooks if str(h.get("delivery_url", "")).rstrip("/") == self.delivery_url]

    async def webhooks(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with httpx.Client(auth=(self.rig.env["REALWOO_CK"], self.rig.env["REALWOO_CS"]), timeout=TIMEOUT) as h:
                return self._our_webhooks(h)

        return await trio.to_thread.run_sync(read)

    # ------------------------------------------------------------ the daemon, as an admin drives it

    async def cli(self, *args: str, timeout: float = JOB_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``cloverwoo ARGS --config <world>`` as a subprocess (never raises on its exit code)."""
        with trio.fail_after(timeout):
            done = await trio.run_process([sys.executable, "-m", "cloverwoo_daemon.cli", *args,
                                           "--config", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                                          check=False, cwd=str(REPO), env=daemon_env())
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                           done.stderr.decode("utf-8", "replace"))

    async def cli_job(self, *args: str) -> dict[str, Any]:
        """A job command (``sync import``, ``reconcile`` ...) with ``--json``: its result; it must succeed."""
        done = await self.cli(*args, "--json")
        assert done.returncode == 0, f"cloverwoo {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n" \
                                     f"{done.stderr}\n{self.daemon.tail()}"
        results = [json.loads(line) for line in done.stdout.splitlines() if line.strip().startswith("{")]
        final = [r["result"] for r in results if isinstance(r, dict) and "result" in r]
        assert final, f"cloverwoo {' '.join(args)} --json printed no result:\n{done.stdout}"
        return dict(final[-1])

    async def status(self) -> dict[str, Any]:
        resp = await control_call(self.daemon.control_socket, StatusRequest(), timeout=30.0)
        assert resp.ok, resp.error
        assert isinstance(resp.data, dict)
        return resp.data

    async def job(self, request: ControlRequest) -> dict[str, Any]:
        """A job over the control socket, as the CLI runs it; returns its result."""
        result: dict[str, Any] = {}
        async with control_stream(self.daemon.control_socket, request, timeout=30.0,
                                  idle_timeout=JOB_TIMEOUT) as stream:
            async for resp in stream:
                assert resp.ok, resp.error
                data = resp.data or {}
                if "result" in data:
                    result = data["result"]
        assert result.get("state") == "done", f"job {request} did not finish: {result}\n{self.daemon.tail()}"
        return result

    async def reconcile(self) -> dict[str, Any]:
        """``cloverwoo reconcile``: compares every binding with both catalogues (and binds new products)."""
        return await self.job(ReconcileRequest())

    async def csv_rows(self) -> list[dict[str, str]]:
        """The stock CSV (``export-csv``), one dict per row."""
        resp = await control_call(self.daemon.control_socket, ExportCsvRequest(), timeout=60.0)
        assert resp.ok, resp.error
        assert isinstance(resp.data, dict)
        return list(csv.DictReader(io.StringIO(resp.data["csv"])))

    async def row_of(self, pair: Pair) -> dict[str, str] | None:
        for row in await self.csv_rows():
            if (int(row["woo_product_id"]), int(row["woo_variation_id"] or 0)) == \
                    (pair.woo.ref.product_id, pair.woo.ref.variation_id):
                return row
        return None

    async def wait_idle(self, *, quiet: float = 1.0) -> None:
        """Nothing accepted is waiting and no merge is failing, for ``quiet`` seconds."""
        since: float | None = None
        last: dict[str, Any] | None = None
        with trio.move_on_after(90.0):
            while True:
                last = await self.status()
                if is_idle(last):
                    since = since if since is not None else trio.current_time()
                    if trio.current_time() - since >= quiet:
                        return
                else:
                    since = None
                await trio.sleep(0.1)
        raise AssertionError(f"daemon not idle after 90 s; last status: {last}\n{self.daemon.tail()}")

    async def metrics(self) -> dict[str, float]:
        """``GET /metrics`` (on the listen address): ``{'name{labels}': value}``."""
        async with httpx.AsyncClient(timeout=30.0) as http:
            text = (await http.get(self.listen_url + "/metrics")).raise_for_status().text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    @staticmethod
    def metric(values: dict[str, float], name: str, **labels: str) -> float:
        """The sum of the series of ``name`` whose labels include ``labels``."""
        total = 0.0
        for key, value in values.items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            if all(got.get(k) == v for k, v in labels.items()):
                total += value
        return total

    async def sync_log(self, key: str) -> list[dict[str, Any]]:
        """The sync log of one product (``cloverwoo log --sku KEY``: a SKU, a name or a Woo id), oldest first."""
        resp = await control_call(self.daemon.control_socket, LogRequest(sku=key, limit=1000), timeout=30.0)
        assert resp.ok, resp.error
        assert isinstance(resp.data, list)
        return sorted(resp.data, key=lambda r: r["id"])

    async def merges(self, key: str) -> list[dict[str, Any]]:
        """The ``merge`` rows of one product's sync log, each with its ``detail`` decoded."""
        return [{**r, "detail": json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]}
                for r in await self.sync_log(key) if r["event"] == "merge"]

    async def log_events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines of one event, so far (every run)."""
        return await self.loop.acall(lambda: [dict(ln) for ln in self.daemon.lines if ln.get("event") == event])

    def tail(self) -> str:
        return self.daemon.tail()

    # ------------------------------------------------------------ Clover (the simulator)

    async def clover_item(self, name: str, *, sku: str | None, quantity: int | None) -> str:
        return await self.loop.acall(partial(self.clover.add_item, self.merchant_id, name, sku=sku,
                                             quantity=quantity))

    async def clover_group(self, name: str, variants: list[dict[str, Any]]) -> list[str]:
        """Variant items of an item group: ``[{"options": {"Size": "S"}, "sku": ..., "quantity": ...}]``."""
        _, ids = await self.loop.acall(partial(self.clover.add_item_group, self.merchant_id, name, variants))
        return list(ids)

    async def clover_stock(self, item_id: str) -> int | None:
        q = await self.loop.acall(self.clover.stock, self.merchant_id, item_id)
        return None if q is None else round(q)

    async def clover_sale(self, item_id: str, units: int) -> str:
        """A POS sale of ``units`` (paid): stock drops, ``O:`` and ``I:`` webhooks go to the daemon."""
        return await self.loop.acall(self.clover.pos_sale, self.merchant_id, {item_id: units})

    async def clover_writes(self, since: float = 0.0, items: Iterable[str] | None = None) -> list[StockWrite]:
        """Stock writes the simulator applied since ``since`` (unix time), to ``items`` (or any)."""
        wanted = None if items is None else set(items)
        writes = await self.loop.acall(lambda: list(self.clover.stock_writes))
        return [w for w in writes if w.at >= since and (wanted is None or w.item_id in wanted)]

    # ------------------------------------------------------------ the real store, seen from outside

    @property
    def access_log(self) -> Path:
        return self.rig.dir / "logs" / "access.log"

    def access_mark(self) -> int:
        """Where the store's access log ends now: ``store_writes(mark)`` reads what comes after."""
        return self.access_log.stat().st_size

    def store_writes(self, mark: int) -> list[str]:
        """Access-log lines after ``mark`` of the daemon's requests that can write a product or its stock
        (any method but GET, to ``/products...`` or the companion's ``/stock``)."""
        with self.access_log.open("rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            fields = line.split(" ")  # time, method, URI, status, duration, User-Agent
            if len(fields) >= 3 and fields[1] != "GET" and line.rstrip().endswith(DAEMON_UA) and (
                    "/wc/v3/products" in fields[2] or "/wc-cloverwoo/v1/stock" in fields[2]):
                out.append(line)
        return out

    # ------------------------------------------------------------ products on both sides

    async def pair(
        self, woo: RealStore, *, stock: int | None, clover_stock: int | None = None, label: str = "P",
        by_name: bool = False, manage_stock: bool = True,
    ) -> Pair:
        """A simple product in the real store and its Clover item, same SKU (``by_name``: neither has one,
        same name). ``clover_stock`` defaults to ``stock``: the two agree, so binding writes nothing."""
        sku = woo.sku(label)
        name = f"Daemon {label} {sku[-8:]}"
        item = await woo.create_product(stock=stock if manage_stock else None, manage_stock=manage_stock,
                                        sku="" if by_name else sku, name=name)
        clover_qty = stock if clover_stock is None else clover_stock
        clover = await self.clover_item(name, sku=None if by_name else sku, quantity=clover_qty)
        return Pair(item, clover, "" if by_name else sku, name)

    async def variable_pair(self, woo: RealStore, stocks: dict[str, int]) -> list[Pair]:
        """A variable product (one variation per option, SKU ``<sku>-<option>``) and a Clover item group
        whose variant items carry the same SKUs and stock."""
        sku = woo.sku("V")
        name = f"Daemon tee {sku[-8:]}"
        _, variations = await woo.create_variable_product(stocks, sku=sku, name=name)
        ids = await self.clover_group(name, [{"options": {"Size": o}, "sku": f"{sku}-{o}", "quantity": q}
                                             for o, q in stocks.items()])
        return [Pair(v, cid, v.sku, f"{name} - {o}") for v, cid, o in zip(variations, ids, stocks, strict=True)]

    async def bind(self, *pairs: Pair) -> dict[str, Any]:
        """Bind new products now (a ``reconcile``: the catalogue read that matches them) and wait until each
        pair is bound and synced; returns the reconcile's result."""
        result = await self.reconcile()
        missing: list[Pair] = []
        with trio.move_on_after(60.0):
            while True:
                rows = {(int(r["woo_product_id"]), int(r["woo_variation_id"] or 0)): r for r in await self.csv_rows()}
                missing = [p for p in pairs if (p.woo.ref.product_id, p.woo.ref.variation_id) not in rows
                           or rows[(p.woo.ref.product_id, p.woo.ref.variation_id)]["sync_status"] == "never synced"]
                if not missing:
                    await self.wait_idle()
                    return result
                await trio.sleep(0.2)
        raise AssertionError(f"not bound and synced 60 s after a reconcile: {[p.name for p in missing]}; "
                             f"reconcile: {result}\n{self.tail()}")

    async def move_poll_cursor(self, woo: RealStore) -> None:
        """Move the daemon's WooCommerce poll cursor past every product modified so far.

        The poll lists what was modified after its cursor minus one second (``modified_after`` is strict
        at one-second resolution), so the last products saved are listed again, fresh stock included, on
        every pass. A product saved (created) two seconds later, and two passes, move it on.
        """
        await trio.sleep(2.1)
        await woo.create_product(stock=1, name="Daemon poll cursor mover")
        await self.wait_polls(2)

    async def wait_polls(self, n: int) -> None:
        """Wait until the daemon's WooCommerce poll has run ``n`` more times (the first may be under way)."""
        polls = (await self.status())["woocommerce_poll"]["polls"]
        with trio.move_on_after(60.0):
            while (await self.status())["woocommerce_poll"]["polls"] < polls + n:
                await trio.sleep(0.2)
            return
        raise AssertionError(f"the daemon's WooCommerce poll did not run {n} times in 60 s\n{self.tail()}")

    # ------------------------------------------------------------ waiting for the other side

    async def wait_woo(self, woo: RealStore, item: Item, value: int, *, since: float,
                       timeout: float = 30.0, what: str = "") -> Propagation:
        """Poll the real store (every 0.1 s) until ``item`` shows ``value``; seconds since ``since``."""
        last: int | None = None
        with trio.move_on_after(timeout):
            while True:
                last = await woo.stock(item)
                if last == value:
                    return Propagation(time.time() - since, last)
                await trio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:g} s waiting for WooCommerce {item.sku or item.id} to show "
                             f"{value} {what}(last read {last})\n{self.tail()}")

    async def wait_clover(self, item_id: str, value: int, *, since: float, timeout: float = 30.0,
                          what: str = "") -> Propagation:
        """Poll the simulator (every 10 ms) until the item shows ``value``; seconds since ``since``."""
        last: int | None = None
        with trio.move_on_after(timeout):
            while True:
                last = await self.clover_stock(item_id)
                if last == value:
                    return Propagation(time.time() - since, last)
                await trio.sleep(0.01)
        raise AssertionError(f"timed out after {timeout:g} s waiting for Clover item {item_id} to show {value} "
                             f"{what}(last {last})\n{self.tail()}")


@asynccontextmanager
async def open_world(rig: Rig, directory: Path, **kwargs: Any) -> AsyncIterator[DaemonWorld]:
    """``DaemonWorld.start`` from inside a test's trio run (for a world of one test only)."""
    manager = DaemonWorld.start(rig, directory, **kwargs)
    world = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield world
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)
