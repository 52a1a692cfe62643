"""The token bucket's promise: never more than ``rate * T + burst`` grants in any window ``T``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloverwoo_daemon.core.ratelimit import TokenBucket

EPS = 1e-9


def max_in_window(times: list[float], window: float) -> int:
    """Largest number of the (sorted) times inside any closed window of length ``window``."""
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - window - EPS:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_full_bucket_grants_burst_then_paces():
    b = TokenBucket(rate=16, burst=4)
    waits = [b.reserve(10.0) for _ in range(6)]
    assert waits[:4] == [0.0, 0.0, 0.0, 0.0]
    assert waits[4] == pytest.approx(1 / 16)
    assert waits[5] == pytest.approx(2 / 16)


def test_quiet_spell_refills_but_never_beyond_burst():
    b = TokenBucket(rate=10, burst=3)
    for _ in range(3):
        assert b.reserve(0.0) == 0.0
    # an hour later: only `burst` go at once again, not 36 000
    waits = [b.reserve(3600.0) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.1)


def test_try_take_books_nothing_when_refused():
    b = TokenBucket(rate=2, burst=1)
    assert b.try_take(0.0) == 0.0
    refused = b.try_take(0.1)
    assert refused == pytest.approx(0.4)
    # refusing did not push the next slot further out
    assert b.try_take(0.2) == pytest.approx(0.3)
    assert b.try_take(0.5) == 0.0


def test_wait_time_looks_without_booking():
    b = TokenBucket(rate=1, burst=1)
    assert b.wait_time(0.0) == 0.0
    assert b.wait_time(0.0) == 0.0
    b.take(0.0)
    assert b.wait_time(0.25) == pytest.approx(0.75)


def test_block_until_holds_every_grant_back():
    b = TokenBucket(rate=50, burst=50)
    b.block_until(5.0)
    assert b.wait_time(1.0) == pytest.approx(4.0)
    assert b.reserve(1.0) == pytest.approx(4.0)
    # after a block the bucket restarts empty, not with a fresh burst
    assert b.reserve(1.0) == pytest.approx(4.0 + 1 / 50)


def test_time_never_runs_backwards():
    b = TokenBucket(rate=1, burst=1)
    assert b.reserve(100.0) == 0.0
    # a stale `now` is treated as the latest one seen: the wait is measured from it
    assert b.reserve(50.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 1), (math.inf, 1), (1, 0.5), (1, math.nan)])
def test_rejects_nonsense(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


def test_window_counter_itself():
    # the helper the properties rely on must be able to see a violation
    assert max_in_window([0.0, 0.5, 1.0, 1.01], 1.0) == 3
    assert max_in_window([0.0, 0.0, 0.0], 0.0) == 3


rates = st.floats(min_value=0.5, max_value=100, allow_nan=False)
bursts = st.integers(min_value=1, max_value=20).map(float)
gaps = st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), min_size=1, max_size=120)
windows = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


def arrivals(start: float, deltas: list[float]) -> list[float]:
    out, t = [], start
    for d in deltas:
        t += d
        out.append(t)
    return out


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, deltas=gaps, window=windows, start=st.floats(-1e6, 1e6))
def test_reserve_never_exceeds_rate_times_window_plus_burst(rate, burst, deltas, window, start):
    b = TokenBucket(rate=rate, burst=burst)
    grants = []
    for now in arrivals(start, deltas):
        wait = b.reserve(now)
        assert wait >= 0.0
        grants.append(now + wait)
    grants.sort()
    assert max_in_window(grants, window) <= rate * window + burst + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=bursts, deltas=gaps, window=windows)
def test_try_take_never_exceeds_rate_times_window_plus_burst(rate, burst, deltas, window):
    b = TokenBucket(rate=rate, burst=burst)
    grants = [now for now in arrivals(0.0, deltas) if b.try_take(now) == 0.0]
    assert max_in_window(grants, window) <= rate * window + burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=rates, burst=bursts, n=st.integers(1, 200))
def test_reserve_is_work_conserving(rate, burst, n):
    """Everyone at once: the last of n goes exactly when the rate allows, not later."""
    b = TokenBucket(rate=rate, burst=burst)
    waits = [b.reserve(0.0) for _ in range(n)]
    assert waits == sorted(waits)
    expected_last = max(0.0, (n - burst) / rate)
    assert waits[-1] == pytest.approx(expected_last, abs=1e-6)
