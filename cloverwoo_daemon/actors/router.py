"""The router: turns accepted events and poll findings into "look at these bindings" for the shards.

Rules:

- Every inbox event is settled (removed from the durable inbox) only after
  every binding it named finished a successful merge, or when it names
  nothing we sync (logged). Until then a crash replays it at start, which is
  harmless because merges work from fresh reads.
- Resolution that needs a remote lookup (the items of a Clover order) goes to
  that location's actor, which answers with ``Resolved``; the router keeps
  the bookkeeping in one place.
- Each event's bookkeeping is the *set* of bindings (and lookups) it still
  waits for, recorded before anything is sent; a settle removes one binding,
  so a duplicate trigger or a duplicate settle is harmless.
- Nothing is leaked by a crash: the bookkeeping lives on the router, not on
  an incarnation, and a restarted router sends every event it still waits
  for again (the bindings to the shards, the lookups to their locations).
  A trigger the shards already had coalesces with the new one.
- No cycle of bounded channels: lookups are answered on a channel of their
  own (``answers``), read by its own task, so the router blocked on a full
  lookups channel never blocks the location actor that would drain it.
  Shards answer on ``settled``, also read by its own task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.core.webhook_parse import CLOVER_ITEM_KINDS
from cloverwoo_daemon.messages import CloverChange, EventsSettled, InboxEvent, MarkDirty, WooChange
from cloverwoo_daemon.ports import StorePort

log = structlog.get_logger("cloverwoo.router")


@dataclass(frozen=True)
class RouteEvent:
    """An accepted inbox event; ``mono`` is the trio clock when it arrived (latency)."""

    inbox: InboxEvent
    mono: float


@dataclass(frozen=True)
class Resolved:
    """A lookup's answer for one event: the Clover items or Woo refs it concerns."""

    event_id: int
    trigger: str
    mono: float
    clover: dict[str, set[str]] = field(default_factory=dict)  # location -> item ids
    woo: set[WooRef] = field(default_factory=set)


@dataclass(frozen=True)
class PollFound:
    """A catch-up poll or reconciliation found these changed; no inbox event behind it."""

    trigger: str
    mono: float
    clover: dict[str, set[str]] = field(default_factory=dict)
    woo: set[WooRef] = field(default_factory=set)
    binding_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LookupOrder:
    """Ask a location actor which items a Clover order holds."""

    event_id: int
    order_id: str
    mono: float


RouterInput = RouteEvent | Resolved | PollFound
_LOOKUP = "lookup:"  # marks an event held by a location's order lookup (never a binding id)


@dataclass
class RouterDeps:
    store: StorePort
    table: BindingTable
    shards: list[trio.MemorySendChannel[MarkDirty]]
    location_of_merchant: dict[str, str]  # merchant id -> location name (active locations only)
    lookups: dict[str, trio.MemorySendChannel[LookupOrder]]  # location -> its actor's lookup inbox
    woo_order_lookup: Callable[[int], object] | None = None
    on_event: Callable[[str], None] = lambda source: None  # "last event per source" for status


class Router:
    def __init__(self, deps: RouterDeps) -> None:
        self.deps = deps
        self._refs: dict[int, set[str]] = {}  # event id -> binding ids (and lookup markers) still to settle
        self._lookups_out: dict[int, tuple[str, LookupOrder]] = {}  # event id -> the lookup that holds it
        self._to_settle: list[int] = []
        self._settle_wakeup = trio.Event()
        self.routed = 0
        self.settled = 0
        self.ignored = 0

    def statistics(self) -> dict[str, int]:
        return {"events_in_flight": len(self._refs), "routed": self.routed, "settled": self.settled,
                "ignored": self.ignored}

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[RouterInput],
        settled: trio.MemoryReceiveChannel[EventsSettled],
        answers: trio.MemoryReceiveChannel[Resolved] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._settle_loop, settled)
            n.start_soon(self._flush_loop)
            if answers is not None:
                n.start_soon(self._answers_loop, answers)
            if self._to_settle:
                self._settle_wakeup.set()
            await self._resend()
            task_status.started()
            async for msg in inbox:
                await self._handle(msg)
            n.cancel_scope.cancel()

    async def _answers_loop(self, answers: trio.MemoryReceiveChannel[Resolved]) -> None:
        async for msg in answers:
            await self._handle(msg)

    async def _resend(self) -> None:
        """Send again what a previous incarnation may not have finished sending (a crash mid-dispatch)."""
        if not self._refs:
            return
        d = self.deps
        now = trio.current_time()
        nshards = len(d.shards)
        resent = 0
        for eid, waiting in list(self._refs.items()):
            by_shard: dict[int, list[str]] = {}
            for bid in sorted(w for w in waiting if not w.startswith(_LOOKUP)):
                by_shard.setdefault(shard_of(bid, nshards), []).append(bid)
            for shard, bids in by_shard.items():
                await d.shards[shard].send(MarkDirty(tuple(bids), "restart", (eid,), now, None, None))
            out = self._lookups_out.get(eid)
            if out is not None and out[0] in d.lookups:
                await d.lookups[out[0]].send(out[1])
            resent += 1
        log.info("router_resent", events=resent)

    async def _handle(self, msg: RouterInput) -> None:
        match msg:
            case RouteEvent(inbox=ev, mono=mono):
                await self._route_event(ev, mono)
            case Resolved():
                ids = self._resolve(msg.clover, msg.woo)
                marker = _LOOKUP + ",".join(sorted(msg.clover))
                await self._dispatch(ids, msg.trigger, mono=msg.mono, event_id=msg.event_id,
                                     clover_at=_where(msg.clover, msg.woo), releases=marker)
            case PollFound():
                ids = self._resolve(msg.clover, msg.woo) | set(msg.binding_ids)
                await self._dispatch(ids, msg.trigger, mono=msg.mono, event_id=None,
                                     clover_at=None if msg.binding_ids else _where(msg.clover, msg.woo))

    async def _route_event(self, ev: InboxEvent, mono: float) -> None:
        d = self.deps
        match ev.event:
            case CloverChange(merchant_id=mid, kind=kind, object_id=oid):
                d.on_event("clover")
                loc = d.location_of_merchant.get(mid)
                if loc is None:
                    self._ignore(ev.event_id, "unknown or inactive merchant", merchant_id=mid)
                    return
                if kind in CLOVER_ITEM_KINDS:  # I, and the stock events Clover split from it (IS, IA)
                    ids = self._resolve({loc: {oid}}, set())
                    await self._dispatch(ids, "webhook:clover", mono=mono, event_id=ev.event_id, clover_at=(loc,))
                elif kind == "O" and loc in d.lookups:
                    req = LookupOrder(ev.event_id, oid, mono)
                    self._refs.setdefault(ev.event_id, set()).add(_LOOKUP + loc)  # held by the lookup
                    self._lookups_out[ev.event_id] = (loc, req)
                    await d.lookups[loc].send(req)
                else:
                    self._ignore(ev.event_id, "event type not used for stock", kind=kind)
            case WooChange(topic=topic, resource_id=rid, parent_id=pid, refs=refs, stock_quantity=stock):
                d.on_event("woocommerce")
                resource = topic.split(".", 1)[0]
                if resource == "product":
                    if pid:
                        ids = self._resolve({}, {WooRef(pid, rid)})
                    else:
                        ids = d.table.by_woo_product(rid)
                    # The payload's stock lets the shard recognise our own write coming back.
                    hint = stock if len(ids) == 1 and topic == "product.updated" else None
                    await self._dispatch(ids, "webhook:woo", mono=mono, event_id=ev.event_id, woo_hint=hint,
                                         clover_at=())
                elif resource == "order":
                    ids = self._resolve({}, set(refs))
                    await self._dispatch(ids, "webhook:woo:order", mono=mono, event_id=ev.event_id, clover_at=())
                else:
                    self._ignore(ev.event_id, "topic not used for stock", topic=topic)

    def _resolve(self, clover: dict[str, set[str]], woo: set[WooRef]) -> set[str]:
        t = self.deps.table
        ids: set[str] = set()
        for loc, items in clover.items():
            for item_id in items:
                bid = t.by_clover_item(loc, item_id)
                if bid is not None:
                    ids.add(bid)
        for ref in woo:
            bid = t.by_woo_ref(ref)
            if bid is not None:
                ids.add(bid)
            elif ref.variation_id == 0:
                ids |= t.by_woo_product(ref.product_id)
        return ids

    async def _dispatch(
        self, ids: set[str], trigger: str, *, mono: float, event_id: int | None, woo_hint: int | None = None,
        clover_at: tuple[str, ...] | None = None, releases: str | None = None,
    ) -> None:
        """Mark ``ids`` dirty for ``event_id``; ``releases`` is the lookup marker an answer takes off the event.

        The bookkeeping is done before the first send: whatever interrupts the sends, a restarted router
        knows what the event still waits for and sends it again.
        """
        d = self.deps
        nshards = len(d.shards)
        by_shard: dict[int, list[str]] = {}
        for bid in sorted(ids):
            by_shard.setdefault(shard_of(bid, nshards), []).append(bid)
        if event_id is not None:
            waiting = self._refs.get(event_id)
            if releases is not None:
                if waiting is None or releases not in waiting:
                    event_id = None  # answered before (a lookup sent twice): only a trigger now
                else:
                    waiting.discard(releases)
                    self._lookups_out.pop(event_id, None)
        if event_id is not None:
            waiting = self._refs.setdefault(event_id, set())
            waiting.update(ids)
            if not waiting:
                del self._refs[event_id]
                self._settle(event_id)
        eids = (event_id,) if event_id is not None else ()
        for shard, bids in by_shard.items():
            await d.shards[shard].send(MarkDirty(tuple(bids), trigger, eids, mono, woo_hint, clover_at))
        self.routed += 1

    def _ignore(self, event_id: int, reason: str, **kw: object) -> None:
        self.ignored += 1
        log.debug("event_ignored", event_id=event_id, reason=reason, **kw)
        self._settle(event_id)

    def _settle(self, event_id: int) -> None:
        self._to_settle.append(event_id)
        self._settle_wakeup.set()

    async def _settle_loop(self, settled: trio.MemoryReceiveChannel[EventsSettled]) -> None:
        async for msg in settled:
            for eid in msg.event_ids:
                waiting = self._refs.get(eid)
                if waiting is None:
                    continue
                waiting.discard(msg.binding_id)
                if not waiting:
                    del self._refs[eid]
                    self._settle(eid)

    async def _flush_loop(self) -> None:
        """Settle in batches: one store transaction for many events."""
        while True:
            await self._settle_wakeup.wait()
            self._settle_wakeup = trio.Event()
            batch, self._to_settle = self._to_settle, []
            if batch:
                try:
                    await self.deps.store.settle_events(batch)
                    self.settled += len(batch)
                except Exception:
                    # Unsettled events are replayed at the next start: harmless, so keep going.
                    log.exception("settle_failed", count=len(batch))
                    self._to_settle[:0] = batch
                    await trio.sleep(1.0)
                    self._settle_wakeup.set()


def now_unix() -> float:
    return time.time()


def _where(clover: dict[str, set[str]], woo: set[WooRef]) -> tuple[str, ...] | None:
    """``MarkDirty.clover_at`` for a change found at these Clover locations and Woo refs."""
    return None if clover and woo else tuple(sorted(clover))
