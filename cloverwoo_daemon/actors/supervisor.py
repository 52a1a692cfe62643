"""Supervision: restart a crashed actor with backoff, keep its inbox, escalate past a crash budget.

Rules (style.md, habit 7):

- An actor's inbox channel is created once, by the composition root, and is
  never closed by an incarnation; a restarted actor reads the same inbox, so
  nothing queued for it is lost with the crash.
- Restarts back off (0.2 s doubling to 10 s). More than ``budget`` crashes of
  one actor within ``window`` seconds means something is wrong that a restart
  will not fix: the supervisor raises ``CrashBudgetExceeded``, the daemon
  exits non-zero and systemd's ``Restart=on-failure`` takes over.
- The watchdog heartbeat is the supervisor's own loop: systemd gets
  ``WATCHDOG=1`` only while this loop runs, so a wedged event loop is
  restarted by systemd.
- Only a shutdown ends an actor: :meth:`Supervisor.shutdown` is a signal the
  composition root sends, never inferred. An actor that returns while the
  daemon runs has stopped doing its work (a loop that fell through, an
  inbox closed by mistake): it is logged and restarted like a crash, and
  counts against the same budget, so a loop that keeps returning escalates.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from cloverwoo_daemon.core.backoff import Backoff

log = structlog.get_logger("cloverwoo.supervisor")


class CrashBudgetExceeded(Exception):
    """An actor kept crashing; the daemon must exit non-zero."""


class ActorReturned(Exception):
    """An actor's run returned although no shutdown was signalled: restarted as if it had crashed."""


@dataclass
class ActorState:
    name: str
    running: bool = False
    restarts: int = 0
    last_error: str = ""
    started_at: float | None = None
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=64))


ActorTarget = Callable[..., Awaitable[Any]]


class Supervisor:
    def __init__(self, *, budget: int = 5, window: float = 60.0, backoff: Backoff | None = None) -> None:
        self.budget = budget
        self.window = window
        self.backoff = backoff or Backoff(base=0.2, cap=10.0, max_attempts=1_000_000)
        self.actors: dict[str, ActorState] = {}
        self.last_heartbeat = trio.current_time()
        self.stopping = trio.Event()

    def shutdown(self) -> None:
        """The daemon is shutting down: an actor that returns from now on is done, not restarted."""
        self.stopping.set()

    def all_running(self) -> bool:
        return all(a.running for a in self.actors.values())

    async def supervise(
        self, name: str, target: ActorTarget, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``target(task_status=...)`` forever, restarting it when it raises."""
        state = self.actors.setdefault(name, ActorState(name))
        first = True
        attempt = 0
        while True:
            try:
                async with trio.open_nursery() as n:
                    await n.start(target)
                    state.running = True
                    state.started_at = time.time()
                    if first:
                        first = False
                        task_status.started()
                state.running = False
                if self.stopping.is_set():
                    return  # the daemon is shutting down: done
                raise ActorReturned(f"actor {name} returned while the daemon runs")
            except Exception as exc:
                state.running = False
                now = trio.current_time()
                state.crashes.append(now)
                state.restarts += 1
                state.last_error = describe(exc)[:500]
                recent = sum(1 for t in state.crashes if now - t <= self.window)
                log.error("actor_crashed", actor=name, restarts=state.restarts, recent=recent,
                          error=state.last_error, exc_info=exc)
                if recent > self.budget:
                    raise CrashBudgetExceeded(f"actor {name} crashed {recent} times in {self.window:.0f}s") from exc
                attempt = attempt + 1 if recent > 1 else 1
                await trio.sleep(self.backoff.next_delay(min(attempt, 20)) or self.backoff.cap)
                if first:
                    # It never started: report started anyway so start-up is not blocked; it keeps retrying.
                    first = False
                    task_status.started()

    async def heartbeat(
        self,
        beat: Callable[[], None],
        *,
        interval: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``beat`` (systemd ``WATCHDOG=1``) every ``interval`` while this event loop is healthy."""
        task_status.started()
        while True:
            self.last_heartbeat = trio.current_time()
            beat()
            await trio.sleep(interval)


def describe(exc: BaseException) -> str:
    """``Type: message`` of the real errors inside (possibly nested) exception groups, for operators."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
