"""An inventory_delta whose answer never came may be applied later (PHP goes on after its client hung up):
recovery must not take the missing marker for "not landed" while that can still happen."""

from __future__ import annotations

import json
from typing import Any

import trio

from cloverwoo_daemon.ports import WriteOutcomeUnknown
from tests.actors.fakes import to_the_end
from tests.actors.shard.test_actor import BID, REF, Rig, dirty, wait_until


def late_store(rig: Rig, *, land_after: float, may_still_land: bool = True) -> list[float]:
    """The first write times out at the client, and the store applies it ``land_after`` seconds later."""
    landed: list[float] = []
    real = rig.woo.apply_deltas
    first = True

    async def apply_deltas(changes: Any) -> Any:
        nonlocal first
        if not first:
            return await real(changes)
        first = False

        async def later() -> None:
            await trio.sleep(land_after)
            await real(changes)
            landed.append(trio.current_time())

        rig.nursery.start_soon(later)
        raise WriteOutcomeUnknown("POST /products/batch: ReadTimeout", may_still_land=may_still_land)

    rig.woo.apply_deltas = apply_deltas  # type: ignore[method-assign]
    return landed


async def test_a_delta_that_lands_after_its_timeout_is_counted_once() -> None:
    rig = Rig(woo_write_grace=1.0)
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    async with to_the_end() as (n, finish):
        rig.nursery = n  # type: ignore[attr-defined]
        landed = late_store(rig, land_after=0.3)
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=1))
        await wait_until(lambda: 1 in rig.settled, "the merge, once its late write showed its marker")
        await trio.sleep(0.2)
        finish()
    assert landed and rig.woo.stock[REF] == 18  # -2 once: the late write, never planned again
    assert rig.woo.writes == [(REF, -2)]
    (recovered,) = rig.store.events("recovered")  # settled by the marker the late write left
    assert json.loads(recovered.detail)["woo_marker"] is not None


async def test_without_the_grace_the_late_write_would_count_twice() -> None:
    """The hazard the grace closes, shown: no waiting, and the late write comes on top of its re-plan."""
    rig = Rig(woo_write_grace=0.0)
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    async with to_the_end() as (n, finish):
        rig.nursery = n  # type: ignore[attr-defined]
        late_store(rig, land_after=0.3)
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=1))
        await wait_until(lambda: len(rig.woo.writes) == 2, "the re-planned write and the late one")
        finish()
    assert rig.woo.stock[REF] == 16  # the sale twice


async def test_an_answer_that_ended_the_request_is_settled_by_the_marker_at_once() -> None:
    """A 5xx answer: the request is over, so a missing marker is "not landed" without waiting."""
    rig = Rig(woo_write_grace=60.0)
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    async with to_the_end() as (n, finish):
        rig.nursery = n  # type: ignore[attr-defined]
        late_store(rig, land_after=3600, may_still_land=False)  # (it never lands within the test)
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=1))
        await wait_until(lambda: 1 in rig.settled, "the merge, re-planned at once", timeout=10)
        finish()
    assert rig.woo.stock[REF] == 18
