"""In-process fakes of the ports (``ports.py``) for unit tests of one actor.

They keep just enough state to be asserted on: the store keeps what was
committed ("the disk"), the Woo fake applies deltas and keeps version
markers, the Clover fake holds stock per item. Hooks let a test stop a call
at a chosen moment (``hold``) to interrupt the caller there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from cloverwoo_daemon.core.model import (
    Binding,
    CloverItem,
    CompanionInfo,
    Conflict,
    StockChange,
    StockChangeResult,
    SyncLogRow,
    WooItem,
    WooRef,
    WooStock,
    WooWriteResult,
)
from cloverwoo_daemon.core.witness import CloverOrderSeen, StockNote, WooOrderSeen
from cloverwoo_daemon.ports import CompanionMissing, NotFound, PermanentError, RemoteError

Hook = Callable[..., Awaitable[None]]


class FakeStore:
    """A StorePort in memory. ``after_commit`` runs once a commit "landed", like the real store's writer."""

    def __init__(self) -> None:
        self.bindings: dict[str, Binding] = {}
        self.intents: dict[str, bytes] = {}
        self.log: list[SyncLogRow] = []
        self.conflicts: list[Conflict] = []
        self.kv: dict[str, str] = {}
        self.settled: list[int] = []
        self.after_land: Hook | None = None  # awaited after a commit landed, before the caller is answered
        self.fail_commits: Exception | None = None  # raised by every commit_binding (a store error)

    async def commit_binding(self, binding: Binding, *, intent: Any = None, log: SyncLogRow | None = None,
                             conflict: Conflict | None = None, after_commit: Callable[[], None] | None = None) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_commits is not None:
            raise self.fail_commits
        self.bindings[binding.binding_id] = binding
        if intent == "clear":
            self.intents.pop(binding.binding_id, None)
        elif isinstance(intent, bytes):
            self.intents[binding.binding_id] = intent
        if log is not None:
            self.log.append(log)
        if conflict is not None:
            await self.add_conflict(conflict)
        if after_commit is not None:
            after_commit()
        if self.after_land is not None:
            await self.after_land(binding=binding, intent=intent)

    async def save_intent(self, binding_id: str, intent: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.intents[binding_id] = intent

    async def put_bindings(self, bindings: list[Binding]) -> None:
        await trio.lowlevel.checkpoint()
        for b in bindings:
            self.bindings[b.binding_id] = b

    async def delete_binding(self, binding_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.bindings.pop(binding_id, None)
        self.intents.pop(binding_id, None)

    async def append_log(self, rows: list[SyncLogRow]) -> None:
        await trio.lowlevel.checkpoint()
        self.log.extend(rows)

    async def add_conflict(self, conflict: Conflict, *, fold: Callable[[str, str], str] | None = None) -> int:
        await trio.lowlevel.checkpoint()
        for i, c in enumerate(self.conflicts):
            if c.binding_id == conflict.binding_id and c.kind == conflict.kind and c.resolved_at is None:
                if fold is not None:
                    self.conflicts[i] = Conflict(c.binding_id, c.sku, c.kind, fold(c.detail, conflict.detail),
                                                 c.created_at, c.id)
                return c.id
        self.conflicts.append(Conflict(conflict.binding_id, conflict.sku, conflict.kind, conflict.detail,
                                       conflict.created_at, len(self.conflicts) + 1))
        return len(self.conflicts)

    async def settle_events(self, ids: list[int]) -> None:
        await trio.lowlevel.checkpoint()
        self.settled.extend(ids)

    async def get_kv(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self.kv.get(key)

    async def set_kv(self, key: str, value: str) -> None:
        await trio.lowlevel.checkpoint()
        self.kv[key] = value

    def events(self, name: str) -> list[SyncLogRow]:
        return [r for r in self.log if r.event == name]


class FakeWoo:
    """A WooPort over a dict of stock: deltas applied with their marker, like ``inventory_delta``.

    With ``companion_info`` set it also plays the WordPress companion: ``apply_changes`` applies each write id
    at most once and answers the stock it left; ``lose_answers`` applies the next N calls and then raises
    (an answer lost on the way back); ``companion_info = None`` makes its route answer 404.
    """

    def __init__(self) -> None:
        self.stock: dict[WooRef, int] = {}
        self.markers: dict[WooRef, str | int] = {}
        self.companion_info: CompanionInfo | None = None
        self.write_ids: dict[str, tuple[WooRef, int, int]] = {}  # write id -> (ref, delta, stock it left)
        self.changes: list[StockChange] = []  # every change sent to the companion, resends included
        self.lose_answers = 0
        self.refuse: dict[WooRef, str] = {}  # per-item refusal codes
        self.orders_seen: list[WooOrderSeen] = []  # the orders feed (the witness)
        self.notes: dict[int, list[StockNote]] = {}
        self.feed_error: Exception | None = None
        self.meta: dict[WooRef, dict[str, str | None]] = {}
        self.writes: list[tuple[WooRef, int]] = []
        self.hold: Hook | None = None  # awaited inside apply_deltas, before the write lands
        self.read_errors: list[Exception] = []  # raised by the next reads, one each
        self.items: list[WooItem] = []  # the catalogue, as listed

    async def list_items(self) -> list[WooItem]:
        await trio.lowlevel.checkpoint()
        return list(self.items)

    async def get_stock(self, ref: WooRef) -> WooStock:
        await trio.lowlevel.checkpoint()
        if self.read_errors:
            raise self.read_errors.pop(0)
        if ref not in self.stock:
            raise NotFound(f"woo {ref} not found")
        return WooStock(ref=ref, manage_stock=True, quantity=self.stock[ref], version_marker=self.markers.get(ref))

    async def apply_deltas(self, changes: Sequence[Any]) -> list[WooWriteResult]:
        await trio.lowlevel.checkpoint()
        if self.hold is not None:
            await self.hold(changes=changes)
        out = []
        for ref, delta, version, *meta in changes:
            self.stock[ref] += delta
            self.markers[ref] = version
            if meta:
                self.meta.setdefault(ref, {}).update(meta[0])
            if delta:
                self.writes.append((ref, delta))
            out.append(WooWriteResult(ref=ref, ok=True, quantity=self.stock[ref]))
        return out

    async def companion(self) -> CompanionInfo | None:
        await trio.lowlevel.checkpoint()
        return self.companion_info

    async def orders_since(self, *, modified_after: str) -> list[WooOrderSeen]:
        await trio.lowlevel.checkpoint()
        if self.feed_error is not None:
            raise self.feed_error
        return list(self.orders_seen)

    async def stock_notes(self, order_id: int) -> list[StockNote]:
        await trio.lowlevel.checkpoint()
        return list(self.notes.get(order_id, []))

    async def apply_changes(self, changes: Sequence[StockChange]) -> list[StockChangeResult]:
        await trio.lowlevel.checkpoint()
        if self.companion_info is None:
            raise CompanionMissing("rest_no_route")
        if self.hold is not None:
            await self.hold(changes=changes)
        out = []
        for c in changes:
            self.changes.append(c)
            seen = self.write_ids.get(c.write_id)
            if seen is not None:
                out.append(StockChangeResult(c.write_id, c.ref, ok=True, new=False, quantity=seen[2]))
            elif c.ref in self.refuse:
                out.append(StockChangeResult(c.write_id, c.ref, ok=False, code=self.refuse[c.ref],
                                             error=self.refuse[c.ref]))
            else:
                self.stock[c.ref] += c.delta
                self.writes.append((c.ref, c.delta))
                self.write_ids[c.write_id] = (c.ref, c.delta, self.stock[c.ref])
                out.append(StockChangeResult(c.write_id, c.ref, ok=True, new=True, quantity=self.stock[c.ref]))
        if self.lose_answers:
            self.lose_answers -= 1
            raise RemoteError("POST /stock: 503 after 4 attempts")
        return out


class FakeClover:
    """A CloverPort for one location: stock per item; ``None`` is an item without a stock record."""

    def __init__(self, location: str = "downtown") -> None:
        self.location = location
        self.merchant_id = f"M-{location}"
        self.stock: dict[str, int | None] = {}
        self.writes: list[tuple[str, int]] = []
        self.reads = 0
        self.hold_read: Hook | None = None  # awaited inside get_stock (a slow or dead location)
        self.read_error: Exception | None = None  # raised by the read of read_then_write
        self.no_record_at_write = False  # read_then_write finds no stock record (it vanished since the read)
        self.orders: dict[str, set[str]] = {}
        self.order_lines_seen: list[CloverOrderSeen] = []  # the orders feed with units (the witness)
        self.order_error: Exception | None = None
        self.order_calls = 0
        self.feed_calls = 0
        self.list_calls = 0
        self.items: list[CloverItem] = []  # the catalogue, as listed

    async def get_stock(self, item_id: str) -> int | None:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        if self.hold_read is not None:
            await self.hold_read(item_id=item_id)
        if item_id not in self.stock:
            raise NotFound(f"clover item {item_id} not found")
        return self.stock[item_id]

    async def set_stock(self, item_id: str, quantity: int) -> int:
        await trio.lowlevel.checkpoint()
        self.stock[item_id] = quantity
        self.writes.append((item_id, quantity))
        return quantity

    async def read_then_write(self, item_id: str, delta: int,
                              before_write: Callable[[int], Awaitable[None]]) -> tuple[int, int, int | None] | None:
        await trio.lowlevel.checkpoint()
        if self.read_error is not None:
            raise self.read_error
        if item_id not in self.stock:
            raise RemoteError(f"clover item {item_id}: 404")
        fresh = self.stock[item_id]
        if fresh is None or self.no_record_at_write:
            return None
        target = fresh + delta
        await before_write(target)
        self.stock[item_id] = target
        self.writes.append((item_id, target))
        return fresh, target, None

    async def list_items(self, *, modified_since_ms: int | None = None) -> list[Any]:
        await trio.lowlevel.checkpoint()
        self.list_calls += 1
        return list(self.items) if modified_since_ms is None else []

    async def changed_orders(self, *, since_ms: int) -> dict[str, tuple[int, set[str]]]:
        await trio.lowlevel.checkpoint()
        self.feed_calls += 1
        return {}

    async def order_lines(self, *, since_ms: int) -> list[CloverOrderSeen]:
        await trio.lowlevel.checkpoint()
        self.feed_calls += 1
        if self.order_error is not None:
            raise self.order_error
        return list(self.order_lines_seen)

    async def order_item_ids(self, order_id: str) -> set[str]:
        await trio.lowlevel.checkpoint()
        self.order_calls += 1
        if self.order_error is not None:
            raise self.order_error
        if order_id not in self.orders:
            raise NotFound(order_id)
        return self.orders[order_id]

    async def aclose(self) -> None:
        pass


def refused(text: str = "400 bad request") -> PermanentError:
    return PermanentError(text)


@asynccontextmanager
async def to_the_end() -> AsyncIterator[tuple[trio.Nursery, Callable[[], None]]]:
    """A nursery whose body must reach its end: ``finish()`` there, instead of cancelling the nursery.

    A ``Cancelled`` raised in a task whose scope was not cancelled (one captured and moved elsewhere)
    tears a nursery down early and silently; a test's assertions would then never run, and it would pass.
    """
    finished = False

    def finish() -> None:
        nonlocal finished
        finished = True
        n.cancel_scope.cancel()

    async with trio.open_nursery() as n:
        yield n, finish
    assert finished, "the test's body was torn down before its end (a stray Cancelled?)"
