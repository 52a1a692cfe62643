"""Coalescing: what is waiting for one binding's next merge, folded into one small record.

Rules:

- Any number of triggers for a binding fold into one :class:`Pending`: one
  merge with fresh reads answers them all (sync-model.md, "events that arrive
  while a merge is in flight are coalesced").
- Folding never loses what a trigger asked for: the inbox events to settle,
  the Clover locations that may have moved (``None``: any), the stock figures
  Woo webhooks carried, and a job's recount (``initialise``) with its job.
- Small, because a catalogue refresh queues one per binding at once: slots,
  trigger kinds as one shared frozenset per combination, and the id and hint
  sets created only when something is added (three empty sets were 650
  bytes, 33 MB at 50,000 bindings).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cloverwoo_daemon.messages import Initialise

_NO_IDS: frozenset[int] = frozenset()
_TRIGGER_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(triggers: frozenset[str]) -> frozenset[str]:
    """One shared object per combination of trigger kinds (there are a handful, and 50,000 pendings)."""
    if len(_TRIGGER_SETS) > 1024:  # not expected: trigger kinds are a fixed set
        return triggers
    return _TRIGGER_SETS.setdefault(triggers, triggers)


@dataclass(slots=True)
class Pending:
    """Triggers waiting for one binding's next merge, coalesced."""

    event_ids: set[int] | frozenset[int] = _NO_IDS
    triggers: frozenset[str] = frozenset()
    received_at: float = math.inf  # earliest trigger (trio clock), for latency
    initialise: Initialise | None = None  # a recount from list reads, run before any plain merge
    woo_hints: set[int] | frozenset[int] = _NO_IDS  # stock figures Woo webhooks carried
    unhinted: bool = False  # some trigger carried no stock figure: a merge is needed
    # The Clover locations where the triggers say stock can have moved (``MarkDirty.clover_at``), or None
    # for any: an aggregate merge reads those (and the primary for a Woo change), not every location.
    clover_at: frozenset[str] | None = frozenset()
    # The job of ``initialise`` was told this binding failed (after repeated failures): told once only,
    # while the merge itself goes on retrying as the binding's own failure.
    job_told_failed: bool = False

    def add_trigger(self, *kinds: str) -> None:
        if not self.triggers.issuperset(kinds):
            self.triggers = _shared(self.triggers.union(kinds))

    def absorb(
        self, event_ids: tuple[int, ...] | set[int] | frozenset[int], trigger: str, received_at: float,
        hint: int | None = None, clover_at: tuple[str, ...] | None = None,
    ) -> None:
        self._widen(clover_at)
        if event_ids:
            self.event_ids = grown(self.event_ids, event_ids)
        self.add_trigger(trigger)
        self.received_at = min(self.received_at, received_at)
        if hint is None:
            self.unhinted = True
        else:
            self.woo_hints = grown(self.woo_hints, (hint,))

    def absorb_pending(self, other: Pending) -> None:
        self._widen(other.clover_at)
        if other.event_ids:
            self.event_ids = grown(self.event_ids, other.event_ids)
        self.add_trigger(*other.triggers)
        self.received_at = min(self.received_at, other.received_at)
        if other.woo_hints:
            self.woo_hints = grown(self.woo_hints, other.woo_hints)
        self.unhinted |= other.unhinted or not other.woo_hints
        if other.initialise is not None:
            if self.initialise is None or self.initialise.job_id != other.initialise.job_id:
                self.job_told_failed = other.job_told_failed
            else:
                self.job_told_failed |= other.job_told_failed
            self.initialise = other.initialise

    def read_everywhere(self) -> None:
        """Read every location at the next merge (a retry or a restart cannot trust a narrower guess)."""
        self.clover_at = None

    def _widen(self, clover_at: Iterable[str] | None) -> None:
        if clover_at is None:
            self.clover_at = None
        elif self.clover_at is not None:
            self.clover_at = self.clover_at.union(clover_at)

    @property
    def from_woo(self) -> bool:
        """A WooCommerce webhook or poll is among the triggers: Woo's stock may have moved."""
        return any(t.startswith(("webhook:woo", "poll:woo")) for t in self.triggers)

    def only_echoes(self, base_woo: int | None) -> bool:
        """Every trigger was a Woo webhook carrying exactly the stock we last agreed on: nothing to merge."""
        return not self.unhinted and self.initialise is None and base_woo is not None and self.woo_hints == {base_woo}


def grown(held: set[int] | frozenset[int], more: Iterable[int]) -> set[int]:
    """``held`` with ``more`` added: in place once it is a set of its own, a new set the first time."""
    if isinstance(held, set):
        held.update(more)
        return held
    return {*held, *more}
