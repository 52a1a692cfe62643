"""The state store against real SQLite files: durability, dedup, group commit, migrations, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cloverwoo_daemon.core.alerts import Alert, AlertKind, ArmState, Email
from cloverwoo_daemon.core.model import Binding, Conflict, SyncLogRow, WooRef
from cloverwoo_daemon.io.store import (
    MIGRATIONS,
    SchemaTooNew,
    Store,
    StoreClosed,
    StoreError,
    migrate,
)

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running(path: Path, **kwargs: Any) -> AsyncIterator[Store]:
    store = Store(str(path), **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def binding(bid: str = "woo:1:0", *, version: int = 0, base_woo: int | None = None) -> Binding:
    return Binding(
        binding_id=bid,
        sku="SKU-" + bid,
        name="Mug " + bid,
        woo=WooRef(int(bid.split(":")[1]), int(bid.split(":")[2])),
        clover_items={"downtown": "ITEM1", "airport": "ITEM2"},
        base_woo=base_woo,
        base_clover={"downtown": 3, "airport": None},
        version=version,
    )


def log_row(ts: float, level: str = "info", sku: str = "A", event: str = "merge") -> SyncLogRow:
    return SyncLogRow(ts=ts, level=level, event=event, sku=sku, binding_id="woo:1:0", detail="{}")


# ------------------------------------------------------------------ inbox


async def test_accepted_events_survive_reopen_until_settled(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    async with running(db) as store:
        acks = await store.accept_events([("k1", b"one"), ("k2", b"two"), ("k3", b"three")])
        assert [new for _, new in acks] == [True, True, True]
        assert store.statistics().pending_inbox == 3
    ids = [i for i, _ in acks]

    async with running(db) as store:
        assert store.statistics().pending_inbox == 3
        pending = await store.pending_events()
        assert [(i, p) for i, p, _ in pending] == list(zip(ids, [b"one", b"two", b"three"], strict=True))
        assert all(t > 1e9 for _, _, t in pending)
        await store.settle_events([ids[0], ids[2]])
        await store.settle_events([ids[0]])  # already settled: not counted twice
        assert store.statistics().pending_inbox == 1

    async with running(db) as store:
        assert [(i, p) for i, p, _ in await store.pending_events()] == [(ids[1], b"two")]
        assert store.statistics().pending_inbox == 1
    # settling drops the payload but keeps the key
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT payload FROM inbox WHERE id = ?", (ids[0],)).fetchone() == (None,)
    raw.close()


async def test_dedup_across_reopen_and_window(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    clock = Clock()
    async with running(db, clock=clock, dedup_window=100.0) as store:
        [(first, new)] = await store.accept_events([("delivery-1", b"a")])
        assert new
        # twice in one call: applied once
        assert await store.accept_events([("d2", b"x"), ("d2", b"y")]) == [(first + 1, True), (first + 1, False)]

    async with running(db, clock=clock, dedup_window=100.0) as store:
        assert await store.accept_events([("delivery-1", b"again")]) == [(first, False)]  # pending duplicate
        await store.settle_events([first])
        clock.now += 60
        assert await store.accept_events([("delivery-1", b"again")]) == [(first, False)]  # settled, inside window
        assert await store.prune(clock.now) == 0
        clock.now += 60  # settled 120 s ago: outside the window, not pruned yet
        [(again, new)] = await store.accept_events([("delivery-1", b"later")])
        assert new and again > first + 1  # ids are never reused
        await store.settle_events([again, first + 1])
        assert await store.prune(clock.now + 101) == 2
        assert await store.pending_events() == []
        assert store.statistics().pending_inbox == 0


async def test_group_commit_batches_concurrent_requests(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3") as store:
        before = store.statistics()
        results: dict[int, list[tuple[int, bool]]] = {}

        async def one(n: int) -> None:
            results[n] = await store.accept_events([(f"key-{n}", b"payload %d" % n)])

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)
        stats = store.statistics()
        assert stats.requests - before.requests == 200
        assert stats.commits - before.commits <= 20  # 200 fsyncs without group commit
        assert stats.max_batch_seen >= 10
        ids = {r[0][0] for r in results.values()}
        assert len(ids) == 200 and all(r[0][1] for r in results.values())
        assert stats.pending_inbox == 200
        assert len(await store.pending_events()) == 200


async def test_max_batch_caps_a_commit(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3", max_batch=4) as store:
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(store.set_kv, f"k{n}", str(n))
        stats = store.statistics()
        assert stats.max_batch_seen <= 4
        assert stats.commits >= 5
        assert [await store.get_kv(f"k{n}") for n in (0, 19)] == ["0", "19"]


async def test_a_failing_request_does_not_fail_its_batch(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    outcomes: dict[str, object] = {}
    async with running(db) as store:
        await store.put_bindings([binding("woo:1:0")])
        before = store.statistics()

        async def accept() -> None:
            outcomes["accept"] = await store.accept_events([("k", b"v")])

        async def bad_intent() -> None:
            try:
                await store.save_intent("woo:404:0", b"no such binding")  # foreign key violation
            except sqlite3.IntegrityError as exc:
                outcomes["bad"] = exc

        async def good_intent() -> None:
            await store.save_intent("woo:1:0", b"intent")
            outcomes["good"] = True

        async def kv() -> None:
            await store.set_kv("cursor", "42")
            outcomes["kv"] = True

        async with trio.open_nursery() as nursery:
            for fn in (accept, bad_intent, good_intent, kv):
                nursery.start_soon(fn)
        stats = store.statistics()
        assert stats.commits - before.commits == 1  # all four shared one transaction
        assert stats.max_batch_seen == 4
        assert isinstance(outcomes["bad"], sqlite3.IntegrityError)
        assert outcomes["good"] is True and outcomes["kv"] is True
        assert outcomes["accept"] == [(1, True)]

    async with running(db) as store:
        assert await store.load_intents() == {"woo:1:0": b"intent"}
        assert await store.get_kv("cursor") == "42"
        assert [i for i, _, _ in await store.pending_events()] == [1]


async def test_a_request_that_aborts_the_transaction_is_isolated(tmp_path: Path) -> None:
    # SQLite itself may roll the whole transaction back (disk full, I/O error);
    # the innocent requests of that batch must be re-run, not lost or failed.
    db = tmp_path / "s.sqlite3"
    async with running(db) as store:

        def abort(conn: sqlite3.Connection) -> None:
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("simulated: database or disk is full")

        results: dict[str, object] = {}

        async def first() -> None:
            results["first"] = await store.accept_events([("before", b"1")])

        async def aborting() -> None:
            with pytest.raises(sqlite3.OperationalError, match="simulated"):
                await store._write(abort)

        async def last() -> None:
            results["last"] = await store.accept_events([("after", b"2")])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(aborting)
            nursery.start_soon(last)
        assert store.statistics().pending_inbox == 2
    async with running(db) as store:
        assert sorted(p for _, p, _ in await store.pending_events()) == [b"1", b"2"]


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"))
    with pytest.raises(StoreClosed):
        await store.accept_events([("k", b"v")])
    with pytest.raises(StoreClosed):
        await store.get_kv("k")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.set_kv("k", "v")
        nursery.cancel_scope.cancel()
    with pytest.raises(StoreClosed):
        await store.set_kv("k", "w")
    with pytest.raises(StoreClosed):
        await store.pending_events()
    with pytest.raises(RuntimeError, match="runs once"):
        await store.run()
    # closing checkpointed the WAL into the main file
    assert not (tmp_path / "s.sqlite3-wal").exists()


async def test_connection_pragmas(tmp_path: Path) -> None:
    # synchronous and foreign_keys are per connection: ask the store's own connection
    async with running(tmp_path / "s.sqlite3") as store:

        def pragmas(conn: sqlite3.Connection) -> tuple[Any, ...]:
            return tuple(
                conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous", "foreign_keys")
            )

        assert await store._read(pragmas) == ("wal", 2, 1)  # 2 = FULL


# ------------------------------------------------------------------ migrations


def test_migrate_applies_in_order_and_rolls_back_a_failing_step(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    steps: list[str] = []

    def m1(c: sqlite3.Connection) -> None:
        steps.append("m1")
        c.execute("CREATE TABLE a (x)")

    def m2_broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE b (x)")
        raise RuntimeError("bad migration")

    assert migrate(conn, [m1]) == 0
    with pytest.raises(RuntimeError, match="bad migration"):
        migrate(conn, [m1, m2_broken])
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None
    assert steps == ["m1"]
    assert migrate(conn, [m1]) == 1  # nothing to do
    conn.close()


async def test_opening_an_old_file_upgrades_it(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, MIGRATIONS[:1])  # a file written by the first release
    conn.execute("INSERT INTO inbox (dedup_key, payload, received_at) VALUES ('k', x'01', 1.0)")
    conn.close()

    async with running(db) as store:
        assert [(i, p) for i, p, _ in await store.pending_events()] == [(1, b"\x01")]
        await store.append_log([log_row(5.0)])  # tables of later migrations exist
        assert await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "{}", 5.0)) == 1
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS),)
    conn.close()


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    async with running(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match=rf"schema version {len(MIGRATIONS) + 1}, newer"):
        await Store(str(db)).run()
    conn = sqlite3.connect(db)  # and left untouched
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS) + 1,)
    conn.close()


async def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id)")
    conn.close()
    with pytest.raises(StoreError, match="not a cloverwoo-daemon state file"):
        await Store(str(db)).run()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the state file"):
        await Store(str(junk)).run()


# ------------------------------------------------------------------ bindings, intents, merge commit


async def test_bindings_round_trip_upsert_and_delete(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    b1, b2 = binding("woo:1:0"), binding("woo:2:7", base_woo=5)
    async with running(db) as store:
        await store.put_bindings([b2, b1])
        await store.save_intent("woo:1:0", b"intent-1")
        await store.put_bindings([msgspec_replace(b1, version=3, excluded=True)])  # keeps the intent
    async with running(db) as store:
        loaded = await store.load_bindings()
        assert loaded == [msgspec_replace(b1, version=3, excluded=True), b2]
        assert loaded[1].woo == WooRef(2, 7) and loaded[1].base_clover == {"downtown": 3, "airport": None}
        assert await store.load_intents() == {"woo:1:0": b"intent-1"}
        await store.delete_binding("woo:1:0")
        await store.delete_binding("woo:1:0")  # already gone: no error
        assert await store.load_intents() == {}  # the intent went with its binding
        assert [b.binding_id for b in await store.load_bindings()] == ["woo:2:7"]


def msgspec_replace(b: Binding, **changes: Any) -> Binding:
    import msgspec

    return msgspec.structs.replace(b, **changes)


async def test_commit_binding_lands_everything_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    b = binding("woo:1:0", version=1, base_woo=10)
    async with running(db) as store:
        await store.put_bindings([b])
        await store.save_intent(b.binding_id, b"write v2")

        # the last step fails (detail NOT NULL): the binding, the intent and the log row roll back too
        broken = Conflict("woo:1:0", "A", "oversell", None, 1.0)  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            await store.commit_binding(
                msgspec_replace(b, version=2, base_woo=8), intent="clear", log=log_row(1.0), conflict=broken
            )
        assert await store.load_bindings() == [b]
        assert await store.load_intents() == {b.binding_id: b"write v2"}
        assert await store.query_log() == []
        assert await store.list_conflicts(include_resolved=True) == []

        v2 = msgspec_replace(b, version=2, base_woo=8)
        oversell = Conflict("woo:1:0", "A", "oversell", "{}", 1.0)
        await store.commit_binding(v2, intent="clear", log=log_row(1.0), conflict=oversell)
        await store.commit_binding(msgspec_replace(v2, version=3), intent=b"write v4", conflict=oversell)
        await store.commit_binding(msgspec_replace(v2, version=4))  # intent left as is

    async with running(db) as store:
        assert await store.load_bindings() == [msgspec_replace(v2, version=4)]
        assert await store.load_intents() == {b.binding_id: b"write v4"}
        assert [r.event for r in await store.query_log()] == ["merge"]
        assert len(await store.list_conflicts()) == 1  # deduplicated


# ------------------------------------------------------------------ sync log, conflicts, kv


async def test_log_filters_paging_and_retention(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3") as store:
        rows = [
            log_row(100.0, "info", "A"),
            log_row(101.0, "warning", "B"),
            log_row(102.0, "error", "A", event="write_failed"),
            log_row(103.0, "info", "B"),
            log_row(104.0, "warning", "A"),
        ]
        await store.append_log(rows)
        everything = await store.query_log()
        ids = [r.id for r in everything]
        assert [r.ts for r in everything] == [r.ts for r in rows]
        assert ids == sorted(ids) and len(set(ids)) == 5 and ids[0] > 0
        assert everything[2] == SyncLogRow(
            ts=102.0, level="error", event="write_failed", sku="A", binding_id="woo:1:0", detail="{}", id=ids[2]
        )
        assert [r.ts for r in await store.query_log(sku="A")] == [100.0, 102.0, 104.0]
        assert [r.ts for r in await store.query_log(level="warning")] == [101.0, 102.0, 104.0]
        assert [r.ts for r in await store.query_log(level="error")] == [102.0]
        assert [r.ts for r in await store.query_log(level="info")] == [100.0, 101.0, 102.0, 103.0, 104.0]
        assert [r.ts for r in await store.query_log(since=102.0)] == [102.0, 103.0, 104.0]
        assert [r.ts for r in await store.query_log(sku="A", level="warning", since=103.0)] == [104.0]
        assert [r.ts for r in await store.query_log(after_id=ids[1], limit=2)] == [102.0, 103.0]
        assert [r.ts for r in await store.query_log(limit=2, newest=True)] == [103.0, 104.0]

        with pytest.raises(ValueError, match="unknown log level"):
            await store.query_log(level="debug")
        with pytest.raises(sqlite3.IntegrityError):
            await store.append_log([log_row(105.0, "loud")])

        assert await store.prune_log(older_than=102.0) == 2
        assert [r.ts for r in await store.query_log()] == [102.0, 103.0, 104.0]
        # no row cap: a large sync keeps every row
        await store.append_log([log_row(200.0 + n) for n in range(1000)])
        assert len(await store.query_log(limit=5000)) == 1003


async def test_conflicts_dedup_and_resolve(tmp_path: Path) -> None:
    clock = Clock(500.0)
    async with running(tmp_path / "s.sqlite3", clock=clock) as store:
        a = await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "first", 1.0))
        assert await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "again", 2.0)) == a
        b = await store.add_conflict(Conflict("woo:1:0", "A", "both_recounted", "{}", 3.0))
        c = await store.add_conflict(Conflict("woo:2:0", "B", "oversell", "{}", 4.0))
        assert len({a, b, c}) == 3
        open_ = await store.list_conflicts()
        assert [(x.id, x.detail) for x in open_] == [(a, "first"), (b, "{}"), (c, "{}")]

        assert await store.resolve_conflicts([a, c, 9999]) == 2
        assert await store.resolve_conflicts([a]) == 0
        assert [x.id for x in await store.list_conflicts()] == [b]
        resolved = {x.id: x.resolved_at for x in await store.list_conflicts(include_resolved=True)}
        assert resolved == {a: 500.0, b: None, c: 500.0}
        # once resolved, the same binding + kind opens a new conflict
        assert await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "new", 6.0)) not in (a, b, c)


async def test_an_open_conflict_folds_a_new_flag_when_asked(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3") as store:
        a = await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "-1", 1.0), fold=lambda o, n: f"{o},{n}")
        assert await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "-3", 2.0),
                                        fold=lambda o, n: f"{o},{n}") == a
        assert await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "-4", 3.0)) == a  # no fold: kept
        (c,) = await store.list_conflicts()
        assert (c.id, c.detail, c.created_at) == (a, "-1,-3", 1.0)


async def test_after_commit_runs_once_durable_even_if_the_caller_was_cancelled(tmp_path: Path) -> None:
    """A caller cancelled while its commit is on its way to disk must still see its memory follow."""
    import time

    b = binding("woo:1:0", version=1, base_woo=10)
    seen: list[str] = []
    async with running(tmp_path / "s.sqlite3") as store:
        await store.put_bindings([b])
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                n.start_soon(store._write, lambda conn: time.sleep(0.3))  # a slow request in the same batch
                n.start_soon(lambda: store.commit_binding(msgspec_replace(b, version=3),
                                                          after_commit=lambda: seen.append("v3")))
                await trio.sleep(0.1)  # both are in the writer's batch, in its thread
                scope.cancel()  # the caller goes away; its request commits anyway
        assert seen == []
        await trio.sleep(0.5)
        (on_disk,) = await store.load_bindings()
        assert on_disk.version == 3 and seen == ["v3"]


async def test_the_log_by_binding(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3") as store:
        await store.append_log([
            SyncLogRow(ts=1.0, level="info", event="merge", sku="", binding_id="woo:7:0", detail="{}"),
            SyncLogRow(ts=2.0, level="info", event="merge", sku="A", binding_id="woo:1:0", detail="{}"),
            SyncLogRow(ts=3.0, level="info", event="merge", sku="", binding_id="woo:8:0", detail="{}"),
        ])
        assert [r.ts for r in await store.query_log(binding_ids=["woo:7:0", "woo:8:0"])] == [1.0, 3.0]
        assert [r.ts for r in await store.query_log(sku="A", binding_ids=["woo:7:0"])] == [1.0, 2.0]
        plan = store._conn.execute(  # type: ignore[union-attr]
            "EXPLAIN QUERY PLAN SELECT id FROM sync_log WHERE binding_id = ? ORDER BY id", ("woo:7:0",)).fetchall()
        assert "sync_log_binding" in str(plan)  # an index, not a scan of 90 days of log


async def test_kv(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with running(db) as store:
        assert await store.get_kv("woo_cursor") is None
        await store.set_kv("woo_cursor", "2024-01-01T00:00:00")
        await store.set_kv("woo_cursor", "2024-01-02T00:00:00")
    async with running(db) as store:
        assert await store.get_kv("woo_cursor") == "2024-01-02T00:00:00"
        assert store.statistics().db_size_bytes > 0


# ------------------------------------------------------------------ alerts


def _alert(key: str, kind: AlertKind = "low_stock", bid: str = "woo:1:0") -> Alert:
    return Alert(kind=kind, key=key, binding_id=bid, sku="MUG", name="Blue mug", stock=3, threshold=5,
                 locations={"downtown": 3}, at=1.0)


async def test_alert_state_thresholds_and_outbox_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    clock = Clock()
    async with running(db, clock=clock) as store:
        assert await store.load_arm_states() == {}
        # an alert lands with the arm state that fired it; its key makes it once only
        assert await store.record_alert(_alert("low_stock:woo:1:0:1"), arm=ArmState(low_armed=False))
        assert not await store.record_alert(_alert("low_stock:woo:1:0:1"), arm=ArmState(out_armed=False))
        assert await store.record_alert(_alert("conflict:7", kind="oversell"))
        assert not await store.record_alert(_alert("conflict:7", kind="oversell"))
        await store.save_arm_state("woo:2:0", ArmState(False, False))
        await store.save_arm_state("woo:3:0", ArmState(False, True))
        await store.save_arm_state("woo:3:0", ArmState())  # back to armed: nothing kept
        await store.set_alert_threshold("MUG", 9)
        await store.set_alert_threshold("TEE", 2)
        await store.set_alert_threshold("TEE", None)
        email = Email("low_stock", "Low stock: Blue mug", "body", ("low_stock:woo:1:0:1",))
        queued = await store.queue_email(email, ["owner@shop.example"])
        assert (queued.id, queued.recipients, queued.sent_at) == (1, ("owner@shop.example",), None)
        clock.now += 10
        await store.mark_email_failed(queued.id, "refused")
        logged = await store.queue_email(Email("oversell", "s", "b", ("conflict:7",)), [], delivered=True)
        assert logged.sent_at == clock.now
    async with running(db, clock=clock) as store:
        assert await store.load_arm_states() == {"woo:1:0": ArmState(False, True), "woo:2:0": ArmState(False, False)}
        assert await store.alert_thresholds() == {"MUG": 9}
        assert await store.pending_alerts() == []  # both are in an email
        (unsent,) = await store.unsent_emails()
        assert (unsent.id, unsent.attempts, unsent.last_error, unsent.subject) == (1, 1, "refused",
                                                                                   "Low stock: Blue mug")
        assert await store.recent_emails(clock.now - 5) == [("oversell", clock.now)]
        await store.mark_email_sent(unsent.id)
        assert await store.unsent_emails() == []
        assert [e.id for e in await store.list_emails()] == [2, 1]
        assert await store.record_alert(_alert("low_stock:woo:1:0:2"))
        assert [a.key for a in await store.pending_alerts()] == ["low_stock:woo:1:0:2"]


async def test_last_sync_error(tmp_path: Path) -> None:
    async with running(tmp_path / "s.sqlite3") as store:
        assert await store.last_sync_error("woo:1:0") is None
        await store.append_log([
            SyncLogRow(ts=1.0, level="error", event="merge_failed", binding_id="woo:1:0", error="first"),
            SyncLogRow(ts=2.0, level="error", event="merge_failed", binding_id="woo:1:0", error="second"),
            SyncLogRow(ts=3.0, level="info", event="merge", binding_id="woo:1:0"),
        ])
        assert await store.last_sync_error("woo:1:0") == "second"


# ------------------------------------------------------------------ crash safety

CHILD = textwrap.dedent(
    """
    import sys, trio
    from cloverwoo_daemon.io.store import Store

    async def main(path):
        store = Store(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)

            async def producer(p):
                n = 0
                while True:
                    n += 1
                    key = f"p{p}-{n}"
                    [(event_id, new)] = await store.accept_events([(key, key.encode())])
                    # acknowledged: tell the parent right away
                    sys.stdout.write(f"{event_id} {key}\\n")
                    sys.stdout.flush()

            for p in range(8):
                nursery.start_soon(producer, p)

    trio.run(main, sys.argv[1])
    """
)


async def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    # A process crash, not a power cut: the OS page cache survives SIGKILL, so
    # this proves "acknowledged only after COMMIT", not the fsync itself
    # (synchronous=FULL is checked in test_connection_pragmas).
    db = tmp_path / "crash.sqlite3"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    acked: dict[int, str] = {}
    lines_read = 0
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        buf = b""
        try:
            while lines_read < 300:
                chunk = await proc.stdout.receive_some()
                assert chunk, "child exited early"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                lines_read += len(lines)
                for line in lines:
                    event_id, key = line.decode().split()
                    acked[int(event_id)] = key
        finally:
            proc.send_signal(signal.SIGKILL)  # mid-stream, writes still in flight
            await proc.wait()
        # whatever the child printed before dying was acknowledged too
        while chunk := await proc.stdout.receive_some():
            buf += chunk
        *lines, _unterminated = buf.split(b"\n")
        lines_read += len(lines)
        for line in lines:
            event_id, key = line.decode().split()
            acked[int(event_id)] = key
        await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == lines_read, "an event id was handed out twice"

    async with running(db) as store:
        found = {i: p.decode() for i, p, _ in await store.pending_events()}
    missing = {i: k for i, k in acked.items() if found.get(i) != k}
    assert not missing, f"{len(missing)} acknowledged events lost or changed"
    assert len(found) >= len(acked) >= 300


# ------------------------------------------------------------------ admin reads, pruning, quarantine


async def test_admin_reads_never_wait_for_the_writer(tmp_path: Path) -> None:
    """The admin's reads (the log, the CSV export's last-synced times, the conflicts) have their own read-only
    connection. Before, they took the writer's connection and limiter: a scan of the sync log held up every
    webhook's commit, and a long commit held up `cloverwoo log`. Here the writer is held inside a commit."""
    import threading

    async with running(tmp_path / "s.sqlite3") as store:
        await store.append_log([log_row(100.0, "error"), log_row(101.0)])
        await store.add_conflict(Conflict("woo:1:0", "A", "oversell", "{}", 5.0))
        release = threading.Event()

        def held(conn: sqlite3.Connection) -> None:
            release.wait(30)  # the writer thread, inside a transaction, holding the writer's limiter

        async with trio.open_nursery() as n:
            n.start_soon(store._write, held)
            await trio.sleep(0.2)
            try:
                with trio.fail_after(10):
                    assert [r.ts for r in await store.query_log(level="error")] == [100.0]
                    assert [r.ts for r in await store.query_log(newest=True, limit=1)] == [101.0]
                    assert set(await store.last_synced()) == {"woo:1:0"}
                    assert len(await store.list_conflicts()) == 1
                    assert await store.list_emails() == []
            finally:
                release.set()
        # and it sees every write already answered
        await store.append_log([log_row(102.0, "error")])
        assert [r.ts for r in await store.query_log(level="error")] == [100.0, 102.0]
        with pytest.raises(sqlite3.OperationalError):  # read-only: a write there would bypass the group commit
            await store._admin_read(lambda conn: conn.execute("DELETE FROM sync_log"))


def _plan(path: Path, sql: str, args: tuple[Any, ...]) -> str:
    conn = sqlite3.connect(path)
    try:
        return " / ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        conn.close()


async def test_admin_reads_use_indexes_not_a_scan_of_the_sync_log(tmp_path: Path) -> None:
    """`cloverwoo log --level error` on a 90-day log, and the CSV export's last-synced times: before, both read
    every row of the sync log (a level filter on an unindexed column, a GROUP BY over all merges)."""
    db = tmp_path / "s.sqlite3"
    seen: list[str] = []
    async with running(db) as store:
        await store.append_log([log_row(float(i), "error" if i % 500 == 0 else "info") for i in range(2000)])
        conn = getattr(store, "_admin_conn", None) or store._conn  # whichever connection the admin reads use
        assert conn is not None
        conn.set_trace_callback(seen.append)
        errors = await store.query_log(level="error", newest=True, limit=2)
        warnings = await store.query_log(level="warning", newest=True, limit=2)
        last = await store.last_synced()
        conn.set_trace_callback(None)
    assert [r.ts for r in errors] == [1000.0, 1500.0] and [r.ts for r in warnings] == [1000.0, 1500.0]
    assert last == {"woo:1:0": 1999.0}
    log_sql = [q for q in seen if "FROM sync_log" in q]
    assert len(log_sql) == 2 and not any("FROM sync_log" in q for q in seen if "binding_synced" in q)
    plans = [_plan(db, sql, ()) for sql in log_sql]  # the statements as run, their arguments in place
    assert "USING INDEX sync_log_errors" in plans[0] and "USING INDEX sync_log_problems" in plans[1], plans


async def test_pruning_deletes_in_bounded_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is one write request of at most PRUNE_STEP rows: a webhook's commit queued meanwhile goes
    with the next step. Before, one DELETE of every expired row held the writer for the whole prune."""
    from cloverwoo_daemon.io import store as store_module

    monkeypatch.setattr(store_module, "PRUNE_STEP", 100, raising=False)
    clock = Clock(10_000.0)
    async with running(tmp_path / "s.sqlite3", clock=clock, dedup_window=10.0) as store:
        await store.append_log([log_row(float(i)) for i in range(450)] + [log_row(5000.0)])
        before = store.statistics().requests
        acks: list[object] = []

        async def ack_meanwhile() -> None:
            acks.append(await store.accept_events([("k-meanwhile", b"x")]))

        async with trio.open_nursery() as n:
            n.start_soon(ack_meanwhile)
            assert await store.prune_log(older_than=1000.0) == 450
        assert store.statistics().requests - before >= 5 + 1  # 100+100+100+100+50, and the ack
        assert acks and [r.ts for r in await store.query_log()] == [5000.0]
        ids = await store.accept_events([(f"k{i}", b"x") for i in range(250)])
        await store.settle_events([i for i, _ in ids])
        clock.now += 100
        before = store.statistics().requests
        assert await store.prune(clock.now) == 250
        assert store.statistics().requests - before == 3


async def test_an_undecodable_inbox_row_is_set_aside_and_counted(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with running(db) as store:
        acks = await store.accept_events([("good", b'{"ok": 1}'), ("bad", b"\xff not an event")])
        (good, _), (bad, _) = acks
        assert await store.quarantine_events([(bad, "DecodeError: invalid character")]) == 1
        assert await store.quarantine_events([(bad, "again")]) == 0  # moved once
        assert [i for i, _, _ in await store.pending_events()] == [good]
        st = store.statistics()
        assert st.quarantined == 1 and st.pending_inbox == 1
    async with running(db) as store:
        assert store.statistics().quarantined == 1  # counted from the file at open
        assert [i for i, _, _ in await store.pending_events()] == [good]
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT id, dedup_key, payload, error FROM inbox_quarantine").fetchone()
    conn.close()
    assert row == (bad, "bad", b"\xff not an event", "DecodeError: invalid character")


async def test_migration_keeps_last_synced_times_of_an_existing_log(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, MIGRATIONS[:3])  # before the admin-read tables
    for ts, event, bid in ((1.0, "merge", "woo:1:0"), (3.0, "csv_set", "woo:1:0"), (2.0, "merge", "woo:2:0"),
                           (9.0, "write_failed", "woo:2:0")):
        conn.execute("INSERT INTO sync_log (ts, level, event, binding_id, sku, location, trigger, detail, error) "
                     "VALUES (?, 'info', ?, ?, 'A', '', '', '{}', '')", (ts, event, bid))
    conn.close()
    async with running(db) as store:
        assert await store.last_synced() == {"woo:1:0": 3.0, "woo:2:0": 2.0}
        await store.append_log([log_row(7.0)])
        assert await store.last_synced() == {"woo:1:0": 7.0, "woo:2:0": 2.0}
        assert await store.prune_log(older_than=8.0) == 4  # the log goes; when each binding last synced stays
        assert await store.last_synced() == {"woo:1:0": 7.0, "woo:2:0": 2.0}
    conn = sqlite3.connect(db, isolation_level=None)
    MIGRATIONS[3](conn)  # harmless twice (branches may number it differently until they meet)
    conn.close()
