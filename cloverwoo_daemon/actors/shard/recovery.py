"""Finishing a merge that a crash (or a cancelled task) interrupted, before the binding is merged again.

Rules:

- The pure part is ``core.merge.recover``: the Woo write is settled by its
  meta marker (the intent's write id), and a Woo write that did not land
  means no Clover write was sent. What it leaves in doubt is a Clover
  location whose write began and whose step was not committed.
- A Woo write sent through the WordPress companion is settled by sending it
  again with the same write id: the companion applies it at most once and
  answers the stock it left, applied now or before. A refusal means it was
  never applied. Past the companion's ``write_ids_kept_days`` (less a day's
  margin) its id may be forgotten, so it is never resent: nor when the
  companion is gone. Both leave the write in doubt: assumed not landed, and
  flagged ``ambiguous_write``.
- A location in doubt is settled by a fresh read: equal to the recorded
  target, the write landed (its step is applied); equal to what the write's
  own read saw, it did not; anything else is a POS change in between, and
  it is flagged ``ambiguous_write`` rather than guessed silently.
- A location whose read-then-write never began (its ``clover_started`` entry
  is absent) is not in doubt: nothing was sent. The executor takes a
  location out of ``clover_started`` again when its read-then-write returned
  without writing, so such a location never raises a false alarm.
- A Clover item deleted since the interrupted write (``NotFound``) holds no
  stock to compare or to protect: it is settled as gone, and the merge that
  follows drops that location. Retrying the read could never succeed.
- The recovered binding, the cleared intent, a log row and any conflict are
  committed together; memory follows the store only once the commit landed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import msgspec
import structlog

from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.log_rows import identity, row
from cloverwoo_daemon.actors.shard.scheduler import MergeFailed
from cloverwoo_daemon.core import merge as core_merge
from cloverwoo_daemon.core.model import Binding, Conflict, StockChange
from cloverwoo_daemon.ports import CompanionMissing, NotFound, RemoteError

log = structlog.get_logger("cloverwoo.shard")
_intent_decoder = msgspec.json.Decoder(core_merge.WriteIntent)


def decode_intent(raw: bytes) -> core_merge.WriteIntent:
    return _intent_decoder.decode(raw)


async def recover(
    deps: ShardDeps, binding: Binding, intent: core_merge.WriteIntent, marker: int | None, trigger: str,
) -> Binding:
    """Finish the bookkeeping of ``intent``'s merge on ``binding``; returns the binding as committed.

    ``marker`` is the Woo version marker read back just now.
    """
    d = deps
    woo_landed: bool | None = None
    woo_note = ""
    open_woo = intent.woo_delta and not intent.woo_done and binding.version < intent.version
    if intent.woo_via == "companion" and open_woo:
        woo_landed, woo_note = await _settle_companion_write(d, binding, intent)
    elif open_woo and (marker is None or str(marker) != intent.marker):
        _wait_if_it_may_still_land(d, intent)
    recovered, in_doubt = core_merge.recover(binding, intent, marker, woo_landed=woo_landed)
    resolved: dict[str, str] = {}
    for loc in in_doubt:
        target = intent.clover_targets.get(loc)
        # read_then_write commits the target concurrently with the POST, so a kill can leave a
        # landed write with no recorded target. The merge's own read plus the delta is the target it sent
        # unless a POS change landed in between (then the fresh read matches neither and it is flagged);
        # assuming "not landed" here made the next merge carry the write back to Woo: a sale twice.
        if target is None and loc in intent.clover_started and loc in intent.clover_reads:
            target = intent.clover_reads[loc] + intent.clover_deltas.get(loc, 0)
        item_id = recovered.clover_items.get(loc)
        started = loc in intent.clover_started and item_id is not None
        if target is None or item_id is None or loc not in d.clovers:
            # A write that began (read sent) but whose target was never recorded may have landed:
            # nothing can tell, so it is flagged rather than guessed silently.
            resolved[loc] = "in doubt: target unknown, assumed not landed" if started else "not written"
            continue
        try:
            fresh = await d.clovers[loc].get_stock(item_id)
        except NotFound:
            resolved[loc] = "gone: Clover item deleted"
            continue
        before = target - intent.clover_deltas.get(loc, 0)  # what the pre-write read saw
        if fresh == target:
            recovered = core_merge.after_clover_step_from_intent(recovered, intent, loc)
            resolved[loc] = "landed"
        elif fresh == before:
            resolved[loc] = "not landed"
        else:
            resolved[loc] = "in doubt: assumed not landed"
    recovered = core_merge.finish_from_intent(recovered, intent)
    conflict = None
    if any(v.startswith("in doubt") for v in resolved.values()) or woo_note.startswith("in doubt"):
        detail = {**identity(binding), "locations": resolved, "intent_version": intent.version}
        if woo_note:
            detail["woocommerce"] = woo_note
        conflict = Conflict(binding_id=binding.binding_id, sku=binding.sku, kind="ambiguous_write",
                            detail=json.dumps(detail), created_at=time.time())
    log_row = row(recovered, "warning", "recovered", trigger,
                  detail={"woo_marker": marker, "intent_version": intent.version, "clover": resolved,
                          **({"woocommerce": woo_note} if woo_note else {})})
    await d.store.commit_binding(recovered, intent="clear", log=log_row, conflict=conflict,
                                 after_commit=_landed(d, recovered))
    if conflict is not None:
        d.on_conflict(conflict)
    return recovered


_DAY = 86400.0


def _wait_if_it_may_still_land(d: ShardDeps, intent: core_merge.WriteIntent) -> None:
    """Raise ``MergeFailed`` (retried later) while the intent's ``inventory_delta`` can still be applied.

    The marker is missing, but PHP goes on with a request whose client hung
    up: a delta that timed out may land after this read, and taking it for
    "not landed" now would plan it again, so it would count twice. The answer
    ended the request (a 5xx, a refusal): the marker tells at once. A timeout
    or a reset: ``woo_write_grace`` from then. Nobody knows whether it was sent
    (the daemon stopped mid-write): ``woo_crash_grace`` from the intent.
    """
    now = time.time()
    if intent.woo_answer == "ended" or not intent.created_at:
        return
    if intent.woo_answer == "may_land":
        left = intent.woo_unknown_at + d.woo_write_grace - now
    else:
        left = intent.created_at + d.woo_crash_grace - now
    if left > 0:
        log.info("woo_write_may_still_land", binding_id=intent.binding_id, wait_s=round(left, 1),
                 answer=intent.woo_answer or "unknown (the daemon stopped mid-write)")
        raise MergeFailed(f"its WooCommerce write got no answer and may still land: the marker is checked again "
                          f"(for {left:.0f} s more) before the change is planned anew")


async def _settle_companion_write(
    d: ShardDeps, binding: Binding, intent: core_merge.WriteIntent,
) -> tuple[bool, str]:
    """Whether the companion write of ``intent`` landed, by sending it again; (landed, what was found).

    Error handling: ``RemoteError`` (the store down) propagates: the merge
    fails and this runs again at its retry, the intent untouched.
    """
    info = d.companion()
    kept_days = info.write_ids_kept_days if info is not None else 0
    age = time.time() - intent.created_at
    if info is None:
        try:  # the watch may not have asked yet: one look, so a restart does not flag a write for nothing
            info = await d.woo.companion()
        except RemoteError:
            info = None
        kept_days = info.write_ids_kept_days if info is not None else 0
    if info is None:
        return False, "in doubt: the companion is gone, so its write id cannot be asked; assumed not landed"
    if kept_days and age > max(0.0, kept_days - 1) * _DAY:
        return False, (f"in doubt: written {age / _DAY:.1f} days ago, the companion keeps write ids "
                       f"{kept_days} days: not resent; assumed not landed")
    try:
        (res,) = await d.woo.apply_changes([StockChange(intent.write_id, binding.woo, intent.woo_delta)])
    except CompanionMissing as exc:
        d.companion_gone(str(exc))
        return False, "in doubt: the companion is gone, so its write id cannot be asked; assumed not landed"
    if not res.ok:
        return False, f"not landed: refused ({res.code or res.error})"
    return True, "landed before" if not res.new else "landed now (sent again by write id)"


def _landed(d: ShardDeps, binding: Binding) -> Callable[[], None]:
    def apply() -> None:
        d.intents.pop(binding.binding_id, None)
        d.table.put(binding)

    return apply
