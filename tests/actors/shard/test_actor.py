"""The shard actor over fake ports: a failure stays with its binding, and an interruption loses nothing.

Each test drives ``ShardActor`` through its inbox, exactly as the router and
the jobs do, and interrupts it the way a crash or a restart would (its
incarnation cancelled, then run again on the same inbox).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.location import Reachability
from cloverwoo_daemon.actors.shard import ShardActor, ShardDeps
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, WooRef
from cloverwoo_daemon.messages import EventsSettled, Initialise, MarkDirty, ShardCommand
from tests.actors.fakes import FakeClover, FakeStore, FakeWoo, to_the_end

BID = "woo:1:0"
REF = WooRef(1)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Rig:
    def __init__(self, locations: tuple[str, ...] = ("downtown",), **deps: Any) -> None:
        self.store = FakeStore()
        self.woo = FakeWoo()
        self.clovers = {loc: FakeClover(loc) for loc in locations}
        self.table = BindingTable()
        self.intents: dict[str, bytes] = {}
        self.settled_send, self.settled_recv = trio.open_memory_channel[EventsSettled](1000)
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[ShardCommand](1000)
        self.job_items: list[tuple[Any, ...]] = []
        self.deps = ShardDeps(
            store=self.store, woo=self.woo, clovers=dict(self.clovers), table=self.table,  # type: ignore[arg-type]
            merge_config=core_merge.MergeConfig(locations=locations, primary=locations[0]),
            settled=self.settled_send, intents=self.intents,
            on_job_item=lambda *a: self.job_items.append(a),
            # the fakes never apply a write after its caller gave up on it: no grace to wait (test_late_writes.py
            # sets one)
            **{"retry": Backoff(base=0.01, cap=0.05, max_attempts=1_000_000), "woo_write_grace": 0.0,
               "woo_crash_grace": 0.0, **deps},
        )
        self.shard = ShardActor(0, self.deps)
        self.settled: set[int] = set()

    def add(self, *, woo: int, clover: dict[str, int | None], base_woo: int | None = None,
            base_clover: dict[str, int | None] | None = None, version: int = 1, bid: str = BID,
            ref: WooRef = REF, sku: str = "SKU-1") -> Binding:
        b = Binding(binding_id=bid, sku=sku, name=f"Product {sku}", woo=ref,
                    clover_items={loc: f"I-{bid}-{loc}" for loc in clover},
                    base_woo=base_woo, base_clover=dict(base_clover or {}), version=version)
        self.table.put(b)
        self.store.bindings[bid] = b
        self.woo.stock[ref] = woo
        for loc, q in clover.items():
            self.clovers[loc].stock[b.clover_items[loc]] = q
        return b

    async def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        """One incarnation of the shard, in a scope the test can cancel (a crash, a restart)."""
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await self.shard.run(self.inbox_recv, task_status=task_status)

        await nursery.start(run)
        return scope

    async def collect_settled(self) -> None:
        async for msg in self.settled_recv:
            self.settled.update(msg.event_ids)

    def job_results(self) -> dict[str, str]:
        return {a[1]: a[2] for a in self.job_items}


def dirty(*bids: str, event: int | None = None, trigger: str = "webhook:clover",
          clover_at: tuple[str, ...] | None = None) -> MarkDirty:
    return MarkDirty(tuple(bids), trigger, (event,) if event is not None else (), 0.0, None, clover_at)


async def test_a_merge_that_hits_a_bug_fails_alone_and_is_retried() -> None:
    """A decode error or a bug in one merge must not crash the shard and cancel the other merges."""
    rig = Rig()
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    rig.add(woo=20, clover={"downtown": 17}, base_woo=20, base_clover={"downtown": 20}, bid="woo:2:0",
            ref=WooRef(2), sku="SKU-2")
    rig.woo.read_errors = [ValueError("unexpected payload"), msgspec.DecodeError("bad JSON")]
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=1))
        await rig.inbox_send.send(dirty("woo:2:0", event=2))
        await wait_until(lambda: rig.settled == {1, 2}, "both events settled after the failed attempts")
        assert rig.woo.stock == {REF: 18, WooRef(2): 17}
        assert rig.shard.statistics()["failed_merges"] == 2
        failed = rig.store.events("merge_failed")
        assert len(failed) == 2 and {"ValueError" in r.error or "DecodeError" in r.error for r in failed} == {True}
        finish()


async def test_a_store_error_fails_the_merge_not_the_shard() -> None:
    rig = Rig()
    rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20})
    rig.store.fail_commits = RuntimeError("database disk image is malformed")  # not a remote failure
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=7))
        await wait_until(lambda: rig.shard.statistics()["failed_merges"] >= 2, "the merge failing, retried")
        assert 7 not in rig.settled  # nothing settled by a merge that did not commit
        rig.store.fail_commits = None
        await wait_until(lambda: 7 in rig.settled, "the retry to succeed once the store works again")
        assert rig.store.bindings[BID].base_woo == 18
        finish()


async def test_a_restart_requeues_an_interrupted_recount_with_its_job_part() -> None:
    """The job must hear about a binding whose recount was interrupted by a shard restart."""
    rig = Rig()
    rig.add(woo=20, clover={"downtown": 7})  # never synced: an import recounts Woo to Clover's 7
    gate = trio.Event()
    held = trio.Event()

    async def hold(**_: Any) -> None:
        held.set()
        await gate.wait()

    rig.woo.hold = hold
    async with to_the_end() as (n, finish):
        scope = await rig.start(n)
        await rig.inbox_send.send(Initialise(BID, 20, {"downtown": 7}, "clover", "job-1", version=1))
        await wait_until(held.is_set, "the recount's Woo write in flight")
        scope.cancel()  # the shard goes down mid-write (its incarnation ends)
        await trio.sleep(0.05)
        rig.woo.hold = None
        gate.set()
        await rig.start(n)
        await wait_until(lambda: BID in rig.job_results(), "the job told what became of the binding")
        assert rig.job_results()[BID] in ("done", "changed")
        assert rig.woo.stock[REF] == 7 and rig.clovers["downtown"].stock[f"I-{BID}-downtown"] == 7
        finish()


async def test_a_recount_without_a_truth_is_refused_not_crashing() -> None:
    rig = Rig()
    rig.add(woo=20, clover={"downtown": 7})
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(Initialise(BID, 20, {"downtown": 7}, "", "job-2", version=1))
        await wait_until(lambda: BID in rig.job_results(), "the job told the recount was refused")
        assert rig.job_results()[BID] == "failed"
        assert rig.woo.stock[REF] == 20  # nothing written from a recount that had no truth
        rig.add(woo=20, clover={"downtown": 18}, base_woo=20, base_clover={"downtown": 20}, bid="woo:2:0",
                ref=WooRef(2), sku="SKU-2")
        await rig.inbox_send.send(dirty("woo:2:0", event=3))
        await wait_until(lambda: 3 in rig.settled, "the shard still merging afterwards")
        finish()


async def test_a_location_going_down_mid_read_keeps_the_others_and_catches_up() -> None:
    """The read of a store that goes down is abandoned; the others are merged; it is caught up on return."""
    reach = Reachability(down_after=0.0, min_failures=1)
    rig = Rig(locations=("downtown", "airport"), reach=reach)
    rig.add(woo=20, clover={"downtown": 8, "airport": 10}, base_woo=20, base_clover={"downtown": 10, "airport": 10})
    reading = trio.Event()
    back = trio.Event()

    async def dead(item_id: str) -> None:
        if "airport" in item_id and not back.is_set():
            reading.set()
            await trio.sleep_forever()

    rig.clovers["airport"].hold_read = dead
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=4, trigger="reconcile"))
        await wait_until(reading.is_set, "the airport read in flight")
        reach.attempt("airport", False, "connect timeout")  # the airport goes down meanwhile
        await wait_until(lambda: 4 in rig.settled, "the merge to finish with the store that answered")
        assert rig.woo.stock[REF] == 18  # the downtown sale reached Woo
        assert rig.shard.stale_ids() == {BID}
        rig.clovers["airport"].stock[f"I-{BID}-airport"] = 9  # a sale there while it was down
        back.set()
        reach.attempt("airport", True)
        await wait_until(lambda: rig.woo.stock[REF] == 17, "the catch-up merge once the airport answers")
        assert rig.shard.stale_ids() == set()
        finish()


async def test_a_step_that_landed_while_its_merge_was_cancelled_is_not_counted_twice() -> None:
    """Memory must follow the store: a commit that landed counts, even if its caller was cancelled."""
    rig = Rig()
    item = f"I-{BID}-downtown"
    rig.add(woo=9, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})  # an online sale
    landed = trio.Event()

    async def after_land(*, binding: Binding, intent: Any) -> None:
        if intent == "clear" and not landed.is_set():
            landed.set()
            await trio.sleep_forever()  # the commit is on disk; its caller is cancelled before it hears

    rig.store.after_land = after_land
    async with to_the_end() as (n, finish):
        scope = await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=5, trigger="webhook:woo", clover_at=()))
        await wait_until(landed.is_set, "the merge's final commit on disk")
        scope.cancel()
        await trio.sleep(0.05)
        assert rig.clovers["downtown"].stock[item] == 9  # the online sale reached Clover
        disk = rig.store.bindings[BID]
        assert (disk.base_woo, disk.base_clover, disk.version) == (9, {"downtown": 9}, 2)
        assert rig.table.get(BID) == disk and BID not in rig.intents  # memory follows the disk
        rig.store.after_land = None
        rig.clovers["downtown"].stock[item] = 8  # then a POS sale
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=6))
        await wait_until(lambda: 6 in rig.settled, "the next merge")
        assert (rig.woo.stock[REF], rig.clovers["downtown"].stock[item]) == (8, 8)  # two sales, each once
        assert not [c for c in rig.store.conflicts if c.kind == "ambiguous_write"]
        finish()


@pytest.mark.parametrize("how", ["no stock record", "read failed"])
async def test_a_clover_write_that_never_went_out_is_not_in_doubt(how: str) -> None:
    """read_then_write returning (or failing) before its write: recovery must not raise a false alarm."""
    rig = Rig(retry=Backoff(base=1.0, cap=1.0, max_attempts=1_000_000))  # the retry waits for the test
    item = f"I-{BID}-downtown"
    rig.add(woo=9, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})
    if how == "read failed":
        rig.clovers["downtown"].read_error = OSError("connection reset")
    else:
        rig.clovers["downtown"].no_record_at_write = True
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=8, trigger="webhook:woo", clover_at=()))
        await wait_until(lambda: rig.shard.statistics()["failed_merges"] >= 1, "the Clover step failing")
        # the intent on disk says the write never started
        saved = msgspec.json.decode(rig.store.intents[BID], type=core_merge.WriteIntent)
        assert "downtown" not in saved.clover_started
        # the merchant fixes the item meanwhile (tracks stock, counts 15): not the target, not the old read
        rig.clovers["downtown"].read_error = None
        rig.clovers["downtown"].no_record_at_write = False
        rig.clovers["downtown"].stock[item] = 15
        await wait_until(lambda: 8 in rig.settled, "the retry to finish")
        assert not [c for c in rig.store.conflicts if c.kind == "ambiguous_write"]
        assert rig.clovers["downtown"].stock[item] == 14  # the online sale, once
        finish()


async def test_recovery_of_a_write_to_a_deleted_clover_item_does_not_retry_for_ever() -> None:
    rig = Rig()
    b = rig.add(woo=9, clover={"downtown": 10}, base_woo=10, base_clover={"downtown": 10})
    plan = core_merge.plan_merge(b, core_merge.Reads(woo=9, clover={"downtown": 10}), rig.deps.merge_config)
    after_woo = core_merge.after_woo_step(b, plan)
    intent = msgspec.structs.replace(core_merge.intent_for(b, plan), woo_done=True, clover_started=("downtown",),
                                     clover_targets={"downtown": 9})
    raw = msgspec.json.encode(intent)
    rig.table.put(after_woo)
    rig.store.bindings[BID] = after_woo
    rig.intents[BID] = rig.store.intents[BID] = raw
    del rig.clovers["downtown"].stock[f"I-{BID}-downtown"]  # the item is deleted before the recovery
    async with to_the_end() as (n, finish):
        n.start_soon(rig.collect_settled)
        await rig.start(n)
        await rig.inbox_send.send(dirty(BID, event=9))
        await wait_until(lambda: 9 in rig.settled, "the merge to settle (the location dropped)")
        assert BID not in rig.table and BID not in rig.intents  # its only location gone: unbound
        recovered = rig.store.events("recovered")
        assert recovered and json.loads(recovered[0].detail)["clover"] == {"downtown": "gone: Clover item deleted"}
        finish()
