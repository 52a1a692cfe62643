"""Whether the WordPress companion is installed, for the writers (the shards) and for ``status``.

Rules:

- Nothing to configure: the companion is asked for its status at start and
  every ``every`` seconds after. While it answers, WooCommerce stock writes go
  through it (atomic beside checkouts, exactly once by write id); otherwise by
  ``inventory_delta`` with the meta marker.
- A write that finds the companion's route gone (``CompanionMissing``) says so
  at once (:meth:`CompanionWatch.gone`): the next write falls back, without
  waiting for the next check, and the check runs again soon in case it was
  being reinstalled.
- A status that cannot be asked (the store down, a timeout) changes nothing:
  the last answer stands. Before the first answer, writes use
  ``inventory_delta``, which works on every store.
- The start check waits at most ``start_timeout`` seconds: a slow store must
  not hold the daemon's start.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
import trio

from cloverwoo_daemon.core.model import CompanionInfo
from cloverwoo_daemon.ports import RemoteError, WooPort

log = structlog.get_logger("cloverwoo.companion")

COMPANION_FILE = "wordpress/cloverwoo-companion.php"
INSTALL_HINT = f"copy {COMPANION_FILE} into wp-content/mu-plugins/"


class CompanionWatch:
    """The companion's last known status; read by the shards before each WooCommerce write."""

    def __init__(self, woo: WooPort, *, every: float = 600.0, start_timeout: float = 10.0) -> None:
        self.woo = woo
        self.every = every
        self.start_timeout = start_timeout
        self.info: CompanionInfo | None = None
        self.checked_at: float | None = None  # unix time of the last answer (installed or not)
        self.last_error = ""
        self.fallbacks = 0  # writes that found it gone
        self._wake = trio.Event()

    @property
    def available(self) -> bool:
        return self.info is not None

    def current(self) -> CompanionInfo | None:
        """What a write goes by now: the companion's status, or None for ``inventory_delta``."""
        return self.info

    def gone(self, reason: str) -> None:
        """A write found the companion's route missing: fall back now, and look again soon."""
        if self.info is not None:
            log.warning("companion_gone", reason=reason[:300],
                        detail="stock writes fall back to inventory_delta (not atomic beside checkouts)")
        self.info = None
        self.fallbacks += 1
        self._wake.set()

    async def check(self) -> None:
        """Ask the companion now; a failure to ask leaves the last answer in place."""
        try:
            info = await self.woo.companion()
        except RemoteError as exc:
            self.last_error = str(exc)[:300]
            log.warning("companion_check_failed", error=self.last_error)
            return
        self.last_error = ""
        self.checked_at = time.time()
        if (info is None) != (self.info is None) or (info and self.info and info.version != self.info.version):
            if info is None:
                log.warning("companion_missing", install=INSTALL_HINT,
                            detail="stock writes use inventory_delta: a checkout during one can be lost")
            else:
                log.info("companion_found", version=info.version, sync_webhooks=info.sync_webhooks,
                         write_ids_kept_days=info.write_ids_kept_days, transactional=info.transactional)
        self.info = info

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.move_on_after(self.start_timeout):
            await self.check()
        task_status.started()
        while True:
            with trio.move_on_after(self.every):
                await self._wake.wait()
                await trio.sleep(5.0)  # found gone: look again shortly (a reinstall, a deploy in progress)
            self._wake = trio.Event()
            await self.check()

    def summary(self) -> dict[str, Any]:
        """For ``status``: whether stock writes are atomic, and the one-line install when they are not."""
        info = self.info
        return {
            "atomic": info is not None,
            "companion": info.version if info is not None else None,
            "sync_webhooks": info.sync_webhooks if info is not None else None,
            "transactional": info.transactional if info is not None else None,
            "checked_at": self.checked_at,
            "last_error": self.last_error,
            "fallbacks": self.fallbacks,
            "install": None if info is not None else INSTALL_HINT,
        }
