"""Routing of a Woo-side change among Clover locations: exact sums, known locations only, no needless negatives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.routing import route

ORDER = ("main", "north", "south")


def r(dw: int, reads: dict[str, int | None], rule: str | tuple[str, ...] = "primary", primary: str = "main"):
    return route(dw, reads, rule=rule, primary=primary, order=ORDER)


def test_zero_routes_nothing():
    assert r(0, {"main": 5}) == {}


def test_increase_goes_to_primary_whatever_the_rule():
    reads = {"main": 1, "north": 9, "south": 0}
    for rule in ("primary", "most_stock", ("south", "north")):
        assert r(3, reads, rule) == {"main": 3}


def test_primary_rule_takes_everything_from_primary_even_into_negative():
    assert r(-4, {"main": 1, "north": 9, "south": 9}) == {"main": -4}


def test_most_stock_takes_from_the_fullest_then_the_next():
    assert r(-3, {"main": 2, "north": 9, "south": 5}, "most_stock") == {"north": -3}
    assert r(-12, {"main": 2, "north": 9, "south": 5}, "most_stock") == {"north": -9, "south": -3}


def test_most_stock_ties_follow_configured_order():
    assert r(-1, {"main": 4, "north": 4, "south": 4}, "most_stock") == {"main": -1}
    assert r(-1, {"main": 3, "north": 4, "south": 4}, "most_stock") == {"north": -1}


def test_most_stock_overflow_lands_on_primary():
    assert r(-20, {"main": 2, "north": 9, "south": 5}, "most_stock") == {"north": -9, "south": -5, "main": -6}


def test_fallback_order_prefers_first_location_with_enough():
    reads = {"main": 10, "north": 1, "south": 5}
    assert r(-3, reads, ("north", "south", "main")) == {"south": -3}
    assert r(-1, reads, ("north", "south", "main")) == {"north": -1}


def test_fallback_order_drains_in_order_when_no_one_has_enough():
    reads = {"main": 2, "north": 1, "south": 5}
    assert r(-7, reads, ("north", "south", "main")) == {"north": -1, "south": -5, "main": -1}
    assert r(-9, reads, ("north", "south", "main")) == {"north": -1, "south": -5, "main": -3}


def test_fallback_order_uses_unlisted_locations_before_going_negative():
    reads = {"main": 0, "north": 1, "south": 5}
    assert r(-4, reads, ("north",)) == {"north": -1, "south": -3}


def test_unknown_locations_are_never_used():
    reads: dict[str, int | None] = {"main": None, "north": 2, "south": None}
    assert r(5, reads) == {"north": 5}  # the primary is unknown: first known stands in
    assert r(-5, reads, "most_stock") == {"north": -5}
    assert r(-1, reads, ("south", "main")) == {"north": -1}


def test_no_known_location_routes_nothing():
    assert r(-3, {"main": None}) == {}
    assert r(3, {}) == {}


def test_negative_stock_counts_as_none_available():
    assert r(-2, {"main": -5, "north": 1, "south": 0}, "most_stock") == {"north": -1, "main": -1}


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError):
        r(-1, {"main": 1}, "random")


reads_st = st.fixed_dictionaries({loc: st.one_of(st.none(), st.integers(-5, 30)) for loc in ORDER})
rule_st = st.one_of(
    st.sampled_from(["primary", "most_stock"]),
    st.permutations(ORDER).flatmap(lambda p: st.integers(1, 3).map(lambda n: tuple(p[:n]))),
)


@given(dw=st.integers(-60, 60), reads=reads_st, rule=rule_st, primary=st.sampled_from(ORDER))
def test_route_properties(dw, reads, rule, primary):
    out = route(dw, reads, rule=rule, primary=primary, order=ORDER)
    known = [loc for loc in ORDER if reads[loc] is not None]
    # Only known locations, no zero entries.
    assert set(out) <= set(known)
    assert all(v != 0 for v in out.values())
    if not known:
        assert out == {}
        return
    # Exact sum.
    assert sum(out.values()) == dw
    # Increases are never spread; decreases never add stock anywhere.
    assert all(v > 0 for v in out.values()) if dw > 0 else all(v < 0 for v in out.values())
    if dw < 0 and rule != "primary":
        after = {loc: reads[loc] + out.get(loc, 0) for loc in known}
        # Nobody is pushed below zero while another location still holds stock...
        pushed = [loc for loc in known if after[loc] < 0 and out.get(loc, 0) < 0]
        if pushed:
            assert all(after[loc] <= 0 for loc in known)
            # ...and then only one location (the stand-in primary) carries the shortfall.
            assert len([loc for loc in known if after[loc] < min(reads[loc], 0)]) == 1
        # Nothing is taken from a location beyond what it held, except the shortfall.
        total_available = sum(max(reads[loc], 0) for loc in known)
        assert sum(min(0, after[loc]) - min(0, reads[loc]) for loc in known) == min(0, total_available + dw)
