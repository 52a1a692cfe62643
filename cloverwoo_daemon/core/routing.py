"""Where a WooCommerce stock change lands among the Clover locations.

Rules this module keeps:

- The deltas returned always sum to ``dw`` exactly, as long as one location
  has a known stock. With none, nothing can be routed: the result is empty
  and the caller keeps the change pending (the merge writes nothing then).
- Only locations with a known stock (a read that is not ``None``) and listed
  in ``order`` (the active locations) are ever given a delta: a location we
  could not read is never written.
- An increase (a return, a refund, a restock online) goes to the primary
  location. A decrease is taken as the rule says:

  ``"primary"``
      all from the primary (it may go negative; the merge flags that).
  ``"most_stock"``
      from the location holding the most stock, as much as it has, then the
      next (ties broken by ``order``).
  a tuple of location names (the fallback order)
      all from the first location in that order that holds enough; when none
      does, as much as each has, in that order, then the other known
      locations in ``order``.

- Whatever no location can cover lands on the primary, which then goes
  negative: that is an oversell and the merge flags it. So with
  ``"most_stock"`` or a fallback order, no location is taken below zero while
  another one still holds stock.
- The primary stands in only if its stock is known; otherwise the first
  known location in ``order`` plays its part (a returned unit has to go
  somewhere we can write).
- Stock below zero counts as none available, never as something to take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DeductRule = str | tuple[str, ...]  # "primary" | "most_stock" | fallback order

RULES = ("primary", "most_stock")


def route(
    dw: int,
    reads: Mapping[str, int | None],
    *,
    rule: DeductRule,
    primary: str,
    order: Sequence[str],
) -> dict[str, int]:
    """Split the Woo-side change ``dw`` into one delta per Clover location (zero deltas left out)."""
    known = [loc for loc in dict.fromkeys(order) if reads.get(loc) is not None]
    if dw == 0 or not known:
        return {}
    stand_in = primary if primary in known else known[0]
    if dw > 0 or rule == "primary":
        return {stand_in: dw}

    stock = {loc: max(_known(reads, loc), 0) for loc in known}
    need = -dw
    if rule == "most_stock":
        # sorted() is stable, so equal stock keeps the configured order.
        sequence = sorted(known, key=lambda loc: -stock[loc])
    elif isinstance(rule, tuple):
        preferred = [loc for loc in dict.fromkeys(rule) if loc in stock]
        for loc in preferred:
            if stock[loc] >= need:
                return {loc: dw}
        sequence = preferred + [loc for loc in known if loc not in preferred]
    else:
        raise ValueError(f"unknown deduct rule {rule!r}")

    out: dict[str, int] = {}
    for loc in sequence:
        if need == 0:
            break
        take = min(need, stock[loc])
        if take:
            out[loc] = -take
            need -= take
    if need:
        out[stand_in] = out.get(stand_in, 0) - need
    return out


def _known(reads: Mapping[str, int | None], loc: str) -> int:
    value = reads.get(loc)
    assert value is not None  # callers filter unknown locations first
    return value
