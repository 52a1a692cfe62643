"""Admin reads against a large sync log, and what they cost a webhook's acknowledgement meanwhile.

    .venv/bin/python benchmarks/bench_admin_reads.py                 # 200,000 log rows, 50,000 bindings (~20 s)
    .venv/bin/python benchmarks/bench_admin_reads.py --rows 1000000  # about 90 days of a busy shop

A real ``Store`` (group commit, synchronous=FULL) in a temporary file, its sync log filled with merge rows
spread over ``--bindings`` bindings (one error row in 10,000). Then, for each way of reading:

- ``before``: the queries the store ran before (a GROUP BY over every merge row for the CSV export's
  last-synced times, a level filter on an unindexed column for ``cloverwoo log --level error``), on the
  writer's own connection and limiter, as they were;
- ``now``: ``Store.last_synced`` and ``Store.query_log`` (per-binding table, partial indexes), on the admin's
  read-only connection;

it prints each read's time (median of 5) and the acknowledgement latency (``accept_events``, one event, the
webhook server's commit) measured while those reads run back to back: p50, p99 and max over ``--acks``
commits. The ``before`` rows show what an export or a ``log --level`` did to webhooks.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloverwoo_daemon.core.model import SyncLogRow  # noqa: E402
from cloverwoo_daemon.io.store import Store  # noqa: E402

OLD_LAST_SYNCED = ("SELECT binding_id, MAX(ts) FROM sync_log WHERE event IN ('merge', 'csv_set') "
                   "GROUP BY binding_id")
OLD_ERRORS = ("SELECT id, ts, level FROM sync_log NOT INDEXED WHERE id > 0 AND level IN ('error') "
              "ORDER BY id DESC LIMIT 200")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fill(store: Store, rows: int, bindings: int) -> None:
    batch: list[SyncLogRow] = []
    for i in range(rows):
        batch.append(SyncLogRow(ts=float(i), level="error" if i % 10_000 == 0 else "info", event="merge",
                                sku=f"SKU-{i % bindings}", binding_id=f"woo:{i % bindings}:0", detail="{}"))
        if len(batch) == 20_000:
            await store.append_log(batch)
            batch = []
    if batch:
        await store.append_log(batch)


async def timed(fn: object) -> float:
    t = time.perf_counter()
    await fn()  # type: ignore[operator]
    return time.perf_counter() - t


async def measure(store: Store, label: str, reads: list[object], acks: int) -> None:
    times = {i: [await timed(r) for _ in range(5)] for i, r in enumerate(reads)}
    latencies: list[float] = []
    done = trio.Event()

    async def reader() -> None:
        while not done.is_set():
            for r in reads:
                await r()  # type: ignore[operator]

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.sleep(0.05)
        for i in range(acks):
            latencies.append(await timed(lambda i=i: store.accept_events([(f"{label}-{i}", b"{}")])))
            await trio.sleep(0.005)
        done.set()
    ms = [x * 1000 for x in latencies]
    print(f"{label:7s} last_synced {statistics.median(times[0]) * 1000:7.1f} ms   "
          f"log --level error {statistics.median(times[1]) * 1000:7.1f} ms   "
          f"ack during reads: p50 {_pct(ms, 0.5):6.1f} ms  p99 {_pct(ms, 0.99):7.1f} ms  max {max(ms):7.1f} ms")


async def main(args: argparse.Namespace) -> None:
    path = str(Path(tempfile.mkdtemp(prefix="bench-admin-")) / "state.sqlite3")
    store = Store(path)
    async with trio.open_nursery() as n:
        await n.start(store.run)
        t = time.perf_counter()
        await fill(store, args.rows, args.bindings)
        took = time.perf_counter() - t
        print(f"sync log: {args.rows:,} rows over {args.bindings:,} bindings (filled in {took:.1f} s)")

        def old(sql: str) -> object:
            return lambda: store._read(lambda conn: conn.execute(sql).fetchall())  # the writer's connection

        await measure(store, "before", [old(OLD_LAST_SYNCED), old(OLD_ERRORS)], args.acks)
        await measure(store, "now", [store.last_synced, lambda: store.query_log(level="error", newest=True)],
                      args.acks)
        n.cancel_scope.cancel()
    conn = sqlite3.connect(path)
    size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    print(f"state file: {size / 1e6:.0f} MB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--bindings", type=int, default=50_000)
    p.add_argument("--acks", type=int, default=200)
    trio.run(main, p.parse_args())
