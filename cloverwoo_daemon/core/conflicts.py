"""What an open oversell conflict says: the figure stock ended at, and the sales that took it there.

Rules:

- One open conflict per binding and kind (the store deduplicates). A sale
  that takes an already oversold figure lower flags again; it must not be
  lost in the deduplication, or ``cloverwoo conflicts`` shows the first
  figure (-1) while the stock ended at -3. So the store folds each new flag
  into the open conflict with :func:`fold_oversell`: ``value`` becomes the
  latest figure, ``first_value`` keeps the first, and ``sales`` lists every
  change that was flagged, oldest first (the last :data:`MAX_SALES`).
- Pure: JSON text in, JSON text out. A detail that does not parse is kept as
  it is rather than lost.
"""

from __future__ import annotations

import json
from typing import Any

MAX_SALES = 50


def oversell_detail(
    *, side: str, location: str, value: int, change: int, trigger: str, at: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The detail of one oversell flag: ``value`` is the figure the change of ``change`` left on ``side``."""
    sale = {"side": side, "location": location, "change": change, "to": value, "trigger": trigger, "at": at}
    return {**(extra or {}), "side": side, "location": location, "value": value, "first_value": value,
            "trigger": trigger, "sales": [sale]}


def fold_oversell(old: str, new: str) -> str:
    """The open conflict's detail ``old`` with the flag ``new`` folded in (see the module rules)."""
    try:
        before = json.loads(old)
        latest = json.loads(new)
    except ValueError:
        return old
    if not isinstance(before, dict) or not isinstance(latest, dict):
        return old
    sales = _sales(before) + _sales(latest)
    folded = {**before, **latest}
    folded["first_value"] = before.get("first_value", before.get("value"))
    folded["sales"] = sales[-MAX_SALES:]
    return json.dumps(folded)


def _sales(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The sales a detail lists; one written before sales were listed counts as its own single sale."""
    sales = detail.get("sales")
    if isinstance(sales, list):
        return [s for s in sales if isinstance(s, dict)]
    if "value" in detail:
        return [{"side": detail.get("side"), "location": detail.get("location", ""), "to": detail.get("value"),
                 "trigger": detail.get("trigger", "")}]
    return []
