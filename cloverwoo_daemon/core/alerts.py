"""Alerts: when a binding's stock deserves an email, and how many emails that makes.

Rules this module keeps:

- Pure: no clock, no I/O. Times are passed in; the dispatcher's ``now`` is
  any monotonic clock (the actor uses trio's), an alert's ``at`` is unix time
  (it is printed in the email).
- The stock an alert is about is the figure the shop shows: ``base_woo``
  after a committed merge (the sum over locations in aggregate mode). The
  per-location figures are listed beside it. A binding that is untracked,
  excluded or never synced has no stock to alert about.
- Thresholds, most specific first: a run-time override (control socket,
  persisted by the store), then the per-SKU ``alerts.thresholds`` of the
  config, then the global ``alerts.low_stock_threshold``. A negative
  threshold turns low-stock alerts off for that SKU; out of stock still
  alerts.
- Once per crossing, with hysteresis. A low-stock alert fires when the stock
  drops to or below the threshold while the binding is *armed*, and disarms
  it; only a rise above ``threshold + margin`` re-arms it. The margin is 20 %
  of the threshold, at least 1 unit, so a return followed by a sale does not
  send the same alert twice.
- Out of stock (stock <= 0) is its own kind, with its own arm: it fires once
  when the stock reaches zero or below, re-armed only above ``margin``. It
  pre-empts low stock: a drop from plenty straight to zero sends only the
  out-of-stock alert and disarms the low-stock one as well (the merchant
  already knows it is low).
- Digest: alerts wait in the ``Dispatcher``, per kind, until none of that
  kind arrived for ``digest_quiet`` seconds (or ``digest_max`` after the
  first), then leave as ONE email listing them all: 200 products crossing in
  one reconciliation make one email, not 200.
- Rate limit per kind: at most ``max_emails`` emails of one kind per
  ``rate_period``. Alerts arriving when the budget is spent are not dropped:
  they wait and leave in one digest as soon as the budget allows.
- Dedup: an alert whose key is pending already replaces it (the newest
  figures win); a key sent less than ``dedup_window`` ago is dropped. Stock
  alerts are deduplicated by the arm state, oversells by their conflict id
  (durably, by the store); the window catches a sync failure reported again
  and again.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from cloverwoo_daemon.core.model import Binding, Conflict

__all__ = [
    "KINDS",
    "Alert",
    "AlertKind",
    "AlertPolicy",
    "ArmState",
    "Dispatcher",
    "Email",
    "OutboxEmail",
    "StockSnapshot",
    "conflict_alert",
    "evaluate",
    "failure_alert",
    "health_alert",
    "margin_for",
    "render",
    "snapshot_of",
    "threshold_for",
]

AlertKind = Literal["low_stock", "out_of_stock", "oversell", "conflict", "sync_failure", "drift",
                    "webhook_disabled", "webhook_silent", "unreachable"]
KINDS: tuple[AlertKind, ...] = ("out_of_stock", "oversell", "low_stock", "sync_failure", "conflict", "drift",
                                "webhook_disabled", "webhook_silent", "unreachable")
HEALTH_KINDS: frozenset[AlertKind] = frozenset({"webhook_disabled", "webhook_silent", "unreachable"})

MAX_ROWS = 500  # rows listed in one email; the rest are counted ("... and 12 more")


class AlertPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of the alerting, with the defaults the daemon uses."""

    low_stock_threshold: int = 5  # config alerts.low_stock_threshold
    thresholds: dict[str, int] = msgspec.field(default_factory=dict)  # config alerts.thresholds (per SKU)
    margin_fraction: float = 0.2  # hysteresis: re-arm above threshold * (1 + this) ...
    min_margin: int = 1  # ... and at least this many units above it
    digest_quiet: float = 2.0  # seconds without a new alert of a kind before its digest leaves
    digest_max: float = 30.0  # a steady trickle still leaves this long after its first alert
    max_emails: int = 6  # per kind, per rate_period
    rate_period: float = 3600.0
    dedup_window: float = 6 * 3600.0
    sync_failure_attempts: int = 8  # consecutive failed merges of a binding before it is alerted


class StockSnapshot(msgspec.Struct, frozen=True):
    """What an alert needs to know about one binding's stock after a committed merge."""

    binding_id: str
    sku: str
    name: str
    stock: int  # what the shop shows (base_woo)
    locations: dict[str, int | None] = msgspec.field(default_factory=dict)


class ArmState(msgspec.Struct, frozen=True):
    """Whether each stock alert may fire for a binding (durable: a restart must not re-send)."""

    low_armed: bool = True
    out_armed: bool = True


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the merchant must hear about."""

    kind: AlertKind
    key: str  # unique per alert; the store refuses a second alert with the same key
    binding_id: str = ""
    sku: str = ""
    name: str = ""
    stock: int | None = None
    threshold: int | None = None
    locations: dict[str, int | None] = msgspec.field(default_factory=dict)
    detail: str = ""  # one line for the email (why, which side, the error)
    at: float = 0.0  # unix seconds


class Email(msgspec.Struct, frozen=True):
    """A rendered email, not yet addressed: what the dispatcher decides to send."""

    kind: AlertKind
    subject: str
    body: str
    keys: tuple[str, ...]  # the alerts it carries


class OutboxEmail(msgspec.Struct, frozen=True, kw_only=True):
    """An email in the store's outbox: written before it is sent, marked once the server took it."""

    id: int
    kind: str
    subject: str
    body: str
    recipients: tuple[str, ...]
    created_at: float  # unix seconds
    attempts: int = 0
    last_error: str = ""
    sent_at: float | None = None


# --------------------------------------------------------------------------
# Thresholds and crossings


def threshold_for(policy: AlertPolicy, sku: str, overrides: Mapping[str, int] | None = None) -> int:
    """The threshold of one SKU: run-time override, else config per-SKU, else the global one."""
    if overrides and sku in overrides:
        return overrides[sku]
    return policy.thresholds.get(sku, policy.low_stock_threshold)


def margin_for(threshold: int, policy: AlertPolicy | None = None) -> int:
    """How far above its threshold the stock must rise before the alert re-arms."""
    p = policy or AlertPolicy()
    return max(p.min_margin, math.ceil(max(threshold, 0) * p.margin_fraction))


def snapshot_of(binding: Binding) -> StockSnapshot | None:
    """The stock figures of a binding, or None when it has none worth alerting about."""
    if not binding.tracked or binding.excluded or binding.base_woo is None:
        return None
    return StockSnapshot(binding.binding_id, binding.sku, binding.name, binding.base_woo, dict(binding.base_clover))


def _location_text(locations: Mapping[str, int | None]) -> str:
    if not locations:
        return "-"
    if len(locations) == 1:
        return next(iter(locations))
    return "all locations"


def evaluate(
    snap: StockSnapshot,
    threshold: int,
    state: ArmState,
    *,
    policy: AlertPolicy | None = None,
    at: float = 0.0,
) -> tuple[ArmState, Alert | None]:
    """One observation of a binding's stock: the new arm state and the alert it fires, if any.

    Idempotent: the same figures seen again (a duplicate webhook, a recheck)
    return the same state and no alert.
    """
    margin = margin_for(threshold, policy)
    stock = snap.stock
    low, out = state.low_armed, state.out_armed
    kind: AlertKind | None = None
    if stock <= 0:
        if out:
            kind = "out_of_stock"
        out = False
        low = False
    elif stock <= threshold:
        if low:
            kind = "low_stock"
        low = False
    if stock > threshold + margin:
        low = True
    if stock > margin:
        out = True
    alert = None
    if kind is not None:
        alert = Alert(
            kind=kind,
            key=f"{kind}:{snap.binding_id}:{at:.6f}",
            binding_id=snap.binding_id,
            sku=snap.sku,
            name=snap.name,
            stock=stock,
            threshold=threshold,
            locations=dict(snap.locations),
            detail=_location_text(snap.locations),
            at=at,
        )
    return ArmState(low, out), alert


def conflict_alert(conflict: Conflict, snap: StockSnapshot | None = None, *, at: float = 0.0) -> Alert:
    """The alert for a flagged oversell (or another conflict), keyed by the conflict so it is sent once."""
    kind: AlertKind = "oversell" if conflict.kind == "oversell" else "conflict"
    key = (f"conflict:{conflict.id}" if conflict.id
           else f"conflict:{conflict.binding_id}:{conflict.kind}:{conflict.created_at:.6f}")
    return Alert(
        kind=kind,
        key=key,
        binding_id=conflict.binding_id,
        sku=conflict.sku,
        name=snap.name if snap else "",
        stock=snap.stock if snap else None,
        locations=dict(snap.locations) if snap else {},
        detail=_conflict_text(conflict),
        at=at or conflict.created_at,
    )


def _conflict_text(conflict: Conflict) -> str:
    try:
        info = json.loads(conflict.detail) if conflict.detail else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    ref = f" (conflict {conflict.id}: cloverwoo conflicts --resolve {conflict.id})" if conflict.id else ""
    if conflict.kind == "oversell":
        side = info.get("side")
        where = "WooCommerce" if side == "woo" else f"Clover {info.get('location') or ''}".strip()
        value = info.get("value")
        figure = f" went to {value}" if isinstance(value, int) else " went below zero"
        return f"sold on both sides at once: {where}{figure}{ref}"
    return f"{conflict.kind.replace('_', ' ')}{ref}"


def failure_alert(
    binding_id: str, sku: str, name: str, *, attempts: int, error: str, at: float = 0.0
) -> Alert:
    """A binding whose merges kept failing past their retries."""
    return Alert(
        kind="sync_failure",
        key=f"sync_failure:{binding_id}:{at:.6f}",
        binding_id=binding_id,
        sku=sku,
        name=name,
        detail=f"{attempts} attempts failed; last error: {error or 'unknown'}"[:300],
        at=at,
    )


def drift_alert(drifted: int, total: int, *, at: float = 0.0) -> Alert:
    """A reconciliation that had to correct more bindings than a lost event or two explains."""
    return Alert(
        kind="drift",
        key=f"drift:{at:.6f}",
        name=f"{drifted} of {total} products",
        detail=f"{drifted} of {total} products had drifted since the last look",
        at=at,
    )


def health_alert(kind: AlertKind, subject: str, detail: str, *, at: float = 0.0) -> Alert:
    """A webhook or reachability alert about ``subject`` (a webhook, a location); deduplicated by it."""
    if kind not in HEALTH_KINDS:
        raise ValueError(f"{kind} is not a health alert")
    return Alert(kind=kind, key=f"{kind}:{subject}:{at:.6f}", name=subject, detail=detail[:300], at=at)


def drift_worth_alerting(drifted: int, total: int) -> bool:
    """More than a stray event: at least 5 products, or 1 % of them when that is more."""
    return drifted >= max(5, total // 100)


# --------------------------------------------------------------------------
# Rendering

_TITLES: dict[AlertKind, tuple[str, str]] = {
    # kind: (one alert, several)
    "low_stock": ("Low stock: {name} ({sku}), {stock} left (threshold {threshold})",
                  "Low stock: {n} products at or below their threshold"),
    "out_of_stock": ("Out of stock: {name} ({sku})", "Out of stock: {n} products"),
    "oversell": ("Oversold: {name} ({sku}) sold on both sides, stock now {stock}",
                 "Oversold: {n} products sold on both sides at once"),
    "conflict": ("Sync conflict: {name} ({sku})", "Sync conflicts on {n} products"),
    "sync_failure": ("Sync failing: {name} ({sku})", "Sync failing for {n} products"),
    "drift": ("Reconciliation corrected drift: {name}", "Reconciliation corrected drift {n} times"),
    "webhook_disabled": ("WooCommerce disabled a webhook: {name} (re-enabled)",
                         "WooCommerce disabled {n} webhooks (re-enabled)"),
    "webhook_silent": ("No Clover webhook received: {name}", "No Clover webhooks received ({n} notices)"),
    "unreachable": ("Unreachable: {name}", "{n} stores or locations unreachable"),
}

_INTROS: dict[AlertKind, str] = {
    "low_stock": "These products dropped to or below their low-stock threshold:",
    "out_of_stock": "These products are out of stock:",
    "oversell": ("These products were sold on both sides at the same time and went below zero. "
                 "Both sales were counted; check the orders and resolve the conflict:"),
    "conflict": "The sync flagged these products; check them and resolve the conflict:",
    "sync_failure": "The sync of these products keeps failing; both sides may disagree until it is fixed:",
    "drift": ("Reconciliation found stock changes that no webhook or poll had reported and corrected them. "
              "Webhooks are probably being lost: check the webhooks' status in WooCommerce and Clover:"),
    "webhook_disabled": ("WooCommerce disabled these webhooks after repeated failed deliveries (the events it "
                         "failed to deliver are lost; polling and reconciliation catch up). The daemon re-enabled "
                         "them; if this repeats, check that the daemon's public address is reachable:"),
    "webhook_silent": ("The Clover poll keeps finding changes but no Clover webhook has arrived. Changes still "
                       "sync through polling, only slower. Check the webhook URL and its verification in the "
                       "Clover developer dashboard:"),
    "unreachable": ("The daemon cannot reach these; their changes wait until they answer again:"),
}


def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _clean(text: str) -> str:
    """One line, whatever a product name holds (a header must never carry a newline)."""
    return " ".join(text.split())


def render(kind: AlertKind, alerts: Sequence[Alert]) -> tuple[str, str]:
    """Subject and plain-text body of one email carrying ``alerts`` (all of ``kind``)."""
    if not alerts:
        raise ValueError("an email needs at least one alert")
    one, many = _TITLES[kind]
    first = alerts[0]
    if len(alerts) == 1:
        subject = one.format(name=_clean(first.name) or first.sku, sku=_clean(first.sku),
                             stock=_fmt(first.stock), threshold=_fmt(first.threshold))
    else:
        subject = many.format(n=len(alerts))
    if kind in HEALTH_KINDS:  # about webhooks and locations, not products: one line each
        lines = [_INTROS[kind], ""] + [f"- {_clean(a.name)}: {_clean(a.detail)}" for a in alerts[:MAX_ROWS]]
        if len(alerts) > MAX_ROWS:
            lines.append(f"... and {len(alerts) - MAX_ROWS} more")
        stamp = datetime.fromtimestamp(min(a.at for a in alerts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines += ["", f"First noticed {stamp}. Sent by cloverwoo-daemon; see `cloverwoo status`."]
        return subject, "\n".join(lines) + "\n"
    rows: list[tuple[str, str, str, str, str]] = [("SKU", "Name", "Location", "Stock", "Threshold")]
    notes: list[str] = []
    for a in alerts[:MAX_ROWS]:
        rows.append((_clean(a.sku), _clean(a.name), _location_text(a.locations), _fmt(a.stock), _fmt(a.threshold)))
        if len(a.locations) > 1:
            for loc, qty in sorted(a.locations.items()):
                rows.append(("", "", f"  {loc}", _fmt(qty), ""))
        if a.detail and kind not in ("low_stock", "out_of_stock"):
            notes.append(f"- {_clean(a.sku)}: {_clean(a.detail)}")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [_INTROS[kind], ""]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                 r[3].rjust(widths[3]), r[4].rjust(widths[4])]
        lines.append("  ".join(cells).rstrip())
    if len(alerts) > MAX_ROWS:
        lines.append(f"... and {len(alerts) - MAX_ROWS} more")
    if notes:
        lines += ["", *notes[:MAX_ROWS]]
    stamp = datetime.fromtimestamp(min(a.at for a in alerts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines += ["", f"First noticed {stamp}. Sent by cloverwoo-daemon; see `cloverwoo dashboard` and `cloverwoo log`."]
    return subject, "\n".join(lines) + "\n"


def _order(kind: AlertKind, alerts: Iterable[Alert]) -> list[Alert]:
    """Most urgent first: lowest stock (relative to threshold), then SKU."""
    def key(a: Alert) -> tuple[float, str]:
        if a.stock is None:
            return (math.inf, a.sku)
        return (a.stock - (a.threshold or 0), a.sku)

    return sorted(alerts, key=key) if kind in ("low_stock", "out_of_stock", "oversell") else list(alerts)


# --------------------------------------------------------------------------
# Digest, rate limit, dedup


class Dispatcher:
    """Turns a stream of alerts into few emails: digested per kind, rate-limited, deduplicated.

    A synchronous state machine (h11 style): ``add`` alerts as they come,
    ask ``next_deadline`` when to look again, ``take`` the emails due.
    """

    def __init__(self, policy: AlertPolicy | None = None) -> None:
        self.policy = policy or AlertPolicy()
        self._pending: dict[AlertKind, dict[str, Alert]] = {}
        self._first: dict[AlertKind, float] = {}
        self._last: dict[AlertKind, float] = {}
        self._sends: dict[AlertKind, deque[float]] = {}
        self._sent_keys: dict[str, float] = {}
        self._superseded: dict[AlertKind, list[str]] = {}  # keys replaced by newer alerts: settled with the email

    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def _dedup_key(self, alert: Alert) -> str:
        # Stock and sync-failure keys carry a timestamp to stay unique in the
        # store; the window compares what they are about.
        if alert.kind in ("sync_failure", "low_stock", "out_of_stock"):
            return f"{alert.kind}:{alert.binding_id}"
        if alert.kind in HEALTH_KINDS:
            return f"{alert.kind}:{alert.name}"
        return alert.key

    def add(self, alert: Alert, now: float) -> bool:
        """Queue an alert; False when it was dropped as a duplicate of one sent recently."""
        dk = self._dedup_key(alert)
        sent = self._sent_keys.get(dk)
        if (alert.kind == "sync_failure" or alert.kind in HEALTH_KINDS) and sent is not None \
                and now - sent < self.policy.dedup_window:
            return False
        if alert.kind in ("oversell", "conflict") and sent is not None:
            return False
        self._queue(alert, dk, now)
        return True

    def restore(self, alert: Alert, now: float) -> None:
        """Re-queue an alert recorded before a restart (no dedup window: the store already decided)."""
        self._queue(alert, self._dedup_key(alert), now)

    def _queue(self, alert: Alert, dk: str, now: float) -> None:
        bucket = self._pending.setdefault(alert.kind, {})
        for k, other in list(bucket.items()):
            if self._dedup_key(other) == dk and k != alert.key:
                del bucket[k]  # the newer figures replace a pending alert about the same thing
                self._superseded.setdefault(alert.kind, []).append(k)
        bucket[alert.key] = alert
        self._first.setdefault(alert.kind, now)
        self._last[alert.kind] = now

    def record_sent(self, kind: AlertKind, at: float) -> None:
        """Count an email sent earlier (after a restart) against its kind's budget."""
        self._sends.setdefault(kind, deque()).append(at)

    def _budget_free_at(self, kind: AlertKind, now: float) -> float:
        sends = self._sends.get(kind)
        if not sends:
            return -math.inf
        while sends and now - sends[0] >= self.policy.rate_period:
            sends.popleft()
        if len(sends) < self.policy.max_emails:
            return -math.inf
        return sends[-self.policy.max_emails] + self.policy.rate_period

    def _due_at(self, kind: AlertKind, now: float) -> float:
        digest = min(self._last[kind] + self.policy.digest_quiet, self._first[kind] + self.policy.digest_max)
        return max(digest, self._budget_free_at(kind, now))

    def next_deadline(self, now: float) -> float | None:
        """When ``take`` will next have something to give; None when nothing is pending."""
        due = [self._due_at(k, now) for k, v in self._pending.items() if v]
        return min(due) if due else None

    def take(self, now: float) -> list[Email]:
        """The emails due at ``now``, one per kind, most urgent kind first."""
        out: list[Email] = []
        for kind in KINDS:
            bucket = self._pending.get(kind)
            if not bucket or self._due_at(kind, now) > now:
                continue
            alerts = _order(kind, bucket.values())
            subject, body = render(kind, alerts)
            keys = tuple(a.key for a in alerts) + tuple(self._superseded.pop(kind, ()))
            out.append(Email(kind, subject, body, keys))
            for a in alerts:
                self._sent_keys[self._dedup_key(a)] = now
            self._sends.setdefault(kind, deque()).append(now)
            del self._pending[kind]
            del self._first[kind]
            del self._last[kind]
        horizon = now - self.policy.dedup_window
        if len(self._sent_keys) > 10_000:
            self._sent_keys = {
                k: t for k, t in self._sent_keys.items() if t >= horizon or k.startswith("conflict:")
            }
        return out
