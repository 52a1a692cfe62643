"""Batches WooCommerce stock writes from all shards into ``/batch`` calls.

Rules:

- A write is sent at once when a slot (of ``max_parallel``) is free; writes
  that arrive while every slot is busy are gathered and go together in the
  next batch (at most ``max_batch``, WooCommerce's limit of 100). So a lone
  sale costs one request with no added delay, and a bulk job, whose
  hundreds of merges wait on the slots, sends full batches (a batch of 100
  takes ~2 s on a real store against ~7 s for 100 single PUTs: reference
  section 9).
- Per-binding serialisation stays the shard's job: a binding has at most one
  write in flight, so one batch never holds two writes to one product.
- Two kinds of write are batched, each with its own kind only:
  ``apply_deltas`` (``inventory_delta`` with the meta marker, to
  ``/products/batch``) and ``apply_changes`` (the WordPress companion's
  ``/stock``, exactly once by write id).
- Each caller gets its own result; when the whole call fails every caller
  gets the exception and retries through its merge (the meta marker, or the
  companion's write id, tells whether its change landed). A batch cut short (the writer restarted) fails
  its callers with ``RemoteError``: the same retry, never a cancellation
  carried from the writer's task into theirs.
- Work queued when the writer restarts is sent by the next incarnation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from cloverwoo_daemon.core.model import (
    CompanionInfo,
    StockChange,
    StockChangeResult,
    WooItem,
    WooRef,
    WooStock,
    WooWriteResult,
)
from cloverwoo_daemon.core.witness import StockNote, WooOrderSeen
from cloverwoo_daemon.ports import StockWrite, WooPort, WriteOutcomeUnknown

Kind = Literal["deltas", "changes"]


@dataclass
class _Waiter:
    kind: Kind
    changes: list[Any]  # StockWrite (may carry extra meta) for "deltas", StockChange for "changes"
    done: trio.Event = field(default_factory=trio.Event)
    results: list[Any] | None = None
    error: Exception | None = None


class BatchingWoo:
    """A ``WooPort`` whose ``apply_deltas`` coalesces concurrent callers; everything else passes through."""

    def __init__(self, woo: WooPort, *, max_batch: int = 100, max_parallel: int = 2) -> None:
        self.woo = woo
        self.max_batch = max_batch
        self._queue: list[_Waiter] = []
        self._slots = trio.Semaphore(max_parallel)
        self._wakeup = trio.Event()
        self._in_flight = 0
        self.batches = 0
        self.writes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            task_status.started()
            if self._queue:
                self._wakeup.set()  # queued while the last incarnation was going down
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    await self._slots.acquire()
                    batch = self._take()
                    if batch:
                        self._in_flight += 1
                        n.start_soon(self._send, batch)
                    else:
                        self._slots.release()

    def _queued(self) -> int:
        return sum(len(w.changes) for w in self._queue)

    def _take(self) -> list[_Waiter]:
        """The next batch: waiters of the first waiter's kind, in order, up to ``max_batch`` changes."""
        batch: list[_Waiter] = []
        if not self._queue:
            return batch
        kind = self._queue[0].kind
        size = 0
        rest: list[_Waiter] = []
        for w in self._queue:
            if w.kind == kind and size + len(w.changes) <= self.max_batch:
                batch.append(w)
                size += len(w.changes)
            else:
                rest.append(w)
        if not batch:  # a single caller larger than a batch: the client splits it
            batch.append(rest.pop(0))
        self._queue[:] = rest
        return batch

    async def _send(self, batch: list[_Waiter]) -> None:
        try:
            changes = [c for w in batch for c in w.changes]
            try:
                if batch[0].kind == "changes":
                    results: list[Any] = await self.woo.apply_changes(changes)
                else:
                    results = await self.woo.apply_deltas(changes)
            except Exception as exc:  # every caller gets it, in its own task (cancellation is not caught)
                for w in batch:
                    w.error = exc
            else:
                i = 0
                for w in batch:
                    w.results = results[i:i + len(w.changes)]
                    i += len(w.changes)
            self.batches += 1
            self.writes += len(changes)
        finally:
            self._slots.release()
            self._in_flight -= 1
            self._wakeup.set()  # what gathered meanwhile may go now
            for w in batch:
                if w.results is None and w.error is None:  # its request may have gone out: may still land
                    w.error = WriteOutcomeUnknown("woocommerce batch cut short (the writer restarted); retried")
                w.done.set()

    # -------------------------------------------------------------- WooPort

    async def apply_deltas(self, changes: Sequence[StockWrite]) -> list[WooWriteResult]:
        results: list[WooWriteResult] = await self._wait("deltas", changes)
        return results

    async def apply_changes(self, changes: Sequence[StockChange]) -> list[StockChangeResult]:
        """Through the companion, batched with other callers' changes (each write id appears once per call)."""
        results: list[StockChangeResult] = await self._wait("changes", changes)
        return results

    async def companion(self) -> CompanionInfo | None:
        return await self.woo.companion()

    async def _wait(self, kind: Kind, changes: Sequence[Any]) -> list[Any]:
        if not changes:
            return []
        w = _Waiter(kind, list(changes))
        self._queue.append(w)
        self._wakeup.set()
        try:
            await w.done.wait()
        finally:
            if w in self._queue:  # its caller is gone (cancelled): the write is not sent on its behalf later
                self._queue.remove(w)
        if w.error is not None:
            raise w.error
        assert w.results is not None
        return w.results

    async def get_stock(self, ref: WooRef) -> WooStock:
        return await self.woo.get_stock(ref)

    async def list_items(self) -> list[WooItem]:
        return await self.woo.list_items()

    async def changed_refs(self, *, modified_after: str) -> tuple[set[WooRef], str]:
        return await self.woo.changed_refs(modified_after=modified_after)

    async def changed_items(self, *, modified_after: str) -> tuple[dict[WooRef, str], str]:
        return await self.woo.changed_items(modified_after=modified_after)

    async def order_refs(self, order_id: int) -> set[WooRef]:
        return await self.woo.order_refs(order_id)

    async def orders_since(self, *, modified_after: str) -> list[WooOrderSeen]:
        return await self.woo.orders_since(modified_after=modified_after)

    async def stock_notes(self, order_id: int) -> list[StockNote]:
        return await self.woo.stock_notes(order_id)

    async def aclose(self) -> None:
        await self.woo.aclose()
