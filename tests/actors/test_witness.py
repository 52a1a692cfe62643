"""The witness actor over fake ports: windows judged once due, flags stored and alerted, a proven WooCommerce
loss repaired through the binding's shard (both sides brought down), a failed feed retried."""

from __future__ import annotations

import json

import trio

from cloverwoo_daemon.actors.witness import LossWitness, WitnessDeps
from cloverwoo_daemon.core.model import Conflict
from cloverwoo_daemon.core.witness import CloverOrderSeen, StockNote, WooOrderSeen, WriteWindow
from cloverwoo_daemon.ports import RemoteError
from tests.actors.fakes import to_the_end
from tests.actors.shard.test_actor import BID, REF, Rig, wait_until

T = 1_800_000_000.0


def witness_for(rig: Rig) -> tuple[LossWitness, list[Conflict]]:
    seen: list[Conflict] = []
    w = LossWitness(WitnessDeps(store=rig.store, woo=rig.woo, clovers=dict(rig.clovers),  # type: ignore[arg-type]
                                table=rig.table, shards=[rig.inbox_send], on_conflict=seen.append))
    return w, seen


def clover_write(item: str, at: float = T) -> WriteWindow:
    return WriteWindow(binding_id=BID, sku="SKU-1", side="clover", item=item, started=at, ended=at + 0.1,
                       delta=-1, location="downtown", read=10)


def woo_write(at: float = T, returned: int = 8, delta: int = -2) -> WriteWindow:
    return WriteWindow(binding_id=BID, sku="SKU-1", side="woo", item=str(REF.product_id), started=at,
                       ended=at + 0.1, delta=delta, returned=returned)


async def test_a_pos_sale_inside_a_clover_write_is_flagged_once_due() -> None:
    rig = Rig()
    b = rig.add(woo=10, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})
    item = b.clover_items["downtown"]
    witness, seen = witness_for(rig)
    witness.record(clover_write(item))
    witness.record(clover_write(item, at=T + 50))  # not due yet at T + 3
    rig.clovers["downtown"].order_lines_seen = [CloverOrderSeen("O1", int((T + 0.05) * 1000), {item: 2.0})]
    await witness.judge_due(T + 3)
    (conflict,) = rig.store.conflicts
    assert conflict.kind == "possible_lost_decrement" and [c.kind for c in seen] == ["possible_lost_decrement"]
    detail = json.loads(conflict.detail)
    assert detail["units"] == 2 and detail["events"][0]["orders"] == ["O1"] and detail["side"] == "clover"
    assert [r.event for r in rig.store.log] == ["possible_lost_decrement"]
    assert witness.pending() == 1 and witness.summary()["flagged"] == 1


async def test_no_order_near_the_write_flags_nothing() -> None:
    rig = Rig()
    b = rig.add(woo=10, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})
    item = b.clover_items["downtown"]
    witness, seen = witness_for(rig)
    witness.record(clover_write(item))
    rig.clovers["downtown"].order_lines_seen = [CloverOrderSeen("O1", int((T - 5) * 1000), {item: 1.0})]
    await witness.judge_due(T + 3)
    assert rig.store.conflicts == [] and seen == [] and witness.pending() == 0


async def test_a_failed_feed_keeps_the_windows_for_the_next_round() -> None:
    rig = Rig()
    b = rig.add(woo=10, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})
    witness, _ = witness_for(rig)
    witness.record(clover_write(b.clover_items["downtown"]))
    rig.clovers["downtown"].order_error = RemoteError("503")
    await witness.judge_due(T + 3)
    assert witness.pending() == 1 and witness.stats.feed_errors == 1
    rig.clovers["downtown"].order_error = None
    await witness.judge_due(T + 4)
    assert witness.pending() == 0 and witness.stats.judged == 1


async def test_a_proven_erased_checkout_is_repaired_on_both_sides() -> None:
    """Our -2 returned 8 (loaded 10); a checkout of 1 went 10 -> 9 inside it and was erased: both sides show 8
    where 7 is right. The shard takes it off both."""
    rig = Rig()
    rig.add(woo=8, clover={"downtown": 8}, base_woo=8, base_clover={"downtown": 8})
    witness, seen = witness_for(rig)
    witness.record(woo_write())
    rig.woo.orders_seen = [WooOrderSeen(501, int(T), int(T), {REF.product_id: 1}, names={REF.product_id: "Mug"})]
    rig.woo.notes = {501: [StockNote("Mug", 10, 9)]}
    async with to_the_end() as (n, finish):
        await rig.start(n)
        await witness.judge_due(T + 10)
        await wait_until(lambda: rig.woo.stock[REF] == 7 and rig.clovers["downtown"].stock[f"I-{BID}-downtown"] == 7,
                         "the erased checkout taken off both sides")
        finish()
    assert seen == [] and rig.store.conflicts == [] and witness.stats.repaired == 1
    (repaired,) = rig.store.events("erased_sale_repaired")
    assert json.loads(repaired.detail)["units"] == 1
    assert rig.store.bindings[BID].base_woo == 7


async def test_an_unprovable_woo_witness_is_flagged_and_nothing_is_written() -> None:
    rig = Rig()
    rig.add(woo=8, clover={"downtown": 8}, base_woo=8, base_clover={"downtown": 8})
    witness, seen = witness_for(rig)
    witness.record(woo_write())
    rig.woo.orders_seen = [WooOrderSeen(501, int(T), int(T), {REF.product_id: 1}, names={REF.product_id: "Mug"}),
                           WooOrderSeen(502, int(T), int(T), {REF.product_id: 1}, names={REF.product_id: "Mug"})]
    await witness.judge_due(T + 10)
    (conflict,) = rig.store.conflicts
    assert conflict.kind == "possible_lost_decrement" and json.loads(conflict.detail)["units"] == 2
    assert rig.inbox_recv.statistics().current_buffer_used == 0  # no repair sent
    assert rig.woo.writes == [] and len(seen) == 1


async def test_a_repair_of_a_binding_never_synced_is_flagged_instead() -> None:
    rig = Rig()
    rig.add(woo=8, clover={"downtown": 8})  # no bases
    witness, _ = witness_for(rig)
    witness.record(woo_write())
    rig.woo.orders_seen = [WooOrderSeen(501, int(T), int(T), {REF.product_id: 1}, names={REF.product_id: "Mug"})]
    rig.woo.notes = {501: [StockNote("Mug", 10, 9)]}
    async with to_the_end() as (n, finish):
        await rig.start(n)
        await witness.judge_due(T + 10)
        await wait_until(lambda: bool(rig.store.conflicts), "the unrepairable loss flagged")
        await trio.sleep(0.05)
        finish()
    (conflict,) = rig.store.conflicts
    assert "never synced" in json.loads(conflict.detail)["not_repaired"]
