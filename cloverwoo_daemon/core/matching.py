"""Which WooCommerce stock unit goes with which Clover item, at each location.

Rules this module keeps (sync-model.md, "Bindings"):

- A Woo *stock unit* is a simple product or one variation. Variable parents
  (and grouped products) hold no stock of their own and are never bound.
  Trashed Woo products (and the variations of a trashed parent) and deleted
  Clover items are never bound.
- The key is the SKU, trimmed and then compared exactly (case matters, as it
  does to both stores).
- Where a side has no SKU, the normalised name is the fallback: Unicode
  NFKC, case-folded, the separators ``,``, ``/``, ``|`` and a free-standing
  dash read as spaces, whitespace collapsed. That makes a Woo variation
  ("Tee - Red, L": parent name + attribute values) meet the Clover variant
  item of its group ("Tee Red L": group name + option names). Two items that
  both carry a SKU are never matched by name, whatever their names say. A
  binding with any location matched by name is ``matched_by="name"`` and
  reported, being less reliable.
- An empty key binds nothing. A key with more than one candidate on either
  side (per location: Woo units eligible there, Clover items of that
  location) is never bound at that location: it is reported with its
  candidates, and its items do not fall back to name matching.
- At each location SKU matches are settled before name matches, and an
  item taken by either is out of the running: no Clover item and no Woo
  unit is ever bound twice.
- A Woo unit with ``manage_stock`` off is bound with ``tracked=False``
  (reported as untracked; the merge never writes it).
- A binding's id is ``WooRef.key``; the Woo name and (Woo, else Clover) SKU
  label it.
- :func:`reconcile_bindings` keeps what the sync owns (bases, version,
  ``excluded``) across catalogue refreshes, forgets a location's base when
  its Clover item changed (a new item is a new initial sync), and explains
  every binding that disappeared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

import msgspec

from cloverwoo_daemon.core.model import Binding, CloverItem, MatchedBy, WooItem

__all__ = ["Ambiguous", "MatchReport", "match_catalogues", "normalise_name", "normalise_sku", "reconcile_bindings",
           "same_catalogue"]

_NOT_STOCK_UNITS = frozenset({"variable", "grouped"})
_SEPARATORS = re.compile(r"[,/|]")
_DASHES = frozenset({"-", "\u2013", "\u2014"})


class Ambiguous(msgspec.Struct, frozen=True):
    """A key with several candidates on one side at one location: never bound, shown to the merchant."""

    key: str
    by: MatchedBy
    location: str
    woo: tuple[str, ...]  # WooRef keys
    clover: tuple[str, ...]  # Clover item ids at ``location``


class MatchReport(msgspec.Struct, frozen=True):
    """The outcome of matching both catalogues; ``bindings`` carry no sync state yet (unless reused)."""

    bindings: tuple[Binding, ...]
    by_sku: tuple[str, ...]  # binding ids
    by_name: tuple[str, ...]  # binding ids with at least one location matched by name
    unmatched_woo: tuple[str, ...]  # WooRef keys of stock units bound at no location
    unmatched_clover: dict[str, tuple[str, ...]]  # location -> item ids bound to nothing
    ambiguous: tuple[Ambiguous, ...]
    untracked: tuple[str, ...]  # binding ids with manage_stock off
    woo_trashed: tuple[str, ...] = ()  # WooRef keys
    woo_seen: tuple[str, ...] = ()  # WooRef keys of live stock units
    clover_deleted: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    clover_seen: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)  # live item ids


def normalise_sku(sku: str | None) -> str:
    """The SKU key: trimmed, otherwise exact. Empty means "no SKU"."""
    return (sku or "").strip()


def normalise_name(name: str) -> str:
    """The name key (see the module rules). Empty means "no name"."""
    text = _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(tok for tok in text.split() if tok not in _DASHES)


def match_catalogues(
    clover: dict[str, list[CloverItem]], woo: list[WooItem], *, primary: str,
    reuse: Mapping[str, Binding] | None = None,
) -> MatchReport:
    """Match both catalogues, location by location (``primary`` first in each binding).

    ``reuse``: the bindings already known, by id. One whose catalogue fields
    come out the same is returned as that very object, sync state included,
    so that a periodic refresh of an unchanged 50,000-product catalogue builds
    no second copy of it (``reconcile_bindings`` then keeps it as it is).
    """
    locations = ([primary] if primary in clover else []) + [loc for loc in clover if loc != primary]

    trashed_parents = {w.ref.product_id for w in woo if w.status == "trash" and w.ref.variation_id == 0}
    units: dict[str, WooItem] = {}
    trashed: list[str] = []
    for w in woo:
        if w.type in _NOT_STOCK_UNITS:
            continue
        if w.status == "trash" or (w.ref.variation_id and w.ref.product_id in trashed_parents):
            trashed.append(w.ref.key)
            continue
        units[w.ref.key] = w

    live: dict[str, dict[str, CloverItem]] = {}
    deleted: dict[str, tuple[str, ...]] = {}
    for loc in locations:
        items = {c.item_id: c for c in clover[loc]}
        live[loc] = {i: c for i, c in items.items() if not c.deleted}
        deleted[loc] = tuple(i for i, c in items.items() if c.deleted)

    # location -> woo key -> Clover item id; and the woo keys matched by name anywhere. Flat on purpose:
    # a dict and a tuple per unit cost 12 MB at 50,000 units, for the few milliseconds of a match.
    bound: dict[str, dict[str, str]] = {}
    named: set[str] = set()
    ambiguous: list[Ambiguous] = []
    for loc in locations:
        bound[loc] = _match_location(loc, units, live[loc], named, ambiguous)

    bindings: list[Binding] = []
    for key, w in units.items():
        clover_items = {loc: item for loc in locations if (item := bound[loc].get(key)) is not None}
        if not clover_items:
            continue
        by: MatchedBy = "name" if key in named else "sku"
        sku = normalise_sku(w.sku) or next(
            (s for loc in clover_items if (s := normalise_sku(live[loc][clover_items[loc]].sku))), ""
        )
        new = Binding(binding_id=key, sku=sku, name=w.name, woo=w.ref, clover_items=clover_items,
                      matched_by=by, tracked=w.manage_stock)
        prev = reuse.get(key) if reuse is not None else None
        bindings.append(prev if prev is not None and same_catalogue(prev, new) else new)

    used = {loc: set(bound[loc].values()) for loc in locations}
    return MatchReport(
        bindings=tuple(bindings),
        by_sku=tuple(b.binding_id for b in bindings if b.matched_by == "sku"),
        by_name=tuple(b.binding_id for b in bindings if b.matched_by == "name"),
        unmatched_woo=tuple(k for k in units if not any(k in bound[loc] for loc in locations)),
        unmatched_clover={loc: tuple(i for i in live[loc] if i not in used[loc]) for loc in locations},
        ambiguous=tuple(ambiguous),
        untracked=tuple(b.binding_id for b in bindings if not b.tracked),
        woo_trashed=tuple(trashed),
        woo_seen=tuple(units),
        clover_deleted=deleted,
        clover_seen={loc: tuple(live[loc]) for loc in locations},
    )


def same_catalogue(a: Binding, b: Binding) -> bool:
    """Whether two bindings tie the same items together under the same labels (sync state aside)."""
    if a is b:
        return True
    return (a.sku, a.name, a.woo, a.clover_items, a.matched_by, a.tracked) == (
        b.sku, b.name, b.woo, b.clover_items, b.matched_by, b.tracked
    )


def _group(items: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Idents by key; a key's ident held bare unless it has several (the usual key has one)."""
    out: dict[str, str | list[str]] = {}
    for key, ident in items:
        if not key:
            continue
        held = out.get(key)
        if held is None:
            out[key] = ident
        elif isinstance(held, list):
            held.append(ident)
        else:
            out[key] = [held, ident]
    return out


def _idents(held: str | list[str]) -> list[str]:
    return [held] if isinstance(held, str) else held


def _match_location(
    loc: str,
    units: dict[str, WooItem],
    items: dict[str, CloverItem],
    named: set[str],
    ambiguous: list[Ambiguous],
) -> dict[str, str]:
    """The woo keys bound at ``loc`` to their Clover item ids; adds the name matches to ``named``."""
    bound: dict[str, str] = {}
    taken_woo: set[str] = set()
    taken_clover: set[str] = set()

    # 1. SKU, exact after trimming.
    woo_by_sku = _group((normalise_sku(w.sku), k) for k, w in units.items())
    clover_by_sku = _group((normalise_sku(c.sku), i) for i, c in items.items())
    for sku in sorted(woo_by_sku.keys() & clover_by_sku.keys()):
        ws, cs = _idents(woo_by_sku[sku]), _idents(clover_by_sku[sku])
        taken_woo.update(ws)
        taken_clover.update(cs)
        if len(ws) == 1 and len(cs) == 1:
            bound[ws[0]] = cs[0]
        else:
            ambiguous.append(Ambiguous(sku, "sku", loc, tuple(ws), tuple(cs)))
    # A duplicated SKU on one side is ambiguous even without a partner here:
    # it must not fall back to name matching either.
    for groups, taken in ((woo_by_sku, taken_woo), (clover_by_sku, taken_clover)):
        for idents in groups.values():
            if isinstance(idents, list):
                taken.update(idents)
    del woo_by_sku, clover_by_sku

    # 2. Normalised name, only for pairs where a side has no SKU.
    woo_left = {k: w for k, w in units.items() if k not in taken_woo}
    clover_left = {i: c for i, c in items.items() if i not in taken_clover}
    del taken_woo, taken_clover
    woo_by_name = _group((normalise_name(w.name), k) for k, w in woo_left.items())
    clover_by_name = _group((normalise_name(c.name), i) for i, c in clover_left.items())
    for name in sorted(woo_by_name.keys() & clover_by_name.keys()):
        ws, cs = _idents(woo_by_name[name]), _idents(clover_by_name[name])
        woo_plain = any(not normalise_sku(woo_left[k].sku) for k in ws)
        clover_plain = any(not normalise_sku(clover_left[i].sku) for i in cs)
        # Keep only the candidates that could pair with someone on the other side.
        ws = [k for k in ws if clover_plain or not normalise_sku(woo_left[k].sku)]
        cs = [i for i in cs if woo_plain or not normalise_sku(clover_left[i].sku)]
        if not ws or not cs:
            continue
        if len(ws) == 1 and len(cs) == 1:
            bound[ws[0]] = cs[0]
            named.add(ws[0])
        else:
            ambiguous.append(Ambiguous(name, "name", loc, tuple(ws), tuple(cs)))
    return bound


def reconcile_bindings(
    existing: list[Binding], report: MatchReport
) -> tuple[list[Binding], list[tuple[Binding, str]]]:
    """Carry the sync state of ``existing`` over to the new matches; say why each vanished binding went.

    Returns ``(put, removed)``: every binding of the report (sync state kept
    where it still applies), and each existing binding no longer matched with
    the reason. A changed Clover item resets that location's base (``None``:
    the next merge is an initial sync there); a location no longer bound at
    all resets ``base_woo`` too, since Woo's figure then sums a different set
    of locations and only a recount by the source of truth is sound.
    """
    old = {b.binding_id: b for b in existing}
    put: list[Binding] = []
    for new in report.bindings:
        prev = old.get(new.binding_id)
        if prev is None:
            put.append(new)
            continue
        base_clover: dict[str, int | None] = {}
        for loc, item in new.clover_items.items():
            if prev.clover_items.get(loc) != item:
                if loc in prev.clover_items:
                    base_clover[loc] = None  # another item now: its stock was never synced
            elif loc in prev.base_clover:
                base_clover[loc] = prev.base_clover[loc]
        dropped = any(loc not in new.clover_items for loc in prev.clover_items)
        carried = msgspec.structs.replace(
            new,
            base_woo=None if dropped or prev.woo != new.woo else prev.base_woo,
            base_clover=base_clover,
            version=prev.version,
            excluded=prev.excluded,
        )
        # the usual case on a periodic refresh: nothing changed, and the existing object is kept rather than
        # a copy of it (a 50,000-product catalogue would otherwise be held twice while the job runs)
        put.append(prev if carried == prev else carried)

    kept = {b.binding_id for b in report.bindings}
    gone = [b for b in existing if b.binding_id not in kept]
    if not gone:
        return put, []
    seen = _Seen(report)
    return put, [(b, _why_gone(b, report, seen)) for b in gone]


class _Seen:
    """The report's lists as sets, for the reasons of many vanished bindings at once."""

    def __init__(self, report: MatchReport) -> None:
        self.woo_trashed = set(report.woo_trashed)
        self.woo_seen = set(report.woo_seen)
        self.clover_deleted = {loc: set(ids) for loc, ids in report.clover_deleted.items()}
        self.clover_seen = {loc: set(ids) for loc, ids in report.clover_seen.items()}


def _why_gone(b: Binding, report: MatchReport, seen: _Seen) -> str:
    key = b.woo.key
    if key in seen.woo_trashed:
        return "WooCommerce product trashed"
    if key not in seen.woo_seen:
        return "WooCommerce product gone"
    for loc, item in b.clover_items.items():
        if item in seen.clover_deleted.get(loc, ()):
            return f"Clover item {item} deleted at {loc}"
    for loc, item in b.clover_items.items():
        if loc in seen.clover_seen and item not in seen.clover_seen[loc]:
            return f"Clover item {item} gone at {loc}"
    for amb in report.ambiguous:
        if key in amb.woo or any(b.clover_items.get(amb.location) == i for i in amb.clover):
            return f"{amb.by} {amb.key!r} is now ambiguous at {amb.location}"
    return "no longer matches (SKU or name changed)"
