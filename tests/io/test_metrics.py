"""io.metrics: bounded labels, and a scrape that survives a broken source."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.io.metrics import TRIGGER_KINDS, Metrics, trigger_kind
from cloverwoo_daemon.io.webhooks import WebhookDeps, create_app


@pytest.mark.parametrize("trigger,kind", [
    ("webhook:clover", "webhook_clover"),
    ("webhook:clover:order", "webhook_clover"),
    ("retry,webhook:woo:order", "webhook_woo"),  # coalesced: the webhook names it, not the retry
    ("poll:woo,recheck", "poll_woo"),
    ("catchup:downtown", "catchup"),
    ("initialise:clover", "initialise"),
    ("reconcile:full", "reconcile"),
    ("include", "exclusion"),
    ("restart", "restart"),
    ("SKU-0001", "other"),
    ("", "other"),
])
def test_trigger_kind(trigger: str, kind: str) -> None:
    assert trigger_kind(trigger) == kind


def families(m: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = generate_latest(m.registry).decode()
    return {f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
            for f in text_string_to_metric_families(text)}


def test_propagation_labels_stay_bounded_whatever_the_triggers_say() -> None:
    m = Metrics()
    for i in range(500):
        m.observe_merge(f"catchup:location{i},csv", 0.1)
        m.observe_merge(f"weird-{i}", 0.2)
    m.observe_merge("webhook:clover", -0.001)  # clock skew is not a negative latency
    samples = families(m)["cloverwoo_propagation_seconds"]
    counts = {ls["trigger"]: v for n, ls, v in samples if n.endswith("_count")}
    assert counts == {"catchup": 500, "other": 500, "webhook_clover": 1}
    assert set(counts) <= set(TRIGGER_KINDS)


def test_a_failing_source_costs_its_own_series_only() -> None:
    m = Metrics()
    m.sources.bindings = lambda: {"synced": 7, "conflict": 1}
    m.sources.open_conflicts = lambda: 1 // 0
    m.sources.shard_queues = lambda: [0, 3]
    m.alert_sent("low_stock")
    m.alert_sent("something_new")
    got = families(m)
    assert "cloverwoo_conflicts_open" not in got
    bindings = {ls["state"]: v for _, ls, v in got["cloverwoo_bindings"]}
    assert bindings == {"synced": 7, "never_synced": 0, "stale": 0, "conflict": 1, "excluded": 0, "untracked": 0}
    assert [(ls["shard"], v) for _, ls, v in got["cloverwoo_shard_queue_depth"]] == [("0", 0), ("1", 3)]
    sent = {ls["kind"]: v for n, ls, v in got["cloverwoo_alerts_sent"] if n == "cloverwoo_alerts_sent_total"}
    assert sent["low_stock"] == 1 and sent["other"] == 1 and sent["out_of_stock"] == 0


def test_every_series_is_documented_and_every_documented_one_exists() -> None:
    m = Metrics()

    async def accept(items: object) -> None:
        return None

    create_app(WebhookDeps(clover_auth_code="a", woo_webhook_secret="s", max_body_bytes=1024,
                           intake=SimpleNamespace(accept=accept), verification=VerificationGate(configured=True),
                           health=lambda: (True, {}), registry=m.registry))
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in m.registry.collect()}
    table = (Path(__file__).resolve().parents[2] / "docs" / "METRICS.md").read_text()
    documented = set(re.findall(r"^\| `(cloverwoo_\w+)` \|", table, flags=re.M))
    assert exposed == documented
