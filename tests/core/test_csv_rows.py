"""CSV rules: the export round-trips, every bad row is named with its line, a bad header applies nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.csv_rows import HEADER, ExportRow, HeaderError, format_rows, parse_import

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
