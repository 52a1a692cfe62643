"""The log throttle: the first few per window and key, then one count; nothing suppressed goes unreported."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.log_throttle import LogThrottle, Suppressed


def test_first_n_per_window_then_one_count() -> None:
    t = LogThrottle(limit=3, window=60.0)
    admitted = [t.admit("k", 10.0 + i)[0] for i in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert t.expire(69.9) == []
    assert t.expire(70.0) == [Suppressed("k", 7, 60.0)]
    assert t.expire(200.0) == []  # reported once
    ok, ended = t.admit("k", 200.0)
    assert ok and ended == []  # a new window


def test_keys_are_independent_and_a_quiet_window_reports_nothing() -> None:
    t = LogThrottle(limit=1, window=10.0)
    assert t.admit("a", 0.0) == (True, [])
    assert t.admit("b", 0.0) == (True, [])
    assert t.admit("a", 1.0) == (False, [])
    ok, ended = t.admit("b", 11.0)  # a's window ended with one suppressed; b's had none
    assert ok and ended == [Suppressed("a", 1, 10.0)]


def test_drain_reports_what_is_still_open() -> None:
    t = LogThrottle(limit=2, window=60.0)
    for i in range(5):
        t.admit(("woocommerce", 401), float(i))
    t.admit(("clover", 400), 0.0)
    assert t.drain(30.0) == [Suppressed(("woocommerce", 401), 3, 30.0)]
    assert t.drain(31.0) == []


def test_bad_parameters_refused() -> None:
    with pytest.raises(ValueError):
        LogThrottle(limit=0, window=1.0)
    with pytest.raises(ValueError):
        LogThrottle(limit=1, window=0.0)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=200), st.integers(1, 5))
def test_every_event_is_logged_or_counted_exactly_once(events: list[tuple[str, float]], limit: int) -> None:
    t = LogThrottle(limit=limit, window=30.0)
    now, logged, counted = 0.0, 0, 0
    for key, step in events:
        now += step
        ok, ended = t.admit(key, now)
        logged += ok
        counted += sum(s.count for s in ended)
    counted += sum(s.count for s in t.drain(now))
    assert logged + counted == len(events)
