"""The three-way merge of one binding, and the bookkeeping that makes it safe to apply in steps.

Rules this module keeps (sync-model.md is the spec):

- Pure: fresh reads and a binding in, a frozen :class:`Plan` out. No I/O,
  no clock, no randomness.
- Deltas, never absolutes. With ``dC[l] = C[l] - base_clover[l]`` and
  ``dW = W - base_woo``, Woo is sent ``sum(dC)`` as an ``inventory_delta``
  and each Clover location ``l`` is written ``fresh re-read + delta_l``,
  where the ``delta_l`` split ``dW`` as :func:`routing.route` says. A zero
  delta is no write at all (WooCommerce fires ``product.updated`` even for a
  no-op write).
- The bases move by exactly what each write transferred, one step at a time,
  in this order:

  1. the **Woo step**, after the Woo write succeeded (at once when
     ``woo_delta == 0``): ``base_clover[l] := C[l]`` for every location read,
     ``base_woo := W + woo_delta - sum(clover_deltas)``;
  2. one **Clover step** per written location, after its write succeeded:
     ``base_clover[l] += delta_l`` and ``base_woo += delta_l``;
  3. :func:`finish`: ``version := old version + 1``.

  After all steps ``base_woo == W + sum(dC)`` and ``base_clover[l] ==
  C[l] + delta_l``. A failed write leaves its part of the change pending in
  the difference between bases and reality, so the next merge recomputes it
  from fresh reads: nothing is lost, nothing is applied twice.
- ``base_woo == sum(base_clover)`` over every location the binding ever
  synced, before and after each step; each step keeps it.
- The stock a write returns is never taken into the bases: a difference
  from ``expected_woo`` (or from a Clover read) is a change that happened
  meanwhile, and the next merge sees it as a fresh delta.
- Our own writes observed back (a webhook, a poll) equal the new bases and
  plan nothing: no loops. The same observation twice plans nothing the
  second time: idempotent.
- Unknown is not zero. A location whose read is ``None`` is neither read
  into ``dC`` nor written; ``dW`` is routed among known locations only, and
  when none is known the plan writes nothing and every delta stays pending.
  A Woo read of ``None``, an untracked binding (``manage_stock`` off) or an
  excluded one plans nothing, with the reason in ``Plan.skip``.
- Initial sync (``base_woo`` is ``None``, or an active location with a known
  read has no base): the configured source of truth wins outright. Clover:
  Woo is sent ``sum(C) - W``. Woo: the Clover locations are given ``W -
  sum(C)`` (routed like any other Woo change, so by default onto the
  primary). The same step functions then set the bases. A location synced
  before but unreadable now counts in ``sum(C)`` at its base. Any Woo change
  pending from before is overruled with the rest: an initial sync is a
  recount.
- Oversell: a side whose new value is below zero *because this merge applied
  a negative delta to it* is flagged. A value that merely stays negative is
  not flagged again at every merge. Both sides moving in one window is
  flagged ``concurrent`` (information, not a conflict).
- Crash safety: the actor persists a :class:`WriteIntent` before the first
  write and with every step. Each intent carries a write id, unique per
  binding and write (chosen by the actor, random, never derived from the
  version: a duplicated or re-bound product carries an older binding's
  marker). The Woo write sends it as a product meta marker with an
  ``inventory_delta``, or as the companion's write id, so :func:`recover` can
  tell whether it landed. A
  Clover write has no marker: a location written but not yet committed is
  the one remote window the core cannot settle; :func:`recover` returns
  those locations and the caller decides (by comparing a fresh read with the
  intent's recorded absolute target).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from cloverwoo_daemon.core import routing
from cloverwoo_daemon.core.model import Binding

Mode = Literal["aggregate", "single", "per-location"]
SourceOfTruth = Literal["clover", "woo"]
FlagKind = Literal["oversell", "concurrent"]
FlagSide = Literal["woo", "clover", "both"]
WooVia = Literal["delta", "companion"]  # inventory_delta + meta marker, or the WordPress companion by write id

_MODES = ("aggregate", "single", "per-location")

__all__ = [
    "Flag",
    "MergeConfig",
    "Plan",
    "Reads",
    "WriteIntent",
    "after_clover_step",
    "after_clover_step_from_intent",
    "after_woo_step",
    "after_woo_step_from_intent",
    "finish",
    "finish_from_intent",
    "intent_for",
    "owe_erased",
    "plan_merge",
    "recover",
]


class MergeConfig(msgspec.Struct, frozen=True):
    """How merges route and settle, from ``[sync]`` and the active locations."""

    mode: Mode = "aggregate"
    locations: tuple[str, ...] = ()  # active locations, in configured order
    primary: str = ""
    deduct: str | tuple[str, ...] = "primary"  # "primary" | "most_stock" | fallback order
    source_of_truth: SourceOfTruth = "clover"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {self.mode!r}")
        if self.source_of_truth not in ("clover", "woo"):
            raise ValueError(f"source_of_truth must be clover or woo, not {self.source_of_truth!r}")
        if not self.locations:
            raise ValueError("at least one location is needed")
        if self.primary not in self.locations:
            raise ValueError(f"primary {self.primary!r} is not one of the locations {self.locations}")
        if isinstance(self.deduct, str):
            if self.deduct not in routing.RULES:
                raise ValueError(f"deduct must be primary, most_stock or a tuple of locations, not {self.deduct!r}")
        elif not self.deduct or not all(isinstance(loc, str) for loc in self.deduct):
            # Names outside ``locations`` are allowed (single mode keeps only the primary);
            # config.py rejects names no location has.
            raise ValueError(f"deduct must name at least one location, not {self.deduct!r}")

    @property
    def active(self) -> tuple[str, ...]:
        """The locations a merge reads and writes: single mode keeps only the primary."""
        return (self.primary,) if self.mode == "single" else self.locations


class Reads(msgspec.Struct, frozen=True):
    """Fresh reads of both sides; ``None`` is unknown (no stock record, failed read), never zero."""

    woo: int | None
    clover: dict[str, int | None] = msgspec.field(default_factory=dict)


class Flag(msgspec.Struct, frozen=True):
    """Something a merge noticed that the sync log (and, for an oversell, an alert) must show."""

    kind: FlagKind
    side: FlagSide
    location: str = ""  # a Clover location, for side == "clover"
    value: int = 0  # the new value (oversell) or dW (concurrent)
    detail: str = ""


class Plan(msgspec.Struct, frozen=True):
    """What one merge decided. Applied by the actor in steps (see the module rules)."""

    binding_id: str
    version: int  # the version this merge sets; also the Woo meta marker sent with the delta
    woo_read: int | None
    clover_reads: dict[str, int]  # known reads of active, bound locations
    woo_delta: int = 0  # sent as inventory_delta; 0: no Woo write
    expected_woo: int | None = None  # woo_read + woo_delta
    clover_deltas: dict[str, int] = msgspec.field(default_factory=dict)  # non-zero only, in location order
    dw: int = 0  # what happened online since the base (0 in an initial sync)
    dc: dict[str, int] = msgspec.field(default_factory=dict)  # what happened at each known location
    clover_expected: dict[str, int] = msgspec.field(default_factory=dict)  # per-location figures after the merge
    initial: bool = False
    flags: tuple[Flag, ...] = ()
    skip: str = ""  # non-empty: nothing is written or moved, and why

    @property
    def writes(self) -> bool:
        """Whether the plan sends anything to either side."""
        return bool(self.woo_delta) or bool(self.clover_deltas)

    @property
    def oversold(self) -> bool:
        return any(f.kind == "oversell" for f in self.flags)


class WriteIntent(msgspec.Struct, frozen=True):
    """What a merge is about to write, persisted before its first write and updated with each step.

    Holds everything the step functions need, so that an interrupted merge's
    bookkeeping can be finished after a restart without the original reads.
    ``clover_started`` names the locations whose read-then-write began (it is
    committed before the read); ``clover_targets`` holds the absolute value
    sent, committed concurrently with the write so that the read-to-write
    window stays one round trip. Together they let :func:`recover`'s caller
    tell whether an in-doubt write landed, or flag it when it cannot.

    ``write_id`` names the Woo write: the product meta marker sent with an
    ``inventory_delta`` (``woo_via == "delta"``), or the WordPress companion's
    write id (``"companion"``), which makes a resend apply nothing twice.
    Intents written before write ids existed have none: their marker is the
    version. ``created_at`` (unix seconds) bounds how long a companion write
    may be resent (the companion forgets write ids after some days).
    """

    binding_id: str
    version: int
    woo_delta: int
    expected_woo: int
    clover_deltas: dict[str, int]
    clover_reads: dict[str, int]
    woo_done: bool = False
    clover_done: tuple[str, ...] = ()
    clover_targets: dict[str, int] = msgspec.field(default_factory=dict)
    clover_started: tuple[str, ...] = ()
    write_id: str = ""
    woo_via: WooVia = "delta"
    created_at: float = 0.0
    # an inventory_delta sent and not answered: "ended" (the store answered: the marker tells at once) or
    # "may_land" (a timeout, a reset: PHP may apply it later), seen at ``woo_unknown_at`` (unix seconds)
    woo_answer: Literal["", "ended", "may_land"] = ""
    woo_unknown_at: float = 0.0

    @property
    def marker(self) -> str:
        """What the Woo product's meta marker holds once this intent's delta landed."""
        return self.write_id or str(self.version)


# --------------------------------------------------------------------------
# Planning


def _skip(binding: Binding, reads: Reads, reason: str) -> Plan:
    return Plan(binding_id=binding.binding_id, version=binding.version, woo_read=reads.woo,
                clover_reads={}, expected_woo=reads.woo, skip=reason)


def plan_merge(binding: Binding, reads: Reads, cfg: MergeConfig) -> Plan:
    """Decide what to write for one binding, from fresh reads of both sides."""
    if binding.excluded:
        return _skip(binding, reads, "excluded")
    if not binding.tracked:
        return _skip(binding, reads, "untracked: manage_stock is off")
    w = reads.woo
    if w is None:
        return _skip(binding, reads, "woocommerce stock unknown")
    known: dict[str, int] = {}
    for loc in cfg.active:
        c = reads.clover.get(loc)
        if c is not None and loc in binding.clover_items:
            known[loc] = c
    if not known:
        return _skip(binding, reads, "no clover location has a known stock: changes stay pending")

    initial = binding.base_woo is None or any(binding.base_clover.get(loc) is None for loc in known)
    # A location synced before but unreadable now still holds its stock: an
    # initial sync counts it at its base, so it is neither dropped from Woo
    # nor given stock that belongs elsewhere, and base_woo == sum(base_clover).
    held = sum(
        base
        for loc in cfg.active
        if loc in binding.clover_items and loc not in known
        and (base := binding.base_clover.get(loc)) is not None
    )
    route_order = tuple(known)
    dc: dict[str, int] = {}
    dw = 0
    if initial:
        if cfg.source_of_truth == "clover":
            woo_delta = sum(known.values()) + held - w
            clover_deltas: dict[str, int] = {}
        else:
            woo_delta = 0
            clover_deltas = routing.route(w - sum(known.values()) - held, known, rule=cfg.deduct,
                                          primary=cfg.primary, order=route_order)
    else:
        assert binding.base_woo is not None
        for loc, c in known.items():
            base = binding.base_clover.get(loc)
            assert base is not None
            dc[loc] = c - base
        dw = w - binding.base_woo
        woo_delta = sum(dc.values())
        clover_deltas = routing.route(dw, known, rule=cfg.deduct, primary=cfg.primary, order=route_order)

    clover_deltas = {loc: clover_deltas[loc] for loc in known if clover_deltas.get(loc)}
    expected_woo = w + woo_delta
    clover_expected = {loc: c + clover_deltas.get(loc, 0) for loc, c in known.items()}

    flags: list[Flag] = []
    if woo_delta < 0 and expected_woo < 0:
        flags.append(Flag("oversell", "woo", value=expected_woo,
                          detail=f"woocommerce goes to {expected_woo} after a change of {woo_delta}"))
    for loc, delta in clover_deltas.items():
        if delta < 0 and clover_expected[loc] < 0:
            flags.append(Flag("oversell", "clover", location=loc, value=clover_expected[loc],
                              detail=f"{loc} goes to {clover_expected[loc]} after a change of {delta}"))
    if not initial and dw != 0 and woo_delta != 0:
        flags.append(Flag("concurrent", "both", value=dw,
                          detail=f"both sides moved: woocommerce {dw:+d}, clover {woo_delta:+d}"))

    return Plan(
        binding_id=binding.binding_id,
        version=binding.version + 1,
        woo_read=w,
        clover_reads=known,
        woo_delta=woo_delta,
        expected_woo=expected_woo,
        clover_deltas=clover_deltas,
        dw=dw,
        dc=dc,
        clover_expected=clover_expected,
        initial=initial,
        flags=tuple(flags),
    )


# --------------------------------------------------------------------------
# Steps: each moves the bases by exactly what one write transferred


def intent_for(binding: Binding, plan: Plan, *, write_id: str = "", via: WooVia = "delta",
               now: float = 0.0) -> WriteIntent:
    """The intent to persist before the first write of ``plan``.

    ``write_id`` must be unique per binding and write (the caller draws it at
    random); ``via`` says how the Woo delta is sent; ``now`` is the wall clock.
    """
    if plan.skip or plan.expected_woo is None:
        raise ValueError(f"plan for {plan.binding_id} writes nothing ({plan.skip})")
    if plan.binding_id != binding.binding_id:
        raise ValueError(f"plan for {plan.binding_id} applied to {binding.binding_id}")
    if via not in ("delta", "companion"):
        raise ValueError(f"woo writes go by delta or companion, not {via!r}")
    return WriteIntent(binding_id=plan.binding_id, version=plan.version, woo_delta=plan.woo_delta,
                       expected_woo=plan.expected_woo, clover_deltas=dict(plan.clover_deltas),
                       clover_reads=dict(plan.clover_reads), write_id=write_id, woo_via=via, created_at=now)


def _woo_step(binding: Binding, expected_woo: int, clover_deltas: dict[str, int],
              clover_reads: dict[str, int]) -> Binding:
    return msgspec.structs.replace(
        binding,
        base_woo=expected_woo - sum(clover_deltas.values()),
        base_clover={**binding.base_clover, **clover_reads},
    )


def _clover_step(binding: Binding, location: str, delta: int) -> Binding:
    if not delta:
        return binding
    base_c = binding.base_clover.get(location)
    if base_c is None or binding.base_woo is None:
        raise ValueError(f"{binding.binding_id}: the Woo step must come before the Clover step of {location}")
    return msgspec.structs.replace(
        binding,
        base_woo=binding.base_woo + delta,
        base_clover={**binding.base_clover, location: base_c + delta},
    )


def after_woo_step(binding: Binding, plan: Plan) -> Binding:
    """The bases once the Woo write succeeded (or at once, when ``woo_delta == 0``).

    The stock Woo returned is deliberately not an argument: a difference from
    ``expected_woo`` is a fresh Woo-side change for the next merge.
    """
    if plan.skip or plan.expected_woo is None:
        return binding
    return _woo_step(binding, plan.expected_woo, plan.clover_deltas, plan.clover_reads)


def after_clover_step(binding: Binding, plan: Plan, location: str) -> Binding:
    """The bases once the write of ``location`` (fresh read + its delta) succeeded."""
    return _clover_step(binding, location, plan.clover_deltas.get(location, 0))


def finish(binding: Binding, plan: Plan) -> Binding:
    """The binding once every step of ``plan`` is done: the version moves on."""
    if plan.skip:
        return binding
    return msgspec.structs.replace(binding, version=plan.version)


def after_woo_step_from_intent(binding: Binding, intent: WriteIntent) -> Binding:
    return _woo_step(binding, intent.expected_woo, intent.clover_deltas, intent.clover_reads)


def after_clover_step_from_intent(binding: Binding, intent: WriteIntent, location: str) -> Binding:
    return _clover_step(binding, location, intent.clover_deltas.get(location, 0))


def finish_from_intent(binding: Binding, intent: WriteIntent) -> Binding:
    return msgspec.structs.replace(binding, version=max(binding.version, intent.version))


def owe_erased(binding: Binding, units: int, cfg: MergeConfig) -> tuple[Binding, str]:
    """The bases that make the next merge take ``units`` erased sales off both sides; (binding, location).

    A checkout our own write erased was never seen by either side: both hold
    ``units`` too many, and agree. Raising ``base_woo`` and one location's
    base by ``units`` makes the next merge see ``-units`` on each side, so it
    sends ``-units`` to WooCommerce and routes ``-units`` to Clover like any
    online sale; ``base_woo == sum(base_clover)`` still holds. The location is
    the primary when it has a base, else the first active one that has.

    Error handling: ``ValueError`` when the binding was never synced (no
    bases: a recount decides its figures anyway) or ``units`` is not positive.
    """
    if units <= 0:
        raise ValueError(f"{binding.binding_id}: {units} erased units is not a repair")
    if binding.base_woo is None:
        raise ValueError(f"{binding.binding_id} was never synced: nothing to repair against")
    order = [cfg.primary, *(loc for loc in cfg.active if loc != cfg.primary)]
    loc = next((x for x in order if x in binding.clover_items and binding.base_clover.get(x) is not None), None)
    if loc is None:
        raise ValueError(f"{binding.binding_id} has no synced location to repair against")
    base = binding.base_clover[loc]
    assert base is not None
    return msgspec.structs.replace(binding, base_woo=binding.base_woo + units,
                                   base_clover={**binding.base_clover, loc: base + units}), loc


def recover(
    binding: Binding, intent: WriteIntent, woo_marker: str | int | None, *, woo_landed: bool | None = None,
) -> tuple[Binding, tuple[str, ...]]:
    """Finish what can be proven of a merge a crash interrupted; return the Clover locations in doubt.

    ``binding`` is as last committed (its steps already include every step the
    intent records as done). ``woo_marker`` is the meta marker read back
    from the Woo product now; ``woo_landed``, when given, settles the Woo write
    instead (a companion write is settled by resending its write id).

    Error handling: the Woo write is settled by its marker (equal to
    ``intent.marker``: it landed, so its step is applied here). The actor
    writes Woo before any Clover location, so a Woo write that did not land
    means no Clover write was sent: nothing is in doubt, and the whole change
    stays pending for the next merge. Otherwise the locations with a delta
    that the intent does not record as done are returned, in order: Clover
    offers no marker, so whether those writes landed is for the caller to
    decide (a fresh read equal to ``intent.clover_targets[loc]`` is the best
    evidence; apply :func:`after_clover_step_from_intent` if it landed). Then
    :func:`finish_from_intent`.
    """
    if intent.binding_id != binding.binding_id:
        raise ValueError(f"intent for {intent.binding_id} applied to {binding.binding_id}")
    if binding.version >= intent.version:
        return binding, ()  # already finished and committed: the intent is stale
    woo_done = intent.woo_done
    if woo_landed is None:
        woo_landed = woo_marker is not None and str(woo_marker) == intent.marker
    if not woo_done and (intent.woo_delta == 0 or woo_landed):
        binding = after_woo_step_from_intent(binding, intent)
        woo_done = True
    if not woo_done:
        return binding, ()
    in_doubt = tuple(loc for loc, d in intent.clover_deltas.items() if d and loc not in intent.clover_done)
    return binding, in_doubt
