"""Alert decisions, without I/O: thresholds, crossings with hysteresis, digest, rate limit, dedup, rendering.

The crossing rules are checked as properties over random stock histories:
an alert fires exactly once per crossing, only a rise above threshold plus
margin re-arms it, and a repeated observation never fires twice.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.alerts import (
    MAX_ROWS,
    Alert,
    AlertPolicy,
    ArmState,
    Dispatcher,
    StockSnapshot,
    conflict_alert,
    evaluate,
    failure_alert,
    margin_for,
    render,
    snapshot_of,
    threshold_for,
)
from cloverwoo_daemon.core.model import Binding, Conflict, WooRef

POLICY = AlertPolicy(low_stock_threshold=5, thresholds={"TEE-M": 20})


def snap(stock: int, sku: str = "SKU-1", locations: dict[str, int | None] | None = None) -> StockSnapshot:
    return StockSnapshot("woo:1:0", sku, "Blue mug", stock, locations if locations is not None else {"downtown": stock})


def run(stocks: list[int], threshold: int, state: ArmState | None = None) -> list[tuple[int, str | None]]:
    """Feed a stock history; return (step, alert kind or None) per step."""
    st_ = state or ArmState()
    out: list[tuple[int, str | None]] = []
    for i, s in enumerate(stocks):
        st_, alert = evaluate(snap(s), threshold, st_, policy=POLICY, at=float(i))
        out.append((i, alert.kind if alert else None))
    return out


# ---------------------------------------------------------------- thresholds


def test_threshold_precedence_runtime_then_config_then_global() -> None:
    assert threshold_for(POLICY, "MUG") == 5
    assert threshold_for(POLICY, "TEE-M") == 20
    assert threshold_for(POLICY, "TEE-M", {"TEE-M": 3}) == 3
    assert threshold_for(POLICY, "MUG", {"MUG": 0}) == 0
    assert threshold_for(POLICY, "MUG", {"OTHER": 9}) == 5


def test_margin_is_a_fifth_of_the_threshold_and_at_least_one() -> None:
    assert margin_for(0) == 1
    assert margin_for(5) == 1
    assert margin_for(20) == 4
    assert margin_for(21) == 5
    assert margin_for(-1) == 1


def test_snapshot_only_for_tracked_synced_bindings() -> None:
    b = Binding("woo:1:0", "MUG", "Blue mug", WooRef(1), {"downtown": "I1"}, base_woo=4, base_clover={"downtown": 4})
    assert snapshot_of(b) == StockSnapshot("woo:1:0", "MUG", "Blue mug", 4, {"downtown": 4})
    assert snapshot_of(Binding("woo:1:0", "MUG", "m", WooRef(1), {})) is None  # never synced
    assert snapshot_of(Binding("woo:1:0", "MUG", "m", WooRef(1), {}, base_woo=1, tracked=False)) is None
    assert snapshot_of(Binding("woo:1:0", "MUG", "m", WooRef(1), {}, base_woo=1, excluded=True)) is None


# ---------------------------------------------------------------- crossings


def test_drop_to_threshold_alerts_once_and_carries_the_figures() -> None:
    state, alert = evaluate(snap(5), 5, ArmState(), policy=POLICY, at=100.0)
    assert alert is not None and alert.kind == "low_stock"
    assert (alert.sku, alert.name, alert.stock, alert.threshold, alert.locations) == (
        "SKU-1", "Blue mug", 5, 5, {"downtown": 5})
    assert state == ArmState(low_armed=False, out_armed=True)
    state, again = evaluate(snap(4), 5, state, policy=POLICY)
    assert again is None


def test_rearmed_only_above_threshold_plus_margin() -> None:
    # threshold 5, margin 1: 6 does not re-arm, 7 does
    assert [k for _, k in run([10, 5, 6, 5, 7, 5], 5)] == [None, "low_stock", None, None, None, "low_stock"]


def test_out_of_stock_is_its_own_alert_and_preempts_low() -> None:
    assert [k for _, k in run([10, 0], 5)] == [None, "out_of_stock"]
    assert [k for _, k in run([10, 3, 0, -1, 0], 5)] == [None, "low_stock", "out_of_stock", None, None]
    # back to 3 re-arms out of stock (above margin 1) but not low stock (not above 6)
    assert [k for _, k in run([10, 0, 3, 0, 3, 7, 4], 5)] == [
        None, "out_of_stock", None, "out_of_stock", None, None, "low_stock"]
    # a return of one unit after selling out does not re-arm it
    assert [k for _, k in run([10, 0, 1, 0], 5)] == [None, "out_of_stock", None, None]


def test_negative_threshold_disables_low_stock_not_out_of_stock() -> None:
    assert [k for _, k in run([3, 1, 0], -1)] == [None, None, "out_of_stock"]


def test_first_observation_already_low_alerts() -> None:
    assert run([2], 5) == [(0, "low_stock")]


def test_alert_keys_are_unique_per_crossing() -> None:
    _, a1 = evaluate(snap(1), 5, ArmState(), policy=POLICY, at=1.0)
    _, a2 = evaluate(snap(1), 5, ArmState(), policy=POLICY, at=2.0)
    assert a1 is not None and a2 is not None and a1.key != a2.key


stock_histories = st.lists(st.integers(min_value=-5, max_value=40), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(stock_histories, st.integers(min_value=0, max_value=25))
def test_property_once_per_crossing(stocks: list[int], threshold: int) -> None:
    """Between two alerts of a kind the stock rose above the re-arm level, and every full crossing alerts."""
    margin = margin_for(threshold, POLICY)
    result = run(stocks, threshold)
    for kind, level, rearm in (("low_stock", threshold, threshold + margin), ("out_of_stock", 0, margin)):
        steps = [i for i, k in result if k == kind]
        for a, b in zip(steps, steps[1:], strict=False):
            assert any(s > rearm for s in stocks[a + 1 : b]), (kind, stocks, steps)
        for i in steps:  # fires only at or below its level
            assert stocks[i] <= level
    # every crossing is told: after the stock was above threshold + margin (or at the start),
    # the first step at or below the threshold fires low or out of stock
    armed = True
    for i, s in enumerate(stocks):
        if s > threshold + margin:
            armed = True
        elif s <= threshold and armed:
            assert result[i][1] is not None, (stocks, i)
            armed = False
    # out of stock: the first step at or below zero after being above the margin fires it
    out_armed = True
    for i, s in enumerate(stocks):
        if s > margin:
            out_armed = True
        elif s <= 0 and out_armed:
            assert result[i][1] == "out_of_stock", (stocks, i)
            out_armed = False


@settings(max_examples=200, deadline=None)
@given(stock_histories, st.integers(min_value=0, max_value=25))
def test_property_duplicate_observations_never_alert(stocks: list[int], threshold: int) -> None:
    doubled = [s for s in stocks for _ in range(2)]
    result = run(doubled, threshold)
    assert all(k is None for i, k in result if i % 2 == 1)
    # and the same alerts as without duplicates
    assert [k for _, k in run(stocks, threshold) if k] == [k for _, k in result if k]


# ---------------------------------------------------------------- conflicts and failures


def test_oversell_alert_is_keyed_by_its_conflict_and_says_where() -> None:
    c = Conflict("woo:1:0", "MUG", "oversell", json.dumps({"side": "clover", "location": "downtown", "value": -1}),
                 created_at=5.0, id=7)
    a = conflict_alert(c, snap(-1, sku="MUG"), at=6.0)
    assert (a.kind, a.key, a.stock, a.name) == ("oversell", "conflict:7", -1, "Blue mug")
    assert "Clover downtown went to -1" in a.detail and "--resolve 7" in a.detail
    other = conflict_alert(Conflict("woo:1:0", "MUG", "ambiguous_write", "{not json", created_at=5.0))
    assert other.kind == "conflict" and other.key.startswith("conflict:woo:1:0:ambiguous_write:")


def test_failure_alert_carries_the_error() -> None:
    a = failure_alert("woo:1:0", "MUG", "Blue mug", attempts=8, error="woocommerce write refused: 500", at=1.0)
    assert a.kind == "sync_failure" and "8 attempts" in a.detail and "refused: 500" in a.detail


# ---------------------------------------------------------------- rendering


def test_render_single_low_stock_lists_sku_name_location_stock_threshold() -> None:
    _, alert = evaluate(snap(3), 5, ArmState(), policy=POLICY, at=0.0)
    assert alert is not None
    subject, body = render("low_stock", [alert])
    assert subject == "Low stock: Blue mug (SKU-1), 3 left (threshold 5)"
    row = next(line for line in body.splitlines() if line.startswith("SKU-1"))
    assert row.split() == ["SKU-1", "Blue", "mug", "downtown", "3", "5"]
    assert "SKU" in body.splitlines()[2] and "Threshold" in body.splitlines()[2]


def test_render_multi_location_lists_each_location() -> None:
    s = StockSnapshot("woo:2:0", "TEE-M", "Tee\nM", 4, {"downtown": 1, "airport": 3})
    _, alert = evaluate(s, 20, ArmState(), policy=POLICY)
    assert alert is not None
    subject, body = render("low_stock", [alert])
    assert "\n" not in subject and "Tee M" in subject
    lines = body.splitlines()
    assert any(line.split() == ["TEE-M", "Tee", "M", "all", "locations", "4", "20"] for line in lines)
    assert any(line.split() == ["airport", "3"] for line in lines)
    assert any(line.split() == ["downtown", "1"] for line in lines)


def test_render_caps_the_rows() -> None:
    alerts = [Alert(kind="out_of_stock", key=f"k{i}", sku=f"S{i}", name="n", stock=0, threshold=5)
              for i in range(MAX_ROWS + 12)]
    subject, body = render("out_of_stock", alerts)
    assert subject == f"Out of stock: {MAX_ROWS + 12} products"
    assert "... and 12 more" in body
    with pytest.raises(ValueError):
        render("low_stock", [])


# ---------------------------------------------------------------- dispatcher


def low(i: int, stock: int = 3, bid: str | None = None, at: float = 0.0) -> Alert:
    return Alert(kind="low_stock", key=f"low_stock:{bid or i}:{at}", binding_id=bid or f"b{i}", sku=f"SKU-{i:03d}",
                 name=f"P{i}", stock=stock, threshold=5, locations={"downtown": stock}, at=at)


def test_digest_waits_for_quiet_then_sends_one_email_for_200() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=2.0, digest_max=30.0))
    for i in range(200):
        d.add(low(i, stock=i % 5 + 1), now=i * 0.01)
    assert d.take(now=3.0) == [] and d.next_deadline(3.0) == pytest.approx(1.99 + 2.0)
    emails = d.take(now=4.0)
    assert len(emails) == 1
    e = emails[0]
    assert e.subject == "Low stock: 200 products at or below their threshold" and len(e.keys) == 200
    assert all(f"SKU-{i:03d}" in e.body for i in range(200))
    # most urgent first: stock 1 before stock 5
    rows = [line.split() for line in e.body.splitlines() if line.startswith("SKU-")]
    assert [int(r[3]) for r in rows] == sorted(int(r[3]) for r in rows)
    assert d.pending() == 0 and d.next_deadline(4.0) is None


def test_digest_max_bounds_a_steady_trickle() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=2.0, digest_max=10.0))
    t = 0.0
    while t < 9.5:
        d.add(low(int(t * 10), at=t), now=t)
        t += 1.0
    assert d.next_deadline(t) == pytest.approx(10.0)
    assert len(d.take(now=10.0)) == 1


def test_kinds_are_digested_separately_most_urgent_first() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0))
    d.add(low(1), now=0.0)
    d.add(Alert(kind="out_of_stock", key="o", binding_id="b2", sku="S2", stock=0, threshold=5), now=0.0)
    d.add(Alert(kind="oversell", key="conflict:1", binding_id="b3", sku="S3", stock=-1), now=0.0)
    assert [e.kind for e in d.take(now=1.0)] == ["out_of_stock", "oversell", "low_stock"]


def test_rate_limit_holds_alerts_and_sends_them_together_later() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0, max_emails=2, rate_period=100.0))
    for n in range(2):
        d.add(low(n, at=n), now=10.0 * n)
        assert len(d.take(now=10.0 * n + 1)) == 1
    d.add(low(7), now=20.0)
    d.add(low(8), now=30.0)
    assert d.take(now=50.0) == []  # budget spent: sends at 0 + 1 and 10 + 1
    assert d.next_deadline(50.0) == pytest.approx(101.0)
    emails = d.take(now=101.0)
    assert len(emails) == 1 and len(emails[0].keys) == 2
    # a budget restored from history counts too
    d2 = Dispatcher(AlertPolicy(digest_quiet=1.0, max_emails=1, rate_period=100.0))
    d2.record_sent("low_stock", at=-50.0)
    d2.add(low(1), now=0.0)
    assert d2.take(now=1.0) == [] and d2.next_deadline(1.0) == pytest.approx(50.0)


def test_dedup_newest_figures_win_and_sync_failures_respect_the_window() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0, dedup_window=100.0))
    d.add(low(1, stock=4, bid="b1", at=0.0), now=0.0)
    d.add(low(1, stock=2, bid="b1", at=0.5), now=0.5)
    (e,) = d.take(now=2.0)
    assert len([line for line in e.body.splitlines() if line.startswith("SKU-001")]) == 1
    assert "2 left" in e.subject and len(e.keys) == 2  # the replaced alert is settled with the email
    f1 = failure_alert("b1", "S", "n", attempts=8, error="x", at=1.0)
    assert d.add(f1, now=3.0)
    assert len(d.take(now=5.0)) == 1
    assert not d.add(failure_alert("b1", "S", "n", attempts=9, error="x", at=2.0), now=50.0)
    assert d.add(failure_alert("b1", "S", "n", attempts=9, error="x", at=3.0), now=200.0)
    c = Conflict("b1", "S", "oversell", "{}", created_at=1.0, id=3)
    assert d.add(conflict_alert(c), now=300.0)
    d.take(now=400.0)
    assert not d.add(conflict_alert(c), now=500.0)


def test_restore_requeues_without_dedup() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0))
    d.restore(low(1), now=0.0)
    d.restore(low(2), now=0.0)
    (e,) = d.take(now=1.0)
    assert len(e.keys) == 2


def test_drift_alert_threshold_and_rendering() -> None:
    from cloverwoo_daemon.core.alerts import drift_alert, drift_worth_alerting, render

    assert not drift_worth_alerting(4, 100)
    assert drift_worth_alerting(5, 100)
    assert not drift_worth_alerting(20, 5000) and drift_worth_alerting(50, 5000)
    subject, body = render("drift", [drift_alert(12, 500, at=1.0)])
    assert "12 of 500 products" in subject
    assert "Webhooks are probably being lost" in body
