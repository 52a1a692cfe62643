"""An HTTP/1.1 proxy on loopback that misbehaves on purpose, between the daemon and a simulator (or in front of the
daemon's webhook listener).

Rules this helper keeps:

- It is a real TCP server (port 0) speaking HTTP/1.1 with h11, so the daemon's clients see real sockets: a
  *reset* is a TCP RST (``SO_LINGER`` 0), not an exception raised in-process.
- Faults the simulators do not offer live here, so the simulators stay untouched: connection resets, 429 storms
  with or without ``retry-after``, "down" (503 to everything), partial batch failures (chosen items are removed
  from a WooCommerce ``/batch`` request before it is forwarded, so they are really not applied, and come back as
  per-item errors in their places), and *holds*: a request matching ``hold`` waits at the proxy until the test
  releases it (forwarded or dropped). A test observes ``held`` to land a SIGKILL at an exact moment.
- Every request that reached it is timestamped (``arrivals``), so a test can count requests per second while a
  store is down: backoff, not a hot loop.
- Decisions come from one seeded RNG: the sequence of faults is repeatable (the interleaving is not).
"""

from __future__ import annotations

import json
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import httpx
import trio

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "upgrade"}


@dataclass
class Held:
    """A request parked at the proxy; ``release(forward)`` lets it go on (or answers nothing and resets)."""

    method: str
    path: str
    body: bytes
    at: float
    status: int | None = None  # set when the upstream already answered (a held reply)
    _go: trio.Event = field(default_factory=trio.Event)
    forward: bool = True

    def release(self, forward: bool = True) -> None:
        self.forward = forward
        self._go.set()


@dataclass
class Knobs:
    """Mutable on purpose: tests turn faults on and off while the daemon runs."""

    down: bool = False  # 503 to everything, at once
    reset_rate: float = 0.0  # fraction of requests answered with a TCP reset (nothing forwarded)
    error_rate: float = 0.0  # fraction answered 500/502/503 (nothing forwarded)
    rate429: float = 0.0  # fraction answered 429
    retry_after: int | None = None  # the 429's retry-after header, when set
    latency: float = 0.0  # seconds before forwarding
    hang_rate: float = 0.0  # fraction never forwarded: held for hang_seconds, then reset (the client timed out)
    reply_hang_rate: float = 0.0  # fraction forwarded (it lands) whose answer never comes back
    hang_seconds: float = 5.0
    batch_fail_rate: float = 0.0  # fraction of items in a Woo /batch update refused (not forwarded)
    hold: Callable[[str, str], bool] | None = None  # (method, path) -> park it until released
    hold_reply: Callable[[str, str], bool] | None = None  # forward it, then park the answer until released


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, name: str = "proxy") -> None:
        self.upstream = upstream.rstrip("/")
        self.name = name
        self.knobs = Knobs()
        self.rng = random.Random(seed)
        self.url = ""
        self.arrivals: list[tuple[float, str, str]] = []  # (trio time, method, path)
        self.held: list[Held] = []
        self.outcomes: dict[str, int] = {}
        self.batch_items_failed = 0
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ observation

    def count(self, outcome: str) -> int:
        return self.outcomes.get(outcome, 0)

    def _tally(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def pending_holds(self) -> list[Held]:
        return [h for h in self.held if not h._go.is_set()]

    def release_all(self, forward: bool = True) -> None:
        for h in self.pending_holds():
            h.release(forward)

    def arrivals_between(self, start: float, end: float) -> list[float]:
        return [t for t, _, _ in self.arrivals if start <= t < end]

    def max_per_second(self, start: float, end: float) -> int:
        """The most requests that arrived in any one-second window inside [start, end)."""
        ts = self.arrivals_between(start, end)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    # ------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(20.0), follow_redirects=False) as client:
            self._client = client
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            async with trio.open_nursery() as nursery:
                task_status.started(self.url)
                await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await self._read_request(conn, stream)
                if req is None:
                    return
                keep = await self._handle(conn, stream, *req)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _read_request(self, conn: h11.Connection,
                            stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, status: int,
                       headers: list[tuple[str, str]], body: bytes) -> None:
        hs = [(k, v) for k, v in headers if k.lower() not in _HOP] + [("content-length", str(len(body)))]
        out = conn.send(h11.Response(status_code=status, headers=hs))
        out += conn.send(h11.Data(data=body)) if body else b""
        out += conn.send(h11.EndOfMessage())
        await stream.send_all(out)

    @staticmethod
    def _reset(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def _handle(self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request, body: bytes) -> bool:
        method, target = req.method.decode(), req.target.decode()
        path = target.split("?", 1)[0]
        self.arrivals.append((trio.current_time(), method, path))
        k, rng = self.knobs, self.rng
        if k.down:
            self._tally("down")
            await self._respond(conn, stream, 503, [("content-type", "application/json"), ("retry-after", "2")],
                                b'{"code":"maintenance","message":"Down for maintenance","data":{"status":503}}')
            return True
        if k.reset_rate and rng.random() < k.reset_rate:
            self._tally("reset")
            self._reset(stream)
            return False
        if k.rate429 and rng.random() < k.rate429:
            self._tally("429")
            hs = [("content-type", "application/json")]
            if k.retry_after is not None:
                hs.append(("retry-after", str(k.retry_after)))
            await self._respond(conn, stream, 429, hs, b'{"message":"Too Many Requests"}')
            return True
        if k.error_rate and rng.random() < k.error_rate:
            self._tally("5xx")
            status = rng.choice((500, 502, 503))
            await self._respond(conn, stream, status, [("content-type", "application/json")],
                                b'{"code":"internal_server_error","message":"Proxy failure","data":{}}')
            return True
        if k.latency > 0:
            await trio.sleep(k.latency)
        if k.hang_rate and rng.random() < k.hang_rate:
            self._tally("hang")
            await trio.sleep(k.hang_seconds)
            self._reset(stream)
            return False
        reply_hang = bool(k.reply_hang_rate) and rng.random() < k.reply_hang_rate
        if k.hold is not None and k.hold(method, path):
            h = Held(method, path, body, trio.current_time())
            self.held.append(h)
            self._tally("held")
            await h._go.wait()
            if not h.forward:
                self._tally("dropped")
                self._reset(stream)
                return False
        failed: list[tuple[int, object]] = []
        if k.batch_fail_rate and method == "POST" and path.endswith("/batch"):
            body, failed = self._strip_batch(body)
        headers = [(n.decode(), v.decode()) for n, v in req.headers if n.decode().lower() not in _HOP]
        assert self._client is not None
        try:
            # Shielded: a forward cancelled mid-send leaves httpx's body generator unfinished (a ResourceWarning,
            # an error under filterwarnings=error); the upstream answers or fails within its own timeout.
            with trio.CancelScope(shield=True):
                resp = await self._client.request(method, self.upstream + target, content=body, headers=headers)
        except httpx.HTTPError:
            self._tally("upstream_error")
            self._reset(stream)
            return False
        content = resp.content
        if failed:
            content = self._merge_batch(content, failed)
        if reply_hang:
            self._tally("reply_hang")
            await trio.sleep(k.hang_seconds)
            self._reset(stream)
            return False
        if k.hold_reply is not None and k.hold_reply(method, path):
            h = Held(method, path, body, trio.current_time(), status=resp.status_code)
            self.held.append(h)
            self._tally("reply_held")
            await h._go.wait()
            if not h.forward:
                self._tally("reply_dropped")
                self._reset(stream)
                return False
        self._tally("forwarded")
        await self._respond(conn, stream, resp.status_code, list(resp.headers.items()), content)
        return True

    # ------------------------------------------------------------ partial batch failures

    def _strip_batch(self, body: bytes) -> tuple[bytes, list[tuple[int, object]]]:
        """Remove some update items (positions remembered), so they are really not applied."""
        try:
            data = json.loads(body)
        except ValueError:
            return body, []
        updates = data.get("update") if isinstance(data, dict) else None
        if not isinstance(updates, list) or not updates:
            return body, []
        failed = [i for i in range(len(updates)) if self.rng.random() < self.knobs.batch_fail_rate]
        if not failed:
            return body, []
        data["update"] = [u for i, u in enumerate(updates) if i not in failed]
        self.batch_items_failed += len(failed)
        return json.dumps(data).encode(), [(i, updates[i].get("id") if isinstance(updates[i], dict) else 0)
                                           for i in failed]

    def _merge_batch(self, content: bytes, failed: list[tuple[int, object]]) -> bytes:
        """Put a WooCommerce-shaped per-item error back where each removed item was."""
        try:
            data = json.loads(content)
        except ValueError:
            return content
        if data == []:  # every item was removed: WooCommerce answers an empty batch with PHP's empty array
            data = {}
        if not isinstance(data, dict):
            return content
        done = list(data.get("update") or [])
        out: list[object] = []
        where = dict(failed)
        for i in range(len(done) + len(failed)):
            if i in where:
                out.append({"id": where[i], "error": {"code": "woocommerce_rest_cannot_edit",
                                                       "message": "Sorry, you are not allowed to edit this resource.",
                                                       "data": {"status": 500}}})
            elif done:
                out.append(done.pop(0))
        data["update"] = out
        return json.dumps(data).encode()
