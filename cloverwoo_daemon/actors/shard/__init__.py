"""The SKU-shard actor: runs merges, one at a time per binding, and executes their writes.

Rules the shard keeps as a whole (sync-model.md):

- Per binding, merges run one at a time; triggers that arrive meanwhile are
  coalesced into exactly one more merge, with fresh reads.
- Every merge works from fresh reads; triggers only say "look again", so
  duplicates and reordering are harmless.
- A write intent is committed before the first remote write, and the bases
  move by exactly what each write transferred; a crash leaves either an
  inbox event or an intent that the binding's next merge recovers first.
- A merge that fails fails that merge only: logged, retried with backoff,
  alerted past a limit; nothing accepted is dropped, the shard goes on.
- Never a write that changes nothing.

Where each part lives:

=================  =============================================================
``actor``          the inbox loop: hands each command to the part that owns it
``scheduler``      per-binding serialisation, worker pool, retry and backoff,
                   settling events, accounting each recount to its job
``pending``        coalescing: what waits for a binding's next merge
``execute``        one merge: reads, the pure plan, the writes step by step
``recovery``       finishing a merge a crash interrupted (write intents)
``reads``          which Clover locations to read; locations that are down
``catalogue``      catalogue updates, unbinding, exclusions, CSV counts
``repairs``        checkouts our own writes erased (proven by the witness), taken off
                   both sides by the next merge
``location_meta``  per-location figures on the Woo product; mode switches
``log_rows``       how a binding is named in log lines and the sync log
``deps``           what the shard needs from outside (ports, hooks)
=================  =============================================================
"""

from cloverwoo_daemon.actors.shard.actor import ShardActor
from cloverwoo_daemon.actors.shard.deps import ShardDeps
from cloverwoo_daemon.actors.shard.location_meta import LOCATION_META_KEY

__all__ = ["LOCATION_META_KEY", "ShardActor", "ShardDeps"]
