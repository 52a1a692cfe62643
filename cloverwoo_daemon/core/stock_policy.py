"""Out-of-stock behaviour: what the shop should show while a product has no stock, and how to undo it.

Rules this module keeps:

- Pure: no I/O. The actor reads the product's presentation, asks ``plan``
  what to write, writes it, and stores the returned ``Applied`` record.
- One of three actions per product (``alerts.out_of_stock``, overridden per
  SKU): ``hide`` (``catalog_visibility`` hidden), ``backorder`` (backorders
  ``notify``) or ``contact`` (left visible and out of stock, with a message in
  product meta ``_cloverwoo_out_of_stock_message`` for the theme to show).
- Applied when the stock the shop shows reaches zero or below, undone when it
  comes back above zero. The record keeps the value that was replaced and the
  value written, so the undo restores exactly what was there before.
- The merchant wins: if a field no longer holds what we wrote when it is time
  to undo, somebody changed it by hand, and it is left alone.
- Never a no-op write: a field is written only when the target differs from
  what the product holds (WooCommerce bumps ``date_modified`` and fires a
  webhook for every save, even an empty one).
- Untracked, excluded and never-synced bindings are never touched
  (``desired`` says None for them).
- A variation has no ``catalog_visibility``: ``hide`` has nothing to write for
  it (WooCommerce hides out-of-stock variations through its own store-wide
  setting); the record still notes the action so the product is not read
  again at every merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from cloverwoo_daemon.core.model import Binding

__all__ = [
    "ACTIONS",
    "CONTACT_META_KEY",
    "Action",
    "Applied",
    "Change",
    "Presentation",
    "action_for",
    "desired",
    "needs_look",
    "plan",
]

Action = Literal["hide", "backorder", "contact"]
ACTIONS: tuple[Action, ...] = ("hide", "backorder", "contact")
CONTACT_META_KEY = "_cloverwoo_out_of_stock_message"
HIDDEN = "hidden"
NOTIFY = "notify"


class Presentation(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a Woo product the out-of-stock behaviour reads and writes."""

    catalog_visibility: str | None = None  # None: a variation (no such field)
    backorders: str = "no"
    contact_message: str = ""  # our meta's value, "" when absent


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What to write; None leaves a field as it is."""

    catalog_visibility: str | None = None
    backorders: str | None = None
    contact_message: str | None = None

    @property
    def empty(self) -> bool:
        return self.catalog_visibility is None and self.backorders is None and self.contact_message is None


class Applied(msgspec.Struct, frozen=True):
    """A behaviour in force on one binding (durable: the undo must survive a restart)."""

    action: Action
    previous: str | None  # what the field held before (None: the product has no such field)
    set_to: str | None  # what we left in it


def action_for(
    sku: str, default: Action, overrides: Mapping[str, str] | None = None, runtime: Mapping[str, str] | None = None
) -> Action:
    """The action of one SKU: run-time override, then the config's per-SKU one, then the global one."""
    for table in (runtime, overrides):
        if table and sku in table and table[sku] in ACTIONS:
            return table[sku]  # type: ignore[return-value]
    return default


def desired(binding: Binding, action: Action) -> Action | None:
    """The action that should be in force now (None: none), from the stock the shop shows."""
    if not binding.tracked or binding.excluded or binding.base_woo is None:
        return None
    return action if binding.base_woo <= 0 else None


def needs_look(want: Action | None, applied: Applied | None) -> bool:
    """Whether the product must be read at all: only when what should be in force is not what is."""
    return want != (applied.action if applied is not None else None)


def _field(action: Action, p: Presentation) -> str | None:
    if action == "hide":
        return p.catalog_visibility
    if action == "backorder":
        return p.backorders
    return p.contact_message


def _target(action: Action, message: str) -> str:
    return HIDDEN if action == "hide" else NOTIFY if action == "backorder" else message


def _with(change: Change, action: Action, value: str) -> Change:
    if action == "hide":
        return msgspec.structs.replace(change, catalog_visibility=value)
    if action == "backorder":
        return msgspec.structs.replace(change, backorders=value)
    return msgspec.structs.replace(change, contact_message=value)


def plan(
    want: Action | None, applied: Applied | None, current: Presentation, *, message: str
) -> tuple[Change, Applied | None]:
    """What to write to go from ``applied`` to ``want``, given the product as read; and the new record."""
    change = Change()
    record = applied
    if applied is not None and applied.action != want:
        now = _field(applied.action, current)
        if now is not None and now == applied.set_to and applied.previous is not None and now != applied.previous:
            change = _with(change, applied.action, applied.previous)
            current = _apply(current, applied.action, applied.previous)
        record = None
    if want is not None and record is None:
        now = _field(want, current)
        if now is None:  # a variation asked to hide: nothing to write
            return change, Applied(want, None, None)
        target = now
        if want == "backorder" and now != "no":
            target = now  # backorders are allowed already ("notify" or "yes"): leave them as they are
        else:
            target = _target(want, message)
        if target != now:
            change = _with(change, want, target)
        record = Applied(want, now, target)
    return change, record


def _apply(p: Presentation, action: Action, value: str) -> Presentation:
    if action == "hide":
        return msgspec.structs.replace(p, catalog_visibility=value)
    if action == "backorder":
        return msgspec.structs.replace(p, backorders=value)
    return msgspec.structs.replace(p, contact_message=value)
