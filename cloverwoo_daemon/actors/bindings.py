"""The in-memory table of bindings and the indexes the router resolves events with.

Ownership: a binding's *bases* are changed only by the shard actor that owns
it (after the store committed them); the *catalogue* fields (which items it
ties together) only by the catalogue refresh, which goes through the same
shard. Everyone else reads. Trio runs one task at a time, so a plain dict is
safe as long as nobody awaits between reading and using an entry.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from cloverwoo_daemon.core.model import Binding, WooRef

STATES = ("synced", "never_synced", "stale", "conflict", "excluded", "untracked")
"""Binding states for ``/metrics``; ``states()`` puts every binding in exactly one."""


def shard_of(binding_id: str, shards: int) -> int:
    """Stable shard index: the same binding always lands on the same actor, across restarts."""
    return zlib.crc32(binding_id.encode("utf-8")) % shards


class BindingTable:
    def __init__(self, bindings: Iterable[Binding] = ()) -> None:
        self._by_id: dict[str, Binding] = {}
        # Sized for 50,000 bindings in a small VPS's memory: one dict of item ids per location (not a
        # tuple key per item), and a product's binding id held bare unless it has several (variations).
        self._by_clover: dict[str, dict[str, str]] = {}  # location -> Clover item id -> binding id
        self._by_woo_product: dict[int, str | set[str]] = {}  # product id (parent for variations) -> binding id(s)
        self._by_woo_ref: dict[WooRef, str] = {}
        self._kinds: Counter[str] = Counter()  # _kind of every binding, kept as they are put: states() is O(1)
        for b in bindings:
            self.put(b)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, binding_id: object) -> bool:
        return binding_id in self._by_id

    def get(self, binding_id: str) -> Binding | None:
        return self._by_id.get(binding_id)

    def all(self) -> list[Binding]:
        return list(self._by_id.values())

    def ids(self) -> list[str]:
        return list(self._by_id)

    def mapping(self) -> Mapping[str, Binding]:
        """A read-only live view by binding id (no copy of a 50,000-entry table)."""
        return MappingProxyType(self._by_id)

    def put(self, binding: Binding) -> None:
        old = self._by_id.get(binding.binding_id)
        if old is not None and (old.clover_items != binding.clover_items or old.woo != binding.woo):
            self._unindex(old)
        if old is not None:
            self._kinds[_kind(old)] -= 1
        self._kinds[_kind(binding)] += 1
        self._by_id[binding.binding_id] = binding
        bid = binding.binding_id
        for loc, item_id in binding.clover_items.items():
            self._by_clover.setdefault(loc, {})[item_id] = bid
        pid = binding.woo.product_id
        held = self._by_woo_product.get(pid)
        if held is None or held == bid:
            self._by_woo_product[pid] = bid
        elif isinstance(held, set):
            held.add(bid)
        else:
            self._by_woo_product[pid] = {held, bid}
        self._by_woo_ref[binding.woo] = bid

    def remove(self, binding_id: str) -> Binding | None:
        old = self._by_id.pop(binding_id, None)
        if old is not None:
            self._unindex(old)
            self._kinds[_kind(old)] -= 1
        return old

    def states(self, *, conflicted: Iterable[str] = (), stale: Iterable[str] = ()) -> dict[str, int]:
        """Bindings per state (``STATES``), each counted once, in this order of precedence:

        untracked (manage_stock off), excluded (admin opt-out), conflict (an
        open conflict; ``conflicted`` binding ids), stale (merged without a
        location that was down; ``stale`` ids), never_synced (no base yet),
        synced. Cost: O(len(conflicted) + len(stale)), whatever the table's size.
        """
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._kinds)
        marked = dict.fromkeys(stale, "stale") | dict.fromkeys(conflicted, "conflict")
        for bid, state in marked.items():
            b = self._by_id.get(bid)
            if b is None:
                continue  # unbound since
            kind = _kind(b)
            if kind in ("synced", "never_synced"):
                counts[kind] -= 1
                counts[state] += 1
        return counts

    def _unindex(self, b: Binding) -> None:
        for loc, item_id in b.clover_items.items():
            items = self._by_clover.get(loc)
            if items is not None and items.get(item_id) == b.binding_id:
                del items[item_id]
        pid = b.woo.product_id
        held = self._by_woo_product.get(pid)
        if held == b.binding_id:
            del self._by_woo_product[pid]
        elif isinstance(held, set):
            held.discard(b.binding_id)
            if len(held) == 1:
                self._by_woo_product[pid] = next(iter(held))
        if self._by_woo_ref.get(b.woo) == b.binding_id:
            del self._by_woo_ref[b.woo]

    def by_clover_item(self, location: str, item_id: str) -> str | None:
        items = self._by_clover.get(location)
        return None if items is None else items.get(item_id)

    def by_woo_ref(self, ref: WooRef) -> str | None:
        return self._by_woo_ref.get(ref)

    def by_woo_product(self, product_id: int) -> set[str]:
        """Every binding of a product: the simple product itself, or all variations of a variable one."""
        held = self._by_woo_product.get(product_id)
        if held is None:
            return set()
        return {held} if isinstance(held, str) else set(held)


def _kind(b: Binding) -> str:
    """The state a binding's own fields give (``states`` overlays conflict and stale)."""
    if not b.tracked:
        return "untracked"
    if b.excluded:
        return "excluded"
    return "never_synced" if b.base_woo is None else "synced"
