"""Backoff: bounded, doubling, jittered, and a server's retry-after is a floor."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.backoff import Backoff, parse_retry_after


def test_doubles_within_jitter_band_and_caps():
    b = Backoff(base=1.0, cap=8.0, max_attempts=10)
    rng = random.Random(1)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        for _ in range(50):
            d = b.next_delay(attempt, rng=rng)
            assert d is not None
            assert full / 2 <= d <= full


def test_bounded_attempts():
    b = Backoff(max_attempts=3)
    assert b.next_delay(1) is not None
    assert b.next_delay(2) is not None
    assert b.next_delay(3) is None
    assert b.next_delay(4) is None
    assert Backoff(max_attempts=1).next_delay(1) is None


def test_retry_after_is_a_floor_not_shortened_by_jitter_or_cap():
    b = Backoff(base=0.5, cap=2.0, max_attempts=5, max_retry_after=120)
    rng = random.Random(0)
    assert b.next_delay(1, retry_after=21.0, rng=rng) == 21.0  # longer than cap: still honoured
    d = b.next_delay(1, retry_after=0.0, rng=rng)
    assert d is not None and 0.25 <= d <= 0.5  # shorter than jitter: jitter wins


def test_retry_after_beyond_limit_gives_up_instead_of_coming_back_early():
    b = Backoff(cap=30.0, max_retry_after=60.0)
    assert b.next_delay(1, retry_after=600.0) is None


def test_deterministic_with_seeded_rng():
    b = Backoff()
    assert b.next_delay(3, rng=random.Random(7)) == b.next_delay(3, rng=random.Random(7))


def test_huge_attempt_numbers_do_not_overflow():
    b = Backoff(base=0.5, cap=30.0, max_attempts=10**6)
    d = b.next_delay(5000, rng=random.Random(0))
    assert d is not None and 15.0 <= d <= 30.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(base=0), dict(base=-1), dict(base=2, cap=1), dict(max_attempts=0), dict(cap=math.inf)],
)
def test_rejects_nonsense_settings(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_attempt_zero_counts_as_first():
    b = Backoff(base=1.0, cap=8.0)
    assert b.next_delay(0, rng=random.Random(3)) == b.next_delay(1, rng=random.Random(3))


@pytest.mark.parametrize(
    "raw,expected",
    [("21", 21.0), (" 1 ", 1.0), ("0.5", 0.5), ("0", 0.0), (None, None), ("", None), ("soon", None),
     ("-3", None), ("nan", None), ("inf", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)
def test_parse_retry_after(raw, expected):
    assert parse_retry_after(raw) == expected


@given(
    attempt=st.integers(1, 50),
    retry_after=st.none() | st.floats(0, 200, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_delay_is_bounded_and_never_below_retry_after(attempt, retry_after, seed):
    b = Backoff(base=0.5, cap=30.0, max_attempts=40, max_retry_after=120.0)
    d = b.next_delay(attempt, retry_after=retry_after, rng=random.Random(seed))
    if attempt >= 40 or (retry_after is not None and retry_after > 120.0):
        assert d is None
        return
    assert d is not None
    assert 0 < d <= max(30.0, retry_after or 0.0)
    if retry_after is not None:
        assert d >= retry_after
