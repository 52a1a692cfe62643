"""Stock CSV files: the export format and the checks an import must pass before anything is applied.

Rules:

- The columns are interface.md's, in that order; one row per binding and
  location. Written with the stdlib ``csv`` module, every field quoted as a
  spreadsheet expects, UTF-8 (a byte-order mark is tolerated on import).
- An import sets ``clover_stock`` for each (SKU or id, location) row: the
  count at that store, as after a recount. WooCommerce follows through the
  normal merge (the sum over locations in aggregate mode). ``woo_stock`` is
  never written; it is the file's "as of" stamp: when it is filled in and the
  product's agreed WooCommerce stock is no longer that figure, the stock
  moved since the export and the row is rejected, so re-importing an
  edited export cannot undo the sales made meanwhile. An empty ``woo_stock``
  sets the count regardless.
- A file whose header is not the export's is refused whole: nothing is
  applied. Otherwise every row is checked first (unknown SKU or id, unknown
  location, non-numeric or negative quantity, the same binding and location
  twice) and each rejected row is reported with its line number and reason;
  the rows that pass are applied.
- Pure: text in, rows and errors out.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

HEADER: tuple[str, ...] = (
    "name", "sku", "woo_product_id", "woo_variation_id", "clover_item_id", "location",
    "clover_stock", "woo_stock", "sync_status", "last_synced_at",
)

Match = Literal["sku", "id"]

MAX_QUANTITY = 1_000_000_000
"""The largest count a row may set. The file is typed by hand and goes straight to a Clover write, then to
WooCommerce and the store's 64-bit integers as a delta: a typo of twenty digits must be a rejected row, not a
write no side can hold."""
_WHOLE = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take '١٢', '1_000' and '+5'
_ID = re.compile(r"[0-9]{1,19}")  # str.isdigit() also takes '²', which int() refuses


class ExportRow(msgspec.Struct, frozen=True):
    name: str
    sku: str
    woo_product_id: int
    woo_variation_id: int
    clover_item_id: str
    location: str
    clover_stock: int | None
    woo_stock: int | None
    sync_status: str
    last_synced_at: str


class ImportRow(msgspec.Struct, frozen=True):
    """One accepted row: set ``location``'s count of the binding found by ``key`` to ``quantity``."""

    line: int
    key: str  # the SKU, or "woo_product_id:woo_variation_id" with --match id
    location: str
    quantity: int


class RowError(msgspec.Struct, frozen=True):
    line: int
    reason: str


class HeaderError(Exception):
    """The file's header is not the export's: nothing is applied."""


def format_rows(rows: Iterable[ExportRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    w.writerow(HEADER)
    for r in rows:
        w.writerow([r.name, r.sku, r.woo_product_id, r.woo_variation_id, r.clover_item_id, r.location,
                    "" if r.clover_stock is None else r.clover_stock, "" if r.woo_stock is None else r.woo_stock,
                    r.sync_status, r.last_synced_at])
    return out.getvalue()


def parse_import(
    text: str, *, match: Match, known: Mapping[str, frozenset[str]],
    woo_now: Mapping[str, int | None] | None = None,
) -> tuple[list[ImportRow], list[RowError]]:
    """Check every row of an import; ``known`` maps each binding key to the locations it is bound at.

    ``woo_now`` maps a binding key to its agreed WooCommerce stock now (None:
    never synced); with it, a filled-in ``woo_stock`` must still be that figure.

    Error handling: ``HeaderError`` when the header is wrong (apply nothing);
    otherwise the accepted rows and one ``RowError`` per rejected row.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise HeaderError("the file is empty") from None
    except csv.Error as exc:
        raise HeaderError(f"line 1: {exc}") from None
    if tuple(h.strip() for h in header) != HEADER:
        raise HeaderError(f"line 1: the header must be {','.join(HEADER)}")
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = reader.line_num
            errors.append(RowError(line, f"unreadable row: {exc}"))
            continue
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # a blank line, as spreadsheets leave at the end
        if len(fields) != len(HEADER):
            errors.append(RowError(line, f"{len(fields)} fields, expected {len(HEADER)}"))
            continue
        row = dict(zip(HEADER, (f.strip() for f in fields), strict=True))
        if match == "sku":
            key = row["sku"]
            if not key:
                errors.append(RowError(line, "no SKU (use --match id for products without one)"))
                continue
        else:
            pid, vid = row["woo_product_id"], row["woo_variation_id"] or "0"
            if _ID.fullmatch(pid) is None or _ID.fullmatch(vid) is None:
                errors.append(RowError(line, "woo_product_id and woo_variation_id must be whole numbers"))
                continue
            key = f"{int(pid)}:{int(vid)}"
        locations = known.get(key)
        if locations is None:
            errors.append(RowError(line, f"unknown {'SKU' if match == 'sku' else 'product id'} {key!r}"))
            continue
        location = row["location"]
        if location not in locations:
            errors.append(RowError(line, f"{key!r} is not bound at location {location!r}"))
            continue
        raw = row["clover_stock"]
        if _WHOLE.fullmatch(raw) is None:
            errors.append(RowError(line, f"clover_stock {raw!r} is not a whole number"))
            continue
        if raw.startswith("-") and raw.strip("-0"):
            errors.append(RowError(line, f"clover_stock {raw} is negative"))
            continue
        if len(raw.lstrip("-0")) > len(str(MAX_QUANTITY)) or int(raw) > MAX_QUANTITY:
            errors.append(RowError(line, f"clover_stock {raw} is more than {MAX_QUANTITY:,}"))
            continue
        quantity = int(raw)
        stamp = row["woo_stock"]
        if stamp and woo_now is not None:
            try:
                then = int(stamp)
            except ValueError:
                errors.append(RowError(line, f"woo_stock {stamp!r} is not a whole number (leave it empty to "
                                             "set the count regardless)"))
                continue
            now = woo_now.get(key)
            if now != then:
                errors.append(RowError(line, f"stock changed since the export: woo_stock {then} in the file, "
                                             f"{'unknown' if now is None else now} now (export again, or empty "
                                             "woo_stock to set the count regardless)"))
                continue
        first = seen.get((key, location))
        if first is not None:
            errors.append(RowError(line, f"duplicate of line {first} ({key!r} at {location!r})"))
            continue
        seen[(key, location)] = line
        rows.append(ImportRow(line, key, location, quantity))
    return rows, errors
