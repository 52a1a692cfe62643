"""Catalogue matching: SKU first, name only where a side has none, never ambiguous, never twice."""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.matching import match_catalogues, normalise_name, reconcile_bindings
from cloverwoo_daemon.core.model import Binding, CloverItem, WooItem, WooRef


def c(item_id: str, name: str = "", sku: str | None = None, **kw) -> CloverItem:
    return CloverItem(item_id=item_id, name=name or item_id, sku=sku, quantity=kw.pop("quantity", 1), **kw)


def w(pid: int, name: str = "", sku: str | None = None, vid: int = 0, **kw) -> WooItem:
    return WooItem(ref=WooRef(pid, vid), name=name or f"product {pid}", sku=sku,
                   manage_stock=kw.pop("manage_stock", True), quantity=kw.pop("quantity", 1), **kw)


def by_id(report):
    return {b.binding_id: b for b in report.bindings}


def test_sku_match_trimmed_exact_and_case_sensitive():
    report = match_catalogues(
        {"main": [c("A", sku=" SKU-1 "), c("B", sku="sku-2")]},
        [w(1, sku="SKU-1"), w(2, sku="SKU-2")],
        primary="main",
    )
    got = by_id(report)
    assert set(got) == {"woo:1:0"}
    b = got["woo:1:0"]
    assert b.clover_items == {"main": "A"} and b.matched_by == "sku" and b.sku == "SKU-1" and b.tracked
    assert report.by_sku == ("woo:1:0",) and report.unmatched_woo == ("woo:2:0",)
    assert report.unmatched_clover == {"main": ("B",)}


def test_binding_spans_locations_primary_first():
    report = match_catalogues(
        {"north": [c("N", sku="X")], "main": [c("M", sku="X")]}, [w(1, sku="X")], primary="main"
    )
    (b,) = report.bindings
    assert list(b.clover_items.items()) == [("main", "M"), ("north", "N")]


def test_variation_matches_clover_variant_by_name_when_no_sku():
    report = match_catalogues(
        {"main": [c("V1", "Tee 1 Red  L"), c("V2", "tee 1 blue l")]},
        [w(5, "Tee 1", type="variable"), w(5, "Tee 1 - Red, L", vid=51, type="variation"),
         w(5, "Tee 1 - Blue, L", vid=52, type="variation")],
        primary="main",
    )
    got = by_id(report)
    assert set(got) == {"woo:5:51", "woo:5:52"}  # the variable parent is not a stock unit
    assert got["woo:5:51"].clover_items == {"main": "V1"} and got["woo:5:51"].matched_by == "name"
    assert got["woo:5:52"].clover_items == {"main": "V2"}
    assert set(report.by_name) == {"woo:5:51", "woo:5:52"}
    assert "woo:5:0" not in report.unmatched_woo


def test_name_fallback_only_where_a_side_has_no_sku():
    report = match_catalogues(
        {"main": [c("A", "Mug", sku="M-1"), c("B", "Cup", sku=None), c("C", "Bowl", sku="B-9")]},
        [w(1, "Mug", sku="M-2"), w(2, "Cup", sku="C-1"), w(3, "Bowl", sku=None)],
        primary="main",
    )
    got = by_id(report)
    assert "woo:1:0" not in got  # both sides carry (different) SKUs: never matched by name
    assert got["woo:2:0"].clover_items == {"main": "B"} and got["woo:2:0"].matched_by == "name"
    assert got["woo:3:0"].clover_items == {"main": "C"} and got["woo:3:0"].sku == "B-9"


def test_empty_keys_never_bind():
    report = match_catalogues(
        {"main": [c("A", " ", sku="  "), c("B", "-", sku="")]}, [w(1, " - ", sku=" "), w(2, "", sku=None)],
        primary="main",
    )
    assert report.bindings == ()


def test_ambiguous_sku_is_reported_not_bound_and_does_not_fall_back_to_name():
    report = match_catalogues(
        {"main": [c("A", "Hat", sku="H"), c("B", "Hat", sku="H")], "north": [c("N", "Hat", sku="H")]},
        [w(1, "Hat", sku="H")],
        primary="main",
    )
    (b,) = report.bindings
    assert b.clover_items == {"north": "N"}  # unambiguous at north, ambiguous at main
    (amb,) = report.ambiguous
    assert (amb.key, amb.by, amb.location, amb.woo, set(amb.clover)) == ("H", "sku", "main", ("woo:1:0",), {"A", "B"})
    assert set(report.unmatched_clover["main"]) == {"A", "B"}


def test_ambiguous_name_is_reported_on_either_side():
    report = match_catalogues(
        {"main": [c("A", "Soap"), c("B", "soap")]}, [w(1, "Soap"), w(2, "Candle"), w(3, "Candle")],
        primary="main",
    )
    report2 = match_catalogues({"main": [c("A", "Candle")]}, [w(2, "Candle"), w(3, "CANDLE")], primary="main")
    assert report.bindings == () and report2.bindings == ()
    assert [(a.key, a.by) for a in report.ambiguous] == [("soap", "name")]
    assert [(a.key, set(a.woo)) for a in report2.ambiguous] == [("candle", {"woo:2:0", "woo:3:0"})]


def test_name_candidates_that_cannot_pair_do_not_make_a_key_ambiguous():
    # Woo 1 and Clover A both carry SKUs, so only (Woo 2, Clover A) can pair by name.
    report = match_catalogues(
        {"main": [c("A", "Lamp", sku="L-A")]}, [w(1, "Lamp", sku="L-1"), w(2, "Lamp")], primary="main"
    )
    assert by_id(report)["woo:2:0"].clover_items == {"main": "A"} and report.ambiguous == ()


def test_untracked_trashed_and_deleted():
    report = match_catalogues(
        {"main": [c("A", sku="U"), c("B", sku="T"), c("C", sku="D", deleted=True), c("E", sku="V")]},
        [w(1, sku="U", manage_stock=False, quantity=None), w(2, sku="T", status="trash"), w(3, sku="D"),
         w(4, "parent", type="variable", status="trash"), w(4, "parent - x", sku="V", vid=41, type="variation")],
        primary="main",
    )
    got = by_id(report)
    assert set(got) == {"woo:1:0"} and not got["woo:1:0"].tracked
    assert report.untracked == ("woo:1:0",)
    assert set(report.woo_trashed) == {"woo:2:0", "woo:4:41"}
    assert report.clover_deleted == {"main": ("C",)}


def test_normalise_name():
    assert normalise_name("  Tee 1 - Red,  Large ") == "tee 1 red large"
    assert normalise_name("T-Shirt / XL") == "t-shirt xl"
    assert normalise_name("STRASSE") == normalise_name("straße")
    assert normalise_name(" - , ") == ""


# --------------------------------------------------------------------------
# reconcile_bindings


def test_reconcile_keeps_sync_state_and_resets_changed_item_base():
    first = match_catalogues({"main": [c("A", sku="X")], "north": [c("N", sku="X")]}, [w(1, sku="X")], primary="main")
    (b,) = first.bindings
    synced = msgspec.structs.replace(b, base_woo=7, base_clover={"main": 4, "north": 3}, version=9, excluded=True)
    again = match_catalogues({"main": [c("A", sku="X")], "north": [c("N2", sku="X")]}, [w(1, sku="X")],
                             primary="main")
    put, removed = reconcile_bindings([synced], again)
    assert removed == []
    (p,) = put
    assert p.base_woo == 7 and p.version == 9 and p.excluded
    assert p.base_clover == {"main": 4, "north": None} and p.clover_items["north"] == "N2"


def test_reconcile_location_dropped_resets_woo_base():
    first = match_catalogues({"main": [c("A", sku="X")], "north": [c("N", sku="X")]}, [w(1, sku="X")], primary="main")
    synced = msgspec.structs.replace(first.bindings[0], base_woo=7, base_clover={"main": 4, "north": 3}, version=2)
    later = match_catalogues({"main": [c("A", sku="X")], "north": []}, [w(1, sku="X")], primary="main")
    (p,), _ = reconcile_bindings([synced], later)
    assert p.base_woo is None and p.base_clover == {"main": 4} and p.version == 2


def test_reconcile_explains_each_removal():
    base = match_catalogues(
        {"main": [c("A", sku="1"), c("B", sku="2"), c("C", sku="3"), c("D", sku="4"), c("E", sku="5"),
                  c("F", sku="6")]},
        [w(1, sku="1"), w(2, sku="2"), w(3, sku="3"), w(4, sku="4"), w(5, sku="5"), w(6, sku="6")],
        primary="main",
    )
    assert len(base.bindings) == 6
    later = match_catalogues(
        {"main": [c("A", sku="1"), c("B", sku="2"), c("C", sku="3", deleted=True), c("E", sku="5"),
                  c("E2", sku="5"), c("F", sku="six")]},
        [w(1, sku="1", status="trash"), w(3, sku="3"), w(4, sku="4"), w(5, sku="5"), w(6, sku="6")],
        primary="main",
    )
    put, removed = reconcile_bindings(list(base.bindings), later)
    assert put == []
    reasons = {b.binding_id: why for b, why in removed}
    assert reasons == {
        "woo:1:0": "WooCommerce product trashed",
        "woo:2:0": "WooCommerce product gone",
        "woo:3:0": "Clover item C deleted at main",
        "woo:4:0": "Clover item D gone at main",
        "woo:5:0": "sku '5' is now ambiguous at main",
        "woo:6:0": "no longer matches (SKU or name changed)",
    }


# --------------------------------------------------------------------------
# No key is ever bound twice

sku_st = st.sampled_from([None, "", " ", "A", "a", "A ", "B", "C"])
name_st = st.sampled_from(["Hat", "hat", "Hat - Red", "hat red", "Mug", "", "-"])


@st.composite
def catalogues(draw):
    n_woo = draw(st.integers(0, 8))
    woo = [
        WooItem(ref=WooRef(i + 1, draw(st.sampled_from([0, 0, 7]))), name=draw(name_st), sku=draw(sku_st),
                manage_stock=draw(st.booleans()), quantity=1,
                status=draw(st.sampled_from(["publish", "publish", "trash"])),
                type=draw(st.sampled_from(["simple", "simple", "variable"])))
        for i in range(n_woo)
    ]
    clover = {
        loc: [CloverItem(item_id=f"{loc}{j}", name=draw(name_st), sku=draw(sku_st), quantity=1,
                         deleted=draw(st.sampled_from([False, False, True])))
              for j in range(draw(st.integers(0, 8)))]
        for loc in ("main", "north")
    }
    return clover, woo


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_no_key_is_ever_bound_twice(cats):
    clover, woo = cats
    report = match_catalogues(clover, woo, primary="main")
    ids = Counter(b.binding_id for b in report.bindings)
    assert all(n == 1 for n in ids.values())
    woo_by_key = {x.ref.key: x for x in woo}
    ambiguous = {(a.location, cid) for a in report.ambiguous for cid in a.clover}
    ambiguous_woo = {(a.location, k) for a in report.ambiguous for k in a.woo}
    for loc, items in clover.items():
        by_item = {x.item_id: x for x in items}
        used = Counter(b.clover_items[loc] for b in report.bindings if loc in b.clover_items)
        assert all(n == 1 for n in used.values()), f"a Clover item bound twice at {loc}"
        for b in report.bindings:
            if loc not in b.clover_items:
                continue
            item, unit = by_item[b.clover_items[loc]], woo_by_key[b.binding_id]
            assert not item.deleted and unit.status != "trash" and unit.type != "variable"
            assert (loc, item.item_id) not in ambiguous and (loc, b.binding_id) not in ambiguous_woo
            ws, cs = (unit.sku or "").strip(), (item.sku or "").strip()
            if ws and cs:
                assert ws == cs  # both have SKUs: only ever the same SKU
            else:
                assert normalise_name(unit.name) == normalise_name(item.name) != ""
            assert b.tracked == unit.manage_stock
    # Reconciling a report with itself changes nothing and removes nothing.
    put, removed = reconcile_bindings(list(report.bindings), report)
    assert put == list(report.bindings) and removed == []


def _catalogue_fields(b: Binding) -> tuple:
    return (b.binding_id, b.sku, b.name, b.woo, b.clover_items, b.matched_by, b.tracked)


@st.composite
def refreshed(draw, cats):
    """``cats`` a little later: some units and items renamed, re-SKU'd, untracked, deleted or gone."""
    clover, woo = cats

    def edit(x, **choices):
        if not draw(st.booleans()):
            return x
        field = draw(st.sampled_from(sorted(choices)))
        return msgspec.structs.replace(x, **{field: draw(choices[field])})

    woo = [edit(x, name=name_st, sku=sku_st, manage_stock=st.booleans(), status=st.just("trash"))
           for x in woo if draw(st.integers(0, 9))]
    clover = {loc: [edit(x, name=name_st, sku=sku_st, deleted=st.just(True)) for x in items if draw(st.integers(0, 9))]
              for loc, items in clover.items()}
    return clover, woo


@settings(max_examples=400, deadline=None)
@given(st.data(), catalogues(), st.integers(0, 50))
def test_reuse_changes_no_outcome_and_copies_no_unchanged_binding(data, before, base):
    """A refresh that reuses the known bindings reports and reconciles exactly as one that does not."""
    after = data.draw(st.one_of(refreshed(before), catalogues()))
    first = match_catalogues(*before, primary="main")
    known = [msgspec.structs.replace(b, base_woo=base, base_clover=dict.fromkeys(b.clover_items, base), version=3)
             for b in first.bindings]
    plain = match_catalogues(*after, primary="main")
    reused = match_catalogues(*after, primary="main", reuse={b.binding_id: b for b in known})
    assert [_catalogue_fields(b) for b in reused.bindings] == [_catalogue_fields(b) for b in plain.bindings]
    assert msgspec.structs.replace(reused, bindings=()) == msgspec.structs.replace(plain, bindings=())
    by_id = {b.binding_id: b for b in known}
    for b in reused.bindings:
        prev = by_id.get(b.binding_id)
        if prev is not None and _catalogue_fields(prev) == _catalogue_fields(b):
            assert b is prev  # the very object: no copy
        else:
            assert b.base_woo is None and b.version == 0  # a new or changed binding starts with no state
    assert reconcile_bindings(known, reused) == reconcile_bindings(known, plain)


def test_a_refresh_of_an_unchanged_catalogue_keeps_every_object():
    cats = ({"main": [c("A", sku="X"), c("B", name="Mug")]}, [w(1, sku="X"), w(2, name="Mug")])
    known = [msgspec.structs.replace(b, base_woo=4, base_clover={"main": 4})
             for b in match_catalogues(*cats, primary="main").bindings]
    again = match_catalogues(*cats, primary="main", reuse={b.binding_id: b for b in known})
    put, removed = reconcile_bindings(known, again)
    assert removed == [] and all(p is k for p, k in zip(put, known, strict=True))


def test_a_binding_whose_catalogue_changed_is_built_anew():
    cats = ({"main": [c("A", sku="X")]}, [w(1, name="Mug", sku="X")])
    (known,) = (msgspec.structs.replace(b, base_woo=4, base_clover={"main": 4})
                for b in match_catalogues(*cats, primary="main").bindings)
    changes = {
        "renamed": ({"main": [c("A", sku="X")]}, [w(1, name="Big mug", sku="X")]),
        "untracked": ({"main": [c("A", sku="X")]}, [w(1, name="Mug", sku="X", manage_stock=False)]),
        "another item": ({"main": [c("B", sku="X")]}, [w(1, name="Mug", sku="X")]),
        "SKU from Clover": ({"main": [c("A", name="Mug", sku="Y")]}, [w(1, name="Mug")]),
    }
    for why, later in changes.items():
        (b,) = match_catalogues(*later, primary="main", reuse={known.binding_id: known}).bindings
        assert b is not known and b.base_woo is None, why
