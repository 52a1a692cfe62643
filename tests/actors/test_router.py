"""The router over fake shards and a fake store: an event is settled once every binding it names merged,
whatever interrupted the router in between, and no cycle of bounded channels can lock it."""

from __future__ import annotations

import trio

from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.actors.location import LocationActor
from cloverwoo_daemon.actors.router import LookupOrder, Resolved, RouteEvent, Router, RouterDeps, RouterInput
from cloverwoo_daemon.core.model import Binding, WooRef
from cloverwoo_daemon.messages import CloverChange, EventsSettled, InboxEvent, MarkDirty, WooChange
from tests.actors.fakes import FakeClover, FakeStore, to_the_end
from tests.actors.shard.test_actor import wait_until


def two_bindings_on_two_shards() -> list[Binding]:
    """Two bindings whose shards differ, the first (in id order) on shard 0."""
    for a in range(1, 50):
        for b in range(a + 1, 50):
            ids = sorted([f"woo:{a}:0", f"woo:{b}:0"])
            if [shard_of(i, 2) for i in ids] == [0, 1]:
                return [Binding(binding_id=i, sku=f"S{i}", name=i, woo=WooRef(int(i.split(":")[1])),
                                clover_items={"downtown": f"I{i}"}) for i in ids]
    raise AssertionError("no two ids on two shards")


async def test_an_event_interrupted_mid_dispatch_is_still_settled() -> None:
    """A router crash between two MarkDirty sends left the event counted but never settled (a leak)."""
    bindings = two_bindings_on_two_shards()
    table = BindingTable(bindings)
    store = FakeStore()
    first_send, first_recv = trio.open_memory_channel[MarkDirty](10)
    second_send, second_recv = trio.open_memory_channel[MarkDirty](0)  # its send waits for a reader
    inbox_send, inbox_recv = trio.open_memory_channel[RouterInput](10)
    settled_send, settled_recv = trio.open_memory_channel[EventsSettled](10)
    router = Router(RouterDeps(store=store, table=table, shards=[first_send, second_send],  # type: ignore[arg-type]
                               location_of_merchant={}, lookups={}))

    async def shard(recv: trio.MemoryReceiveChannel[MarkDirty]) -> None:
        async for cmd in recv:  # every merge succeeds at once
            for bid in cmd.binding_ids:
                await settled_send.send(EventsSettled(cmd.event_ids, bid))

    order = WooChange(topic="order.created", resource_id=500, refs=tuple(b.woo for b in bindings))
    async with to_the_end() as (n, finish):
        crashed = trio.CancelScope()

        async def first_incarnation(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with crashed:
                await router.run(inbox_recv, settled_recv, task_status=task_status)

        await n.start(first_incarnation)
        n.start_soon(shard, first_recv)
        await inbox_send.send(RouteEvent(InboxEvent(1, order, 0.0), 0.0))
        await wait_until(lambda: second_send.statistics().tasks_waiting_send == 1, "the second send blocked")
        crashed.cancel()  # the router goes down between its two sends
        await trio.sleep(0.02)
        n.start_soon(shard, second_recv)
        await n.start(router.run, inbox_recv, settled_recv)
        await wait_until(lambda: store.settled == [1], "the event settled once both bindings merged")
        assert router.statistics()["events_in_flight"] == 0
        finish()


async def test_lookups_cannot_deadlock_the_router_under_backlog() -> None:
    """router -> lookups -> router was a cycle of bounded channels; answers now have a channel of their own.

    An inactive location (single mode) answers each ``O:`` lookup at once; with the router's inbox full of
    events and the lookups channel full, each side used to wait on the other for ever.
    """
    table = BindingTable()
    store = FakeStore()
    inbox_send, inbox_recv = trio.open_memory_channel[RouterInput](2)
    lookups_send, lookups_recv = trio.open_memory_channel[LookupOrder](2)
    answers_send, answers_recv = trio.open_memory_channel[Resolved](2)
    settled_send, settled_recv = trio.open_memory_channel[EventsSettled](2)
    shard_send, shard_recv = trio.open_memory_channel[MarkDirty](100)
    router = Router(RouterDeps(store=store, table=table, shards=[shard_send],  # type: ignore[arg-type]
                               location_of_merchant={"M-airport": "airport"}, lookups={"airport": lookups_send}))
    location = LocationActor("airport", FakeClover("airport"), store, table, inbox_send, None,  # type: ignore[arg-type]
                             active=lambda: False, answers=answers_send)
    events = 200
    async with to_the_end() as (n, finish):
        await n.start(router.run, inbox_recv, settled_recv, answers_recv)
        await n.start(location.run, lookups_recv)
        with trio.fail_after(20):
            for i in range(1, events + 1):
                change = CloverChange(merchant_id="M-airport", kind="O", object_id=f"O{i}", type="CREATE", ts=0)
                await inbox_send.send(RouteEvent(InboxEvent(i, change, 0.0), 0.0))
            await wait_until(lambda: len(store.settled) == events, "every event settled", timeout=20)
        assert sorted(store.settled) == list(range(1, events + 1))
        finish()
