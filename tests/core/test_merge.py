"""The merge: every change on either side counted once, no loops, partial failures and crashes harmless.

Two kinds of test: one example per case of sync-model.md, and a simulation of
both stores as integers driven by hypothesis through random interleavings of
sales, returns, online orders, merges, failed and interrupted writes and
changes landing inside a merge's read-to-write window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.merge import (
    MergeConfig,
    Plan,
    Reads,
    WriteIntent,
    after_clover_step,
    after_clover_step_from_intent,
    after_woo_step,
    finish,
    finish_from_intent,
    intent_for,
    plan_merge,
    recover,
)
from cloverwoo_daemon.core.model import Binding, WooRef

LOCS = ("main", "north", "south")
AGG = MergeConfig(mode="aggregate", locations=LOCS, primary="main")


def binding(
    base_woo: int | None = None, base_clover: dict[str, int | None] | None = None, locs=LOCS, **kw
) -> Binding:
    return Binding(binding_id="woo:1:0", sku="SKU-1", name="Thing", woo=WooRef(1),
                   clover_items={loc: f"item-{loc}" for loc in locs}, base_woo=base_woo,
                   base_clover=dict(base_clover or {}), **kw)


def synced(**stock: int) -> Binding:
    return binding(base_woo=sum(stock.values()), base_clover=dict(stock), locs=tuple(stock), version=3)


def apply_all(b: Binding, plan: Plan) -> Binding:
    """Every write succeeded."""
    b = after_woo_step(b, plan)
    for loc in plan.clover_deltas:
        b = after_clover_step(b, plan, loc)
    return finish(b, plan)


# --------------------------------------------------------------------------
# Configuration


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        MergeConfig(mode="aggregate", locations=LOCS, primary="elsewhere")
    with pytest.raises(ValueError):
        MergeConfig(mode="aggregate", locations=LOCS, primary="main", deduct="random")
    with pytest.raises(ValueError):
        MergeConfig(mode="aggregate", locations=LOCS, primary="main", deduct=())
    with pytest.raises(ValueError):
        MergeConfig(mode="aggregate", locations=(), primary="")
    # A fallback order may name locations single mode does not use.
    single = MergeConfig(mode="single", locations=("main",), primary="main", deduct=("north", "main"))
    assert single.active == ("main",)


# --------------------------------------------------------------------------
# Examples, one per case of sync-model.md


def test_nothing_changed_writes_nothing_and_keeps_bases():
    b = synced(main=5, north=3, south=2)
    plan = plan_merge(b, Reads(10, {"main": 5, "north": 3, "south": 2}), AGG)
    assert not plan.writes and not plan.flags and not plan.skip
    after = apply_all(b, plan)
    assert (after.base_woo, after.base_clover) == (b.base_woo, b.base_clover)


def test_pos_sale_is_sent_to_woo_as_a_delta():
    b = synced(main=5, north=3, south=2)
    plan = plan_merge(b, Reads(10, {"main": 5, "north": 1, "south": 2}), AGG)
    assert plan.woo_delta == -2 and plan.expected_woo == 8 and plan.clover_deltas == {}
    assert plan.dc == {"main": 0, "north": -2, "south": 0}
    after = apply_all(b, plan)
    assert after.base_woo == 8 and after.base_clover == {"main": 5, "north": 1, "south": 2}
    assert after.version == b.version + 1 == plan.version


def test_online_sale_lands_on_primary():
    b = synced(main=5, north=3, south=2)
    plan = plan_merge(b, Reads(7, {"main": 5, "north": 3, "south": 2}), AGG)
    assert plan.woo_delta == 0 and plan.clover_deltas == {"main": -3}
    after = apply_all(b, plan)
    assert after.base_woo == 7 and after.base_clover == {"main": 2, "north": 3, "south": 2}


def test_online_sale_routed_by_most_stock():
    cfg = msgspec.structs.replace(AGG, deduct="most_stock")
    b = synced(main=1, north=6, south=2)
    plan = plan_merge(b, Reads(7, {"main": 1, "north": 6, "south": 2}), cfg)
    assert plan.clover_deltas == {"north": -2}


def test_online_refund_goes_to_primary():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(9, {"main": 5, "north": 3}), AGG)
    assert plan.clover_deltas == {"main": 1}


def test_transfer_between_locations_writes_nothing_to_woo_but_moves_bases():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(8, {"main": 4, "north": 4}), AGG)
    assert not plan.writes
    after = apply_all(b, plan)
    assert after.base_clover == {"main": 4, "north": 4} and after.base_woo == 8


def test_both_sides_sell_the_last_unit_oversell_is_flagged():
    b = synced(main=1)
    cfg = MergeConfig(mode="single", locations=("main",), primary="main")
    plan = plan_merge(b, Reads(0, {"main": 0}), cfg)
    assert plan.woo_delta == -1 and plan.clover_deltas == {"main": -1}
    kinds = {(f.kind, f.side) for f in plan.flags}
    assert kinds == {("oversell", "woo"), ("oversell", "clover"), ("concurrent", "both")}
    assert plan.oversold
    after = apply_all(b, plan)
    assert after.base_woo == -1 and after.base_clover == {"main": -1}
    # Observing the agreed negative value again flags nothing: it is not a new oversell.
    again = plan_merge(after, Reads(-1, {"main": -1}), cfg)
    assert not again.writes and not again.flags
    # A restock that leaves it negative is not an oversell either.
    restock = plan_merge(after, Reads(-1, {"main": 0}), cfg)
    assert restock.woo_delta == 1 and not restock.flags


def test_simultaneous_sales_with_stock_left_are_both_applied_and_only_noted():
    b = synced(main=5, north=5)
    plan = plan_merge(b, Reads(8, {"main": 5, "north": 4}), AGG)
    assert plan.woo_delta == -1 and plan.clover_deltas == {"main": -2}
    assert [f.kind for f in plan.flags] == ["concurrent"]
    after = apply_all(b, plan)
    # Woo becomes 7, Clover 3 + 4 = 7.
    assert after.base_woo == 7 == sum(v for v in after.base_clover.values() if v is not None)


def test_woo_response_differing_from_expected_is_not_absorbed():
    b = synced(main=5)
    cfg = MergeConfig(mode="single", locations=("main",), primary="main")
    plan = plan_merge(b, Reads(5, {"main": 4}), cfg)
    after = apply_all(b, plan)
    assert after.base_woo == 4
    # Woo answered 3: an online sale landed meanwhile. The next merge sees it as dW = -1.
    nxt = plan_merge(after, Reads(3, {"main": 4}), cfg)
    assert nxt.dw == -1 and nxt.clover_deltas == {"main": -1} and nxt.woo_delta == 0


def test_own_write_observed_back_is_a_noop():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(6, {"main": 5, "north": 2}), AGG)  # online -2, POS -1
    after = apply_all(b, plan)
    # Woo: 6 - 1 = 5. Clover: main 5 - 2 = 3, north 2.
    echo = plan_merge(after, Reads(5, {"main": 3, "north": 2}), AGG)
    assert not echo.writes and not echo.flags


def test_unknown_woo_untracked_and_excluded_write_nothing():
    b = synced(main=5)
    for bb, reads, why in [
        (b, Reads(None, {"main": 1}), "unknown"),
        (msgspec.structs.replace(b, tracked=False), Reads(2, {"main": 1}), "untracked"),
        (msgspec.structs.replace(b, excluded=True), Reads(2, {"main": 1}), "excluded"),
    ]:
        plan = plan_merge(bb, reads, AGG)
        assert not plan.writes and why in plan.skip
        assert apply_all(bb, plan) == bb
        with pytest.raises(ValueError):
            intent_for(bb, plan)


def test_unknown_location_is_neither_read_nor_written_and_its_change_waits():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(8, {"main": 4, "north": None}), AGG)
    assert plan.woo_delta == -1 and "north" not in plan.clover_reads and "north" not in plan.dc
    after = apply_all(b, plan)
    assert after.base_clover["north"] == 3  # untouched: its pending change is seen once it is readable
    later = plan_merge(after, Reads(7, {"main": 4, "north": 1}), AGG)
    assert later.woo_delta == -2


def test_online_sale_routed_around_unknown_primary():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(6, {"main": None, "north": 3}), AGG)
    assert plan.clover_deltas == {"north": -2}


def test_no_known_location_keeps_woo_change_pending():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(6, {"main": None, "north": None}), AGG)
    assert not plan.writes and plan.skip
    after = apply_all(b, plan)
    assert after == b
    later = plan_merge(after, Reads(6, {"main": 5, "north": 3}), AGG)
    assert later.clover_deltas == {"main": -2}


def test_single_mode_reads_and_writes_only_the_primary():
    cfg = MergeConfig(mode="single", locations=LOCS, primary="north")
    b = synced(north=4)
    plan = plan_merge(b, Reads(3, {"main": 100, "north": 4, "south": 7}), cfg)
    assert plan.clover_reads == {"north": 4} and plan.clover_deltas == {"north": -1}


def test_per_location_mode_exposes_the_figures_after_the_merge():
    cfg = msgspec.structs.replace(AGG, mode="per-location")
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(7, {"main": 5, "north": 3}), cfg)
    assert plan.clover_expected == {"main": 4, "north": 3}


def test_location_without_clover_item_is_ignored():
    b = binding(base_woo=5, base_clover={"main": 5}, locs=("main",))
    plan = plan_merge(b, Reads(5, {"main": 5, "north": 9}), AGG)
    assert not plan.writes and not plan.initial


# Initial sync


def test_initial_sync_clover_is_truth():
    b = binding()
    plan = plan_merge(b, Reads(3, {"main": 5, "north": 2, "south": None}), AGG)
    assert plan.initial and plan.woo_delta == 4 and plan.clover_deltas == {}
    after = apply_all(b, plan)
    assert after.base_woo == 7 and after.base_clover == {"main": 5, "north": 2}
    assert not plan_merge(after, Reads(7, {"main": 5, "north": 2, "south": None}), AGG).writes


def test_initial_sync_woo_is_truth():
    cfg = msgspec.structs.replace(AGG, source_of_truth="woo")
    b = binding()
    plan = plan_merge(b, Reads(10, {"main": 5, "north": 2, "south": 1}), cfg)
    assert plan.initial and plan.woo_delta == 0 and plan.clover_deltas == {"main": 2}
    after = apply_all(b, plan)
    assert after.base_woo == 10 and after.base_clover == {"main": 7, "north": 2, "south": 1}
    assert not plan_merge(after, Reads(10, {"main": 7, "north": 2, "south": 1}), cfg).writes


def test_initial_sync_woo_is_truth_single_location_equals_woo():
    cfg = MergeConfig(mode="single", locations=("main",), primary="main", source_of_truth="woo")
    b = binding(locs=("main",))
    plan = plan_merge(b, Reads(4, {"main": 9}), cfg)
    assert plan.clover_expected == {"main": 4}
    after = apply_all(b, plan)
    assert after.base_woo == 4 and after.base_clover == {"main": 4}


def test_initial_sync_when_woo_step_is_done_but_clover_write_failed_stays_consistent():
    cfg = msgspec.structs.replace(AGG, source_of_truth="woo")
    b = binding(locs=("main",))
    plan = plan_merge(b, Reads(4, {"main": 9}), cfg)
    half = after_woo_step(b, plan)  # the Clover write then failed
    assert half.base_woo == 9 and half.base_clover == {"main": 9}
    # Woo still says 4: the next (ordinary) merge carries the -5 as an online change.
    nxt = plan_merge(half, Reads(4, {"main": 9}), cfg)
    assert not nxt.initial and nxt.clover_deltas == {"main": -5}


def test_new_location_triggers_initial_sync_counting_unreadable_ones_at_their_base():
    b = synced(main=5, north=3)
    b = msgspec.structs.replace(b, clover_items={**b.clover_items, "south": "item-south"})
    plan = plan_merge(b, Reads(8, {"main": None, "north": 3, "south": 4}), AGG)
    assert plan.initial and plan.woo_delta == 4  # main still counts its 5
    after = apply_all(b, plan)
    assert after.base_woo == 12 == sum(v for v in after.base_clover.values() if v is not None)


def test_negative_initial_is_flagged():
    cfg = MergeConfig(mode="single", locations=("main",), primary="main")
    plan = plan_merge(binding(locs=("main",)), Reads(2, {"main": -1}), cfg)
    assert plan.woo_delta == -3 and [f.side for f in plan.flags] == ["woo"]


# --------------------------------------------------------------------------
# Steps, intents and recovery


def test_clover_step_before_initial_woo_step_is_refused():
    cfg = msgspec.structs.replace(AGG, source_of_truth="woo")
    b = binding()
    plan = plan_merge(b, Reads(10, {"main": 5}), cfg)
    with pytest.raises(ValueError):
        after_clover_step(b, plan, "main")


def test_intent_round_trips_and_steps_from_it_match_steps_from_plan():
    b = synced(main=5, north=3)
    plan = plan_merge(b, Reads(6, {"main": 5, "north": 2}), AGG)
    intent = intent_for(b, plan)
    raw = msgspec.json.encode(intent)
    assert msgspec.json.decode(raw, type=WriteIntent) == intent
    assert intent.version == plan.version and intent.expected_woo == 5
    from_intent, doubt = recover(b, intent, woo_marker=plan.version)
    assert doubt == ("main",)
    from_intent = finish_from_intent(after_clover_step_from_intent(from_intent, intent, "main"), intent)
    assert from_intent == apply_all(b, plan)


def test_recover_woo_write_not_landed_leaves_everything_pending():
    b = synced(main=5)
    plan = plan_merge(b, Reads(5, {"main": 3}), AGG)
    intent = intent_for(b, plan)
    got, doubt = recover(b, intent, woo_marker=b.version)  # the old marker: the delta never landed
    assert got == b and doubt == ()
    got = finish_from_intent(got, intent)
    assert (got.base_woo, got.base_clover) == (b.base_woo, b.base_clover)
    assert plan_merge(got, Reads(5, {"main": 3}), AGG).woo_delta == -2


def test_recover_woo_landed_applies_the_woo_step_once():
    b = synced(main=5)
    plan = plan_merge(b, Reads(5, {"main": 3}), AGG)
    intent = intent_for(b, plan)
    got, doubt = recover(b, intent, woo_marker=plan.version)
    assert doubt == () and got.base_woo == 3
    # Already done (the intent says so and the binding carries it): not applied twice.
    done = msgspec.structs.replace(intent, woo_done=True)
    again, _ = recover(got, done, woo_marker=plan.version)
    assert again == got


def test_recover_zero_woo_delta_needs_no_marker():
    b = synced(main=5)
    plan = plan_merge(b, Reads(4, {"main": 5}), AGG)
    intent = intent_for(b, plan)
    got, doubt = recover(b, intent, woo_marker=None)
    assert doubt == ("main",) and got.base_clover == {"main": 5}


def test_recover_stale_intent_is_ignored_and_foreign_intent_refused():
    b = synced(main=5)
    plan = plan_merge(b, Reads(4, {"main": 5}), AGG)
    intent = intent_for(b, plan)
    done = apply_all(b, plan)
    assert recover(done, intent, woo_marker=plan.version) == (done, ())
    with pytest.raises(ValueError):
        recover(msgspec.structs.replace(b, binding_id="woo:2:0"), intent, None)


# --------------------------------------------------------------------------
# The simulation


@dataclass
class World:
    """Both stores as integers, the binding as last committed, and the intent persisted with it."""

    cfg: MergeConfig
    woo: int
    clover: dict[str, int]
    binding: Binding
    marker: int | None = None
    intent: WriteIntent | None = None
    landed: set[str] = field(default_factory=set)  # Clover writes sent but not committed (crash)
    net: int = 0  # every outside change, summed
    plans: list[Plan] = field(default_factory=list)

    def change(self, where: str, amount: int) -> None:
        if where == "woo":
            self.woo += amount
        else:
            self.clover[where] += amount
        self.net += amount


@dataclass(frozen=True)
class Fault:
    woo: str = "ok"  # ok | fail | crash (landed, bookkeeping lost)
    clover: tuple[tuple[str, str], ...] = ()  # (location, fail | crash)
    unreadable: frozenset[str] = frozenset()
    race: tuple[str, int] | None = None  # a change landing between the merge's read and its writes


CLEAN = Fault()


def merge(w: World, fault: Fault = CLEAN) -> Plan:
    """What the shard actor does, step by step, with the failures asked for."""
    b = w.binding
    if w.intent is not None:
        b, doubt = recover(b, w.intent, w.marker)
        for loc in doubt:
            if loc in w.landed:  # the caller decides; the simulation knows the truth
                b = after_clover_step_from_intent(b, w.intent, loc)
        b = finish_from_intent(b, w.intent)
        w.binding, w.intent, w.landed = b, None, set()
    reads = Reads(w.woo, {loc: (None if loc in fault.unreadable else c) for loc, c in w.clover.items()})
    plan = plan_merge(b, reads, w.cfg)
    w.plans.append(plan)
    if not plan.writes:
        w.binding = finish(after_woo_step(b, plan), plan)
        return plan
    intent = intent_for(b, plan)
    w.intent = intent
    if fault.race is not None:
        w.change(*fault.race)
    if plan.woo_delta:
        if fault.woo == "fail":
            return plan
        w.woo += plan.woo_delta
        w.marker = plan.version
        if fault.woo == "crash":
            return plan
    b = after_woo_step(b, plan)
    intent = msgspec.structs.replace(intent, woo_done=True)
    w.binding, w.intent = b, intent
    clover_faults = dict(fault.clover)
    for loc, delta in plan.clover_deltas.items():
        if clover_faults.get(loc) == "fail":
            return plan
        target = w.clover[loc] + delta  # fresh read right before the write
        intent = msgspec.structs.replace(intent, clover_targets={**intent.clover_targets, loc: target})
        w.intent = intent
        w.clover[loc] = target
        if clover_faults.get(loc) == "crash":
            w.landed.add(loc)
            return plan
        b = after_clover_step(b, plan, loc)
        intent = msgspec.structs.replace(intent, clover_done=(*intent.clover_done, loc))
        w.binding, w.intent = b, intent
    w.binding, w.intent = finish(b, plan), None
    return plan


def new_world(cfg: MergeConfig, stock: dict[str, int]) -> World:
    b = binding(base_woo=sum(stock.values()), base_clover=dict(stock), locs=tuple(stock))
    return World(cfg, sum(stock.values()), dict(stock), b)


def settled(w: World) -> bool:
    b = w.binding
    return w.intent is None and b.base_woo == w.woo and b.base_clover == w.clover


amount_st = st.integers(-3, 3).filter(bool)
change_st = st.tuples(st.sampled_from(("woo", *LOCS)), amount_st)
fault_st = st.builds(
    Fault,
    woo=st.sampled_from(("ok", "ok", "fail", "crash")),
    clover=st.lists(st.tuples(st.sampled_from(LOCS), st.sampled_from(("fail", "crash"))), max_size=2).map(tuple),
    unreadable=st.frozensets(st.sampled_from(LOCS), max_size=2),
    race=st.one_of(st.none(), change_st),
)
op_st = st.one_of(
    change_st.map(lambda c: ("change", c)),
    st.just(("merge", CLEAN)),
    fault_st.map(lambda f: ("merge", f)),
)
cfg_st = st.builds(
    MergeConfig,
    mode=st.just("aggregate"),
    locations=st.just(LOCS),
    primary=st.sampled_from(LOCS),
    deduct=st.sampled_from(("primary", "most_stock", ("south", "north"), ("north",))),
)
stock_st = st.fixed_dictionaries({loc: st.integers(0, 6) for loc in LOCS})


def check_plan_flags(plan: Plan) -> None:
    """Oversell is flagged exactly where this merge pushed a side below zero."""
    woo_flag = any(f.kind == "oversell" and f.side == "woo" for f in plan.flags)
    assert woo_flag == (plan.woo_delta < 0 and plan.expected_woo is not None and plan.expected_woo < 0)
    for loc, c in plan.clover_reads.items():
        d = plan.clover_deltas.get(loc, 0)
        flagged = any(f.kind == "oversell" and f.location == loc for f in plan.flags)
        assert flagged == (d < 0 and c + d < 0)


@settings(max_examples=300, deadline=None)
@given(cfg=cfg_st, stock=stock_st, ops=st.lists(op_st, max_size=30))
def test_simulation_converges_counts_every_change_once_and_never_loops(cfg, stock, ops):
    w = new_world(cfg, stock)
    total0 = w.woo
    for kind, arg in ops:
        if kind == "change":
            w.change(*arg)
            continue
        plan = merge(w, arg)
        check_plan_flags(plan)
        if arg == CLEAN:
            # A clean merge settles everything; observing the result again writes nothing (no loop).
            assert settled(w)
            echo = merge(w)
            assert not echo.writes and not echo.flags
        # Whatever happened, the bases never claim more than both sides agreed on.
        bc = w.binding.base_clover
        assert w.binding.base_woo == sum(v for v in bc.values() if v is not None)
    # Every failure stops; one final merge settles both sides on the true total.
    final = merge(w)
    check_plan_flags(final)
    assert settled(w)
    assert w.woo == sum(w.clover.values()) == total0 + w.net
    assert not merge(w).writes


@settings(max_examples=150, deadline=None)
@given(stock=stock_st, changes=st.lists(change_st, max_size=12), data=st.data())
def test_order_of_observations_does_not_change_the_result(stock, changes, data):
    cfg = MergeConfig(mode="aggregate", locations=LOCS, primary="main")
    outcomes = set()
    for _ in range(3):
        order = data.draw(st.permutations(changes))
        merges = data.draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
        w = new_world(cfg, stock)
        for change, do_merge in zip(order, merges, strict=True):
            w.change(*change)
            if do_merge:
                # Failures and crashes of any write, but every location readable and no
                # change inside a merge's window: then every online change lands on the primary.
                fault = data.draw(fault_st)
                merge(w, Fault(woo=fault.woo, clover=fault.clover))
        merge(w)
        outcomes.add((w.woo, tuple(sorted(w.clover.items()))))
    # Every Clover location ends at its own changes, plus every online change on the primary.
    expect_clover = dict(stock)
    online = 0
    for where, amount in changes:
        if where == "woo":
            online += amount
        else:
            expect_clover[where] += amount
    expect_clover["main"] += online
    assert outcomes == {(sum(expect_clover.values()), tuple(sorted(expect_clover.items())))}


@settings(max_examples=150, deadline=None)
@given(cfg=cfg_st, stock=st.fixed_dictionaries({loc: st.integers(-3, 6) for loc in LOCS}),
       woo=st.integers(-3, 20), sot=st.sampled_from(("clover", "woo")),
       unreadable=st.frozensets(st.sampled_from(LOCS), max_size=2), fail_clover=st.booleans())
def test_initial_sync_makes_both_sides_agree_by_the_source_of_truth(cfg, stock, woo, sot, unreadable, fail_clover):
    cfg = msgspec.structs.replace(cfg, source_of_truth=sot)
    w = World(cfg, woo, dict(stock), binding(locs=LOCS))
    readable = {loc: c for loc, c in stock.items() if loc not in unreadable}
    fault = Fault(clover=tuple((loc, "fail") for loc in LOCS) if fail_clover else (), unreadable=unreadable)
    plan = merge(w, fault)
    assert plan.initial
    check_plan_flags(plan)
    truth = sum(readable.values()) if sot == "clover" else woo
    if not fail_clover:
        assert w.woo == sum(readable.values()) + sum(
            c - stock[loc] for loc, c in w.clover.items() if loc not in unreadable
        ) == truth
    merge(w, Fault(unreadable=unreadable))
    assert w.woo == sum(c for loc, c in w.clover.items() if loc not in unreadable) == truth
    # Once the unreadable locations can be read, they join by the same rule, and all agree.
    merge(w)
    assert settled(w)
    assert w.woo == sum(w.clover.values())


# --------------------------------------------------------------------------
# Erased checkouts: repaired through the bases


def test_an_erased_checkout_is_taken_off_both_sides_by_the_next_merge() -> None:
    """Our inventory_delta erased a checkout of 2: both sides hold 2 too many, and agree (10/10 for 8)."""
    from cloverwoo_daemon.core.merge import owe_erased

    b = synced(main=6, north=4)
    owed, loc = owe_erased(b, 2, AGG)
    assert loc == "main" and owed.base_woo == 12 and owed.base_clover == {"main": 8, "north": 4}
    assert owed.base_woo == sum(v for v in owed.base_clover.values() if v is not None)
    plan = plan_merge(owed, Reads(woo=10, clover={"main": 6, "north": 4}), AGG)
    assert plan.woo_delta == -2 and plan.clover_deltas == {"main": -2}
    done = apply_all(owed, plan)
    assert (done.base_woo, done.base_clover) == (8, {"main": 4, "north": 4})
    again = plan_merge(done, Reads(woo=8, clover={"main": 4, "north": 4}), AGG)
    assert not again.writes  # once only


def test_a_binding_never_synced_cannot_be_repaired() -> None:
    from cloverwoo_daemon.core.merge import owe_erased

    with pytest.raises(ValueError, match="never synced"):
        owe_erased(binding(), 1, AGG)
    with pytest.raises(ValueError, match="not a repair"):
        owe_erased(synced(main=1), 0, AGG)
