"""The verification handshake's gate: expected only when it should be, rate-limited, every code kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloverwoo_daemon.core.verification import VerificationGate


def test_closed_once_an_auth_code_is_configured_and_nothing_kept() -> None:
    gate = VerificationGate(configured=True)
    assert not gate.expected(100.0)
    assert gate.offer("abc", 100.0).answer == "closed"
    assert gate.codes == ()
    assert gate.summary(100.0) == {"expected": False, "reason": None, "window_until": None, "codes": []}


def test_expected_while_no_auth_code_is_configured() -> None:
    gate = VerificationGate(configured=False)
    d = gate.offer("abc", 100.0)
    assert d.answer == "new" and d.answered
    assert gate.summary(100.0)["reason"] == "no Clover auth code configured yet"


def test_a_window_opens_and_closes() -> None:
    gate = VerificationGate(configured=True)
    assert gate.open_window(100.0, 600.0) == 700.0
    assert gate.offer("abc", 650.0).answer == "new"
    assert gate.summary(650.0)["window_until"] == 700.0
    assert gate.offer("def", 700.0).answer == "closed"  # the window is [open, until)
    assert gate.summary(700.0)["expected"] is False
    gate.open_window(800.0, 60.0)
    gate.close_window()
    assert gate.offer("ghi", 801.0).answer == "closed"
    assert [c.code for c in gate.codes] == ["abc"]
    with pytest.raises(ValueError):
        gate.open_window(0.0, 0.0)


def test_authenticated_handshakes_are_always_expected_and_never_throttled() -> None:
    gate = VerificationGate(configured=True, burst=1, per_minute=1)
    for i in range(20):
        assert gate.offer(f"c{i}", 100.0, authenticated=True).answered


def test_unauthenticated_handshakes_are_rate_limited_and_throttled_ones_not_kept() -> None:
    gate = VerificationGate(configured=False, burst=5, per_minute=6)
    answers = [gate.offer(f"c{i}", 100.0).answer for i in range(8)]
    assert answers == ["new"] * 5 + ["throttled"] * 3
    d = gate.offer("late", 100.0)
    assert d.answer == "throttled" and d.retry_after == pytest.approx(10.0)
    assert [c.code for c in gate.codes] == ["c0", "c1", "c2", "c3", "c4"]
    assert gate.offer("late", 110.0).answer == "new"  # one more every ten seconds


def test_a_closed_gate_spends_no_allowance() -> None:
    gate = VerificationGate(configured=True, burst=2, per_minute=1)
    for _ in range(50):
        assert gate.offer("x", 100.0).answer == "closed"
    gate.open_window(100.0, 60.0)
    assert [gate.offer(c, 100.0).answer for c in ("a", "b", "c")] == ["new", "new", "throttled"]


def test_codes_are_never_overwritten_a_repeat_is_counted_not_new() -> None:
    gate = VerificationGate(configured=False)
    assert gate.offer("first", 100.0).answer == "new"
    assert gate.offer("second", 130.0).answer == "new"
    assert gate.offer("first", 160.0).answer == "again"
    first, second = gate.codes
    assert (first.code, first.first_at, first.last_at, first.count) == ("first", 100.0, 160.0, 2)
    assert (second.code, second.first_at, second.count) == ("second", 130.0, 1)


@given(st.lists(st.sampled_from("abcdefghijklmnop"), max_size=60))
def test_the_most_recently_received_codes_are_kept_each_once(codes: list[str]) -> None:
    gate = VerificationGate(configured=True, keep=4)
    for i, code in enumerate(codes):
        gate.offer(code, float(i), authenticated=True)
    kept = [c.code for c in gate.codes]
    assert len(kept) == len(set(kept)) <= 4
    recent: list[str] = []  # by last receipt, newest last
    for code in codes:
        recent = [c for c in recent if c != code] + [code]
    assert set(kept) == set(recent[-4:])
    assert [c.first_at for c in gate.codes] == sorted(c.first_at for c in gate.codes)  # shown oldest first
