"""Prometheus metrics of the daemon: every series it exposes on ``/metrics``, in one class.

Why one class: names, types and label sets are read in one place (and
checked against docs/METRICS.md), and every label value comes from a small
fixed set chosen here (a source, a side, a result, a trigger kind, an alert
kind, a binding state, a shard index): never a SKU, an id or an error text,
so the number of series cannot grow with the catalogue.

Two kinds of series:

- Counters and histograms moved where the thing happens, through small hooks
  handed in by ``app.py``: the webhook server's ``on_received``, the API
  clients' ``ClientHooks``, the shards' ``on_merge`` and ``on_conflict``,
  the alert actor's ``on_sent``. Nothing here imports an actor.
- Values the actors already keep (merge counts, queues, binding states, open
  conflicts) are read at scrape time through ``Sources`` by a custom
  collector, so nothing is counted twice. A scrape costs O(shards + open
  conflicts + stale bindings), never O(bindings): the binding table counts
  its states as bindings are put (``actors.bindings.BindingTable.states``).

The webhook server adds its own transport-level series (deliveries by HTTP
status, ack latency, intake queue depth) to the same registry
(``io/webhooks.py``): it runs with any registry, in tests and benchmarks too.

One ``CollectorRegistry`` per daemon, not the global default, so that several
daemons in one test process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloverwoo_daemon.core.alerts import KINDS as ALERT_KINDS

__all__ = ["BINDING_STATES", "EVENT_RESULTS", "EVENT_SOURCES", "TRIGGER_KINDS", "ClientHooks", "Metrics", "Side",
           "Sources", "trigger_kind"]

log = structlog.get_logger("cloverwoo.metrics")

Side = Literal["clover", "woo"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

EVENT_SOURCES = ("clover", "woocommerce")
EVENT_RESULTS = ("accepted", "duplicate", "ignored", "skipped", "unreadable", "rejected_auth", "malformed",
                 "too_large", "timeout", "overloaded", "failed")
"""What became of a webhook delivery (``io.webhooks`` decides; one per delivery, or per event once parsed)."""

BINDING_STATES = ("synced", "never_synced", "stale", "conflict", "excluded", "untracked")
"""Each binding is in exactly one (``BindingTable.states``), so the gauge sums to the number of bindings."""

# A merge's triggers are coalesced ("retry,webhook:clover"); the first prefix in this order that any of
# them starts with names it. Webhooks and polls come first: they are what propagation latency is about.
_TRIGGER_PREFIXES = (
    ("webhook:clover", "webhook_clover"),
    ("webhook:woo", "webhook_woo"),
    ("poll:clover", "poll_clover"),
    ("poll:woo", "poll_woo"),
    ("reconcile", "reconcile"),
    ("catchup", "catchup"),
    ("initialise", "initialise"),
    ("csv", "csv"),
    ("catalogue", "catalogue"),
    ("exclude", "exclusion"),
    ("include", "exclusion"),
    ("recheck", "recheck"),
    ("restart", "restart"),
    ("retry", "retry"),
)
TRIGGER_KINDS = (*dict.fromkeys(label for _, label in _TRIGGER_PREFIXES), "other")


def trigger_kind(trigger: str) -> str:
    """The bounded label for a merge's (comma-joined) triggers: one of ``TRIGGER_KINDS``."""
    parts = trigger.split(",")
    for prefix, label in _TRIGGER_PREFIXES:
        if any(p.startswith(prefix) for p in parts):
            return label
    return "other"


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class ClientHooks:
    """What an API client reports about its requests; the default (a client made without metrics) counts nothing.

    ``wrote(ok, n)``: ``n`` item stock writes finished, accepted or not.
    """

    rate_limited: Callable[[], None] = _nothing  # a 429 answer
    retried: Callable[[], None] = _nothing  # an attempt failed and another follows after a delay
    wrote: Callable[[bool, int], None] = lambda ok, n: None


@dataclass
class Sources:
    """What the scrape-time series read; ``app.py`` fills it in once the actors exist. Each is called per scrape."""

    merges: Callable[[], Mapping[str, int]] = dict  # result (ok | failed) -> merges since start
    backlog: Callable[[], Mapping[str, int]] = dict  # queued | running | retrying -> bindings
    shard_queues: Callable[[], Sequence[int]] = tuple  # commands waiting in each shard's inbox
    inbox_pending: Callable[[], int] = lambda: 0  # accepted events not settled yet (the store's inbox)
    bindings: Callable[[], Mapping[str, int]] = dict  # state -> bindings (BINDING_STATES)
    open_conflicts: Callable[[], int] = lambda: 0


class Metrics:
    """Every series of the daemon; see the module docstring for why they live together."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sources = Sources()
        self.events_received = Counter(
            "cloverwoo_events_received_total",
            "Webhook deliveries by source and what became of them; a stored or duplicate delivery counts its "
            "events, a refused one counts 1 (its body is not parsed).",
            ["source", "result"], registry=r)
        self.propagation = Histogram(
            "cloverwoo_propagation_seconds",
            "From the earliest trigger of a merge (webhook stored, poll finding, ...) to the merge committed, "
            "both sides written (or nothing to write), by trigger kind.",
            ["trigger"], buckets=_LATENCY_BUCKETS, registry=r)
        self.remote_writes = Counter(
            "cloverwoo_remote_writes_total", "Item stock writes to Clover or WooCommerce, by side and result.",
            ["side", "result"], registry=r)
        self.rate_limited = Counter(
            "cloverwoo_remote_rate_limited_total", "HTTP 429 answers from Clover or WooCommerce, by side.",
            ["side"], registry=r)
        self.retries = Counter(
            "cloverwoo_remote_retries_total", "Requests to Clover or WooCommerce tried again after a failed "
            "attempt (429, 5xx, timeout, connection error), by side.", ["side"], registry=r)
        self.conflicts = Counter(
            "cloverwoo_conflicts_total", "Oversells and conflicts flagged (again while open counts again).",
            registry=r)
        self.alerts_sent = Counter(
            "cloverwoo_alerts_sent_total", "Alert emails the mail server accepted, by alert kind.", ["kind"],
            registry=r)
        # zero series up front: a rate() over a counter that appears late misses its first increase
        for source in EVENT_SOURCES:
            for result in EVENT_RESULTS:
                self.events_received.labels(source, result)
        for side in ("clover", "woo"):
            self.rate_limited.labels(side)
            self.retries.labels(side)
            for ok in ("ok", "error"):
                self.remote_writes.labels(side, ok)
        for kind in ALERT_KINDS:
            self.alerts_sent.labels(kind)
        r.register(_ScrapeTime(self.sources))

    # -- hooks

    def received(self, source: str, result: str, count: int = 1) -> None:
        """``WebhookDeps.on_received``: a delivery's outcome (one of ``EVENT_RESULTS``)."""
        self.events_received.labels(source, result).inc(count)

    def observe_merge(self, trigger: str, seconds: float) -> None:
        """``ShardDeps.on_merge``: a merge committed ``seconds`` after its earliest trigger arrived."""
        self.propagation.labels(trigger_kind(trigger)).observe(max(0.0, seconds))

    def alert_sent(self, kind: str) -> None:
        """``AlertDeps.on_sent``: an email of ``kind`` was accepted by the mail server."""
        self.alerts_sent.labels(kind if kind in ALERT_KINDS else "other").inc()

    def client_hooks(self, side: Side) -> ClientHooks:
        """The hooks for one API client (every Clover location shares ``side="clover"``)."""
        limited, retried = self.rate_limited.labels(side), self.retries.labels(side)
        ok, error = self.remote_writes.labels(side, "ok"), self.remote_writes.labels(side, "error")

        def wrote(success: bool, n: int) -> None:
            if n > 0:
                (ok if success else error).inc(n)

        return ClientHooks(rate_limited=limited.inc, retried=retried.inc, wrote=wrote)


class _ScrapeTime(Collector):
    """The series read from ``Sources`` at each scrape (a failing source is logged and its series left out)."""

    def __init__(self, sources: Sources) -> None:
        self.s = sources

    def collect(self) -> Iterator[Metric]:
        for build in (self._merges, self._backlog, self._shard_queues, self._inbox, self._bindings,
                      self._conflicts):
            try:
                yield build()
            except Exception as exc:  # noqa: BLE001 - one broken source must not cost the whole scrape
                log.error("metrics_source_failed", series=build.__name__, error=f"{type(exc).__name__}: {exc}")

    def _merges(self) -> Metric:
        m = CounterMetricFamily("cloverwoo_merges", "Merges finished since start, by result (ok | failed).",
                                labels=["result"])
        merges = self.s.merges()
        for result in ("ok", "failed"):
            m.add_metric([result], merges.get(result, 0))
        return m

    def _backlog(self) -> Metric:
        m = GaugeMetricFamily("cloverwoo_merge_backlog", "Bindings waiting for a merge (queued), merging "
                              "(running), or waiting to retry a failed one (retrying).", labels=["state"])
        backlog = self.s.backlog()
        for state in ("queued", "running", "retrying"):
            m.add_metric([state], backlog.get(state, 0))
        return m

    def _shard_queues(self) -> Metric:
        m = GaugeMetricFamily("cloverwoo_shard_queue_depth", "Commands waiting in each shard actor's inbox.",
                              labels=["shard"])
        for i, depth in enumerate(self.s.shard_queues()):
            m.add_metric([str(i)], depth)
        return m

    def _inbox(self) -> Metric:
        return GaugeMetricFamily("cloverwoo_inbox_pending_events",
                                 "Accepted events not settled yet (the store's durable inbox).",
                                 value=self.s.inbox_pending())

    def _bindings(self) -> Metric:
        m = GaugeMetricFamily("cloverwoo_bindings", "Bindings by state; each binding is in exactly one.",
                              labels=["state"])
        states = self.s.bindings()
        for state in BINDING_STATES:
            m.add_metric([state], states.get(state, 0))
        return m

    def _conflicts(self) -> Metric:
        return GaugeMetricFamily("cloverwoo_conflicts_open", "Conflicts flagged and not resolved yet.",
                                 value=self.s.open_conflicts())

