"""Prometheus metrics of the sync itself (the webhook server adds its own to the same registry).

One ``CollectorRegistry`` per daemon, not the global default, so that several
daemons in one test process do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("cloverwoo_events_total", "Accepted events routed, by source",
                              ["source"], registry=self.registry)
        self.merges = Histogram("cloverwoo_merge_seconds", "Trigger-to-merge-done latency, by trigger kind",
                                ["trigger"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.conflicts = Counter("cloverwoo_conflicts_total", "Oversells and conflicts flagged",
                                 registry=self.registry)

    def observe_merge(self, trigger: str, seconds: float) -> None:
        kind = trigger.split(",", 1)[0].split(":", 1)[0] or "other"
        self.merges.labels(trigger=kind).observe(seconds)
