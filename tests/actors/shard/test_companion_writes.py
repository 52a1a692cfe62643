"""WooCommerce writes through the WordPress companion, over fake ports: used when it is there, exactly once
by write id across lost answers and restarts, and a fall back to ``inventory_delta`` when it goes away."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from cloverwoo_daemon.actors.companion import CompanionWatch
from cloverwoo_daemon.actors.shard.recovery import recover
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import CompanionInfo
from tests.actors.fakes import to_the_end
from tests.actors.shard.test_actor import BID, REF, Rig, dirty, wait_until

INFO = CompanionInfo(version="1.0.0", woocommerce="11.0.1", sync_webhooks=False, write_ids_kept_days=30,
                     transactional=True)


def companion_rig(**kw: Any) -> tuple[Rig, CompanionWatch]:
    rig = Rig(**kw)
    watch = CompanionWatch(rig.woo)
    rig.deps.companion = watch.current
    rig.deps.companion_gone = watch.gone
    rig.woo.companion_info = INFO
    return rig, watch


async def test_a_clover_sale_reaches_woo_through_the_companion_not_inventory_delta() -> None:
    rig, watch = companion_rig()
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    await watch.check()
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=1))
        await wait_until(lambda: 1 in rig.settled, "the merge of the POS sale")
        finish()
    assert rig.woo.stock[REF] == 18
    (change,) = rig.woo.changes
    assert change.delta == -2 and change.ref == REF
    assert REF not in rig.woo.markers  # no inventory_delta, so no marker
    assert change.write_id.endswith(".2") and len(change.write_id) > 30  # random, then the version
    assert BID not in rig.store.intents and rig.store.bindings[BID].base_woo == 18


async def test_a_lost_answer_is_resent_with_the_same_write_id_and_applied_once() -> None:
    """A proxy's 503 after PHP ran: the change landed; resending its write id applies nothing twice."""
    rig, watch = companion_rig()
    rig.add(woo=20, clover={"downtown": 17}, base_woo=20, base_clover={"downtown": 20})
    await watch.check()
    rig.woo.lose_answers = 1
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=2))
        await wait_until(lambda: 2 in rig.settled, "the merge, retried after the lost answer")
        finish()
    assert rig.woo.stock[REF] == 17  # -3 once, not -6
    assert len({c.write_id for c in rig.woo.changes}) == 1 and len(rig.woo.changes) == 2  # sent twice, one id
    assert rig.woo.writes == [(REF, -3)]
    (recovered,) = rig.store.events("recovered")
    assert json.loads(recovered.detail)["woocommerce"] == "landed before"
    assert rig.store.bindings[BID].base_woo == 17 and rig.store.conflicts == []


async def test_a_companion_that_went_away_makes_the_write_fall_back_to_inventory_delta() -> None:
    rig, watch = companion_rig()
    rig.add(woo=20, clover={"downtown": 19}, base_woo=20, base_clover={"downtown": 20})
    await watch.check()
    assert watch.available
    rig.woo.companion_info = None  # the mu-plugin was deleted
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=3))
        await wait_until(lambda: 3 in rig.settled, "the merge, retried by inventory_delta")
        finish()
    assert not watch.available and watch.fallbacks == 1
    assert rig.woo.stock[REF] == 19 and rig.woo.writes == [(REF, -1)]
    assert isinstance(rig.woo.markers[REF], str) and rig.woo.markers[REF].endswith(".2")
    assert rig.store.conflicts == [] and not rig.store.events("recovered")  # nothing was in doubt
    assert "companion is gone" in rig.store.events("merge_failed")[0].error


def _companion_intent(rig: Rig, *, created_at: float) -> tuple[Any, core_merge.WriteIntent]:
    """A binding at 20/20 whose merge of a POS sale (Clover 18) was interrupted before its companion write
    was known to land."""
    b = rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    plan = core_merge.plan_merge(b, core_merge.Reads(woo=20, clover={"downtown": 18}), rig.deps.merge_config)
    intent = core_merge.intent_for(b, plan, write_id="f00d.2", via="companion", now=created_at)
    rig.intents[BID] = rig.store.intents[BID] = msgspec.json.encode(intent)
    return b, intent


async def test_recovery_settles_a_companion_write_by_sending_it_again() -> None:
    rig, watch = companion_rig()
    await watch.check()
    b, intent = _companion_intent(rig, created_at=time.time())
    got = await recover(rig.deps, b, intent, None, "restart")  # it never landed: the resend applies it now
    assert rig.woo.stock[REF] == 18 and got.base_woo == 18 and got.version == intent.version
    (row,) = rig.store.events("recovered")
    assert json.loads(row.detail)["woocommerce"] == "landed now (sent again by write id)"
    assert rig.store.conflicts == []


async def test_recovery_never_resends_past_the_days_write_ids_are_kept() -> None:
    rig, watch = companion_rig()
    await watch.check()
    b, intent = _companion_intent(rig, created_at=time.time() - 30 * 86400)
    got = await recover(rig.deps, b, intent, None, "restart")
    assert rig.woo.changes == [] and rig.woo.stock[REF] == 20  # not resent
    assert got.base_woo == 20  # assumed not landed: the change stays pending for the next merge
    (conflict,) = rig.store.conflicts
    assert conflict.kind == "ambiguous_write" and "not resent" in json.loads(conflict.detail)["woocommerce"]


async def test_recovery_flags_a_companion_write_when_the_companion_is_gone() -> None:
    rig, watch = companion_rig()
    await watch.check()
    rig.woo.companion_info = None
    b, intent = _companion_intent(rig, created_at=time.time())
    got = await recover(rig.deps, b, intent, None, "restart")
    assert got.base_woo == 20 and rig.woo.stock[REF] == 20
    (conflict,) = rig.store.conflicts
    assert conflict.kind == "ambiguous_write" and "companion is gone" in json.loads(conflict.detail)["woocommerce"]


async def test_a_marker_another_binding_left_is_not_taken_for_this_write() -> None:
    """A duplicated product carries the marker of the product it was copied from: version 2 there too."""
    rig = Rig()
    b = rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    plan = core_merge.plan_merge(b, core_merge.Reads(woo=20, clover={"downtown": 18}), rig.deps.merge_config)
    intent = core_merge.intent_for(b, plan, write_id="aaaa.2")
    got = await recover(rig.deps, b, intent, "bbbb.2", "restart")  # same version, another write
    assert got.base_woo == 20  # not landed: the delta stays pending
    got = await recover(Rig().deps, b, intent, "2", "restart")  # an older daemon's bare version marker
    assert got.base_woo == 20


async def test_a_push_never_writes_clover_a_figure_from_the_jobs_list_read() -> None:
    """The job listed Clover at 7; a POS sale made it 6 before the recount's write: both sides end at 19."""
    from cloverwoo_daemon.messages import Initialise

    rig = Rig()
    rig.add(woo=20, clover={"downtown": 6})  # never synced; the sale after the list read is already in
    async with to_the_end() as (n, finish):
        await rig.start(n)
        await rig.inbox_send.send(Initialise(BID, 20, {"downtown": 7}, "woo", "job-push", version=1))
        await wait_until(lambda: rig.woo.stock[REF] == 19 and BID not in rig.intents,
                         "the POS sale carried to Woo after the recount")
        finish()
    assert rig.clovers["downtown"].stock[f"I-{BID}-downtown"] == 19  # 6 + 13, not 7 + 13
    assert rig.store.bindings[BID].base_woo == 19
