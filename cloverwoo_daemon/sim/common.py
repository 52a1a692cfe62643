"""What both simulators share: serving on port 0, latency and fault injection.

The simulators are real HTTP servers (hypercorn + quart-trio) so the daemon's
clients are exercised exactly as in production. ``Faults`` is changed at run
time by tests (and by ``/_sim/faults``) to inject latency, 5xx, timeouts and
connection resets.
"""

from __future__ import annotations

import random

import msgspec
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve


class Faults(msgspec.Struct, kw_only=True):
    """Knobs for injected misbehaviour; mutable on purpose (tests turn them on and off)."""

    latency: float = 0.0  # seconds added to every API call
    jitter: float = 0.0  # +- uniform seconds on top of latency
    error_rate: float = 0.0  # fraction of calls answered 500/502/503
    hang_rate: float = 0.0  # fraction of calls that hang for `hang_seconds` (client timeout)
    hang_seconds: float = 60.0
    down: bool = False  # every call answered 503 (the store went away)
    webhook_drop_rate: float = 0.0  # fraction of webhook deliveries never sent
    webhook_delay: float = 0.0  # seconds before a webhook is sent
    webhook_duplicate_rate: float = 0.0  # fraction sent twice
    webhooks_enabled: bool = True
    seed: int = 0


class FaultInjector:
    """Applies ``Faults`` to one request; returns an error status to answer with, or None."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)

    async def before_request(self) -> int | None:
        f = self.faults
        if f.down:
            return 503
        delay = f.latency + (self.rng.uniform(-f.jitter, f.jitter) if f.jitter else 0.0)
        if delay > 0:
            await trio.sleep(delay)
        if f.hang_rate and self.rng.random() < f.hang_rate:
            await trio.sleep(f.hang_seconds)
        if f.error_rate and self.rng.random() < f.error_rate:
            return self.rng.choice((500, 502, 503))
        return None


async def serve_app(
    app: object,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_trigger: object | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a quart-trio app; reports ``http://host:port`` (the real port when 0)."""
    cfg = HyperConfig()
    cfg.bind = [f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    cfg.keep_alive_timeout = 30
    cfg.graceful_timeout = 1.0

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            url = binds[0] if binds else f"http://{host}:{port}"
            task_status.started(url)

    kwargs = {}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    await serve(app, cfg, task_status=_Status(), **kwargs)  # type: ignore[arg-type]
