"""Folding oversell flags into the open conflict: the figure it ended at, and every sale that took it there."""

from __future__ import annotations

import json

from cloverwoo_daemon.core.conflicts import MAX_SALES, fold_oversell, oversell_detail


def flag(value: int, change: int, side: str = "woo", location: str = "") -> str:
    return json.dumps(oversell_detail(side=side, location=location, value=value, change=change, trigger="t", at=1.0))


def test_the_latest_figure_wins_and_the_first_is_kept() -> None:
    folded = json.loads(fold_oversell(flag(-1, -1), flag(-3, -2)))
    assert folded["value"] == -3 and folded["first_value"] == -1
    assert [(s["change"], s["to"]) for s in folded["sales"]] == [(-1, -1), (-2, -3)]


def test_folding_again_keeps_every_sale_in_order() -> None:
    detail = flag(-1, -1)
    for i in range(2, 6):
        detail = fold_oversell(detail, flag(-i, -1, side="clover", location="downtown"))
    folded = json.loads(detail)
    assert folded["value"] == -5 and folded["first_value"] == -1 and folded["side"] == "clover"
    assert [s["to"] for s in folded["sales"]] == [-1, -2, -3, -4, -5]


def test_the_list_of_sales_is_bounded() -> None:
    detail = flag(-1, -1)
    for i in range(2, MAX_SALES + 20):
        detail = fold_oversell(detail, flag(-i, -1))
    folded = json.loads(detail)
    assert len(folded["sales"]) == MAX_SALES and folded["sales"][-1]["to"] == -(MAX_SALES + 19)
    assert folded["first_value"] == -1


def test_a_conflict_written_before_sales_were_listed_counts_as_one_sale() -> None:
    old = json.dumps({"side": "woo", "location": "", "value": -1, "trigger": "webhook:woo"})
    folded = json.loads(fold_oversell(old, flag(-2, -1)))
    assert folded["first_value"] == -1 and [s["to"] for s in folded["sales"]] == [-1, -2]


def test_a_detail_that_does_not_parse_is_kept_as_it_is() -> None:
    assert fold_oversell("not json", flag(-2, -1)) == "not json"
    assert fold_oversell(flag(-1, -1), "[1, 2]") == flag(-1, -1)
