"""Working tables that an actor fills by the thousand during a job and empties again.

CPython never shrinks a dict or a set when entries are removed: a shard's
queue of pending merges that held 6,000 bindings during an import keeps a
table sized for 6,000 (about 300 KB) for the life of the process, and the
eight shards and the jobs, alerts and stock-policy actors each have several
such tables. On a 50,000-product store that was tens of MB held for nothing
after the first import. An actor calls ``released`` on a table it has just
emptied; a table that is not empty, or was never large, is returned as is.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

T = TypeVar("T", bound="dict[Any, Any] | set[Any]")

_SMALL = sys.getsizeof({}) * 8
"""Below this a table is not worth replacing: the replacement would soon grow back."""


def released(table: T) -> T:
    """``table`` itself, or a new empty one of the same type when it is empty but sized for many."""
    if table or sys.getsizeof(table) <= _SMALL:
        return table
    return type(table)()
