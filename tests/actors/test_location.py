"""The location actor over a fake Clover: an order it cannot look up never stops its poll, nor loops for ever."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.location import LocationActor
from cloverwoo_daemon.actors.router import LookupOrder, Resolved, RouterInput
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.ports import RemoteError
from tests.actors.fakes import FakeClover, FakeStore, refused, to_the_end
from tests.actors.shard.test_actor import wait_until


def actor(clover: FakeClover, poll_every: float | None) -> tuple[LocationActor, Any, Any, Any]:
    router_send, router_recv = trio.open_memory_channel[RouterInput](100)
    lookups_send, lookups_recv = trio.open_memory_channel[LookupOrder](100)
    a = LocationActor("downtown", clover, FakeStore(), BindingTable(), router_send, poll_every,  # type: ignore[arg-type]
                      retry=Backoff(base=1.0, cap=5.0, max_attempts=1_000_000))
    return a, router_recv, lookups_send, lookups_recv


async def answers(recv: trio.MemoryReceiveChannel[RouterInput], into: list[Resolved]) -> None:
    async for msg in recv:
        if isinstance(msg, Resolved):
            into.append(msg)


async def test_an_order_clover_refuses_is_answered_and_the_poll_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 4xx on one order's lookup was retried for ever inside the poll loop: that location stopped polling."""
    clover = FakeClover()
    clover.order_error = refused("403 forbidden: order belongs to another merchant")
    a, router_recv, lookups_send, lookups_recv = actor(clover, poll_every=2.0)
    got: list[Resolved] = []
    async with to_the_end() as (n, finish):
        n.start_soon(answers, router_recv, got)
        await n.start(a.run, lookups_recv)
        await lookups_send.send(LookupOrder(41, "ORDER-X", 0.0))
        await wait_until(lambda: got, "the refused order answered", timeout=120)
        assert got[0].event_id == 41 and got[0].clover == {"downtown": set()}
        assert clover.order_calls == 1  # refused for good: asked once
        polls = clover.feed_calls
        await trio.sleep(30.0)
        assert clover.feed_calls >= polls + 10  # still polling every 2 s
        finish()


async def test_an_order_that_keeps_failing_is_given_up_while_the_location_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clover = FakeClover()
    clover.order_error = RemoteError("clover downtown: GET orders/{id}: unexpected payload")
    a, router_recv, lookups_send, lookups_recv = actor(clover, poll_every=None)
    got: list[Resolved] = []
    async with to_the_end() as (n, finish):
        n.start_soon(answers, router_recv, got)
        await n.start(a.run, lookups_recv)
        await lookups_send.send(LookupOrder(42, "ORDER-Y", 0.0))
        await wait_until(lambda: got, "the failing order given up and answered", timeout=600)
        assert got[0].event_id == 42 and got[0].clover == {"downtown": set()}
        assert clover.order_calls == a.lookup_attempts
        finish()


async def test_a_lookup_in_flight_survives_a_restart_of_the_actor(autojump_clock: trio.testing.MockClock) -> None:
    clover = FakeClover()
    clover.order_error = RemoteError("503")
    a, router_recv, lookups_send, lookups_recv = actor(clover, poll_every=None)
    got: list[Resolved] = []
    async with to_the_end() as (n, finish):
        n.start_soon(answers, router_recv, got)
        scope = trio.CancelScope()

        async def incarnation(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await a.run(lookups_recv, task_status=task_status)

        await n.start(incarnation)
        await lookups_send.send(LookupOrder(43, "ORDER-Z", 0.0))
        await wait_until(lambda: clover.order_calls >= 1, "the lookup in flight", timeout=60)
        scope.cancel()  # the actor crashes with the lookup in flight
        clover.order_error = None
        clover.orders["ORDER-Z"] = {"ITEM-1"}
        await n.start(a.run, lookups_recv)
        await wait_until(lambda: got, "the lookup answered by the next incarnation", timeout=60)
        assert got[0].event_id == 43 and got[0].clover == {"downtown": {"ITEM-1"}}
        finish()
