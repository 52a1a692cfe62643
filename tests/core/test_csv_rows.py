"""CSV rules: the export round-trips, every bad row is named with its line, a bad header applies nothing."""

from __future__ import annotations

import csv
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.csv_rows import (
    HEADER,
    MAX_QUANTITY,
    ExportRow,
    HeaderError,
    format_rows,
    parse_import,
)

FUZZ_SCALE = max(1, int(os.environ.get("CLOVERWOO_FUZZ_SCALE", "1")))  # multiplies the fuzz examples
KNOWN = {"TEE-M": frozenset({"downtown", "airport"}), "MUG": frozenset({"downtown"})}


def export(*rows: tuple[str, str, int]) -> str:
    return format_rows(ExportRow(name=f"name {sku}", sku=sku, woo_product_id=1, woo_variation_id=0,
                                 clover_item_id="ITEM", location=loc, clover_stock=q, woo_stock=q,
                                 sync_status="in sync", last_synced_at="") for sku, loc, q in rows)


def test_round_trip() -> None:
    text = export(("TEE-M", "downtown", 4), ("TEE-M", "airport", 0), ("MUG", "downtown", 12))
    assert text.splitlines()[0] == ",".join(f'"{h}"' for h in HEADER)
    rows, errors = parse_import(text, match="sku", known=KNOWN)
    assert errors == []
    assert [(r.line, r.key, r.location, r.quantity) for r in rows] == [
        (2, "TEE-M", "downtown", 4), (3, "TEE-M", "airport", 0), (4, "MUG", "downtown", 12)]


def test_bom_and_blank_lines_tolerated() -> None:
    rows, errors = parse_import("\ufeff" + export(("MUG", "downtown", 3)) + "\r\n\r\n", match="sku", known=KNOWN)
    assert errors == [] and [r.quantity for r in rows] == [3]


def test_each_bad_row_is_rejected_with_its_line_and_reason() -> None:
    text = export(("MUG", "downtown", 1), ("NOPE", "downtown", 1), ("MUG", "airport", 1), ("TEE-M", "downtown", 2),
                  ("TEE-M", "downtown", 3))
    text = text.replace('"downtown","2"', '"downtown","two"', 1)
    text += '"x","MUG","1","0","ITEM","downtown","-4","","",""\r\n"short","row"\r\n'
    rows, errors = parse_import(text, match="sku", known=KNOWN)
    assert [r.line for r in rows] == [2, 6]
    reasons = {e.line: e.reason for e in errors}
    assert "unknown SKU 'NOPE'" in reasons[3]
    assert "not bound at location 'airport'" in reasons[4]
    assert "'two' is not a whole number" in reasons[5]
    assert "negative" in reasons[7] or "duplicate" in reasons[7]
    assert "2 fields" in reasons[8]


def test_duplicate_row_names_the_first() -> None:
    rows, errors = parse_import(export(("MUG", "downtown", 1), ("MUG", "downtown", 2)), match="sku", known=KNOWN)
    assert [r.line for r in rows] == [2]
    assert errors[0].line == 3 and "duplicate of line 2" in errors[0].reason


def test_match_by_id() -> None:
    rows, errors = parse_import(export(("MUG", "downtown", 5)), match="id", known={"1:0": frozenset({"downtown"})})
    assert errors == [] and rows[0].key == "1:0"


@pytest.mark.parametrize("text", ["", "sku,location,qty\r\n", '"name","sku"\r\n'])
def test_wrong_header_applies_nothing(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_import(text, match="sku", known=KNOWN)


@settings(max_examples=100 * FUZZ_SCALE)
@given(st.text(max_size=300))
def test_random_text_never_crashes(body: str) -> None:
    try:
        parse_import(",".join(HEADER) + "\n" + body, match="sku", known=KNOWN)
    except HeaderError:
        pass


def test_woo_stock_is_the_files_as_of_stamp() -> None:
    """A filled-in woo_stock that is no longer the agreed figure means the stock moved since the export."""
    text = export(("TEE-M", "downtown", 4), ("MUG", "downtown", 12))  # woo_stock = the quantity here
    rows, errors = parse_import(text, match="sku", known=KNOWN, woo_now={"TEE-M": 4, "MUG": 11})
    assert [r.key for r in rows] == ["TEE-M"]
    assert errors[0].line == 3 and "stock changed since the export: woo_stock 12 in the file, 11 now" in \
        errors[0].reason
    emptied = text.replace('"12","12"', '"12",""')
    rows, errors = parse_import(emptied, match="sku", known=KNOWN, woo_now={"TEE-M": 4, "MUG": 11})
    assert errors == [] and [r.quantity for r in rows] == [4, 12]
    bad = text.replace('"4","4"', '"4","four"')
    rows, errors = parse_import(bad, match="sku", known=KNOWN, woo_now={"TEE-M": 4, "MUG": 12})
    assert [e.line for e in errors] == [2] and "woo_stock 'four' is not a whole number" in errors[0].reason
    never = parse_import(text, match="sku", known=KNOWN, woo_now={"TEE-M": None, "MUG": 12})[1]
    assert [e.line for e in never] == [2] and "unknown now" in never[0].reason


# ---------------------------------------------------------------- hostile files (hypothesis)
# ``CLOVERWOO_FUZZ_SCALE`` multiplies the examples (a long run); ``make test`` uses the numbers below.

UNICODE_KNOWN = {
    "TEE-M": frozenset({"downtown", "airport"}),
    "T\u00e9E-\u00c9T\u00c9": frozenset({"downtown"}),  # precomposed é
    "Te\u0301E-E\u0301TE\u0301": frozenset({"downtown"}),  # the same letters, combining accents: another SKU
    "\u8336-\u7dd1-250g": frozenset({"\u6771\u4eac"}),
    "\U0001f455-XL": frozenset({"downtown"}),
    "\uff33\uff2b\uff35": frozenset({"airport"}),  # fullwidth SKU
    "\u0627\u0644\u0633\u0644\u0639\u0629-\u0661": frozenset({"downtown"}),  # Arabic, an Arabic-Indic digit
}
IDS_KNOWN = {"1:0": frozenset({"downtown"}), "733:734": frozenset({"downtown", "airport"})}
_no_edge_space = st.text(min_size=1, max_size=12).filter(lambda s: s == s.strip() and "\x00" not in s)
hostile_field = (
    st.text(max_size=12)
    | st.sampled_from(["", " ", "-0", "-4", "+5", "1_000", "1.5", "1e3", "0x1F", "\u0661\u0662", "\u00b2", "\u2460",
                       "\uff15", "9" * 25, "9" * 5000, "-" + "9" * 30, "NaN", "inf", "\u00a05", "5\u2009",
                       "1000000000", "1000000001", "00000000000000000000042"])
    | st.integers(-(2**70), 2**70).map(str)
)


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n").writerow(fields)
    return out.getvalue()


@st.composite
def hostile_rows(draw: st.DrawFn) -> list[list[str]]:
    known_skus = sorted(UNICODE_KNOWN)
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        sku = draw(st.sampled_from(known_skus) | hostile_field)
        loc = draw(st.sampled_from(["downtown", "airport", "\u6771\u4eac", "Downtown", "downtown "]) | hostile_field)
        fields = [draw(hostile_field), sku, draw(hostile_field | st.sampled_from(["1", "733", "\u00b2"])),
                  draw(hostile_field | st.sampled_from(["0", "734", "", "\u2460"])), draw(hostile_field), loc,
                  draw(hostile_field), draw(hostile_field), draw(hostile_field), draw(hostile_field)]
        cut = draw(st.sampled_from([10, 10, 10, 10, 9, 11, 0, 1]))  # mostly whole rows, some short or long
        rows.append((fields + [draw(hostile_field)])[:cut])
    return rows


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(hostile_rows(), st.sampled_from(["sku", "id"]), st.booleans(), st.booleans())
def test_fuzz_hostile_rows_are_each_accepted_or_named(rows: list[list[str]], match: str, bom: bool,
                                                      with_now: bool) -> None:
    """Wrong types in every field, unicode SKUs and locations, short and long rows: parse_import raises nothing
    (the header is right), every non-blank row is either accepted or rejected with its line, and an accepted row
    names a known binding at one of its locations with a count of ASCII digits in [0, MAX_QUANTITY]."""
    text = ("\ufeff" if bom else "") + _csv_line(list(HEADER)) + "".join(_csv_line(r) for r in rows)
    known = UNICODE_KNOWN if match == "sku" else IDS_KNOWN
    woo_now = {k: 5 for k in known} if with_now else None
    accepted, errors = parse_import(text, match=match, known=known, woo_now=woo_now)  # type: ignore[arg-type]
    lines = [r.line for r in accepted] + [e.line for e in errors]
    assert len(lines) == len(set(lines)), "a line both accepted and rejected, or reported twice"
    non_blank = sum(1 for r in rows if any(f.strip() for f in r))
    assert len(lines) == non_blank, (len(lines), non_blank)
    assert all(2 <= n for n in lines)
    seen = set()
    for r in accepted:
        assert r.key in known and r.location in known[r.key]
        assert 0 <= r.quantity <= MAX_QUANTITY and type(r.quantity) is int
        assert (r.key, r.location) not in seen
        seen.add((r.key, r.location))
    for e in errors:
        assert e.reason and "Traceback" not in e.reason


@settings(max_examples=200 * FUZZ_SCALE, deadline=None)
@given(st.lists(st.tuples(_no_edge_space, _no_edge_space, st.integers(0, MAX_QUANTITY), _no_edge_space),
                max_size=8, unique_by=lambda t: (t[0], t[1])))
def test_fuzz_unicode_export_round_trips(rows: list[tuple[str, str, int, str]]) -> None:
    """Any unicode SKU, location and name (commas, quotes, newlines, emoji, RTL, combining marks) survives export
    then import: every row comes back with its own key, location and count."""
    text = format_rows(ExportRow(name=name, sku=sku, woo_product_id=1, woo_variation_id=0, clover_item_id="I",
                                 location=loc, clover_stock=q, woo_stock=None, sync_status="in sync",
                                 last_synced_at="") for sku, loc, q, name in rows)
    known: dict[str, frozenset[str]] = {}
    for sku, loc, _, _ in rows:
        known[sku] = known.get(sku, frozenset()) | {loc}
    accepted, errors = parse_import(text, match="sku", known=known)
    assert errors == []
    assert [(r.key, r.location, r.quantity) for r in accepted] == [(s, loc, q) for s, loc, q, _ in rows]


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["utf-8", "latin-1", "utf-16"]), st.booleans())
def test_fuzz_random_files_give_a_header_error_or_rows(raw: bytes, encoding: str, with_header: bool) -> None:
    """Random bytes as the CLI would hand them over (decoded, or refused as undecodable before any request)."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        return  # cli.py refuses the file: "cannot read"
    if with_header:
        text = ",".join(HEADER) + "\n" + text
    for match in ("sku", "id"):
        try:
            parse_import(text, match=match, known=UNICODE_KNOWN if match == "sku" else IDS_KNOWN)  # type: ignore[arg-type]
        except HeaderError:
            pass


def test_hostile_numbers_are_rejected_rows_not_crashes() -> None:
    """Found by the fuzz above: '²' passed ``str.isdigit`` and crashed ``int()`` under --match id; a count of
    twenty digits was accepted and sent to Clover. Unicode digits and Python-only spellings are not numbers."""
    def reasons(match: str, pid: str, vid: str, qty: str) -> list[str]:
        line = _csv_line(["n", "TEE-M", pid, vid, "I", "downtown", qty, "", "", ""])
        known = IDS_KNOWN if match == "id" else UNICODE_KNOWN
        accepted, errors = parse_import(_csv_line(list(HEADER)) + line, match=match, known=known)  # type: ignore[arg-type]
        return [e.reason for e in errors] + [f"ok {r.quantity}" for r in accepted]

    assert reasons("id", "\u00b2", "0", "1") == ["woo_product_id and woo_variation_id must be whole numbers"]
    assert reasons("id", "1", "\u2460", "1") == ["woo_product_id and woo_variation_id must be whole numbers"]
    assert reasons("id", "1" * 5000, "0", "1") == ["woo_product_id and woo_variation_id must be whole numbers"]
    assert reasons("id", "0001", "", "7") == ["ok 7"]
    for qty in ("\u0661\u0662", "1_000", "+5", "1.0", "\uff15"):
        assert reasons("sku", "1", "0", qty) == [f"clover_stock {qty!r} is not a whole number"], qty
    assert reasons("sku", "1", "0", "9" * 20) == [f"clover_stock {'9' * 20} is more than 1,000,000,000"]
    assert reasons("sku", "1", "0", "9" * 5000)[0].endswith("is more than 1,000,000,000")
    assert reasons("sku", "1", "0", "-" + "9" * 5000)[0].endswith("is negative")
    assert reasons("sku", "1", "0", "1000000000") == ["ok 1000000000"]
    assert reasons("sku", "1", "0", "-0") == ["ok 0"]
