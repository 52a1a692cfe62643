"""The location actor: one per Clover location, owning that location's catch-up poll and order lookups.

Rules:

- Clover promises nothing about webhooks, so every ``poll_every`` the actor
  asks for items modified since its cursor (``expand=itemStock``) and for the
  items of orders modified since its order cursor. Cursors overlap by a few
  seconds (clock skew, same-millisecond writes) and findings already
  forwarded are not forwarded again.
- Cursors are persisted, so a restart resumes where it stopped instead of
  missing what changed while the daemon was down.
- A failing location is reported (``reachable=False``) and retried; it never
  blocks another location, since each has its own actor, client and budget.
- Reachability is learnt from every request attempt of the location's client
  (:class:`Reachability`): a location is down after ``down_after`` seconds of
  failed attempts and no answer, and back at its first answer. The shards skip
  a down location's reads instead of waiting through the client's retries.
- An inactive location (not in the merge config's locations: single mode)
  makes no call at all: its poll idles and an order lookup is answered empty.
- An order lookup never holds the poll: it runs in a task of its own. A
  failure worth retrying is retried with backoff; an order Clover refuses
  for good (a 4xx) is answered empty and logged: its stock change still
  reaches the items poll and the reconciliation. Lookups in flight are kept
  on the actor, so a restarted actor runs them again.
- Answers go to the router's own answers channel, never to its inbox: the
  router waiting on a full lookups channel can then never wait on us.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.router import LookupOrder, PollFound, Resolved, RouterInput
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.ports import CloverPort, NotFound, PermanentError, RemoteError, StorePort

log = structlog.get_logger("cloverwoo.location")

OVERLAP_MS = 5_000


class Reachability:
    """Which locations answer now, shared by the location clients (who learn it) and the shards (who skip).

    Down means: attempts failed for at least ``down_after`` seconds, ``min_failures`` of them, and none was
    answered meanwhile; a single failure among answers (a flaky 503) never counts as down. The first answer
    brings the location back and calls every ``on_return`` hook (the shards' catch-up).
    """

    def __init__(self, *, down_after: float = 2.0, min_failures: int = 3) -> None:
        self.down_after = down_after
        self.min_failures = min_failures
        self._failing: dict[str, tuple[float, int]] = {}  # location -> (first failure, failures) since an answer
        self._down: set[str] = set()
        self._watching: dict[str, set[trio.CancelScope]] = {}  # reads in flight, abandoned when it goes down
        self.on_return: list[Callable[[str], None]] = []
        self.on_down: list[Callable[[str, str], None]] = []

    def is_down(self, location: str) -> bool:
        return location in self._down

    def down(self) -> set[str]:
        return set(self._down)

    @contextmanager
    def abandon_when_down(self, location: str) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled if ``location`` goes down while the block runs.

        The caller checks ``scope.cancelled_caught``: the read it wrapped was abandoned, not failed.
        """
        scope = trio.CancelScope()
        watching = self._watching.setdefault(location, set())
        watching.add(scope)
        try:
            with scope:
                yield scope
        finally:
            watching.discard(scope)

    def attempt(self, location: str, ok: bool, reason: str = "") -> None:
        if ok:
            self._failing.pop(location, None)
            if location in self._down:
                self._down.discard(location)
                log.info("location_reachable_again", location=location)
                for hook in list(self.on_return):
                    hook(location)
            return
        now = time.monotonic()
        first, n = self._failing.get(location, (now, 0))
        self._failing[location] = (first, n + 1)
        if location not in self._down and n + 1 >= self.min_failures and now - first >= self.down_after:
            self._down.add(location)
            log.warning("location_unreachable", location=location, error=reason[:300])
            for scope in list(self._watching.get(location, ())):
                scope.cancel()
            for down_hook in list(self.on_down):
                down_hook(location, reason)


@dataclass
class LocationStatus:
    reachable: bool = True
    active: bool = True  # False in single mode for every location but the primary (no calls)
    last_poll_ok: float | None = None  # unix
    last_error: str = ""
    consecutive_failures: int = 0
    polls: int = 0
    found: int = 0


@dataclass
class LocationActor:
    name: str
    client: CloverPort
    store: StorePort
    table: BindingTable
    router: trio.MemorySendChannel[RouterInput]
    poll_every: float | None
    status: LocationStatus = field(default_factory=LocationStatus)
    retry: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0, max_attempts=1_000_000))
    _seen: dict[str, int] = field(default_factory=dict)  # item id -> modifiedTime already forwarded
    _orders_seen: dict[str, int] = field(default_factory=dict)  # order id -> modifiedTime already forwarded
    # ``O:`` webhooks waiting for the orders feed to show their order: one feed call answers them all,
    # instead of one order lookup per sale (the per-token budget is 16 calls a second).
    _lookups: dict[str, list[LookupOrder]] = field(default_factory=dict)
    _lookup_polls: dict[str, int] = field(default_factory=dict)  # order id -> feed polls that missed it
    _inflight: dict[int, LookupOrder] = field(default_factory=dict)  # event id -> its lookup, until answered
    _wake: trio.Event = field(default_factory=trio.Event)
    # whether the merge config reads this location now (single mode: only the primary)
    active: Callable[[], bool] = lambda: True
    reach: Reachability | None = None
    # where lookups are answered: the router's answers channel (its inbox only when none is given)
    answers: trio.MemorySendChannel[Resolved] | None = None
    lookup_attempts: int = 8  # failed attempts at one order while the location answers other calls
    _nursery: trio.Nursery | None = None

    def observe(self, ok: bool, reason: str) -> None:
        """The client's hook: one request attempt's outcome."""
        if self.reach is not None:
            self.reach.attempt(self.name, ok, reason)
            self.status.reachable = not self.reach.is_down(self.name)
            if not ok:
                self.status.last_error = reason[:300]

    async def run(
        self,
        lookups: trio.MemoryReceiveChannel[LookupOrder],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as n:
            self._nursery = n
            for req in list(self._inflight.values()):  # lookups the last incarnation did not finish
                n.start_soon(self._lookup, req)
            if self.poll_every:
                n.start_soon(self._poll_loop)
            task_status.started()
            async for req in lookups:
                if not self.active():  # an inactive location is never called
                    await self._answer(Resolved(req.event_id, "webhook:clover:order", req.mono,
                                                clover={self.name: set()}))
                    continue
                if req.event_id in self._inflight:
                    continue  # asked again (a restarted router): the lookup in flight answers it
                if self.poll_every:
                    waiting = self._lookups.setdefault(req.order_id, [])
                    if all(w.event_id != req.event_id for w in waiting):
                        waiting.append(req)
                    self._wake.set()  # the feed is read now, not at the next tick
                else:
                    self._inflight[req.event_id] = req
                    n.start_soon(self._lookup, req)

    async def _answer(self, resolved: Resolved) -> None:
        await (self.answers if self.answers is not None else self.router).send(resolved)

    async def _lookup(self, req: LookupOrder) -> None:
        """One order's items, answered to the router; kept in ``_inflight`` until answered."""
        self._inflight[req.event_id] = req
        attempt = 0
        while True:
            try:
                items = await self.client.order_item_ids(req.order_id)
                break
            except NotFound:
                items = set()
                break
            except PermanentError as exc:
                # Refused for good: retrying cannot help. Its stock change still reaches the items poll
                # and the reconciliation; the event is settled rather than held for ever.
                log.warning("order_lookup_refused", location=self.name, order_id=req.order_id, error=str(exc)[:300])
                items = set()
                break
            except RemoteError as exc:
                self._failed(exc)
                if self.reach is None or not self.reach.is_down(self.name):
                    attempt += 1  # only failures while the location answers count against this order
                if attempt >= self.lookup_attempts:
                    log.error("order_lookup_gave_up", location=self.name, order_id=req.order_id, attempts=attempt,
                              error=str(exc)[:300])
                    items = set()
                    break
                await trio.sleep(self.retry.next_delay(min(max(attempt, 1), 20)) or self.retry.cap)
        await self._answer(Resolved(req.event_id, "webhook:clover:order", req.mono, clover={self.name: items}))
        self._inflight.pop(req.event_id, None)

    async def _poll_loop(self) -> None:
        assert self.poll_every
        items_key = f"clover.cursor.items.{self.name}"
        orders_key = f"clover.cursor.orders.{self.name}"
        now_ms = int(time.time() * 1000)
        items_cursor = int(await self.store.get_kv(items_key) or now_ms)
        orders_cursor = int(await self.store.get_kv(orders_key) or now_ms)
        next_items = trio.current_time()
        while True:
            with trio.move_on_after(self.poll_every):
                await self._wake.wait()
            self._wake = trio.Event()
            self.status.active = self.active()
            if not self.status.active:  # single mode, not the primary: no calls at all
                await self._answer_inactive()
                continue
            try:
                found: set[str] = set()
                items = []
                if trio.current_time() >= next_items:  # woken early for orders: the item list can wait its turn
                    next_items = trio.current_time() + self.poll_every
                    items = await self.client.list_items(modified_since_ms=items_cursor - OVERLAP_MS)
                newest = items_cursor
                for it in items:
                    newest = max(newest, it.modified_time)
                    if self._seen.get(it.item_id) == it.modified_time:
                        continue
                    self._seen[it.item_id] = it.modified_time
                    bid = self.table.by_clover_item(self.name, it.item_id)
                    binding = self.table.get(bid) if bid is not None else None
                    # Only a quantity that differs from what we last agreed on is news (our own writes
                    # bump modifiedTime too, and would otherwise be merged again for nothing).
                    base = binding.base_clover.get(self.name) if binding is not None else None
                    if binding is not None and (it.quantity is None or it.quantity != base):
                        found.add(it.item_id)
                orders = await self.client.changed_orders(since_ms=orders_cursor - OVERLAP_MS)
                await self._answer_lookups(orders)
                newest_order = orders_cursor
                for order_id, (modified, order_items) in orders.items():
                    newest_order = max(newest_order, modified)
                    if self._orders_seen.get(order_id) == modified:
                        continue  # seen through the overlap before: re-forwarding it would merge forever
                    self._orders_seen[order_id] = modified
                    found |= {i for i in order_items if self.table.by_clover_item(self.name, i) is not None}
                if found:
                    self.status.found += len(found)
                    await self.router.send(PollFound("poll:clover", trio.current_time(), clover={self.name: found}))
                if newest != items_cursor:
                    items_cursor = newest
                    await self.store.set_kv(items_key, str(items_cursor))
                if newest_order > orders_cursor:
                    orders_cursor = newest_order
                    await self.store.set_kv(orders_key, str(orders_cursor))
                self._prune(items_cursor, orders_cursor)
                self.status.polls += 1
                self.status.reachable = self.reach is None or not self.reach.is_down(self.name)
                self.status.consecutive_failures = 0
                self.status.last_poll_ok = time.time()
            except RemoteError as exc:
                self._failed(exc)
                await trio.sleep(self.retry.next_delay(min(self.status.consecutive_failures, 20)) or 1.0)

    async def _answer_lookups(self, orders: dict[str, tuple[int, set[str]]]) -> None:
        """Answer waiting ``O:`` events from the feed; an order the feed keeps missing is looked up alone."""
        for order_id in list(self._lookups):
            if order_id in orders:
                items = orders[order_id][1]
                for req in self._lookups[order_id]:
                    await self._answer(Resolved(req.event_id, "webhook:clover:order", req.mono,
                                                clover={self.name: set(items)}))
                self._lookups.pop(order_id, None)
                self._lookup_polls.pop(order_id, None)
            else:
                misses = self._lookup_polls.get(order_id, 0) + 1
                self._lookup_polls[order_id] = misses
                if misses >= 3:  # older than the feed's window, or not visible in it: ask for it directly
                    self._lookup_polls.pop(order_id, None)
                    for req in self._lookups.pop(order_id):
                        self._inflight[req.event_id] = req
                        assert self._nursery is not None  # the poll runs inside ``run``
                        self._nursery.start_soon(self._lookup, req)
                else:
                    self._wake.set()

    async def _answer_inactive(self) -> None:
        """Lookups that waited for the feed when the location became inactive (a switch to single mode)."""
        while self._lookups:
            order_id, reqs = next(iter(self._lookups.items()))
            for req in reqs:
                await self._answer(Resolved(req.event_id, "webhook:clover:order", req.mono,
                                            clover={self.name: set()}))
            self._lookups.pop(order_id, None)
            self._lookup_polls.pop(order_id, None)

    def _failed(self, exc: BaseException) -> None:
        self.status.consecutive_failures += 1
        self.status.last_error = str(exc)[:300]
        if self.status.consecutive_failures >= 3:
            if self.status.reachable:
                log.warning("location_unreachable", location=self.name, error=self.status.last_error)
            self.status.reachable = False

    def _prune(self, items_cursor: int, orders_cursor: int) -> None:
        if len(self._seen) > 10_000:
            self._seen = {k: v for k, v in self._seen.items() if v >= items_cursor - 10 * OVERLAP_MS}
        if len(self._orders_seen) > 10_000:
            self._orders_seen = {k: v for k, v in self._orders_seen.items() if v >= orders_cursor - 10 * OVERLAP_MS}
