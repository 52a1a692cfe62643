"""The alert actor: hears about stock, conflicts and failing merges; tells the merchant by email, once.

Rules this actor keeps:

- It never slows the sync down. The shards feed it through synchronous hooks
  (``notice_stock``, ``notice_conflict``, ``notice_failure``) that put a
  message on a bounded channel without waiting. When the channel is full,
  stock observations are coalesced per binding (the newest figures win) and
  the rest wait in a bounded overflow queue: memory stays bounded by the
  number of bindings, and the sync never blocks on email.
- Decisions are ``core.alerts``: crossings with hysteresis, digest, rate
  limit, dedup. This module only runs them and executes what they decide.
- Nothing is lost to a crash or a mail server that is down. An alert is
  recorded in the store together with the arm state that fired it, before it
  waits in the digest; a digest is written to the outbox (tying its alerts
  to it) before the first attempt to send it; it is marked sent only after
  the server accepted it. At start, recorded alerts not yet in an email go
  back into the digest, and unsent outbox emails are sent again. The price
  is at-least-once: a crash between "accepted" and "marked sent" sends the
  email twice (with the same ``Message-ID``).
- Failed sends are retried with capped exponential backoff (2 s doubling to
  5 min), for as long as it takes; each attempt is counted in the outbox.
- With no ``alerts.email_to`` (or no mailer), alerts are logged, and recorded
  in the outbox as delivered, so nothing waits forever for a mail server
  that was never configured.
- The channel is created once, with the actor object, and never closed by an
  incarnation: a restart under the supervisor reads the same queue and
  reloads its state from the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core import alerts as core
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, Conflict
from cloverwoo_daemon.ports import AlertStore, Mailer, PermanentError, RemoteError

_ARMED = core.ArmState()  # both alerts may fire

log = structlog.get_logger("cloverwoo.alerts")

__all__ = ["AlertActor", "AlertDeps"]


@dataclass(frozen=True)
class _Stock:
    binding: Binding


@dataclass(frozen=True)
class _Conflict:
    conflict: Conflict


@dataclass(frozen=True)
class _Failing:
    binding_id: str
    attempts: int


@dataclass(frozen=True)
class _Recheck:
    sku: str


@dataclass(frozen=True)
class _Drift:
    drifted: int
    total: int


@dataclass(frozen=True)
class _Health:
    kind: core.AlertKind
    subject: str
    detail: str


_Input = _Stock | _Conflict | _Failing | _Recheck | _Drift | _Health


@dataclass
class AlertDeps:
    """What the alert actor needs, handed in by ``app.py``."""

    store: AlertStore
    policy: core.AlertPolicy
    mailer: Mailer | None = None  # None: alerts are only logged
    recipients: tuple[str, ...] = ()
    lookup: Callable[[str], Binding | None] = lambda binding_id: None  # the binding table, for failing merges
    retry: Backoff = field(default_factory=lambda: Backoff(base=2.0, cap=300.0, max_attempts=1_000_000))
    clock: Callable[[], float] = time.time  # unix seconds, for what the email says
    capacity: int = 1_000
    overflow_limit: int = 10_000
    on_sent: Callable[[str], None] = lambda kind: None  # metrics hook: the mail server accepted an email of kind


@dataclass
class _Outgoing:
    email: core.OutboxEmail
    due: float  # trio clock
    attempts: int = 0


class AlertActor:
    def __init__(self, deps: AlertDeps) -> None:
        self.deps = deps
        self._send, self._recv = trio.open_memory_channel[_Input](deps.capacity)
        self._overflow_stock: OrderedDict[str, Binding] = OrderedDict()
        self._overflow: deque[_Input] = deque(maxlen=deps.overflow_limit)
        # The last binding seen with stock figures, per binding (kept across restarts). The binding itself,
        # shared with the table, rather than a snapshot of it: a copy per binding cost 16 MB at 50,000.
        self._stock: dict[str, Binding] = {}
        self._overrides: dict[str, int] = {}
        self._arm: dict[str, core.ArmState] = {}
        self._failing: set[str] = set()  # bindings alerted for their current failure streak
        self._dispatcher = core.Dispatcher(deps.policy)
        self._outbox: dict[int, _Outgoing] = {}
        self._digest_wake = trio.Event()
        self._send_wake = trio.Event()
        self._working = 0  # messages or digests between two queues (for idle())
        self.alerts = 0
        self.sent = 0
        self.send_failures = 0
        self.dropped = 0

    @property
    def mailing(self) -> bool:
        return self.deps.mailer is not None and bool(self.deps.recipients)

    # --------------------------------------------------------------- hooks (sync, never block)

    def notice_stock(self, binding: Binding) -> None:
        """A merge of ``binding`` committed (``ShardDeps.on_stock``)."""
        if not self._overflow_stock:  # once coalescing, keep coalescing: the overflow holds the newest figures
            try:
                self._send.send_nowait(_Stock(binding))
                return
            except trio.WouldBlock:
                pass
        self._overflow_stock[binding.binding_id] = binding

    def notice_conflict(self, conflict: Conflict) -> None:
        """A conflict was flagged (``ShardDeps.on_conflict``)."""
        self._offer(_Conflict(conflict))

    def notice_failure(self, binding_id: str, attempts: int) -> None:
        """A merge of ``binding_id`` failed for the ``attempts``-th time in a row (``ShardDeps.on_failure``)."""
        self._offer(_Failing(binding_id, attempts))

    def notice_drift(self, drifted: int, total: int) -> None:
        """A reconciliation corrected ``drifted`` of ``total`` bindings (``JobRunner.on_drift``)."""
        if core.drift_worth_alerting(drifted, total):
            self._offer(_Drift(drifted, total))

    def notice_health(self, kind: core.AlertKind, subject: str, detail: str) -> None:
        """A webhook or reachability problem (``actors.health``); deduplicated per kind and subject."""
        self._offer(_Health(kind, subject, detail))

    def _offer(self, msg: _Input) -> None:
        try:
            if self._overflow:
                raise trio.WouldBlock  # keep the order: nothing overtakes what waits in the overflow
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            if len(self._overflow) == self._overflow.maxlen:
                self.dropped += 1
                log.error("alert_queue_overflow", dropped=self.dropped)
            self._overflow.append(msg)

    # --------------------------------------------------------------- control

    async def set_threshold(self, sku: str, threshold: int | None) -> None:
        """A run-time threshold for one SKU (``None``: back to the config's); persisted, applied at once."""
        await self.deps.store.set_alert_threshold(sku, threshold)
        if threshold is None:
            self._overrides.pop(sku, None)
        else:
            self._overrides[sku] = threshold
        await self._send.send(_Recheck(sku))

    def thresholds(self) -> dict[str, int]:
        """The effective per-SKU thresholds (config, then run-time overrides on top)."""
        return {**self.deps.policy.thresholds, **self._overrides}

    def statistics(self) -> dict[str, Any]:
        return {
            "queued": self._recv.statistics().current_buffer_used + len(self._overflow) + len(self._overflow_stock),
            "digesting": self._dispatcher.pending(),
            "outbox": len(self._outbox),
            "alerts": self.alerts,
            "sent": self.sent,
            "send_failures": self.send_failures,
            "mailing": self.mailing,
        }

    def idle(self) -> bool:
        """Nothing queued, digesting or waiting in the outbox."""
        s = self.statistics()
        return not (s["queued"] or s["digesting"] or s["outbox"] or self._working)

    # --------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation: reload durable state, report started, then serve until cancelled."""
        self._working = 0  # a crashed incarnation's half-done work is reloaded from the store
        await self._load()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._digest_loop)
            nursery.start_soon(self._send_loop)
            async for msg in self._recv:
                self._working += 1
                try:
                    await self._handle(msg)
                    while self._overflow_stock or self._overflow:
                        if self._overflow_stock:
                            _, latest = self._overflow_stock.popitem(last=False)
                            await self._handle(_Stock(latest))
                            if not self._overflow_stock:
                                self._overflow_stock = released(self._overflow_stock)
                        else:
                            await self._handle(self._overflow.popleft())
                finally:
                    self._working -= 1

    async def _load(self) -> None:
        d = self.deps
        self._overrides = await d.store.alert_thresholds()
        self._arm = await d.store.load_arm_states()
        self._dispatcher = core.Dispatcher(d.policy)
        mono, wall = trio.current_time(), d.clock()
        for kind, at in await d.store.recent_emails(wall - d.policy.rate_period):
            if kind in core.KINDS:
                self._dispatcher.record_sent(kind, mono - (wall - at))
        for alert in await d.store.pending_alerts():
            self._dispatcher.restore(alert, mono)
        self._outbox = {e.id: _Outgoing(e, mono, e.attempts) for e in await d.store.unsent_emails()}
        if self._outbox and not self.mailing:
            log.warning("alert_outbox_not_mailed", unsent=len(self._outbox),
                        hint="alerts.email_to is empty: these emails wait until it is set")
        # An oversell flagged just before a crash may never have reached the channel:
        # every open conflict is offered again; its key makes that idempotent.
        for conflict in await d.store.list_conflicts():
            await self._on_conflict(conflict)
        self._digest_wake.set()
        self._send_wake.set()

    async def _handle(self, msg: _Input) -> None:
        match msg:
            case _Stock(binding=b):
                self._failing.discard(b.binding_id)
                snap = core.snapshot_of(b)
                if snap is not None:
                    self._stock[b.binding_id] = b
                    await self._evaluate(snap)
            case _Conflict(conflict=c):
                await self._on_conflict(c)
            case _Failing(binding_id=bid, attempts=n):
                await self._on_failure(bid, n)
            case _Drift(drifted=n, total=total):
                alert = core.drift_alert(n, total, at=self.deps.clock())
                if await self.deps.store.record_alert(alert):
                    self._queue_alert(alert)
            case _Health(kind=kind, subject=subject, detail=detail):
                alert = core.health_alert(kind, subject, detail, at=self.deps.clock())
                if await self.deps.store.record_alert(alert):
                    self._queue_alert(alert)
            case _Recheck(sku=sku):
                for b in [b for b in self._stock.values() if b.sku == sku]:
                    if (snap := core.snapshot_of(b)) is not None:
                        await self._evaluate(snap)

    async def _evaluate(self, snap: core.StockSnapshot) -> None:
        d = self.deps
        threshold = core.threshold_for(d.policy, snap.sku, self._overrides)
        state = self._arm.get(snap.binding_id, _ARMED)
        new, alert = core.evaluate(snap, threshold, state, policy=d.policy, at=d.clock())
        if alert is not None:
            if await d.store.record_alert(alert, arm=new):
                self._queue_alert(alert)
        elif new != state:
            await d.store.save_arm_state(snap.binding_id, new)
        if new == _ARMED:
            self._arm.pop(snap.binding_id, None)  # the usual state is not stored: most bindings are in it
        else:
            self._arm[snap.binding_id] = new

    async def _on_conflict(self, conflict: Conflict) -> None:
        last = self._stock.get(conflict.binding_id)
        alert = core.conflict_alert(conflict, core.snapshot_of(last) if last else None, at=self.deps.clock())
        if await self.deps.store.record_alert(alert):
            self._queue_alert(alert)

    async def _on_failure(self, binding_id: str, attempts: int) -> None:
        d = self.deps
        if attempts < d.policy.sync_failure_attempts:
            if attempts <= 1:
                self._failing.discard(binding_id)  # a new streak: the last one ended in a success
            return
        if binding_id in self._failing:
            return
        self._failing.add(binding_id)
        binding = d.lookup(binding_id)
        last = self._stock.get(binding_id)
        sku = binding.sku if binding else (last.sku if last else "")
        name = binding.name if binding else (last.name if last else binding_id)
        error = await d.store.last_sync_error(binding_id) or ""
        alert = core.failure_alert(binding_id, sku, name, attempts=attempts, error=error, at=d.clock())
        if await d.store.record_alert(alert):
            self._queue_alert(alert)

    def _queue_alert(self, alert: core.Alert) -> None:
        self.alerts += 1
        log.warning("alert", kind=alert.kind, binding_id=alert.binding_id, sku=alert.sku, stock=alert.stock,
                    threshold=alert.threshold, detail=alert.detail,
                    **({} if alert.sku else {"product": alert.name}))  # no SKU: named by its name
        if self._dispatcher.add(alert, trio.current_time()):
            self._digest_wake.set()

    # --------------------------------------------------------------- digest -> outbox

    async def _digest_loop(self) -> None:
        while True:
            self._digest_wake = trio.Event()
            deadline = self._dispatcher.next_deadline(trio.current_time())
            if deadline is None:
                await self._digest_wake.wait()
            else:
                with trio.move_on_at(deadline):
                    await self._digest_wake.wait()
            emails = self._dispatcher.take(trio.current_time())
            self._working += len(emails)
            for email in emails:
                await self._to_outbox(email)
                self._working -= 1

    async def _to_outbox(self, email: core.Email) -> None:
        d = self.deps
        queued = await d.store.queue_email(email, d.recipients, delivered=not self.mailing)
        if not self.mailing:
            log.warning("alert_not_mailed", kind=email.kind, subject=email.subject, body=email.body,
                        outbox_id=queued.id, hint="set alerts.email_to to receive alerts by email")
            return
        log.info("alert_email_queued", kind=email.kind, subject=email.subject, alerts=len(email.keys),
                 outbox_id=queued.id)
        self._outbox[queued.id] = _Outgoing(queued, trio.current_time())
        self._send_wake.set()

    # --------------------------------------------------------------- outbox -> SMTP

    async def _send_loop(self) -> None:
        while True:
            self._send_wake = trio.Event()
            mailer = self.deps.mailer
            if not self._outbox or mailer is None or not self.mailing:
                await self._send_wake.wait()
                continue
            out = min(self._outbox.values(), key=lambda o: (o.due, o.email.id))
            if out.due > trio.current_time():
                with trio.move_on_at(out.due):
                    await self._send_wake.wait()
                continue
            await self._send_one(mailer, out)

    async def _send_one(self, mailer: Mailer, out: _Outgoing) -> None:
        d = self.deps
        email = out.email
        try:
            await mailer.send(email)
        except RemoteError as exc:
            out.attempts += 1
            self.send_failures += 1
            delay = d.retry.next_delay(min(out.attempts, 30)) or d.retry.cap
            out.due = trio.current_time() + delay
            await d.store.mark_email_failed(email.id, str(exc))
            log.warning("alert_send_failed", outbox_id=email.id, kind=email.kind, attempt=out.attempts,
                        retry_in_s=round(delay, 1), permanent=isinstance(exc, PermanentError), error=str(exc))
            return
        d.on_sent(email.kind)
        await d.store.mark_email_sent(email.id)
        self._outbox.pop(email.id, None)
        self.sent += 1
        log.info("alert_sent", outbox_id=email.id, kind=email.kind, subject=email.subject,
                 recipients=len(email.recipients), attempts=out.attempts + 1)
