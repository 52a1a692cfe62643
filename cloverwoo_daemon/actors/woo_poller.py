"""The WooCommerce catch-up poll: what makes Woo -> Clover real-time on a real store.

WooCommerce delivers webhooks through WP-Cron (25-48 s late on a quiet site,
not at all on an idle one: reference section 9), so every ``poll_every`` the
poller lists products and variations modified after its cursor. The client
overlaps the cursor by one second because ``modified_after`` is strict at
1-second resolution; the merge makes the resulting duplicates harmless. The
cursor is Woo's own clock (``date_modified_gmt``), persisted across restarts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
import trio

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.actors.router import PollFound, RouterInput
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.ports import RemoteError, StorePort, WooPort

log = structlog.get_logger("cloverwoo.woo_poller")

CURSOR_KEY = "woo.cursor.modified"


@dataclass
class WooPollStatus:
    reachable: bool = True
    last_poll_ok: float | None = None
    last_error: str = ""
    consecutive_failures: int = 0
    polls: int = 0
    found: int = 0


@dataclass
class WooPoller:
    woo: WooPort
    store: StorePort
    router: trio.MemorySendChannel[RouterInput]
    poll_every: float | None
    table: BindingTable | None = None
    status: WooPollStatus = field(default_factory=WooPollStatus)
    _seen: dict[WooRef, str] = field(default_factory=dict)  # ref -> change stamp already forwarded
    retry: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0, max_attempts=1_000_000))

    def _news(self, ref: WooRef, stamp: str) -> bool:
        """False when the listed stock is exactly what we last agreed on (our own write, or no stock change)."""
        bid = self.table.by_woo_ref(ref) if self.table is not None else None
        binding = self.table.get(bid) if self.table is not None and bid is not None else None
        if binding is None:
            return ref.variation_id == 0  # a variable parent: its variations are listed on their own
        _, status, stock = stamp.rsplit("|", 2) if stamp.count("|") >= 2 else ("", "", "")
        if status not in ("publish", "private", "draft", "pending", "future"):
            return True  # trashed, or a status we do not know: let the merge look
        return stock in ("", "None") or binding.base_woo is None or int(stock) != binding.base_woo

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.poll_every:
            await trio.sleep_forever()  # polling is off: nothing to do, and returning would mean "broken"
        cursor = await self.store.get_kv(CURSOR_KEY) or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        while True:
            await trio.sleep(self.poll_every)
            try:
                items, new_cursor = await self.woo.changed_items(modified_after=cursor)
                # The query overlaps the cursor by a second: forward only what changed since we last looked.
                refs = {ref for ref, stamp in items.items() if self._seen.get(ref) != stamp and self._news(ref, stamp)}
                self._seen.update(items)
                if len(self._seen) > 10_000:
                    self._seen = dict(items)
                if refs:
                    self.status.found += len(refs)
                    await self.router.send(PollFound("poll:woo", trio.current_time(), woo=set(refs)))
                if new_cursor != cursor:
                    cursor = new_cursor
                    await self.store.set_kv(CURSOR_KEY, cursor)
                self.status.polls += 1
                self.status.reachable = True
                self.status.consecutive_failures = 0
                self.status.last_poll_ok = time.time()
            except RemoteError as exc:
                self.status.consecutive_failures += 1
                self.status.last_error = str(exc)[:300]
                if self.status.consecutive_failures >= 3:
                    if self.status.reachable:
                        log.warning("woocommerce_unreachable", error=self.status.last_error)
                    self.status.reachable = False
                await trio.sleep(self.retry.next_delay(min(self.status.consecutive_failures, 20)) or 1.0)
