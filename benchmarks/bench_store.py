"""What group commit buys: events/s and commits/s of the store's inbox, batched vs one commit per event.

Rules this script keeps: it measures the real ``Store`` (WAL, synchronous=FULL)
on a real file, and prints the machine and the filesystem with the figures,
because an fsync costs 20 µs on a tmpfs and 10 ms on a spinning disk.

    .venv/bin/python benchmarks/bench_store.py [--events N] [--clients N] [--dir PATH]

``--dir`` picks the filesystem under test (default: the current directory;
/tmp is often a tmpfs, where fsync is free and the comparison means little).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import tempfile
import time

import trio

from cloverwoo_daemon.io.store import Store


def filesystem_of(path: str) -> str:
    """The mount's type and device, from /proc/mounts (Linux); "?" elsewhere."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ, *_ = line.split()
                if os.path.realpath(path).startswith(mnt) and len(mnt) > len(best):
                    best, fs = mnt, f"{typ} on {mnt} ({dev})"
    except OSError:
        pass
    return fs


def machine(path: str) -> str:
    return (
        f"{platform.platform()} | {platform.processor() or platform.machine()} x{os.cpu_count()} | "
        f"Python {platform.python_version()} | SQLite {sqlite3.sqlite_version} | trio {trio.__version__} | "
        f"file system: {filesystem_of(path)}"
    )


async def concurrent(path: str, events: int, clients: int, max_batch: int) -> tuple[float, int, int]:
    """``clients`` tasks accept one event per call, like concurrent webhook deliveries."""
    store = Store(path, max_batch=max_batch)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        per_client = events // clients

        async def client(c: int) -> None:
            for n in range(per_client):
                await store.accept_events([(f"c{c}-{n}", b'{"kind":"I","object_id":"ABC"}')])

        before = store.statistics()
        t0 = time.perf_counter()
        async with trio.open_nursery() as clients_nursery:
            for c in range(clients):
                clients_nursery.start_soon(client, c)
        elapsed = time.perf_counter() - t0
        after = store.statistics()
        nursery.cancel_scope.cancel()
    return elapsed, after.commits - before.commits, after.max_batch_seen


def report(label: str, events: int, elapsed: float, commits: int, max_batch: int) -> None:
    print(
        f"{label:<44} {events / elapsed:>10,.0f} events/s {commits / elapsed:>9,.0f} commits/s "
        f"{events / max(commits, 1):>7.1f} events/commit  (max batch {max_batch}, {elapsed:.2f} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench_store_", dir=args.dir)
    try:
        print(machine(workdir))
        print(f"{args.events} events, one accept_events call each; WAL + synchronous=FULL\n")
        runs = [
            (f"group commit, {args.clients} concurrent clients", args.clients, 512),
            (f"one commit per event, {args.clients} clients", args.clients, 1),
            ("one client, sequential (latency bound)", 1, 512),
        ]
        for i, (label, clients, max_batch) in enumerate(runs):
            path = os.path.join(workdir, f"run{i}.sqlite3")
            events = args.events if clients > 1 else min(args.events, 1000)
            elapsed, commits, seen = trio.run(concurrent, path, events, clients, max_batch)
            report(label, events - events % clients, elapsed, commits, seen)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
