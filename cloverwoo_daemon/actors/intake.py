"""Intake: where an authenticated delivery becomes durable, then work.

Rules:

- ``accept`` returns only after the events are committed to the store's inbox
  (group commit: concurrent deliveries share one fsync). Only then does the
  webhook server answer 200, so an acknowledged event survives any crash.
- Back-pressure instead of unbounded queues: when the router's queue is full
  the delivery is refused with ``Overloaded`` (503 + Retry-After) *before*
  anything is stored, and the sender retries later.
- A duplicate delivery (same dedup key) is acknowledged and not routed again.
"""

from __future__ import annotations

import time

import msgspec
import trio

from cloverwoo_daemon.actors.router import RouteEvent, RouterInput
from cloverwoo_daemon.messages import InboundEvent, InboxEvent
from cloverwoo_daemon.ports import Overloaded, StorePort

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

    def depth(self) -> int:
        return self.router.statistics().current_buffer_used

    async def accept(self, items: list[tuple[str, InboundEvent]]) -> int:
        """Store then route ``items``; returns how many were new (the rest were duplicates)."""
        if self.closed:
            raise Overloaded(retry_after=5)  # shutting down: the sender retries against the next incarnation
        if self.depth() + len(items) > self.capacity:
            raise Overloaded(retry_after=1)
        results = await self.store.accept_events([(key, _encoder.encode(ev)) for key, ev in items])
        mono = trio.current_time()
        now = time.time()
        new = 0
        for (event_id, is_new), (_, ev) in zip(results, items, strict=True):
            if is_new:
                new += 1
                self.accepted += 1
                await self.router.send(RouteEvent(InboxEvent(event_id, ev, now), mono))
            else:
                self.duplicates += 1
        return new
