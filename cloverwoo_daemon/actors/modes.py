"""Which multi-location mode is in effect, and whether the bindings were last synced under it.

Rules:

- The mode in effect is the one chosen last: ``cloverwoo mode X`` persists
  its choice in the store (``sync.mode``) and it outlives a restart; but a
  config whose ``[sync] mode`` changed since the last start wins over that
  choice (the administrator edited the file on purpose, later than any
  command could know). An unchanged config leaves the chosen mode alone.
- ``sync.mode.synced`` names the mode the last completed mode recount ran
  under. When it differs from the mode in effect (a config change at
  restart, or a switch that a stop interrupted), the job runner recounts
  every binding at start, exactly as ``cloverwoo mode`` does. A store that
  never recorded one (a first start, or an older daemon's store) is taken as
  synced under the mode in effect: the initial sync counts it anyway.
- Single mode reads and writes the primary only: ``MergeConfig.locations``
  holds just it, so every reader of that tuple (shards, jobs, location
  pollers) leaves the others alone.
"""

from __future__ import annotations

from cloverwoo_daemon.core.merge import MergeConfig
from cloverwoo_daemon.ports import StorePort

MODES = ("aggregate", "single", "per-location")
MODE_KEY = "sync.mode"
MODE_CONFIG_KEY = "sync.mode.config"
MODE_SYNCED_KEY = "sync.mode.synced"


def mode_config(base: MergeConfig, mode: str, all_locations: tuple[str, ...]) -> MergeConfig:
    """``base`` switched to ``mode``; ``all_locations`` are every configured location, in order."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return MergeConfig(
        mode=mode,  # type: ignore[arg-type]
        locations=(base.primary,) if mode == "single" else all_locations,
        primary=base.primary,
        deduct=base.deduct,
        source_of_truth=base.source_of_truth,
    )


async def resolve_mode(store: StorePort, configured: str) -> tuple[str, bool]:
    """The mode to start in, and whether every binding must be recounted under it first."""
    chosen = await store.get_kv(MODE_KEY)
    seen = await store.get_kv(MODE_CONFIG_KEY)
    synced = await store.get_kv(MODE_SYNCED_KEY)
    mode = chosen if chosen in MODES and seen == configured else configured
    if seen != configured:
        await store.set_kv(MODE_CONFIG_KEY, configured)
    if chosen != mode:
        await store.set_kv(MODE_KEY, mode)
    if synced is None:
        await store.set_kv(MODE_SYNCED_KEY, mode)
        synced = mode
    return mode, synced != mode
