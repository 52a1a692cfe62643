"""Intake: where an authenticated delivery becomes durable, then work.

Rules:

- ``accept`` returns only after the events are committed to the store's inbox
  (group commit: concurrent deliveries share one fsync). Only then does the
  webhook server answer 200, so an acknowledged event survives any crash.
- The commit is the only thing shielded from cancellation (a client hanging
  up, or the shutdown's deadline, must not cut it in half; it is bounded by
  the disk), and the only thing ``accept`` waits for. Nothing may block
  inside a shield.
- Back-pressure instead of unbounded queues: when the router's queue is full
  the delivery is refused with ``Overloaded`` (503 + Retry-After) *before*
  anything is stored, and the sender retries later.
- The hand-off to the router never waits: deliveries that passed that check
  together can still overfill the queue, and a router that stopped reading
  (a shutdown, a router stuck on a full shard) would then hold the request,
  and the shutdown behind it, for ever. An event that finds the queue full
  is kept in ``overflow`` and sent by ``run`` as room appears. It is already
  durable: if the daemon stops first, the inbox replay at the next start
  routes it. The overflow is bounded by what passed the capacity check.
- A duplicate delivery (same dedup key) is acknowledged and not routed again.
"""

from __future__ import annotations

import collections
import time

import msgspec
import structlog
import trio

from cloverwoo_daemon.actors.router import RouteEvent, RouterInput
from cloverwoo_daemon.messages import InboundEvent, InboxEvent
from cloverwoo_daemon.ports import Overloaded, StorePort

log = structlog.get_logger("cloverwoo.intake")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(InboundEvent)


def decode_event(raw: bytes) -> InboundEvent:
    return _decoder.decode(raw)


class Intake:
    def __init__(self, store: StorePort, router: trio.MemorySendChannel[RouterInput], *, capacity: int) -> None:
        self.store = store
        self.router = router
        self.capacity = capacity
        self.closed = False
        self.accepted = 0
        self.duplicates = 0
        self.overflow: collections.deque[RouteEvent] = collections.deque()  # durable, waiting for router room
        self.overflowed = 0  # events that ever waited there (statistics)
        self._overflow_wakeup = trio.Event()

    def depth(self) -> int:
        return self.router.statistics().current_buffer_used + len(self.overflow)

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> int:
        """Store then route ``items``; returns how many were new (the rest were duplicates).

        Error handling: ``Overloaded`` (nothing stored) when closed or the queue is full; the store's errors
        unchanged (nothing acknowledged, the sender retries).
        """
        if self.closed:
            raise Overloaded(retry_after=5)  # shutting down: the sender retries against the next incarnation
        if self.depth() + len(items) > self.capacity:
            raise Overloaded(retry_after=1)
        encoded = [(key, _encoder.encode(ev)) for key, ev in items]
        with trio.CancelScope(shield=True):
            results = await self.store.accept_events(encoded)
        # From here on nothing waits: a cancellation pending since the commit cannot separate the
        # commit from the hand-off (neither send_nowait nor the deque is a checkpoint).
        mono = trio.current_time()
        now = time.time()
        new = 0
        for (event_id, is_new), (_, ev) in zip(results, items, strict=True):
            if is_new:
                new += 1
                self.accepted += 1
                self._hand_off(RouteEvent(InboxEvent(event_id, ev, now), mono))
            else:
                self.duplicates += 1
        return new

    def _hand_off(self, msg: RouteEvent) -> None:
        if not self.overflow:
            try:
                self.router.send_nowait(msg)
                return
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the router is gone (shutdown): the inbox replay at the next start routes it
        if not self.overflow:
            log.warning("intake_overflow", detail="router queue full; stored events wait for room in order")
        self.overflow.append(msg)  # behind the others: events reach the router in the order they were stored
        self.overflowed += 1
        self._overflow_wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send the overflow to the router as room appears, oldest first; until cancelled."""
        task_status.started()
        while True:
            if not self.overflow:
                self._overflow_wakeup = trio.Event()
                await self._overflow_wakeup.wait()
                continue
            await self.router.send(self.overflow[0])
            self.overflow.popleft()  # only once sent: a cancelled send leaves it first in line
