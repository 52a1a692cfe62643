"""BindingTable's state counts: every binding in exactly one state, at a cost that does not grow with the table."""

from __future__ import annotations

import time

import msgspec

from cloverwoo_daemon.actors.bindings import STATES, BindingTable
from cloverwoo_daemon.core.model import Binding, WooRef
from cloverwoo_daemon.io.metrics import BINDING_STATES


def binding(i: int, *, tracked: bool = True, excluded: bool = False, synced: bool = True) -> Binding:
    return Binding(binding_id=f"b{i}", sku=f"SKU-{i}", name=f"P{i}", woo=WooRef(i + 1),
                   clover_items={"downtown": f"ITEM{i}"}, tracked=tracked, excluded=excluded,
                   base_woo=5 if synced else None, base_clover={"downtown": 5} if synced else {})


def brute_force(table: BindingTable, conflicted: set[str], stale: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for b in table.all():
        if not b.tracked:
            state = "untracked"
        elif b.excluded:
            state = "excluded"
        elif b.binding_id in conflicted:
            state = "conflict"
        elif b.binding_id in stale:
            state = "stale"
        else:
            state = "never_synced" if b.base_woo is None else "synced"
        counts[state] += 1
    return counts


def test_the_table_and_the_gauge_know_the_same_states() -> None:
    assert sorted(STATES) == sorted(BINDING_STATES)  # a state the gauge does not list would vanish from its sum


def test_states_follow_puts_replacements_and_removals() -> None:
    table = BindingTable([binding(0), binding(1, tracked=False), binding(2, excluded=True), binding(3, synced=False),
                          binding(4), binding(5)])
    assert table.states() == {"synced": 3, "never_synced": 1, "stale": 0, "conflict": 0, "excluded": 1,
                              "untracked": 1}
    # overlays: conflict wins over stale; neither hides untracked or excluded; unknown ids are ignored
    got = table.states(conflicted=["b0", "b1", "b5", "b5", "gone"], stale=["b0", "b4", "b2", "gone"])
    assert got == {"synced": 0, "never_synced": 1, "stale": 1, "conflict": 2, "excluded": 1, "untracked": 1}
    # a merge gives the never-synced one its bases; an exclusion moves another; a removal drops one
    table.put(binding(3))
    table.put(msgspec.structs.replace(binding(4), excluded=True))
    table.put(binding(4, excluded=True))  # the same state again: counted once
    table.remove("b5")
    table.remove("b5")
    assert table.states() == {"synced": 2, "never_synced": 0, "stale": 0, "conflict": 0, "excluded": 2,
                              "untracked": 1}
    assert sum(table.states(conflicted=["b0"], stale=["b3"]).values()) == len(table) == 5


def test_states_of_a_large_table_are_exact_and_cheap() -> None:
    kinds = [dict(), dict(tracked=False), dict(excluded=True), dict(synced=False)]
    table = BindingTable(binding(i, **kinds[i % 7 % 4]) for i in range(20_000))  # type: ignore[arg-type]
    conflicted = {f"b{i}" for i in range(0, 20_000, 997)}
    stale = {f"b{i}" for i in range(0, 20_000, 1_301)}
    assert table.states(conflicted=conflicted, stale=stale) == brute_force(table, conflicted, stale)
    # A scrape reads this: 2,000 calls must not each walk 20,000 bindings (that would take seconds).
    start = time.perf_counter()
    for _ in range(2_000):
        table.states(conflicted=conflicted, stale=stale)
    assert time.perf_counter() - start < 1.0


def test_indexes_follow_variations_item_moves_and_removals() -> None:
    """The compact indexes (a bare id per product, one dict per location) answer as a brute-force scan would."""
    import random

    rng = random.Random(7)
    table = BindingTable()
    live: dict[str, Binding] = {}
    for _ in range(3000):
        i = rng.randrange(40)
        bid = f"b{i}"
        if rng.random() < 0.25:
            table.remove(bid)
            live.pop(bid, None)
            continue
        # products 1..8 (several variations each), items moving between ids and locations; an item is
        # never claimed by two bindings at once (the matcher reports those as ambiguous)
        taken = {(loc, item) for x in live.values() if x.binding_id != bid for loc, item in x.clover_items.items()}
        items = {loc: f"I{rng.randrange(30)}" for loc in ("downtown", "airport") if rng.random() < 0.7}
        b = Binding(binding_id=bid, sku=f"S{i}", name=f"P{i}", woo=WooRef(1 + rng.randrange(8), i),
                    clover_items={loc: item for loc, item in items.items() if (loc, item) not in taken})
        table.put(b)
        live[bid] = b
        for pid in range(0, 10):
            assert table.by_woo_product(pid) == {x.binding_id for x in live.values() if x.woo.product_id == pid}
        for loc in ("downtown", "airport", "nowhere"):
            for n in range(30):
                want = next((x.binding_id for x in live.values() if x.clover_items.get(loc) == f"I{n}"), None)
                assert table.by_clover_item(loc, f"I{n}") == want
        for x in live.values():
            assert table.by_woo_ref(x.woo) == x.binding_id
    assert len(table) == len(live)
