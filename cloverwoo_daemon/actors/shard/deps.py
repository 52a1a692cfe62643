"""What a shard needs from the outside, handed in by ``app.py`` (and by the unit tests, with fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from cloverwoo_daemon.actors.bindings import BindingTable
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, CompanionInfo, Conflict
from cloverwoo_daemon.core.witness import WriteWindow
from cloverwoo_daemon.messages import EventsSettled
from cloverwoo_daemon.ports import CloverPort, StorePort, WooPort

if TYPE_CHECKING:
    from cloverwoo_daemon.actors.location import Reachability


@dataclass
class ShardDeps:
    """Ports, shared tables and hooks; every shard of a daemon holds the same one."""

    store: StorePort
    woo: WooPort
    clovers: dict[str, CloverPort]
    table: BindingTable
    merge_config: core_merge.MergeConfig
    settled: trio.MemorySendChannel[EventsSettled]
    intents: dict[str, bytes]  # loaded at start: in-flight merges to recover
    on_merge: Callable[[str, float], None] = lambda trigger, seconds: None  # metrics hook
    on_conflict: Callable[[Conflict], None] = lambda c: None  # alerts hook
    on_stock: Callable[[Binding], None] = lambda b: None  # alerts hook: a merge of this binding committed
    on_failure: Callable[[str, int], None] = lambda bid, attempts: None  # alerts hook: consecutive failed merges
    # jobs: one binding of a recount ended (changed | unchanged | skipped | unbound | failed, and why)
    on_job_item: Callable[[str, str, str, str], None] = lambda job_id, bid, result, reason: None
    excluded_sku: Callable[[str], bool] = lambda sku: False  # a new binding with this SKU is born excluded
    # -- locations down are skipped (and caught up on return); per-location figures as Woo meta
    reach: Reachability | None = None
    mode_job: Callable[[str], bool] = lambda job_id: False  # this job is a mode switch (jobs.switch_mode)
    # this mode switch leaves per-location mode: each of its merges removes the per-location meta
    clears_location_meta: Callable[[str], bool] = lambda job_id: False
    mode_switching: Callable[[], bool] = lambda: False  # a mode switch is running
    # -- the WordPress companion (actors/companion.py): its status now (None: write by inventory_delta), and
    # the hook a write calls when it finds the companion's route gone
    companion: Callable[[], CompanionInfo | None] = lambda: None
    companion_gone: Callable[[str], None] = lambda reason: None
    # -- every stock write that can erase someone else's sale (a Clover read-then-write, an inventory_delta):
    # the witness (actors/witness.py) looks for an order inside its window
    on_write: Callable[[WriteWindow], None] = lambda window: None
    # -- an inventory_delta whose answer never came may still be applied by the store (PHP goes on after its
    # client hung up): a missing marker says "not landed" only once this long has passed since the timeout
    # (app.py: three times woocommerce.timeout), or, when nobody knows whether it was sent (a crash, a
    # restart mid-write), since the intent was written (woocommerce.timeout)
    woo_write_grace: float = 90.0
    woo_crash_grace: float = 30.0
    max_parallel: int = 64  # merges in flight per shard: mostly waiting on I/O; enough to fill Woo batches of 100
    retry: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=10.0, max_attempts=1_000_000))
    job_attempts: int = 8  # failed attempts after which a recount is reported failed to its job (it keeps retrying)
