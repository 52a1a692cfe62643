"""Alerts, end to end: simulated Clover and WooCommerce, the daemon, and a real SMTP server on loopback.

Sales are made on the simulators; the assertions read what the SMTP server
received (subject, recipients, body), never the daemon's internals, except
the outbox when the mail server is down.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.app import Running, run_daemon
from cloverwoo_daemon.sim.harness import World, start_world
from tests.e2e.conftest import Env, settle, wait_for
from tests.io.test_smtp import Received, SmtpSink, closed_port, smtp_server

TO = ["owner@shop.example", "ops@shop.example"]


def alerts_config(port: int, *, threshold: int = 5, per_sku: dict[str, int] | None = None) -> str:
    lines = ["", "[alerts]", f"email_to = {TO!r}".replace("'", '"'), 'email_from = "cloverwoo@shop.example"',
             f'smtp_url = "smtp://127.0.0.1:{port}"', f"low_stock_threshold = {threshold}"]
    if per_sku:
        lines.append("[alerts.thresholds]")
        lines += [f'"{sku}" = {n}' for sku, n in per_sku.items()]
    return "\n".join(lines) + "\n"


def point_smtp_at(world: World, port: int) -> None:
    text = world.config_path.read_text()
    world.config_path.write_text(re.sub(r'smtp_url = "smtp://127\.0\.0\.1:\d+"', f'smtp_url = "smtp://127.0.0.1:{port}"',
                                        text))


@asynccontextmanager
async def daemon(world: World, nursery: trio.Nursery) -> AsyncIterator[Env]:
    cfg = world.cfg
    running: Running = await nursery.start(
        lambda task_status: run_daemon(cfg, world.secrets(), handle_signals=False, drain_seconds=2.0,
                                       task_status=task_status)
    )
    await world.connect(running.webhook_url)
    env = Env(world, running, nursery)
    await running.admin.jobs.refreshed.wait()
    await settle(env)
    try:
        yield env
    finally:
        running.stop()
        await running.stopped.wait()


@asynccontextmanager
async def world_with_alerts(tmp_path: Path, port: int, *, threshold: int = 5, per_sku: dict[str, int] | None = None,
                            **world_kw: Any) -> AsyncIterator[tuple[World, trio.Nursery]]:
    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", **world_kw)
        with world.config_path.open("a") as f:
            f.write(alerts_config(port, threshold=threshold, per_sku=per_sku))
        try:
            yield world, nursery
        finally:
            nursery.cancel_scope.cancel()


async def alerts_quiet(env: Env) -> None:
    """Sync idle, then the alert actor idle: every alert the merges fired has been sent (or none fired)."""
    await settle(env)
    actor = env.daemon.admin.alerts  # type: ignore[attr-defined]
    await wait_for(actor.idle, timeout=20, what="alert actor idle")


def rows(msg: Received) -> list[list[str]]:
    return [line.split() for line in msg.body.splitlines() if line.startswith("SKU-")]


async def test_sale_to_the_threshold_sends_one_email_and_a_further_sale_none(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port), \
            world_with_alerts(tmp_path, port, per_sku={"SKU-0000": 17}, products=3, stock=20) as (w, nursery), \
            daemon(w, nursery) as env:
        p = w.products[0]
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 3})
        await wait_for(lambda: w.woo_stock(p) == 17, what="woo stock 17")
        await wait_for(lambda: len(sink.messages) == 1, timeout=15, what="the low-stock email")
        got = sink.messages[0]
        assert got.rcpt_tos == TO and got.mail_from == "cloverwoo@shop.example"
        assert got.subject == "Low stock: Product 0 (SKU-0000), 17 left (threshold 17)"
        assert rows(got) == [["SKU-0000", "Product", "0", "downtown", "17", "17"]]
        # a further sale: still low, already told
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.clover_stock(p) == 16, what="clover stock 16")
        await alerts_quiet(env)
        assert len(sink.messages) == 1


async def test_oversell_sends_an_oversell_alert(tmp_path: Path) -> None:
    async with smtp_server() as (sink, port), \
            world_with_alerts(tmp_path, port, threshold=0, products=1, stock=1) as (w, nursery), \
            daemon(w, nursery) as env:
        p = w.products[0]
        w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 1})
        w.woo.online_order({p.woo: 1})
        await wait_for(lambda: w.woo_stock(p) == -1 and w.clover_stock(p) == -1, what="-1 on both sides")
        await wait_for(lambda: any(m.subject.startswith("Oversold") for m in sink.messages), timeout=15,
                       what="the oversell email")
        await alerts_quiet(env)
        oversold = [m for m in sink.messages if m.subject.startswith("Oversold")]
        assert len(oversold) == 1
        assert oversold[0].subject == "Oversold: Product 0 (SKU-0000) sold on both sides, stock now -1"
        (conflict,) = await env.daemon.admin.store.list_conflicts()
        assert f"cloverwoo conflicts --resolve {conflict.id}" in oversold[0].body
        assert rows(oversold[0])[0][:4] == ["SKU-0000", "Product", "0", "downtown"]
        # out of stock is its own alert, sent once as well
        assert [m.subject for m in sink.messages if m.subject.startswith("Out of stock")] == [
            "Out of stock: Product 0 (SKU-0000)"]


async def test_mail_server_down_then_back_delivers_from_the_outbox_across_a_restart(tmp_path: Path) -> None:
    down = closed_port()  # nothing listens: connection refused
    async with world_with_alerts(tmp_path, down, products=2, stock=6) as (w, nursery):
        p = w.products[1]
        async with daemon(w, nursery) as env:
            w.clover.pos_sale(w.locations["downtown"], {p.clover["downtown"]: 2})
            await wait_for(lambda: w.woo_stock(p) == 4, what="woo stock 4")
            store = env.daemon.admin.store
            unsent: list[Any] = []

            async def refused_once() -> bool:
                unsent[:] = await store.unsent_emails()  # type: ignore[attr-defined]
                return bool(unsent) and unsent[0].attempts >= 1

            with trio.fail_after(20):
                while not await refused_once():
                    await trio.sleep(0.1)
            assert "refused" in unsent[0].last_error.lower() or "127.0.0.1" in unsent[0].last_error
        # the daemon is stopped; the mail server comes up (refusing at first), the daemon starts again
        sink = SmtpSink(refuse="421 4.3.2 not yet")
        async with smtp_server(sink) as (_, port):
            point_smtp_at(w, port)
            async with daemon(w, nursery) as env2:
                await wait_for(lambda: sink.attempts >= 1, timeout=15, what="the outbox retried after the restart")
                sink.refuse = None
                await wait_for(lambda: len(sink.messages) == 1, timeout=20, what="the email once the server is back")
                await alerts_quiet(env2)
            (got,) = sink.messages
            assert got.subject == "Low stock: Product 1 (SKU-0001), 4 left (threshold 5)"
            assert got.rcpt_tos == TO
            assert rows(got) == [["SKU-0001", "Product", "1", "downtown", "4", "5"]]
