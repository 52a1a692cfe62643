"""The alert actor with a real store (SQLite file) and a real SMTP server (aiosmtpd on loopback).

Each test drives the actor through the hooks the shards call and reads what
the SMTP server received: subject, recipients, body. The digest waits are
shortened by the policy; nothing asserts how fast anything happened.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from structlog.testing import capture_logs

from cloverwoo_daemon.actors.alerts import AlertActor, AlertDeps
from cloverwoo_daemon.core.alerts import AlertPolicy
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.core.model import Binding, Conflict, SyncLogRow, WooRef
from cloverwoo_daemon.io.smtp import SmtpMailer
from cloverwoo_daemon.io.store import Store
from tests.io.test_smtp import SmtpSink, smtp_server

TO = ("owner@shop.example",)
POLICY = AlertPolicy(low_stock_threshold=5, thresholds={"SKU-0001": 10}, digest_quiet=0.2, digest_max=5.0,
                     sync_failure_attempts=3)
FAST_RETRY = Backoff(base=0.05, cap=0.2, max_attempts=1_000_000)


def binding(i: int, stock: int, locations: dict[str, int] | None = None) -> Binding:
    locs = locations or {"downtown": stock}
    return Binding(f"woo:{i}:0", f"SKU-{i:04d}", f"Product {i}", WooRef(i), {loc: f"I{i}{loc}" for loc in locs},
                   base_woo=stock, base_clover=dict(locs))  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@asynccontextmanager
async def actor_with(
    db: Path, *, port: int | None, policy: AlertPolicy = POLICY, recipients: tuple[str, ...] = TO,
    lookup: Callable[[str], Binding | None] = lambda bid: None,
) -> AsyncIterator[tuple[AlertActor, Store]]:
    async with trio.open_nursery() as nursery:
        store = Store(str(db))
        await nursery.start(store.run)
        mailer = SmtpMailer(f"smtp://127.0.0.1:{port}", sender="cloverwoo@shop.example", timeout=5) if port else None
        actor = AlertActor(AlertDeps(store=store, policy=policy, mailer=mailer, recipients=recipients,
                                     retry=FAST_RETRY, lookup=lookup))
        await nursery.start(actor.run)
        try:
            yield actor, store
        finally:
            nursery.cancel_scope.cancel()


async def quiet(actor: AlertActor) -> None:
    """Wait until the actor has nothing queued, digesting or unsent, then past one more digest window."""
    await wait_for(actor.idle, what="alert actor idle")
    await trio.sleep(POLICY.digest_quiet * 2)
    await wait_for(actor.idle, what="alert actor idle")


async def test_crossing_sends_once_then_rearms_after_rising(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port), actor_with(tmp_path / "s.db", port=port) as (actor, _):
        actor.notice_stock(binding(0, 20))
        actor.notice_stock(binding(0, 5))  # to the threshold: alert
        await wait_for(lambda: len(sink.messages) == 1, what="one email")
        got = sink.messages[0]
        assert got.rcpt_tos == list(TO)
        assert got.subject == "Low stock: Product 0 (SKU-0000), 5 left (threshold 5)"
        row = next(line.split() for line in got.body.splitlines() if line.startswith("SKU-0000"))
        assert row == ["SKU-0000", "Product", "0", "downtown", "5", "5"]
        actor.notice_stock(binding(0, 3))  # a second drop: no new email
        actor.notice_stock(binding(0, 6))  # not above threshold + margin (5 + 1): still disarmed
        actor.notice_stock(binding(0, 4))
        await quiet(actor)
        assert len(sink.messages) == 1
        actor.notice_stock(binding(0, 12))  # restocked: re-armed
        actor.notice_stock(binding(0, 2))
        await wait_for(lambda: len(sink.messages) == 2, what="a second email after re-arming")
        assert "2 left" in sink.messages[1].subject
        actor.notice_stock(binding(0, 0))  # out of stock is its own alert
        await wait_for(lambda: len(sink.messages) == 3, what="out of stock email")
        assert sink.messages[2].subject == "Out of stock: Product 0 (SKU-0000)"


async def test_two_hundred_crossings_make_one_digest(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port), actor_with(tmp_path / "s.db", port=port) as (actor, _):
        for i in range(200):
            actor.notice_stock(binding(i, 1 + i % 4))  # capacity 1000: all fit; first observation already low
        await wait_for(lambda: len(sink.messages) >= 1, what="the digest")
        await quiet(actor)
        (got,) = sink.messages
        assert got.subject == "Low stock: 200 products at or below their threshold"
        rows = [line.split() for line in got.body.splitlines() if line.startswith("SKU-")]
        assert sorted(r[0] for r in rows) == [f"SKU-{i:04d}" for i in range(200)]
        threshold_of = {r[0]: int(r[-1]) for r in rows}
        assert threshold_of["SKU-0001"] == 10 and threshold_of["SKU-0002"] == 5  # per-SKU config override


async def test_a_full_queue_coalesces_per_binding_and_loses_no_crossing(tmp_path: Path) -> None:
    policy = AlertPolicy(low_stock_threshold=5, digest_quiet=0.2)
    async with smtp_server() as (sink, port), trio.open_nursery() as nursery:
        store = Store(str(tmp_path / "s.db"))
        await nursery.start(store.run)
        actor = AlertActor(AlertDeps(store=store, policy=policy, recipients=TO, retry=FAST_RETRY, capacity=5,
                                     mailer=SmtpMailer(f"smtp://127.0.0.1:{port}", sender="c@shop.example")))
        # the actor is not running yet: the channel fills after 5, the rest coalesce per binding
        for i in range(50):
            actor.notice_stock(binding(i, 9))
            actor.notice_stock(binding(i, 2))
        # in the channel: 0@9, 0@2, 1@9, 1@2, 2@9; coalesced: the newest figures of bindings 2..49
        assert actor.statistics()["queued"] == 5 + 48
        await nursery.start(actor.run)
        await wait_for(lambda: len(sink.messages) == 1, what="the digest")
        await quiet(actor)
        rows = [line.split()[0] for line in sink.messages[0].body.splitlines() if line.startswith("SKU-")]
        assert sorted(rows) == [f"SKU-{i:04d}" for i in range(50)]
        nursery.cancel_scope.cancel()


async def test_smtp_refusing_then_accepting_delivers_from_the_outbox(tmp_path: Path) -> None:
    sink = SmtpSink(refuse="421 4.3.2 service not available")
    async with smtp_server(sink) as (_, port), actor_with(tmp_path / "s.db", port=port) as (actor, store):
        actor.notice_stock(binding(0, 1))
        await wait_for(lambda: sink.attempts >= 2, what="two refused attempts")
        (queued,) = await store.unsent_emails()
        assert queued.attempts >= 1 and "421" in queued.last_error
        sink.refuse = None
        await wait_for(lambda: len(sink.messages) == 1, what="the email once the server accepts")
        await quiet(actor)
        assert len(sink.messages) == 1 and await store.unsent_emails() == []
        assert actor.statistics()["send_failures"] >= 2


async def test_unsent_outbox_is_sent_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    sink = SmtpSink(refuse="451 4.3.0 try later")
    async with smtp_server(sink) as (_, port):
        async with actor_with(db, port=port) as (actor, store):
            actor.notice_stock(binding(0, 1))
            await wait_for(lambda: sink.attempts >= 1, what="a refused attempt")
        sink.refuse = None
        assert sink.messages == []
        async with actor_with(db, port=port) as (actor, store):
            await wait_for(lambda: len(sink.messages) == 1, what="the email after the restart")
            await quiet(actor)
            assert await store.unsent_emails() == []
        assert sink.messages[0].subject == "Low stock: Product 0 (SKU-0000), 1 left (threshold 5)"
    # the arm state survived too: the same figures after another restart send nothing
    async with smtp_server() as (sink2, port2), actor_with(db, port=port2) as (actor, _):
        actor.notice_stock(binding(0, 1))
        await quiet(actor)
        assert sink2.messages == []


async def test_alert_still_in_its_digest_window_is_sent_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    slow = AlertPolicy(low_stock_threshold=5, digest_quiet=60.0, digest_max=60.0)
    async with smtp_server() as (sink, port):
        async with actor_with(db, port=port, policy=slow) as (actor, _):
            actor.notice_stock(binding(1, 2))
            await wait_for(lambda: actor.statistics()["digesting"] == 1, what="the alert digesting")
        assert sink.messages == []
        async with actor_with(db, port=port) as (actor, _):
            await wait_for(lambda: len(sink.messages) == 1, what="the email after the restart")
            await quiet(actor)
        assert sink.messages[0].subject == "Low stock: Product 1 (SKU-0001), 2 left (threshold 5)"


async def test_oversell_alerted_once_per_conflict(tmp_path: Path) -> None:
    detail = json.dumps({"side": "woo", "location": "", "value": -1, "trigger": "webhook:woo"})
    async with smtp_server() as (sink, port), actor_with(tmp_path / "s.db", port=port) as (actor, store):
        cid = await store.add_conflict(Conflict("woo:3:0", "SKU-0003", "oversell", detail, created_at=1.0))
        conflict = Conflict("woo:3:0", "SKU-0003", "oversell", detail, created_at=1.0, id=cid)
        actor.notice_stock(binding(3, -1))
        actor.notice_conflict(conflict)
        actor.notice_conflict(conflict)  # every merge that sees it flags it again
        await wait_for(lambda: any(m.subject.startswith("Oversold") for m in sink.messages), what="oversell email")
        await quiet(actor)
        oversold = [m for m in sink.messages if m.subject.startswith("Oversold")]
        assert len(oversold) == 1
        assert oversold[0].subject == "Oversold: Product 3 (SKU-0003) sold on both sides, stock now -1"
        assert f"cloverwoo conflicts --resolve {cid}" in oversold[0].body
        assert "WooCommerce went to -1" in oversold[0].body
    # a restart offers open conflicts again: already alerted, so nothing more
    async with smtp_server() as (sink2, port2), actor_with(tmp_path / "s.db", port=port2) as (actor, _):
        await quiet(actor)
        assert sink2.messages == []


async def test_open_conflict_never_alerted_is_alerted_at_start(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with trio.open_nursery() as nursery:
        store = Store(str(db))
        await nursery.start(store.run)
        await store.add_conflict(Conflict("woo:5:0", "SKU-0005", "oversell", "{}", created_at=1.0))
        nursery.cancel_scope.cancel()
    async with smtp_server() as (sink, port), actor_with(db, port=port) as (actor, _):
        await wait_for(lambda: len(sink.messages) == 1, what="the oversell found at start")
        assert "SKU-0005" in sink.messages[0].subject


async def test_sync_failure_alerted_once_per_streak(tmp_path: Path) -> None:
    b = binding(7, 20)
    async with smtp_server() as (sink, port), actor_with(tmp_path / "s.db", port=port,
                                                          lookup=lambda bid: b if bid == b.binding_id else None) \
            as (actor, store):
        await store.append_log([SyncLogRow(ts=1.0, level="error", event="merge_failed", binding_id=b.binding_id,
                                           sku=b.sku, error="woocommerce write refused: 500")])
        for attempt in range(1, 7):
            actor.notice_failure(b.binding_id, attempt)
        await wait_for(lambda: len(sink.messages) == 1, what="sync failure email")
        await quiet(actor)
        (got,) = sink.messages
        assert got.subject == "Sync failing: Product 7 (SKU-0007)"
        assert "3 attempts failed; last error: woocommerce write refused: 500" in got.body
        actor.notice_failure(b.binding_id, 1)  # a new streak: the last one ended in a success ...
        for attempt in range(2, 5):
            actor.notice_failure(b.binding_id, attempt)
        await quiet(actor)
        assert len(sink.messages) == 1  # ... but within the dedup window it is not sent again


async def test_runtime_threshold_is_persisted_and_applied_at_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with smtp_server() as (sink, port):
        async with actor_with(db, port=port) as (actor, store):
            actor.notice_stock(binding(4, 8))  # above 5: nothing
            await quiet(actor)
            assert sink.messages == []
            await actor.set_threshold("SKU-0004", 8)
            await wait_for(lambda: len(sink.messages) == 1, what="alert under the new threshold")
            assert "threshold 8" in sink.messages[0].subject
            assert actor.thresholds()["SKU-0004"] == 8
        async with actor_with(db, port=port) as (actor, store):
            assert actor.thresholds()["SKU-0004"] == 8 and await store.alert_thresholds() == {"SKU-0004": 8}
            await actor.set_threshold("SKU-0004", None)
            assert "SKU-0004" not in actor.thresholds()


async def test_without_recipients_alerts_are_logged_not_mailed(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port):
        with capture_logs() as logs:
            async with actor_with(tmp_path / "s.db", port=port, recipients=()) as (actor, store):
                actor.notice_stock(binding(0, 2))
                await wait_for(lambda: any(e["event"] == "alert_not_mailed" for e in logs), what="logged alert")
                assert await store.unsent_emails() == []
                (email,) = await store.list_emails()
                assert email.sent_at is not None and email.recipients == ()
        assert sink.messages == [] and sink.attempts == 0
        line: dict[str, Any] = next(e for e in logs if e["event"] == "alert_not_mailed")
        assert "SKU-0000" in line["body"] and line["subject"].startswith("Low stock")
