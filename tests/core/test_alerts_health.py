"""Health alert kinds (webhooks, reachability): digested, deduplicated per subject, rendered without a SKU table."""

from __future__ import annotations

import pytest

from cloverwoo_daemon.core.alerts import AlertPolicy, Dispatcher, health_alert


def test_a_health_alert_about_the_same_subject_is_sent_once_per_window() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0, dedup_window=3600.0))
    first = health_alert("webhook_disabled", "WooCommerce webhook #2 product.updated", "failed; re-enabled", at=1.0)
    assert d.add(first, 0.0)
    (email,) = d.take(5.0)
    assert email.subject == "WooCommerce disabled a webhook: WooCommerce webhook #2 product.updated (re-enabled)"
    assert "- WooCommerce webhook #2 product.updated: failed; re-enabled" in email.body
    assert "SKU" not in email.body
    again = health_alert("webhook_disabled", "WooCommerce webhook #2 product.updated", "again", at=2.0)
    assert not d.add(again, 10.0)
    other = health_alert("webhook_disabled", "WooCommerce webhook #3 order.created", "failed", at=3.0)
    assert d.add(other, 11.0)
    assert d.add(again, 3700.0)  # the window passed


def test_several_subjects_make_one_digest() -> None:
    d = Dispatcher(AlertPolicy(digest_quiet=1.0))
    for name in ("Clover location downtown", "Clover location airport", "WooCommerce"):
        d.add(health_alert("unreachable", name, "ConnectError"), 0.0)
    (email,) = d.take(2.0)
    assert email.subject == "3 stores or locations unreachable"
    assert email.body.count("ConnectError") == 3


def test_only_health_kinds() -> None:
    with pytest.raises(ValueError):
        health_alert("low_stock", "x", "y")
