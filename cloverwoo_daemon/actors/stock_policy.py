"""The out-of-stock actor: carries ``core.stock_policy``'s decisions to WooCommerce.

Rules this actor keeps:

- Fed by ``ShardDeps.on_stock`` after every committed merge (and once over the
  whole binding table at start). The hook never blocks: the newest binding
  per id waits in a dict, so a burst coalesces and nothing is dropped.
- The product is read only on a transition (``needs_look``): a merge that
  leaves a product out of stock, or in stock, costs nothing.
- The in-force records and the run-time per-SKU overrides are durable (store
  kv, ``stock_policy.applied`` / ``stock_policy.overrides``), so the undo
  after a restart restores the value that was there before.
- Feedback: our PUT fires ``product.updated``; its stock equals the base, so
  the shard skips it as an echo, and a merge it triggers anyway changes no
  stock, so the decision it feeds back is "nothing to do".
- A failed read or write is retried with backoff; a product gone from the
  store forgets its record.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
import structlog
import trio

from cloverwoo_daemon.actors.tables import released
from cloverwoo_daemon.core import stock_policy as core
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding
from cloverwoo_daemon.ports import NotFound, RemoteError, ShopPresentationPort, StorePort

log = structlog.get_logger("cloverwoo.stock_policy")

__all__ = ["APPLIED_KEY", "OVERRIDES_KEY", "StockPolicyActor", "StockPolicyDeps"]

APPLIED_KEY = "stock_policy.applied"
OVERRIDES_KEY = "stock_policy.overrides"


@dataclass
class StockPolicyDeps:
    woo: ShopPresentationPort
    store: StorePort
    action: core.Action = "backorder"  # alerts.out_of_stock
    overrides: Mapping[str, str] = field(default_factory=dict)  # config, per SKU
    message: str = "Out of stock - contact us to order"
    bindings: Callable[[], Iterable[Binding]] = lambda: ()  # the binding table, for the start-up sweep
    retry: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0, max_attempts=1_000_000))


class StockPolicyActor:
    def __init__(self, deps: StockPolicyDeps) -> None:
        self.deps = deps
        self._latest: OrderedDict[str, Binding] = OrderedDict()  # bindings to bring in line, oldest first
        self._wake = trio.Event()
        self._applied: dict[str, core.Applied] = {}
        self._runtime: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._busy = 0
        self.writes = 0
        self.write_failures = 0

    # ------------------------------------------------------------------ hooks and control

    def notice_stock(self, binding: Binding) -> None:
        """A merge of ``binding`` committed (``ShardDeps.on_stock``); never blocks."""
        self._latest[binding.binding_id] = binding
        self._wake.set()

    def action_of(self, sku: str) -> core.Action:
        return core.action_for(sku, self.deps.action, self.deps.overrides, self._runtime)

    def overrides(self) -> dict[str, str]:
        """Effective per-SKU actions: config, then run-time ones on top."""
        return {**self.deps.overrides, **self._runtime}

    async def set_override(self, sku: str, action: str | None) -> None:
        """A run-time action for one SKU (None: back to the config's); persisted, applied at once."""
        if action is not None and action not in core.ACTIONS:
            raise ValueError(f"unknown out-of-stock action {action!r} (hide, backorder or contact)")
        if action is None:
            self._runtime.pop(sku, None)
        else:
            self._runtime[sku] = action
        await self.deps.store.set_kv(OVERRIDES_KEY, json.dumps(self._runtime, sort_keys=True))
        for b in self.deps.bindings():
            if b.sku == sku:
                self.notice_stock(b)

    def applied(self) -> dict[str, core.Applied]:
        return dict(self._applied)

    def idle(self) -> bool:
        return not self._latest and not self._busy

    def statistics(self) -> dict[str, int]:
        return {"in_force": len(self._applied), "queued": len(self._latest), "writes": self.writes,
                "write_failures": self.write_failures}

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._load()
        for b in self.deps.bindings():
            self._latest.setdefault(b.binding_id, b)
        task_status.started()
        while True:
            if not self._latest:
                self._latest = released(self._latest)
                self._wake = trio.Event()
                await self._wake.wait()
            bid, binding = self._latest.popitem(last=False)  # oldest first; O(1), unlike next(iter(dict))
            self._busy += 1
            try:
                ok = await self._one(binding)
            finally:
                self._busy -= 1
            if not ok:
                n = self._failures.get(bid, 0) + 1
                self._failures[bid] = n
                await trio.sleep(self.deps.retry.next_delay(min(n, 20)) or self.deps.retry.cap)
                self._latest.setdefault(bid, binding)
            else:
                self._failures.pop(bid, None)

    async def _load(self) -> None:
        raw = await self.deps.store.get_kv(APPLIED_KEY)
        self._applied = msgspec.json.decode(raw, type=dict[str, core.Applied]) if raw else {}
        rt = await self.deps.store.get_kv(OVERRIDES_KEY)
        self._runtime = {k: v for k, v in json.loads(rt).items() if v in core.ACTIONS} if rt else {}

    async def _save(self) -> None:
        await self.deps.store.set_kv(APPLIED_KEY, msgspec.json.encode(self._applied).decode())

    async def _one(self, binding: Binding) -> bool:
        """Bring one binding's product in line; False when it must be tried again later."""
        bid = binding.binding_id
        want = core.desired(binding, self.action_of(binding.sku))
        had = self._applied.get(bid)
        if not binding.tracked or binding.excluded:
            want = None  # untracked or excluded since: undo what we did, touch nothing else
            if had is None:
                return True
        if not core.needs_look(want, had):
            return True
        try:
            current = await self.deps.woo.get_presentation(binding.woo)
            change, record = core.plan(want, had, current, message=self.deps.message)
            if not change.empty:
                await self.deps.woo.set_presentation(binding.woo, change)
                self.writes += 1
        except NotFound:
            log.info("stock_policy_product_gone", binding_id=bid, sku=binding.sku, **_named(binding))
            record = None
            change = core.Change()
        except RemoteError as exc:
            self.write_failures += 1
            log.warning("stock_policy_write_failed", binding_id=bid, sku=binding.sku, **_named(binding),
                        error=str(exc)[:300])
            return False
        if record is None:
            self._applied.pop(bid, None)
        else:
            self._applied[bid] = record
        await self._save()
        which = record or had
        log.info("stock_policy_applied" if record is not None else "stock_policy_undone", binding_id=bid,
                 sku=binding.sku, **_named(binding), action=which.action if which is not None else None,
                 stock=binding.base_woo, wrote=msgspec.to_builtins(change) if not change.empty else None)
        return True


def _named(binding: Binding) -> dict[str, str]:
    """A product without a SKU is named by its name in log lines (``sku=`` alone finds nothing)."""
    return {} if binding.sku else {"product": binding.name}
