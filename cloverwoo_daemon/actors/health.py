"""Webhook and reachability health: notice what silently stops, fix what can be fixed, tell the merchant.

Rules this actor keeps:

- Every ``check_every`` it lists WooCommerce's webhooks. One of ours (its
  delivery URL ends in ``/webhooks/woocommerce``) whose status became
  ``disabled`` (WooCommerce does that after repeated failed deliveries, and
  never retries) is re-enabled at once and alerted. ``paused`` is the
  merchant's choice and left alone.
- A webhook disabled again before any WooCommerce delivery reached us since
  we re-enabled it is still failing (our URL unreachable, a proxy refusing):
  WooCommerce keeps its failure count, so one more failed delivery disables it
  again at once. Re-enabling it every check would only buy one lost delivery
  per check and an alert each time, so it is re-enabled again after a backoff
  (the check interval, doubling, at most ``reenable_max_wait``) without a new
  alert; the catch-up poll covers the gap. A delivery that arrives ends the
  episode: the next disable is a new one, alerted again.
- Clover silence: when the Clover poll found a change later than the last
  Clover webhook, and no Clover webhook arrived for ``clover_silence``, it
  alerts once; a webhook arriving re-arms it.
- Reachability: a location (or WooCommerce) reported unreachable by its
  poller is alerted once per outage; reachable again re-arms it.
- It only reads other actors' status through callables and sends alerts
  through the alert actor's hook, whose dispatcher rate-limits and
  deduplicates each kind; the transitions here make each alert once per
  episode anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from cloverwoo_daemon.core.alerts import AlertKind
from cloverwoo_daemon.ports import RemoteError, WebhookAdminPort

log = structlog.get_logger("cloverwoo.health")

__all__ = ["HealthActor", "HealthDeps", "OUR_WOO_PATH"]

OUR_WOO_PATH = "/webhooks/woocommerce"


@dataclass
class HealthDeps:
    woo: WebhookAdminPort
    alert: Callable[[AlertKind, str, str], None]  # AlertActor.notice_health
    check_every: float = 300.0
    clover_silence: float | None = 1800.0
    last_clover_event: Callable[[], float | None] = lambda: None  # unix
    clover_found: Callable[[], int] = lambda: 0  # changes the Clover polls found, cumulative
    reachability: Callable[[], Mapping[str, tuple[bool, str]]] = lambda: {}  # name -> (reachable, last error)
    last_woo_event: Callable[[], float | None] = lambda: None  # unix: the last WooCommerce delivery accepted
    reenable_max_wait: float = 6 * 3600.0
    clock: Callable[[], float] = time.time
    tick: float = 10.0  # how often silence and reachability are looked at


@dataclass
class HealthStatus:
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    last_check: float | None = None
    last_error: str = ""
    re_enabled: int = 0
    held_back: dict[int, float] = field(default_factory=dict)  # webhook id -> unix time of its next re-enable
    clover_silent_since: float | None = None
    unreachable: list[str] = field(default_factory=list)


class HealthActor:
    def __init__(self, deps: HealthDeps) -> None:
        self.deps = deps
        self.status = HealthStatus()
        self._started = deps.clock()
        self._last_found = 0
        self._last_finding: float | None = None  # unix time the Clover poll last found something new
        self._silence_alerted = False
        self._unreachable: set[str] = set()
        self._episodes: dict[int, tuple[float, int]] = {}  # webhook id -> (last re-enabled, re-enables in a row)
        self.checked = trio.Event()  # set after each webhook check (tests wait on it)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._last_found = self.deps.clover_found()
        task_status.started()
        next_check = trio.current_time()
        while True:
            if trio.current_time() >= next_check:
                await self.check_webhooks()
                next_check = trio.current_time() + self.deps.check_every
            self.look()
            await trio.sleep(min(self.deps.tick, max(0.01, next_check - trio.current_time())))

    async def check_webhooks(self) -> None:
        """List Woo's webhooks; re-enable and alert ours that WooCommerce disabled."""
        d = self.deps
        try:
            hooks = list(await d.woo.list_webhooks("all"))
            for h in hooks:
                if h.status == "disabled" and _ours(h.delivery_url):
                    await self._re_enable(h.id, h.topic, h.delivery_url)
            hooks = list(await d.woo.list_webhooks("all")) if any(h.status == "disabled" for h in hooks) else hooks
            self.status.webhooks = [
                {"id": h.id, "topic": h.topic, "status": h.status, "delivery_url": h.delivery_url,
                 "ours": _ours(h.delivery_url)} for h in hooks
            ]
            self.status.last_error = ""
        except RemoteError as exc:
            self.status.last_error = str(exc)[:300]
            log.warning("woo_webhook_check_failed", error=self.status.last_error)
        self.status.last_check = d.clock()
        self.checked.set()
        self.checked = trio.Event()

    async def _re_enable(self, webhook_id: int, topic: str, url: str) -> None:
        d = self.deps
        now = d.clock()
        delivered = d.last_woo_event()
        last, in_a_row = self._episodes.get(webhook_id, (None, 0))
        if last is not None and (delivered is None or delivered < last):  # still failing: the same episode
            wait = min(d.check_every * 2 ** (in_a_row - 1), d.reenable_max_wait)
            if now < last + wait:
                self.status.held_back[webhook_id] = last + wait
                log.info("woo_webhook_still_disabled", webhook_id=webhook_id, topic=topic,
                         re_enabled_in_a_row=in_a_row, next_re_enable_in_s=round(last + wait - now))
                return
        else:
            in_a_row = 0
        await d.woo.set_webhook_status(webhook_id, "active")
        self._episodes[webhook_id] = (now, in_a_row + 1)
        self.status.held_back.pop(webhook_id, None)
        self.status.re_enabled += 1
        log.warning("woo_webhook_reenabled", webhook_id=webhook_id, topic=topic, re_enabled_in_a_row=in_a_row + 1)
        if in_a_row == 0:
            d.alert("webhook_disabled", f"WooCommerce webhook #{webhook_id} {topic}",
                    f"delivery to {url} failed repeatedly; re-enabled at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC")

    def look(self) -> None:
        """Clover silence and reachability, from the other actors' status (cheap, no I/O)."""
        d = self.deps
        now = d.clock()
        found = d.clover_found()
        if found > self._last_found:
            self._last_found = found
            self._last_finding = now
        last_hook = d.last_clover_event()
        if d.clover_silence is not None:
            since = last_hook if last_hook is not None else self._started
            silent = (self._last_finding is not None and self._last_finding > since
                      and now - since >= d.clover_silence)
            if silent and not self._silence_alerted:
                self._silence_alerted = True
                self.status.clover_silent_since = since
                heard = ("never since the daemon started" if last_hook is None
                         else f"last one {round((now - last_hook) / 60)} min ago")
                d.alert("webhook_silent", "Clover webhooks", f"no Clover webhook received ({heard}) while the "
                        "poll found changes")
            elif not silent and last_hook is not None and last_hook > (self.status.clover_silent_since or 0):
                self._silence_alerted = False
                self.status.clover_silent_since = None
        for name, (ok, error) in d.reachability().items():
            if not ok and name not in self._unreachable:
                self._unreachable.add(name)
                d.alert("unreachable", name, error or "requests keep failing")
            elif ok:
                self._unreachable.discard(name)
        self.status.unreachable = sorted(self._unreachable)


def _ours(url: str) -> bool:
    return url.rstrip("/").endswith(OUR_WOO_PATH)
