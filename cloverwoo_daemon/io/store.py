"""The embedded state store: one SQLite file holding everything that must survive a restart.

Rules this module keeps:

- One connection, one thread at a time. Every statement runs in a worker
  thread via ``trio.to_thread.run_sync`` under one ``CapacityLimiter(1)``;
  the connection is opened with ``check_same_thread=False`` because trio's
  worker threads vary (stack.md, pitfalls). The event loop never blocks on
  disk.
- Every write goes through the group-commit writer. Callers queue a request
  and wait; the writer takes everything queued (up to ``max_batch``), runs it
  in ONE transaction, commits once (one fsync), then wakes each caller with
  its own result. Under no load a lone request commits at once: there is no
  timer, batching comes only from requests that queued while the previous
  commit was on disk.
- One bad request never fails the others: each runs inside its own
  ``SAVEPOINT``; an exception rolls back that request alone and is handed to
  its caller only. If SQLite aborted the whole transaction (disk full, I/O
  error), the innocent requests of that batch are re-run in a fresh one.
- A caller is told "done" only after ``COMMIT`` returned: a result returned
  by this API is durable. A caller cancelled while waiting may or may not
  have had its request committed (the inbox's dedup key makes a redelivery
  harmless).
- Reads take the same limiter and run in autocommit mode between batches, so
  a read always sees every write whose caller was already answered.
- The admin's reads (the sync log, the CSV export's last-synced times, the
  conflicts, the alert emails: what ``cloverwoo`` commands, the dashboard
  and ``/metrics`` ask for) run on a second connection, read-only
  (``query_only``), in worker threads under a limiter of their own: WAL lets
  it read while the writer commits, so a slow admin read never holds up a
  webhook's acknowledgement, and it still sees every committed write. Those
  reads use indexes made for them (a rare log level, last-synced times kept
  per binding) instead of scanning the whole sync log.
- Pruning deletes in bounded steps (``PRUNE_STEP`` rows per transaction),
  each its own write request, so one prune never holds the writer long.
- An inbox row that no longer decodes (written by another version, or
  damaged) is moved to ``inbox_quarantine`` by ``quarantine_events`` (the
  caller logs it); ``statistics().quarantined`` counts them for ``status``.
- The schema is versioned: ``schema_version`` holds how many entries of
  ``MIGRATIONS`` have been applied. Opening applies the missing ones in order,
  each in its own transaction; a file written by a newer build is refused
  rather than guessed at.

PRAGMAs and why:

- ``journal_mode=WAL``: readers do not block the writer and a commit appends
  to one file instead of rewriting pages twice.
- ``synchronous=FULL``: the webhook server acknowledges a delivery as soon as
  ``accept_events`` returns, and WooCommerce never retries a delivery it saw
  acknowledged. With WAL and ``synchronous=NORMAL`` a commit survives a crash
  of this process but not a power cut or kernel crash (the WAL is fsynced
  only at checkpoints), so an acknowledged event could vanish. ``FULL``
  fsyncs the WAL at every commit; group commit is what makes that affordable
  (one fsync per batch, not per event).
- ``foreign_keys=ON``: a write intent cannot outlive, or exist without, its
  binding.

Error handling: ``StoreError`` is the root of this module's errors:
``StoreClosed`` (the store is not running), ``SchemaTooNew`` (file from a
newer build), and plain ``StoreError`` for a file that is not ours. SQL
errors of one request (``sqlite3.IntegrityError`` and friends) reach that
request's caller unchanged.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec
import trio

from cloverwoo_daemon.core.alerts import Alert, ArmState, Email, OutboxEmail
from cloverwoo_daemon.core.model import Binding, Conflict, SyncLogRow, WooRef

__all__ = [
    "MIGRATIONS",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreStatistics",
    "migrate",
]

T = TypeVar("T")

DEFAULT_DEDUP_WINDOW = 24 * 3600.0
LEVELS: tuple[str, ...] = ("info", "warning", "error")  # least to most severe


class StoreError(Exception):
    """The state store cannot do what was asked (root of this module's errors)."""


class StoreClosed(StoreError):
    """The store is not running (not started yet, or shut down)."""


class SchemaTooNew(StoreError):
    """The file was written by a newer cloverwoo; opening it could corrupt it."""


class StoreStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the store, for ``cloverwoo status`` and ``/metrics``."""

    commits: int  # transactions committed by the writer
    requests: int  # write requests handled (succeeded or failed)
    max_batch_seen: int  # most requests ever shared by one commit
    db_size_bytes: int  # page_count * page_size after the last batch
    pending_inbox: int  # accepted events not settled yet
    queued: int  # write requests waiting for the writer right now
    quarantined: int = 0  # inbox events set aside because they no longer decode


# --------------------------------------------------------------------------
# Schema and migrations. Append only: never edit a migration that shipped.


def _m1_initial(conn: sqlite3.Connection) -> None:
    """Inbox, bindings, write intents and key/value state."""
    # AUTOINCREMENT: event ids travel in MarkDirty.event_ids and must never be
    # reused, even after the newest rows were pruned.
    conn.execute(
        """CREATE TABLE inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            dedup_key TEXT NOT NULL UNIQUE,
            payload BLOB,              -- NULL once settled
            received_at REAL NOT NULL,
            settled_at REAL            -- NULL while pending
        )"""
    )
    conn.execute("CREATE INDEX inbox_pending ON inbox(id) WHERE settled_at IS NULL")
    conn.execute("CREATE INDEX inbox_settled ON inbox(settled_at) WHERE settled_at IS NOT NULL")
    conn.execute(
        """CREATE TABLE bindings (
            binding_id TEXT PRIMARY KEY,
            sku TEXT NOT NULL,
            name TEXT NOT NULL,
            woo_product_id INTEGER NOT NULL,
            woo_variation_id INTEGER NOT NULL,
            clover_items TEXT NOT NULL,   -- JSON {location: item id}
            matched_by TEXT NOT NULL,
            tracked INTEGER NOT NULL,
            excluded INTEGER NOT NULL,
            base_woo INTEGER,
            base_clover TEXT NOT NULL,    -- JSON {location: int | null}
            version INTEGER NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX bindings_sku ON bindings(sku)")
    conn.execute(
        """CREATE TABLE intents (
            binding_id TEXT PRIMARY KEY REFERENCES bindings(binding_id) ON DELETE CASCADE,
            intent BLOB NOT NULL,
            saved_at REAL NOT NULL
        )"""
    )
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _m2_log_and_conflicts(conn: sqlite3.Connection) -> None:
    """The unbounded sync log (retention by age) and the conflicts list."""
    conn.execute(
        """CREATE TABLE sync_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            level TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
            event TEXT NOT NULL,
            binding_id TEXT NOT NULL,
            sku TEXT NOT NULL,
            location TEXT NOT NULL,
            trigger TEXT NOT NULL,
            detail TEXT NOT NULL,
            error TEXT NOT NULL,
            latency_ms REAL
        )"""
    )
    conn.execute("CREATE INDEX sync_log_sku ON sync_log(sku, id)")
    conn.execute("CREATE INDEX sync_log_ts ON sync_log(ts)")
    # No foreign key to bindings: a conflict is an audit record and stays
    # after its binding is gone.
    conn.execute(
        """CREATE TABLE conflicts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            binding_id TEXT NOT NULL,
            sku TEXT NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            created_at REAL NOT NULL,
            resolved_at REAL
        )"""
    )
    # At most one open conflict per (binding, kind): the database holds the rule.
    conn.execute("CREATE UNIQUE INDEX conflicts_open ON conflicts(binding_id, kind) WHERE resolved_at IS NULL")


def _m3_alerts(conn: sqlite3.Connection) -> None:
    """Alerts: arm state per binding, run-time thresholds, recorded alerts and the email outbox."""
    # No foreign keys to bindings: an alert about a binding that was since
    # unbound must still be delivered, and arm state outliving its binding is harmless.
    conn.execute(
        """CREATE TABLE alert_state (
            binding_id TEXT PRIMARY KEY,
            low_armed INTEGER NOT NULL,
            out_armed INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE alert_thresholds (
            sku TEXT PRIMARY KEY,
            threshold INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL,
            recipients TEXT NOT NULL,     -- JSON list
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            sent_at REAL                  -- NULL until the server accepted it
        )"""
    )
    conn.execute("CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL")
    conn.execute("CREATE INDEX outbox_created ON outbox(created_at)")
    # An alert is recorded (with the arm state that fired it) before it is
    # digested; email_id says which outbox email carries it. The unique key
    # makes "alert once per conflict" durable.
    conn.execute(
        """CREATE TABLE alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            binding_id TEXT NOT NULL,
            payload BLOB NOT NULL,        -- msgspec JSON of core.alerts.Alert
            created_at REAL NOT NULL,
            email_id INTEGER REFERENCES outbox(id)
        )"""
    )
    conn.execute("CREATE INDEX alerts_pending ON alerts(id) WHERE email_id IS NULL")


def _m4_log_by_binding(conn: sqlite3.Connection) -> None:
    """The sync log by binding: a product without a SKU is found by its binding (``cloverwoo log``), and a
    sync-failure alert reads its binding's last error, without scanning 90 days of log."""
    conn.execute("CREATE INDEX sync_log_binding ON sync_log(binding_id, id)")


def _m5_quarantine_and_admin_reads(conn: sqlite3.Connection) -> None:
    """Undecodable inbox rows set aside, and what the admin's reads need so they never scan the sync log.

    Written to run twice harmlessly (``IF NOT EXISTS``, an upsert): branches built in parallel may number
    their migrations differently until they meet.
    """
    conn.execute(
        """CREATE TABLE IF NOT EXISTS inbox_quarantine (
            id INTEGER PRIMARY KEY,        -- the inbox id it had
            dedup_key TEXT NOT NULL,
            payload BLOB,
            received_at REAL NOT NULL,
            error TEXT NOT NULL,
            quarantined_at REAL NOT NULL
        )"""
    )
    # `cloverwoo log --level warning|error`: the newest problems without reading the info rows around them
    conn.execute("CREATE INDEX IF NOT EXISTS sync_log_problems ON sync_log(id) WHERE level != 'info'")
    conn.execute("CREATE INDEX IF NOT EXISTS sync_log_errors ON sync_log(id) WHERE level = 'error'")
    # the CSV export's last_synced_at: kept per binding as log rows are written, instead of a GROUP BY
    # over 90 days of log (and no longer forgotten when old log rows are pruned)
    conn.execute("CREATE TABLE IF NOT EXISTS binding_synced (binding_id TEXT PRIMARY KEY, at REAL NOT NULL)")
    conn.execute(
        "INSERT INTO binding_synced (binding_id, at) "
        f"SELECT binding_id, MAX(ts) FROM sync_log WHERE event IN ({_SYNCED_EVENTS_SQL}) GROUP BY binding_id "
        "ON CONFLICT (binding_id) DO UPDATE SET at = max(at, excluded.at)"
    )


_SYNCED_EVENTS = ("merge", "csv_set")  # log events that mean "this binding was synced now" (the CSV export)
_SYNCED_EVENTS_SQL = ", ".join(f"'{e}'" for e in _SYNCED_EVENTS)

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: tuple[Migration, ...] = (
    _m1_initial, _m2_log_and_conflicts, _m3_alerts, _m4_log_by_binding, _m5_quarantine_and_admin_reads,
)
PRUNE_STEP = 5_000
"""Rows one prune transaction deletes at most (the writer is held milliseconds, then serves others)."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the file up to ``len(migrations)``; return the version it was at.

    Error handling: a file with tables but no ``schema_version`` is not ours
    (``StoreError``); a version above ``len(migrations)`` is ``SchemaTooNew``;
    a migration that raises is rolled back whole and the version stays put.
    The connection must be in autocommit mode (``isolation_level=None``).
    """
    has_version = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_version is None:
        others = conn.execute("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]
        if others:
            raise StoreError("the state file holds tables but no schema_version: "
                             "it is not a cloverwoo-daemon state file")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    (found,) = conn.execute("SELECT version FROM schema_version").fetchone()
    if found > len(migrations):
        raise SchemaTooNew(
            f"the state file is at schema version {found}, newer than this build of cloverwoo-daemon knows "
            f"(up to {len(migrations)}); upgrade cloverwoo-daemon or restore a backup taken before the upgrade"
        )
    for version in range(found, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[version](conn)
            conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return int(found)


# --------------------------------------------------------------------------
# Row <-> struct conversion


_str_dict = msgspec.json.Decoder(dict[str, str])
_str_list = msgspec.json.Decoder(list[str])
_alert_decoder = msgspec.json.Decoder(Alert)
_base_dict = msgspec.json.Decoder(dict[str, int | None])
_encode = msgspec.json.Encoder()

_BINDING_COLUMNS = (
    "binding_id, sku, name, woo_product_id, woo_variation_id, clover_items, matched_by, "
    "tracked, excluded, base_woo, base_clover, version"
)
_UPSERT_BINDING = (
    f"INSERT INTO bindings ({_BINDING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (binding_id) DO UPDATE SET sku = excluded.sku, name = excluded.name, "
    "woo_product_id = excluded.woo_product_id, woo_variation_id = excluded.woo_variation_id, "
    "clover_items = excluded.clover_items, matched_by = excluded.matched_by, tracked = excluded.tracked, "
    "excluded = excluded.excluded, base_woo = excluded.base_woo, base_clover = excluded.base_clover, "
    "version = excluded.version"
)  # an upsert, not INSERT OR REPLACE: REPLACE deletes the row and would cascade to its intent


def _binding_params(b: Binding) -> tuple[Any, ...]:
    return (
        b.binding_id,
        b.sku,
        b.name,
        b.woo.product_id,
        b.woo.variation_id,
        _encode.encode(b.clover_items).decode(),
        b.matched_by,
        int(b.tracked),
        int(b.excluded),
        b.base_woo,
        _encode.encode(b.base_clover).decode(),
        b.version,
    )


def _binding_from_row(row: tuple[Any, ...]) -> Binding:
    (bid, sku, name, pid, vid, items, matched_by, tracked, excluded, base_woo, base_clover, version) = row
    return Binding(
        binding_id=bid,
        sku=sku,
        name=name,
        woo=WooRef(pid, vid),
        clover_items=_str_dict.decode(items),
        matched_by=matched_by,
        tracked=bool(tracked),
        excluded=bool(excluded),
        base_woo=base_woo,
        base_clover=_base_dict.decode(base_clover),
        version=version,
    )


_LOG_COLUMNS = "ts, level, event, binding_id, sku, location, trigger, detail, error, latency_ms"


def _log_params(r: SyncLogRow) -> tuple[Any, ...]:
    return (r.ts, r.level, r.event, r.binding_id, r.sku, r.location, r.trigger, r.detail, r.error, r.latency_ms)


def _insert_log(conn: sqlite3.Connection, rows: Iterable[SyncLogRow]) -> list[int]:
    ids = []
    for r in rows:
        ids.append(conn.execute(
            f"INSERT INTO sync_log ({_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            _log_params(r),
        ).fetchone()[0])
        if r.event in _SYNCED_EVENTS:
            conn.execute(
                "INSERT INTO binding_synced (binding_id, at) VALUES (?, ?) "
                "ON CONFLICT (binding_id) DO UPDATE SET at = max(at, excluded.at)",
                (r.binding_id, r.ts),
            )
    return ids


def _add_conflict(conn: sqlite3.Connection, c: Conflict, fold: Callable[[str, str], str] | None = None) -> int:
    found = conn.execute(
        "SELECT id, detail FROM conflicts WHERE binding_id = ? AND kind = ? AND resolved_at IS NULL",
        (c.binding_id, c.kind),
    ).fetchone()
    if found is not None:
        if fold is not None:
            detail = fold(found[1], c.detail)
            if detail != found[1]:
                conn.execute("UPDATE conflicts SET detail = ? WHERE id = ?", (detail, found[0]))
        return int(found[0])
    row = conn.execute(
        "INSERT INTO conflicts (binding_id, sku, kind, detail, created_at, resolved_at) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (c.binding_id, c.sku, c.kind, c.detail, c.created_at, c.resolved_at),
    ).fetchone()
    return int(row[0])


def _save_intent(conn: sqlite3.Connection, binding_id: str, intent: bytes, now: float) -> None:
    conn.execute(
        "INSERT INTO intents (binding_id, intent, saved_at) VALUES (?, ?, ?) "
        "ON CONFLICT (binding_id) DO UPDATE SET intent = excluded.intent, saved_at = excluded.saved_at",
        (binding_id, intent, now),
    )


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _chunks(seq: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    # SQLite caps bound parameters per statement (32766 since 3.32; stay well under).
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# --------------------------------------------------------------------------
# The group-commit machinery


class _Request(Generic[T]):
    """One queued write: a function of the connection, run inside its own savepoint."""

    __slots__ = ("fn", "after_commit", "done", "result", "error", "abandoned")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], after_commit: Callable[[T], None] | None) -> None:
        self.fn = fn
        self.after_commit = after_commit  # runs in trio, only once the commit is durable
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False  # the caller was cancelled before the writer took it


class _BatchOutcome:
    __slots__ = ("commits", "db_size")

    def __init__(self) -> None:
        self.commits = 0
        self.db_size = 0


class Store:
    """The daemon's durable state: inbox, bindings, write intents, sync log, conflicts, alerts, key/value.

    Resource handling: nothing touches the file until ``run`` is started in a
    nursery (``await nursery.start(store.run)``): it opens and migrates the
    file, reports started, serves until cancelled, then fails whatever is
    still queued with ``StoreClosed`` and closes the file (shielded, so a
    cancelled shutdown still checkpoints the WAL). A ``Store`` runs once.
    """

    def __init__(
        self,
        path: str,
        *,
        max_batch: int = 512,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = path
        self.max_batch = max_batch
        self.dedup_window = dedup_window
        self._clock = clock  # unix seconds; injectable so tests can move past the dedup window
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self._admin_limiter = trio.CapacityLimiter(1)  # the admin connection: one read at a time, its own thread
        self._admin_conn: sqlite3.Connection | None = None
        self._state: Literal["new", "open", "closed"] = "new"
        self._queue: collections.deque[_Request[Any]] = collections.deque()
        self._wakeup = trio.Event()
        self._commits = 0
        self._requests = 0
        self._max_batch_seen = 0
        self._db_size = 0
        self._pending = 0
        self._quarantined = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open and migrate the file, report started, then run the group-commit writer until cancelled.

        Error handling: a file that cannot be opened (``SchemaTooNew``, not
        ours, not WAL-capable) raises before ``started``.
        """
        if self._state != "new":
            raise RuntimeError("a Store runs once; make a new one")
        self._state = "open"  # claim it before the first checkpoint
        try:
            await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
            await trio.to_thread.run_sync(self._open_admin_sync, limiter=self._admin_limiter)
            task_status.started()
            await self._writer()
        finally:
            self._state = "closed"
            closed = StoreClosed("the state store shut down before this write was committed")
            while self._queue:
                req = self._queue.popleft()
                req.error = closed
                req.done.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_admin_sync, limiter=self._admin_limiter)
                await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the state file cannot use WAL journaling (got {mode!r}); put it on a local disk")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")  # a CLI or backup may hold the file briefly
            migrate(conn)
            self._pending = conn.execute("SELECT count(*) FROM inbox WHERE settled_at IS NULL").fetchone()[0]
            self._quarantined = conn.execute("SELECT count(*) FROM inbox_quarantine").fetchone()[0]
            self._db_size = self._size_sync(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open the state file {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _open_admin_sync(self) -> None:
        """The admin's read-only connection, opened once the writer's has made and migrated the file."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only=ON")  # it can never write: every write goes through the group commit
            conn.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            conn.close()
            raise
        self._admin_conn = conn

    def _close_admin_sync(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            conn.close()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute("PRAGMA optimize")
            finally:
                conn.close()

    @staticmethod
    def _size_sync(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(size)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            commits=self._commits,
            requests=self._requests,
            max_batch_seen=self._max_batch_seen,
            db_size_bytes=self._db_size,
            pending_inbox=self._pending,
            queued=len(self._queue),
            quarantined=self._quarantined,
        )

    # ------------------------------------------------------------------ writer

    async def _write(self, fn: Callable[[sqlite3.Connection], T], after_commit: Callable[[T], None] | None = None) -> T:
        """Queue ``fn`` for the next group commit and wait until it is durable."""
        if self._state != "open":
            raise StoreClosed("the state store is not running")
        # No checkpoint before the append: requests made in one scheduling
        # batch all land in the same queue, hence the same commit.
        req: _Request[T] = _Request(fn, after_commit)
        self._queue.append(req)
        self._wakeup.set()
        try:
            await req.done.wait()
        except BaseException:
            req.abandoned = True  # still queued: the writer skips it; in flight: it commits anyway
            raise
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]  # set by the writer on success

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            batch: list[_Request[Any]] = []
            while self._queue and len(batch) < self.max_batch:
                req = self._queue.popleft()
                if not req.abandoned:
                    batch.append(req)
            if not batch:
                continue
            # Not cancellable mid-batch (to_thread waits for the thread), so
            # every caller below is answered before a cancel takes effect.
            try:
                outcome = await trio.to_thread.run_sync(self._run_batch_sync, batch, limiter=self._limiter)
            except BaseException as exc:  # a bug in the batch machinery: answer everyone, then crash loudly
                for req in batch:
                    req.error = StoreError(f"the state store writer failed: {exc!r}")
                    req.done.set()
                raise
            self._commits += outcome.commits
            self._requests += len(batch)
            self._max_batch_seen = max(self._max_batch_seen, len(batch))
            if outcome.db_size:
                self._db_size = outcome.db_size
            for req in batch:
                if req.error is None and req.after_commit is not None:
                    req.after_commit(req.result)
                req.done.set()

    def _run_batch_sync(self, batch: list[_Request[Any]]) -> _BatchOutcome:
        """Run ``batch`` in as few transactions as possible (one, unless SQLite aborts one)."""
        conn = self._conn
        out = _BatchOutcome()
        if conn is None:  # pragma: no cover - the writer only runs while open
            for req in batch:
                req.error = StoreClosed("the state store is not running")
            return out
        todo = batch
        while todo:
            todo = self._one_transaction(conn, todo, out)
        try:
            out.db_size = self._size_sync(conn)
        except sqlite3.Error:
            pass  # statistics only
        return out

    @staticmethod
    def _one_transaction(
        conn: sqlite3.Connection, todo: list[_Request[Any]], out: _BatchOutcome
    ) -> list[_Request[Any]]:
        """Run ``todo`` in one transaction; return the requests to re-run if SQLite aborted it."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for req in todo:
                req.error = exc
            return []
        ran: list[_Request[Any]] = []
        try:
            for i, req in enumerate(todo):
                req.error = None
                conn.execute("SAVEPOINT request")
                try:
                    req.result = req.fn(conn)
                except Exception as exc:
                    req.error = exc
                    if not conn.in_transaction:
                        # SQLite rolled back the whole transaction (SQLITE_FULL,
                        # IOERR, ...): everything run so far is gone. Retry the
                        # others in a fresh transaction; this one keeps its error.
                        return ran + todo[i + 1 :]
                    conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
                ran.append(req)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The transaction machinery itself failed (commit, savepoint): nothing is durable.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection reports the same failure on the next use
            for req in todo:
                req.error = exc
            return []
        out.commits += 1
        return []

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._state != "open":
            raise StoreClosed("the state store is not running")
        return await trio.to_thread.run_sync(self._read_sync, fn, limiter=self._limiter)

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreClosed("the state store is not running")
        return fn(conn)

    async def _admin_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the admin's read-only connection: never waits for the writer, never holds it up."""
        if self._state != "open":
            raise StoreClosed("the state store is not running")
        return await trio.to_thread.run_sync(self._admin_read_sync, fn, limiter=self._admin_limiter)

    def _admin_read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._admin_conn
        if conn is None:
            raise StoreClosed("the state store is not running")
        conn.execute("BEGIN")  # one snapshot for the whole read, however many statements it takes
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ inbox

    async def accept_events(self, items: list[tuple[str, bytes]]) -> list[tuple[int, bool]]:
        """Record ``(dedup_key, encoded event)`` pairs; return ``(event_id, is_new)`` for each, once durable.

        A key seen before (pending, or settled less than ``dedup_window``
        seconds ago) gives back the existing id with ``is_new=False`` and
        stores nothing: a duplicate delivery is acknowledged and applied once.
        """

        def fn(conn: sqlite3.Connection) -> list[tuple[int, bool]]:
            now = self._clock()
            horizon = now - self.dedup_window
            out: list[tuple[int, bool]] = []
            for key, payload in items:
                row = conn.execute("SELECT id, settled_at FROM inbox WHERE dedup_key = ?", (key,)).fetchone()
                if row is not None:
                    if row[1] is None or row[1] >= horizon:
                        out.append((int(row[0]), False))
                        continue
                    conn.execute("DELETE FROM inbox WHERE id = ?", (row[0],))  # expired, not yet pruned
                new = conn.execute(
                    "INSERT INTO inbox (dedup_key, payload, received_at) VALUES (?, ?, ?) RETURNING id",
                    (key, payload, now),
                ).fetchone()
                out.append((int(new[0]), True))
            return out

        def count(result: list[tuple[int, bool]]) -> None:
            self._pending += sum(1 for _, is_new in result if is_new)

        return await self._write(fn, count)

    async def pending_events(self) -> list[tuple[int, bytes, float]]:
        """Every accepted, unsettled event as ``(id, payload, received_at)``, oldest first (replay at start)."""

        def fn(conn: sqlite3.Connection) -> list[tuple[int, bytes, float]]:
            rows = conn.execute(
                "SELECT id, payload, received_at FROM inbox WHERE settled_at IS NULL ORDER BY id"
            ).fetchall()
            return [(int(i), bytes(p), float(t)) for i, p, t in rows]

        return await self._read(fn)

    async def settle_events(self, ids: Iterable[int]) -> None:
        """Mark events processed: the payload goes, the dedup key stays for the window.

        Ids already settled (or unknown) are skipped, so a retried settle is harmless.
        """
        id_list = list(ids)

        def fn(conn: sqlite3.Connection) -> int:
            now = self._clock()
            n = 0
            for chunk in _chunks(id_list):
                n += conn.execute(
                    f"UPDATE inbox SET payload = NULL, settled_at = ? "
                    f"WHERE settled_at IS NULL AND id IN ({_placeholders(len(chunk))})",
                    (now, *chunk),
                ).rowcount
            return n

        def count(n: int) -> None:
            self._pending -= n

        await self._write(fn, count)

    async def prune(self, now: float) -> int:
        """Drop dedup keys of events settled more than ``dedup_window`` seconds before ``now`` (in bounded steps)."""
        horizon = now - self.dedup_window
        return await self._prune_steps(
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox WHERE settled_at IS NOT NULL AND settled_at < ? "
            "LIMIT ?)", horizon)

    async def _prune_steps(self, sql: str, bound: float) -> int:
        """Run ``sql`` (a DELETE of at most ``PRUNE_STEP`` rows) as separate write requests until it deletes fewer.

        Each step is one request: a webhook's commit queued meanwhile shares the next transaction instead of
        waiting for the whole prune.
        """
        total = 0
        while True:
            n = await self._write(lambda conn: conn.execute(sql, (bound, PRUNE_STEP)).rowcount)
            total += n
            if n < PRUNE_STEP:
                return total
            await trio.sleep(0)

    async def quarantine_events(self, items: Sequence[tuple[int, str]]) -> int:
        """Set aside pending inbox events that no longer decode: ``(event id, why)``; returns how many moved.

        The row leaves the inbox (it is no longer replayed, and its dedup key no longer holds a redelivery
        back) and is kept whole in ``inbox_quarantine`` with the error, for whoever looks into it.
        """
        todo = list(items)

        def fn(conn: sqlite3.Connection) -> int:
            now = self._clock()
            moved = 0
            for event_id, error in todo:
                moved += conn.execute(
                    "INSERT INTO inbox_quarantine (id, dedup_key, payload, received_at, error, quarantined_at) "
                    "SELECT id, dedup_key, payload, received_at, ?, ? FROM inbox "
                    "WHERE id = ? AND settled_at IS NULL ON CONFLICT (id) DO NOTHING",
                    (error[:500], now, event_id),
                ).rowcount
                conn.execute("DELETE FROM inbox WHERE id = ? AND settled_at IS NULL", (event_id,))
            return moved

        def count(moved: int) -> None:
            self._quarantined += moved
            self._pending -= moved

        return await self._write(fn, count)

    # ------------------------------------------------------------------ bindings

    async def load_bindings(self) -> list[Binding]:
        def fn(conn: sqlite3.Connection) -> list[Binding]:
            rows = conn.execute(f"SELECT {_BINDING_COLUMNS} FROM bindings ORDER BY binding_id").fetchall()
            return [_binding_from_row(r) for r in rows]

        return await self._read(fn)

    async def put_bindings(self, bindings: list[Binding]) -> None:
        """Insert or replace whole binding rows (an existing binding keeps its write intent)."""
        params = [_binding_params(b) for b in bindings]

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT_BINDING, params)

        await self._write(fn)

    async def delete_binding(self, binding_id: str) -> None:
        """Forget a binding and its write intent (nothing happens when there is none)."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM bindings WHERE binding_id = ?", (binding_id,))

        await self._write(fn)

    # ------------------------------------------------------------------ write intents

    async def save_intent(self, binding_id: str, intent: bytes) -> None:
        """Record what a merge is about to write, before writing it (crash recovery).

        Error handling: ``sqlite3.IntegrityError`` when the binding does not exist.
        """
        await self._write(lambda conn: _save_intent(conn, binding_id, intent, self._clock()))

    async def load_intents(self) -> dict[str, bytes]:
        def fn(conn: sqlite3.Connection) -> dict[str, bytes]:
            return {b: bytes(i) for b, i in conn.execute("SELECT binding_id, intent FROM intents ORDER BY binding_id")}

        return await self._read(fn)

    # ------------------------------------------------------------------ the merge commit

    async def commit_binding(
        self,
        binding: Binding,
        *,
        intent: bytes | None | Literal["clear"] = None,
        log: SyncLogRow | None = None,
        conflict: Conflict | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        """Record everything one merge step decided, atomically.

        ``intent``: bytes replace the binding's write intent, ``"clear"``
        deletes it, ``None`` leaves it alone. The new binding row, the intent
        change, the log row and the conflict (deduplicated like
        ``add_conflict``) land together or not at all. ``after_commit`` runs
        (in trio, never raising) once the commit is durable, even when the
        caller was cancelled while its request was being committed: the
        caller's in-memory state then follows the file, never lags behind it.
        """
        params = _binding_params(binding)

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_BINDING, params)
            if intent == "clear":
                conn.execute("DELETE FROM intents WHERE binding_id = ?", (binding.binding_id,))
            elif isinstance(intent, bytes):
                _save_intent(conn, binding.binding_id, intent, self._clock())
            if log is not None:
                _insert_log(conn, [log])
            if conflict is not None:
                _add_conflict(conn, conflict)

        await self._write(fn, None if after_commit is None else lambda _: after_commit())

    # ------------------------------------------------------------------ sync log

    async def append_log(self, rows: list[SyncLogRow]) -> None:
        """Append rows (their ``id`` is ignored; the store numbers them). Unknown levels are refused."""

        def fn(conn: sqlite3.Connection) -> None:
            _insert_log(conn, rows)

        await self._write(fn)

    async def query_log(
        self,
        *,
        sku: str | None = None,
        level: str | None = None,
        since: float | None = None,
        after_id: int = 0,
        limit: int = 200,
        newest: bool = False,
        binding_ids: Sequence[str] | None = None,
    ) -> list[SyncLogRow]:
        """Log rows in id order; ``level`` keeps that level and more severe ones.

        ``binding_ids`` keeps the rows of those bindings (with ``sku``: rows matching either).

        ``after_id`` pages forward (``--follow``). ``newest=True`` picks the
        last ``limit`` matching rows instead of the first (still returned in
        id order): what ``cloverwoo log`` shows by default.
        """
        where = ["id > ?"]
        args: list[Any] = [after_id]
        if binding_ids:
            ids = list(binding_ids)[:500]  # SQLite's bound-parameter cap; a name matches a handful
            either = f"binding_id IN ({_placeholders(len(ids))})"
            if sku is not None:
                either = f"(sku = ? OR {either})"
                args.append(sku)
            where.append(either)
            args.extend(ids)
        elif sku is not None:
            where.append("sku = ?")
            args.append(sku)
        if level is not None:
            if level not in LEVELS:
                raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
            # Spelled as the partial indexes are (sync_log_problems, sync_log_errors), so SQLite reads only the
            # rows of that level, newest first, instead of every info row around them. The CHECK constraint
            # on ``level`` makes these the same sets as "this level and more severe".
            if level == "warning":
                where.append("level != 'info'")
            elif level == "error":
                where.append("level = 'error'")
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        order = "DESC" if newest else "ASC"
        sql = f"SELECT id, {_LOG_COLUMNS} FROM sync_log WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
        args.append(max(0, limit))

        def fn(conn: sqlite3.Connection) -> list[SyncLogRow]:
            rows = [
                SyncLogRow(
                    id=r[0],
                    ts=r[1],
                    level=r[2],
                    event=r[3],
                    binding_id=r[4],
                    sku=r[5],
                    location=r[6],
                    trigger=r[7],
                    detail=r[8],
                    error=r[9],
                    latency_ms=r[10],
                )
                for r in conn.execute(sql, args)
            ]
            return rows[::-1] if newest else rows

        return await self._admin_read(fn)

    async def prune_log(self, older_than: float) -> int:
        """Delete log rows with ``ts`` before ``older_than`` (retention by age, in bounded steps); returns how many."""
        return await self._prune_steps(
            "DELETE FROM sync_log WHERE id IN (SELECT id FROM sync_log WHERE ts < ? LIMIT ?)", older_than)

    # ------------------------------------------------------------------ conflicts

    async def add_conflict(self, conflict: Conflict, *, fold: Callable[[str, str], str] | None = None) -> int:
        """Flag a conflict; an open one of the same binding and kind is returned instead of duplicated.

        ``fold(open_detail, new_detail)``, when given, becomes the open one's detail (in the same transaction).
        """
        return await self._write(lambda conn: _add_conflict(conn, conflict, fold))

    async def list_conflicts(self, include_resolved: bool = False) -> list[Conflict]:
        where = "" if include_resolved else "WHERE resolved_at IS NULL"

        def fn(conn: sqlite3.Connection) -> list[Conflict]:
            return [
                Conflict(id=r[0], binding_id=r[1], sku=r[2], kind=r[3], detail=r[4], created_at=r[5], resolved_at=r[6])
                for r in conn.execute(
                    "SELECT id, binding_id, sku, kind, detail, created_at, resolved_at "
                    f"FROM conflicts {where} ORDER BY id"
                )
            ]

        return await self._admin_read(fn)

    async def resolve_conflicts(self, ids: Iterable[int]) -> int:
        """Mark open conflicts resolved now; returns how many were open and are now resolved."""
        id_list = list(ids)

        def fn(conn: sqlite3.Connection) -> int:
            now = self._clock()
            return sum(
                conn.execute(
                    f"UPDATE conflicts SET resolved_at = ? "
                    f"WHERE resolved_at IS NULL AND id IN ({_placeholders(len(chunk))})",
                    (now, *chunk),
                ).rowcount
                for chunk in _chunks(id_list)
            )

        return await self._write(fn)

    # ------------------------------------------------------------------ key/value

    async def last_synced(self) -> dict[str, float]:
        """When each binding last had a merge that wrote or moved its bases (for the CSV export).

        Kept per binding as log rows are written (``binding_synced``): one row per binding, never a scan of
        the log, and still known after old log rows are pruned.
        """

        def q(conn: sqlite3.Connection) -> dict[str, float]:
            return {str(b): float(t) for b, t in conn.execute("SELECT binding_id, at FROM binding_synced")}

        return await self._admin_read(q)

    async def get_kv(self, key: str) -> str | None:
        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(fn)

    async def set_kv(self, key: str, value: str) -> None:
        """Poll cursors, the Clover verification code, switches: small strings that must survive restarts."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._write(fn)

    # ------------------------------------------------------------------ alerts

    async def load_arm_states(self) -> dict[str, ArmState]:
        """Every binding whose alerts are not both armed (a missing binding is armed)."""

        def fn(conn: sqlite3.Connection) -> dict[str, ArmState]:
            return {
                b: ArmState(bool(low), bool(out))
                for b, low, out in conn.execute("SELECT binding_id, low_armed, out_armed FROM alert_state")
            }

        return await self._read(fn)

    async def save_arm_state(self, binding_id: str, state: ArmState) -> None:
        await self._write(lambda conn: _save_arm(conn, binding_id, state, self._clock()))

    async def record_alert(self, alert: Alert, *, arm: ArmState | None = None) -> bool:
        """Record an alert to be emailed, with the arm state that fired it, atomically.

        Returns False, and records nothing (not even ``arm``), when an alert
        with the same key exists: an oversell is alerted once per conflict.
        """
        payload = _encode.encode(alert)

        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "INSERT INTO alerts (key, kind, binding_id, payload, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING RETURNING id",
                (alert.key, alert.kind, alert.binding_id, payload, self._clock()),
            ).fetchone()
            if row is None:
                return False
            if arm is not None:
                _save_arm(conn, alert.binding_id, arm, self._clock())
            return True

        return await self._write(fn)

    async def pending_alerts(self) -> list[Alert]:
        """Alerts recorded but not yet put in an email (digest interrupted by a restart), oldest first."""

        def fn(conn: sqlite3.Connection) -> list[Alert]:
            return [
                _alert_decoder.decode(bytes(p))
                for (p,) in conn.execute("SELECT payload FROM alerts WHERE email_id IS NULL ORDER BY id")
            ]

        return await self._read(fn)

    async def queue_email(self, email: Email, recipients: Sequence[str], *, delivered: bool = False) -> OutboxEmail:
        """Put an email in the outbox and tie its alerts to it, atomically, before anything is sent.

        ``delivered=True`` records an email that will not be mailed (no
        recipients configured: the alert was only logged) as already sent.
        """
        to = tuple(recipients)

        def fn(conn: sqlite3.Connection) -> OutboxEmail:
            now = self._clock()
            sent_at = now if delivered else None
            (email_id,) = conn.execute(
                "INSERT INTO outbox (kind, subject, body, recipients, created_at, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (email.kind, email.subject, email.body, _encode.encode(list(to)).decode(), now, sent_at),
            ).fetchone()
            for chunk in _chunks(list(email.keys)):
                conn.execute(
                    f"UPDATE alerts SET email_id = ? WHERE email_id IS NULL AND key IN ({_placeholders(len(chunk))})",
                    (email_id, *chunk),
                )
            return OutboxEmail(id=int(email_id), kind=email.kind, subject=email.subject, body=email.body,
                               recipients=to, created_at=now, sent_at=sent_at)

        return await self._write(fn)

    async def unsent_emails(self) -> list[OutboxEmail]:
        """The outbox: emails not accepted by the mail server yet, oldest first (re-sent after a restart)."""
        return await self._read(lambda conn: _outbox(conn, "WHERE sent_at IS NULL"))

    async def list_emails(self, *, limit: int = 100) -> list[OutboxEmail]:
        """The newest outbox emails, sent or not, newest first (status and tests)."""
        return await self._admin_read(lambda conn: _outbox(conn, "", order="DESC", limit=limit))

    async def mark_email_sent(self, email_id: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL",
                (self._clock(), email_id),
            )
        )

    async def mark_email_failed(self, email_id: int, error: str) -> None:
        """Count a failed attempt; the email stays in the outbox."""
        await self._write(
            lambda conn: conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ? AND sent_at IS NULL",
                (error[:500], email_id),
            )
        )

    async def recent_emails(self, since: float) -> list[tuple[str, float]]:
        """``(kind, created_at)`` of emails created since ``since``: the rate limit survives a restart."""

        def fn(conn: sqlite3.Connection) -> list[tuple[str, float]]:
            return [
                (str(k), float(t))
                for k, t in conn.execute(
                    "SELECT kind, created_at FROM outbox WHERE created_at >= ? ORDER BY id", (since,)
                )
            ]

        return await self._read(fn)

    async def alert_thresholds(self) -> dict[str, int]:
        """Run-time per-SKU thresholds (they win over the config's)."""

        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            return {str(s): int(t) for s, t in conn.execute("SELECT sku, threshold FROM alert_thresholds")}

        return await self._read(fn)

    async def set_alert_threshold(self, sku: str, threshold: int | None) -> None:
        """Set a run-time threshold for a SKU; ``None`` removes it (the config's applies again)."""

        def fn(conn: sqlite3.Connection) -> None:
            if threshold is None:
                conn.execute("DELETE FROM alert_thresholds WHERE sku = ?", (sku,))
            else:
                conn.execute(
                    "INSERT INTO alert_thresholds (sku, threshold, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (sku) DO UPDATE SET threshold = excluded.threshold, updated_at = excluded.updated_at",
                    (sku, threshold, self._clock()),
                )

        await self._write(fn)

    async def last_sync_error(self, binding_id: str) -> str | None:
        """The error of the newest ``error`` row of a binding's sync log (for a sync-failure alert)."""

        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT error FROM sync_log WHERE binding_id = ? AND level = 'error' ORDER BY id DESC LIMIT 1",
                (binding_id,),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(fn)


def _save_arm(conn: sqlite3.Connection, binding_id: str, state: ArmState, now: float) -> None:
    if state == ArmState():
        conn.execute("DELETE FROM alert_state WHERE binding_id = ?", (binding_id,))  # armed is the default
        return
    conn.execute(
        "INSERT INTO alert_state (binding_id, low_armed, out_armed, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (binding_id) DO UPDATE SET low_armed = excluded.low_armed, out_armed = excluded.out_armed, "
        "updated_at = excluded.updated_at",
        (binding_id, int(state.low_armed), int(state.out_armed), now),
    )


def _outbox(conn: sqlite3.Connection, where: str, *, order: str = "ASC", limit: int = -1) -> list[OutboxEmail]:
    return [
        OutboxEmail(id=r[0], kind=r[1], subject=r[2], body=r[3], recipients=tuple(_str_list.decode(r[4])),
                    created_at=r[5], attempts=r[6], last_error=r[7], sent_at=r[8])
        for r in conn.execute(
            "SELECT id, kind, subject, body, recipients, created_at, attempts, last_error, sent_at "
            f"FROM outbox {where} ORDER BY id {order} LIMIT ?",
            (limit,),
        )
    ]
