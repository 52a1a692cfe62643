"""Recovery of an interrupted merge over fake ports: what a fresh read proves, and what it cannot."""

from __future__ import annotations

import json

import msgspec
import pytest

from cloverwoo_daemon.actors.shard.recovery import recover
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding, Conflict
from tests.actors.shard.test_actor import BID, Rig


def interrupted(rig: Rig, *, woo: int = 9, clover: int = 10, **intent_kw: object) -> tuple[Binding,
                                                                                             core_merge.WriteIntent]:
    """A binding agreed at 10/10 whose merge of an online sale (Woo 9) was interrupted; the intent as given."""
    b = rig.add(woo=woo, clover={"downtown": clover}, base_woo=10, base_clover={"downtown": 10})
    plan = core_merge.plan_merge(b, core_merge.Reads(woo=9, clover={"downtown": 10}), rig.deps.merge_config)
    assert plan.clover_deltas == {"downtown": -1} and plan.woo_delta == 0
    intent = msgspec.structs.replace(core_merge.intent_for(b, plan), **intent_kw)
    rig.intents[BID] = rig.store.intents[BID] = msgspec.json.encode(intent)
    return core_merge.after_woo_step(b, plan) if intent.woo_done else b, intent


def outcome(rig: Rig) -> dict[str, str]:
    (row,) = rig.store.events("recovered")
    return json.loads(row.detail)["clover"]


@pytest.mark.parametrize(
    ("now", "expected", "bases"),
    [
        (9, "landed", (9, 9)),  # the fresh read is the recorded target
        (10, "not landed", (10, 10)),  # the fresh read is what the write's own read saw
    ],
)
async def test_a_write_in_doubt_is_settled_by_a_fresh_read(now: int, expected: str, bases: tuple[int, int]) -> None:
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",), clover_targets={"downtown": 9})
    rig.clovers["downtown"].stock[f"I-{BID}-downtown"] = now
    got = await recover(rig.deps, b, intent, None, "restart")
    assert outcome(rig) == {"downtown": expected}
    assert (got.base_woo, got.base_clover["downtown"]) == bases and got.version == intent.version
    assert rig.store.bindings[BID] == got == rig.table.get(BID)  # memory follows the commit
    assert BID not in rig.intents and BID not in rig.store.intents
    assert rig.store.conflicts == []


async def test_a_pos_change_in_the_window_is_flagged_not_guessed() -> None:
    rig = Rig()
    seen: list[Conflict] = []
    rig.deps.on_conflict = seen.append
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",), clover_targets={"downtown": 9})
    rig.clovers["downtown"].stock[f"I-{BID}-downtown"] = 7
    got = await recover(rig.deps, b, intent, None, "restart")
    assert outcome(rig) == {"downtown": "in doubt: assumed not landed"}
    assert got.base_clover["downtown"] == 10
    assert [c.kind for c in rig.store.conflicts] == ["ambiguous_write"] and len(seen) == 1


async def test_a_target_never_recorded_is_computed_from_the_merges_read() -> None:
    """read_then_write commits the target concurrently with the POST: a kill can leave it unrecorded."""
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",))
    rig.clovers["downtown"].stock[f"I-{BID}-downtown"] = 9
    got = await recover(rig.deps, b, intent, None, "restart")
    assert outcome(rig) == {"downtown": "landed"} and got.base_clover["downtown"] == 9


async def test_a_write_never_started_is_not_in_doubt_and_reads_nothing() -> None:
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True)
    got = await recover(rig.deps, b, intent, None, "restart")
    assert outcome(rig) == {"downtown": "not written"} and rig.clovers["downtown"].reads == 0
    assert got.base_clover["downtown"] == 10 and rig.store.conflicts == []


async def test_a_deleted_clover_item_is_settled_as_gone() -> None:
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",), clover_targets={"downtown": 9})
    del rig.clovers["downtown"].stock[f"I-{BID}-downtown"]
    got = await recover(rig.deps, b, intent, None, "restart")
    assert outcome(rig) == {"downtown": "gone: Clover item deleted"} and rig.store.conflicts == []
    assert got.version == intent.version


async def test_the_woo_marker_settles_the_woo_write() -> None:
    """A Woo delta that did not land (no marker) means no Clover write was sent: nothing is in doubt."""
    rig = Rig()
    b = rig.add(woo=12, clover={"downtown": 8}, base_woo=10, base_clover={"downtown": 10})
    plan = core_merge.plan_merge(b, core_merge.Reads(woo=10, clover={"downtown": 8}), rig.deps.merge_config)
    intent = core_merge.intent_for(b, plan)
    assert plan.woo_delta == -2
    got = await recover(rig.deps, b, intent, None, "restart")  # marker absent: it did not land
    assert rig.clovers["downtown"].reads == 0 and got.base_woo == 10
    rig2 = Rig()
    b2 = rig2.add(woo=8, clover={"downtown": 8}, base_woo=10, base_clover={"downtown": 10})
    got2 = await recover(rig2.deps, b2, intent, intent.version, "restart")  # marker equal: it landed
    assert (got2.base_woo, got2.base_clover["downtown"]) == (8, 8)


async def test_a_stale_intent_changes_nothing_but_is_cleared() -> None:
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",), clover_targets={"downtown": 9})
    newer = msgspec.structs.replace(b, version=intent.version)
    got = await recover(rig.deps, newer, intent, None, "restart")
    assert got == newer and rig.clovers["downtown"].reads == 0 and BID not in rig.intents


async def test_memory_is_left_alone_when_the_commit_fails() -> None:
    rig = Rig()
    b, intent = interrupted(rig, woo_done=True, clover_started=("downtown",), clover_targets={"downtown": 9})
    rig.clovers["downtown"].stock[f"I-{BID}-downtown"] = 9
    before = rig.table.get(BID)
    rig.store.fail_commits = RuntimeError("disk I/O error")
    with pytest.raises(RuntimeError):
        await recover(rig.deps, b, intent, None, "restart")
    assert rig.table.get(BID) == before and BID in rig.intents  # the next attempt recovers again
