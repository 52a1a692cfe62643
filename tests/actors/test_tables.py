"""``released``: an emptied working table gives its memory back; a busy or small one is left alone."""

from __future__ import annotations

import sys
from collections import OrderedDict

from cloverwoo_daemon.actors.tables import released


def test_an_emptied_large_table_is_replaced_by_a_small_one() -> None:
    d = {str(i): i for i in range(10_000)}
    for k in list(d):
        del d[k]  # popping, as the actors do: CPython keeps the table sized for 10,000
    assert sys.getsizeof(d) > 100_000
    fresh = released(d)
    assert fresh == {} and fresh is not d and sys.getsizeof(fresh) < 1_000

    s = set(range(10_000))
    for k in range(10_000):
        s.discard(k)
    assert type(released(s)) is set and sys.getsizeof(released(s)) < 1_000

    od: OrderedDict[int, int] = OrderedDict((i, i) for i in range(10_000))
    while od:
        od.popitem(last=False)
    assert type(released(od)) is OrderedDict


def test_a_table_in_use_or_never_large_is_kept() -> None:
    busy = {str(i): i for i in range(10_000)}
    assert released(busy) is busy
    small: dict[str, int] = {"a": 1}
    del small["a"]
    assert released(small) is small
