"""How fast the daemon durably acknowledges webhooks, against the ceiling of its HTTP stack on this machine.

    .venv/bin/python benchmarks/bench_webhooks.py [--seconds 5] [--rate 500] [--intake daemon|store|sqlite|memory]

One run measures, every server in its own process (the load generator never
shares an event loop with what it measures):

  (a) ceiling: a bare hypercorn + quart-trio app that reads the body and
      answers 200, nothing else;
  (b) ours, closed loop: ``--connections`` (50) keep-alive connections, each
      sending its next delivery as soon as the previous one is answered;
  (c) ours at a fixed rate (``--rate``, 500/s): latency counted from each
      delivery's *scheduled* send time, so a stall is not hidden by the
      load generator slowing down with it (no coordinated omission).

"Ours" is, by default (``--intake daemon``), the whole daemon started as
systemd starts it (``cloverwoo run --config ...``) with its shipped budgets,
against the WooCommerce and Clover simulators (sim/harness.py) in a third
process, every call to either taking 50 ms and Clover enforcing its
documented rate limits. Each delivery is a signed WooCommerce
``product.updated`` of about 2 KB for one of ``--products`` real products,
with a new modification stamp, so every one is a new dedup key: it is
committed to the inbox (group commit, ``synchronous=FULL``) before the 200,
then routed, merged (fresh reads of both stores) and settled while the next
deliveries arrive. That is the ack path with everything that competes with it
in production; the merges per second it ran are printed. The other intakes
isolate parts of it, in the same process as the webhook app:
``store`` = the real ``Store`` + ``Intake`` with a consumer that settles
events at once (no merges); ``sqlite`` = one INSERT and commit per delivery
(the naive baseline); ``memory`` = no durability (HTTP + auth + parse only).

The load generator speaks HTTP/1.1 over raw trio sockets: requests are
prebuilt bytes, responses are parsed just enough (status, Content-Length). An
httpx load generator saturated first: it topped out near 450 req/s with both
processes at ~55% of a core, so it measured httpx, not the server (a raw one
drives the bare app to 1,200/s at 9% of a core).

Every figure depends on the machine, printed first with its load average (on
a shared machine, other work steals cores), and on each process's CPU use
during the phase, printed so a saturated load generator is visible.
Exit code: 0 when the run completed (goals met or not: ``--strict`` makes a
missed goal exit 1), 2 when a phase could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio
from prometheus_client import CollectorRegistry
from quart import request
from quart_trio import QuartTrio

from cloverwoo_daemon.actors.intake import Intake
from cloverwoo_daemon.actors.router import RouteEvent, RouterInput
from cloverwoo_daemon.core.signatures import woo_signature
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.io.control import DaemonUnreachable, control_call
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.io.webhooks import WebhookDeps, create_app, serve_webhooks
from cloverwoo_daemon.messages import InboundEvent, StatusRequest

REPO = Path(__file__).resolve().parents[1]
SECRET = "benchSecret0123456789abcdef"  # for the in-process intakes; the daemon's is the world's own
AUTH = "bench-clover-auth-code"
CALL_LATENCY = 0.050  # seconds, every call to either simulated store
GOAL_RATIO = 0.8
GOAL_P99_MS = 50.0
PATH = "/webhooks/woocommerce"

# --------------------------------------------------------------------------
# In-process intakes (the ``app`` server kind)


class MemoryIntake:
    """No durability at all: isolates the HTTP + auth + parse cost."""

    def __init__(self, path: str) -> None:
        self.count = 0

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        self.count += len(items)


class SQLiteIntake:
    """The naive baseline: INSERT OR IGNORE on the dedup key, one fsync'd commit per delivery (no group commit)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY, key TEXT UNIQUE, event BLOB,"
                        " received_at REAL)")
        self.limiter = trio.CapacityLimiter(1)

    def _write(self, rows: list[tuple[str, bytes, float]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO inbox (key, event, received_at) VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        now = time.time()
        rows = [(key, msgspec.json.encode(event), now) for key, event in items]
        await trio.to_thread.run_sync(self._write, rows, limiter=self.limiter)


class StoreIntake:
    """The real ``Store`` (group commit, synchronous=FULL) and ``Intake``; a consumer stands in for the router.

    The consumer settles each routed event at once, in batches, as the
    router's flush loop does after merges: the store carries the inbox
    inserts and the settle updates of the daemon, without any merge.
    """

    def __init__(self, path: str) -> None:
        self.store = Store(path)
        self.send, self.recv = trio.open_memory_channel[RouterInput](10_000)
        self.intake = Intake(self.store, self.send, capacity=10_000)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.store.run)
        nursery.start_soon(self.intake.run)  # sends what found the queue full, as in the daemon
        nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        while True:
            first = await self.recv.receive()
            ids = [first.inbox.event_id] if isinstance(first, RouteEvent) else []
            while True:
                try:
                    msg = self.recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(msg, RouteEvent):
                    ids.append(msg.inbox.event_id)
            if ids:
                await self.store.settle_events(ids)

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> None:
        await self.intake.accept(items)


INTAKES: dict[str, Callable[[str], Any]] = {"store": StoreIntake, "sqlite": SQLiteIntake, "memory": MemoryIntake}
INTAKE_CHOICES = ["daemon", *INTAKES]

# --------------------------------------------------------------------------
# Server children


def bare_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.post(PATH)
    async def hook() -> tuple[str, int]:
        await request.get_data()
        return "", 200

    return app


async def serve_child(kind: str, intake_name: str, db: str) -> None:
    """``--serve bare|app``: serve on a free loopback port, print its URL, stop when stdin closes."""
    if os.environ.get("BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        if kind == "bare":
            app = bare_app()
        else:
            intake = INTAKES[intake_name](db)
            if hasattr(intake, "start"):
                await intake.start(nursery)
            app = create_app(WebhookDeps(
                clover_auth_code=AUTH, woo_webhook_secret=SECRET, max_body_bytes=1 << 20, intake=intake,
                verification=VerificationGate(configured=True), health=lambda: (True, {}), registry=CollectorRegistry(),
            ))
        url = await nursery.start(partial(serve_webhooks, app, "127.0.0.1:0", shutdown_trigger=stop.wait))
        print(f"URL {url}", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin to stop us
        stop.set()
        with trio.move_on_after(10):
            await trio.sleep_forever()  # serve_webhooks returns after its graceful stop
        nursery.cancel_scope.cancel()


async def world_child(world_dir: str, products: int, port: int, latency: float) -> None:
    """``--serve world``: the simulators for a daemon listening on ``port``; prints READY, stops when stdin closes."""
    from cloverwoo_daemon.sim.harness import start_world
    from cloverwoo_daemon.sim.woocommerce import Latency

    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, Path(world_dir), products=products, locations=1, stock=1_000_000,
                                  listen=f"127.0.0.1:{port}", poll_every="1s", shards=8)
        world.clover.faults.latency = latency
        world.woo.latency = Latency(get_one=latency, list_page=latency, put=latency, batch_item=latency,
                                    other=latency)
        print("READY " + json.dumps({"config": str(world.config_path),
                                     "woo_ids": [p.woo.product_id for p in world.products]}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------
# Processes (parent side)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux); -1 elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def stop_child(proc: subprocess.Popen[Any], *, close_stdin: bool = False, timeout: float = 20.0) -> int:
    """Ask a child to stop (stdin closed, or SIGTERM), wait ``timeout``, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        if close_stdin and proc.stdin is not None:
            proc.stdin.close()
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ChildServer:
    """A ``--serve`` child of this script; it prints one line (``URL ...`` or ``READY ...``) when it is up."""

    def __init__(self, *args: str, expect: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(expect + " "):
            stop_child(self.proc, close_stdin=True)
            raise RuntimeError(f"--serve {args[0]} did not start (exit {self.proc.returncode}): {line!r}")
        self.value = line.split(" ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        return stop_child(self.proc, close_stdin=True)


def is_settled(status: dict[str, Any], products: int) -> bool:
    """Every product bound, the initial sync job done, nothing queued or merging: the state to measure from."""
    return (status["bindings"] >= products and status["jobs"]["current"] is None and status["queues"]["router"] == 0
            and sum(status["queues"]["shards"]) == 0 and status["shards"]["in_flight"] == 0
            and status["shards"]["dirty"] == 0)


class DaemonUnderTest:
    """The simulators (one child) and ``cloverwoo run`` against them (another), as in production.

    The daemon logs to ``workdir/daemon.log``; it is ready when its control
    socket reports every product bound.
    """

    def __init__(self, workdir: Path, products: int, latency: float = CALL_LATENCY) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.world = ChildServer("world", "--db", str(workdir / "world"), "--products", str(products),
                                 "--port", str(self.port), "--latency", str(latency), expect="READY")
        info = json.loads(self.world.value)
        self.config_path = Path(info["config"])
        self.woo_ids: list[int] = info["woo_ids"]
        creds = workdir / "world" / "credentials"
        self.secret = (creds / "woo_webhook_secret").read_text()
        self.socket = ""
        for line in self.config_path.read_text().splitlines():
            if line.startswith("socket = "):
                self.socket = line.split("=", 1)[1].strip().strip('"')
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = ["-m", "cloverwoo_daemon.cli", "run", "--config", str(self.config_path)]
        prelude = os.environ.get("BENCH_DAEMON_PRELUDE")  # for experiments: Python run in the daemon first
        if prelude:
            cmd = ["-c", f"{prelude}\nimport sys, runpy\nsys.argv = ['cloverwoo', *{cmd[2:]!r}]\n"
                   f"runpy.run_module('cloverwoo_daemon.cli', run_name='__main__')"]
        self.proc = subprocess.Popen(
            [sys.executable, *cmd],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
        self.products = products

    @classmethod
    def started(cls, workdir: Path, products: int) -> DaemonUnderTest:
        """Start both children and wait until the daemon is ready (outside any event loop)."""
        d = cls(workdir, products)
        try:
            trio.run(d.wait_ready)
        except BaseException:
            d.stop()
            raise
        return d

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until every product is bound and the daemon has been idle for 0.5 s (``is_settled``); raises if it
        exits or times out."""
        products = self.products
        quiet_since: float | None = None
        with trio.move_on_after(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if is_settled(await self.status(), products):
                        quiet_since = quiet_since if quiet_since is not None else trio.current_time()
                        if trio.current_time() - quiet_since >= 0.5:
                            return
                    else:
                        quiet_since = None
                except DaemonUnreachable:
                    pass
                await trio.sleep(0.1)
        raise RuntimeError(f"the daemon did not bind {products} products and go idle in {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    async def status(self) -> dict[str, Any]:
        resp = await control_call(self.socket, StatusRequest(), timeout=10.0)
        if not resp.ok:
            raise RuntimeError(f"status: {resp.error}")
        return dict(resp.data)

    def status_sync(self) -> dict[str, Any]:
        return trio.run(self.status)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM the daemon (as systemd does; it drains), then stop the simulators; the daemon's exit code."""
        code = stop_child(self.proc, timeout=30.0)
        self._log.close()
        self.world.stop()
        return code


# --------------------------------------------------------------------------
# Deliveries and the raw HTTP/1.1 load generator


class Deliveries:
    """Signed WooCommerce ``product.updated`` requests, each with a dedup key never used before.

    The body (about 2 KB, the fields a real delivery carries) is rendered
    once as a template; request ``i`` fills in a product id, a modification
    stamp of ``BASE + i`` seconds and a stock figure, and is signed as
    WooCommerce signs (HMAC-SHA256 of the body, base64).
    """

    BASE = 1_735_689_600  # 2025-01-01T00:00:00Z

    def __init__(self, host: str, secret: str, product_ids: list[int]) -> None:
        self.host = host
        self.secret = secret
        self.ids = product_ids
        product = {
            "id": 777_000_001, "name": "Bench product", "slug": "bench-product", "type": "simple", "parent_id": 0,
            "status": "publish", "sku": "BENCH", "price": "19.99", "regular_price": "19.99",
            "date_modified_gmt": "@STAMP@", "manage_stock": True, "stock_quantity": 777_000_002,
            "stock_status": "instock", "backorders": "no", "low_stock_amount": None,
            "description": "<p>" + "Lorem ipsum dolor sit amet. " * 30 + "</p>",
            "categories": [{"id": 15, "name": "Shirts", "slug": "shirts"}],
            "meta_data": [{"id": 9000, "key": "_some_plugin", "value": "x"}],
            "_links": {"self": [{"href": "https://shop.example.com/wp-json/wc/v3/products/1"}],
                       "collection": [{"href": "https://shop.example.com/wp-json/wc/v3/products"}]},
        }
        self.template = json.dumps(product, separators=(",", ":")).encode()

    def body(self, i: int) -> bytes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.BASE + i)).encode()
        return (self.template.replace(b"777000001", b"%d" % self.ids[i % len(self.ids)], 1)
                .replace(b"777000002", b"%d" % (i % 1000), 1).replace(b"@STAMP@", stamp, 1))

    def request(self, i: int) -> bytes:
        body = self.body(i)
        head = (f"POST {PATH} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"X-WC-Webhook-Topic: product.updated\r\nX-WC-Webhook-ID: 12\r\n"
                f"X-WC-Webhook-Signature: {woo_signature(body, self.secret)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body


class ConnectionLost(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection; ``post`` sends prebuilt request bytes and returns the status code."""

    MAX_HEAD = 64 * 1024

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.usable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        return cls(await trio.open_tcp_stream(host, port))  # trio sets TCP_NODELAY

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            self.usable = False
            raise ConnectionLost("server closed the connection")
        self.buf += chunk

    async def post(self, data: bytes) -> int:
        await self.stream.send_all(data)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > self.MAX_HEAD:
                raise ConnectionLost("response head too large")
            await self._more()
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.usable = False
            elif name == b"transfer-encoding":
                raise ConnectionLost("chunked responses are not expected from this server")
        while len(self.buf) < length:
            await self._more()
        self.buf = self.buf[length:]
        return status

    async def aclose(self) -> None:
        self.usable = False
        await self.stream.aclose()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


@dataclass
class Phase:
    """What one load phase saw: acknowledged (200) latencies, other outcomes, and the processes' CPU."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # non-200 outcomes: "503", "connection lost", ...
    send_lag: list[float] = field(default_factory=list)  # fixed rate: how late each send started
    timeline: list[tuple[float, float]] = field(default_factory=list)  # fixed rate: (due, latency) per ack
    cpu: dict[str, float] = field(default_factory=dict)  # process -> share of one core during the phase

    @property
    def acks(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.acks / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return pct(self.latencies, q) * 1000

    def line(self) -> str:
        errors = sum(self.statuses.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in self.statuses.most_common())})" if errors else ""
        return (f"{self.name:<44} {self.rate:>7.0f} acks/s   p50 {self.p(50):7.1f} ms   p99 {self.p(99):7.1f} ms"
                f"   acks {self.acks}  not acked {errors}{detail}")


def split_url(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


async def closed_loop(url: str, deliveries: Deliveries, seconds: float, connections: int, *, start: int = 0,
                      name: str = "") -> Phase:
    """``connections`` senders, each posting its next delivery as soon as the previous one is answered."""
    host, port = split_url(url)
    phase = Phase(name)
    counter = iter(range(start, start + 10_000_000))
    deadline = trio.current_time() + seconds

    async def sender() -> None:
        conn: Conn | None = None
        while trio.current_time() < deadline:
            data = deliveries.request(next(counter))
            t = time.perf_counter()
            try:
                if conn is None or not conn.usable:
                    conn = await Conn.open(host, port)
                status = await conn.post(data)
            except (OSError, trio.BrokenResourceError, ConnectionLost, ValueError, IndexError) as exc:
                phase.statuses[f"{type(exc).__name__}"] += 1
                conn = None
                await trio.sleep(0.01)
                continue
            if status == 200:
                phase.latencies.append(time.perf_counter() - t)
            else:
                phase.statuses[str(status)] += 1
        if conn is not None:
            await conn.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(sender)
    phase.seconds = time.perf_counter() - t0
    return phase


async def fixed_rate(url: str, deliveries: Deliveries, seconds: float, rate: float, *, start: int = 0,
                     max_connections: int = 200, warm: int = 50, name: str = "") -> Phase:
    """Open loop: delivery ``i`` is due at ``t0 + i / rate`` whatever happened to the ones before it.

    Each takes an idle keep-alive connection, or opens one while fewer than
    ``max_connections`` are open, or waits for one; its latency runs from its
    due time, so waiting for a connection counts. ``warm`` connections are
    opened before the first is due, as a sender that was already delivering
    would have them.
    """
    host, port = split_url(url)
    phase = Phase(name)
    total = int(seconds * rate)
    idle: list[Conn] = [await Conn.open(host, port) for _ in range(min(warm, max_connections))]
    slots = trio.Semaphore(max_connections)
    t0 = trio.current_time() + 0.05

    async def one(i: int, due: float) -> None:
        data = deliveries.request(start + i)
        async with slots:
            phase.send_lag.append(trio.current_time() - due)
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await Conn.open(host, port)
                status = await conn.post(data)
            except (OSError, trio.BrokenResourceError, ConnectionLost, ValueError, IndexError) as exc:
                phase.statuses[f"{type(exc).__name__}"] += 1
                return
            done = trio.current_time()
            if conn.usable:
                idle.append(conn)
        if status == 200:
            phase.latencies.append(done - due)
            phase.timeline.append((due - t0, done - due))
        else:
            phase.statuses[str(status)] += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(total):
            due = t0 + i / rate
            await trio.sleep_until(due)
            nursery.start_soon(one, i, due)
    phase.seconds = time.perf_counter() - started
    for conn in idle:
        await conn.aclose()
    return phase


def run_phase(fn: Callable[..., Any], pids: dict[str, int], *args: Any, **kwargs: Any) -> Phase:
    """Run one load phase in a fresh event loop, with each process's CPU share over it."""
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    own0, t0 = own_cpu_seconds(), time.perf_counter()
    phase: Phase = trio.run(partial(fn, *args, **kwargs))
    wall = time.perf_counter() - t0
    phase.cpu = {k: (cpu_seconds(pid) - before[k]) / wall for k, pid in pids.items()}
    phase.cpu["load generator"] = (own_cpu_seconds() - own0) / wall
    return phase


# --------------------------------------------------------------------------
# Report


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores | {platform.platform()} | Python {platform.python_version()}, "
            f"trio {trio.__version__}")


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average ?"


def cpu_line(phase: Phase) -> str:
    return "      CPU (share of one core): " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in phase.cpu.items())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    p.add_argument("--connections", type=int, default=50, help="closed-loop connections")
    p.add_argument("--rate", type=float, default=500.0, help="fixed-rate phase, deliveries/s (0: skip)")
    p.add_argument("--intake", choices=INTAKE_CHOICES, default="daemon")
    p.add_argument("--products", type=int, default=100, help="daemon intake: products the deliveries are about")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    p.add_argument("--serve", choices=["bare", "app", "world"], help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--latency", type=float, default=CALL_LATENCY, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve == "world":
        trio.run(world_child, args.db, args.products, args.port, args.latency)
        return 0
    if args.serve:
        trio.run(serve_child, args.serve, args.intake, args.db)
        return 0
    if not 0 < args.seconds <= 600:
        p.error("--seconds must be in (0, 600]")

    print(f"machine: {machine()}")
    print(f"before: {load_average()} (other work on this machine steals cores from every figure below)")
    print(f"load: closed loop over {args.connections} keep-alive connections, then open loop at {args.rate:g}/s;"
          f" {args.seconds:g} s per phase; intake={args.intake}")
    if args.intake == "daemon":
        print(f"ours: `cloverwoo run` with its shipped budgets (4 WooCommerce requests in flight, Clover 16 req/s "
              f"per token), sync.shards=8; simulators in their own process, {CALL_LATENCY * 1000:.0f} ms per call, "
              f"Clover's rate limits on; {args.products} products; every delivery a new dedup key")
    phases: dict[str, Phase] = {}
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_webhooks_") as tmp:
        work = Path(tmp)
        try:
            bare = ChildServer("bare", "--db", str(work / "bare.sqlite3"), expect="URL")
            try:
                host = urllib.parse.urlsplit(bare.value).netloc
                d = Deliveries(host, SECRET, list(range(1, 1001)))
                phases["bare"] = run_phase(closed_loop, {"server": bare.pid}, bare.value, d, args.seconds,
                                           args.connections, name="(a) ceiling: bare hypercorn + quart-trio")
            finally:
                bare.stop()
            label = "the daemon" if args.intake == "daemon" else f"webhook app + {args.intake} intake"
            if args.intake == "daemon":
                daemon = DaemonUnderTest.started(work, args.products)
                server: Any = daemon
                pids = {"daemon": daemon.pid, "simulators": daemon.world.pid}
                d = Deliveries(urllib.parse.urlsplit(daemon.url).netloc, daemon.secret, daemon.woo_ids)
                url = daemon.url
            else:
                server = ChildServer("app", "--intake", args.intake, "--db", str(work / "app.sqlite3"),
                                     expect="URL")
                pids = {"server": server.pid}
                d = Deliveries(urllib.parse.urlsplit(server.value).netloc, SECRET, list(range(1, 1001)))
                url = server.value
            try:
                s0 = daemon.status_sync() if args.intake == "daemon" else None
                phases["ours"] = run_phase(closed_loop, pids, url, d, args.seconds, args.connections,
                                           name=f"(b) {label}, {args.connections} connections")
                s1 = daemon.status_sync() if args.intake == "daemon" else None
                if args.rate > 0:
                    phases["fixed"] = run_phase(fixed_rate, pids, url, d, args.seconds, args.rate,
                                                start=5_000_000, name=f"(c) {label}, fixed {args.rate:g}/s")
                if s0 is not None and s1 is not None:
                    s2 = daemon.status_sync()
                    extra["merges_closed_loop"] = s1["shards"]["merges"] - s0["shards"]["merges"]
                    extra["merges_fixed_rate"] = s2["shards"]["merges"] - s1["shards"]["merges"]
                    extra["after"] = {"pending_inbox": (s2.get("store") or {}).get("pending_inbox"),
                                      "router_queue": s2["queues"]["router"], "dirty": s2["shards"]["dirty"],
                                      "failed_merges": s2["shards"]["failed_merges"],
                                      "daemon_rss_mib": round(rss_bytes(daemon.pid) / 2**20, 1)}
            finally:
                code = server.stop()
                if args.intake == "daemon":
                    extra["daemon_exit"] = code
        except (RuntimeError, OSError) as exc:
            print(f"benchmark could not run: {exc}", file=sys.stderr)
            return 2

    bare_p, ours = phases["bare"], phases["ours"]
    for ph in phases.values():
        print(ph.line())
        print(cpu_line(ph))
    ratio = ours.rate / bare_p.rate if bare_p.rate else float("nan")
    print(f"ratio (b)/(a): {ratio:.2f}   (goal >= {GOAL_RATIO})")
    fixed = phases.get("fixed")
    if fixed is not None:
        print(f"fixed rate: achieved {fixed.rate:.0f} acks/s of {args.rate:g}/s due; p99 {fixed.p(99):.1f} ms (goal "
              f"<= {GOAL_P99_MS:.0f} ms); load generator's own send lag p99 {pct(fixed.send_lag, 99) * 1000:.1f} ms")
    if args.intake == "daemon":
        print(f"the daemon meanwhile ran {extra.get('merges_closed_loop')} merges in (b) and "
              f"{extra.get('merges_fixed_rate')} in (c); after (c): {extra.get('after')}; "
              f"exit code {extra.get('daemon_exit')}")
    if fixed is not None and pct(fixed.send_lag, 99) > 0.010:
        print("WARNING: the load generator itself sent late (send lag p99 > 10 ms): this machine was short of CPU,"
              " so (c) overstates the daemon's latency; rerun on a quiet machine")
    print(f"after: {load_average()}")
    met_ratio = ratio >= GOAL_RATIO
    met_p99 = fixed is None or (fixed.p(99) <= GOAL_P99_MS and not fixed.statuses)
    print(f"goals: ratio {'met' if met_ratio else 'NOT met'}, p99 at {args.rate:g}/s "
          f"{'met' if met_p99 else 'NOT met'}")
    if args.json:
        print(json.dumps({"machine": machine(), "ratio": ratio, **extra, **{
            k: {"acks_per_s": ph.rate, "p50_ms": ph.p(50), "p99_ms": ph.p(99), "acks": ph.acks,
                "not_acked": dict(ph.statuses), "cpu": ph.cpu} for k, ph in phases.items()}}, default=str))
    return 1 if args.strict and not (met_ratio and met_p99) else 0


if __name__ == "__main__":
    sys.exit(main())
