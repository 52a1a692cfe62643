"""The composition root: the only module that imports everything and wires it together.

Start-up, in order (each step reports readiness before the next):
  store open (migrated) -> bindings and pending intents loaded -> clients ->
  actors under the supervisor -> inbox replay -> webhook server listening ->
  control socket -> systemd READY=1.

Shutdown, in named phases (docs/ARCHITECTURE.md):
  1. stop intake: the webhook server stops accepting, the intake refuses
     with 503 (senders retry), systemd is told STOPPING=1;
  2. drain: wait until every queue is empty and no merge is in flight,
     at most ``drain_seconds``;
  3. deadline: cancel whatever is still running; an interrupted merge left
     its intent or its inbox event in the store, to be finished at next start;
  4. release: close clients and the store.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import structlog
import trio

from cloverwoo_daemon.actors.admin import Admin, WebhookHealth
from cloverwoo_daemon.actors.alerts import AlertActor, AlertDeps
from cloverwoo_daemon.actors.bindings import BindingTable, shard_of
from cloverwoo_daemon.actors.companion import CompanionWatch
from cloverwoo_daemon.actors.exclusions import Exclusions
from cloverwoo_daemon.actors.health import HealthActor, HealthDeps
from cloverwoo_daemon.actors.intake import Intake, decode_event
from cloverwoo_daemon.actors.jobs import JobRunner
from cloverwoo_daemon.actors.location import LocationActor, Reachability
from cloverwoo_daemon.actors.modes import mode_config, resolve_mode
from cloverwoo_daemon.actors.router import LookupOrder, Resolved, RouteEvent, Router, RouterDeps, RouterInput
from cloverwoo_daemon.actors.shard import ShardActor, ShardDeps
from cloverwoo_daemon.actors.stock_policy import StockPolicyActor, StockPolicyDeps
from cloverwoo_daemon.actors.supervisor import Supervisor
from cloverwoo_daemon.actors.witness import LossWitness, WitnessDeps
from cloverwoo_daemon.actors.woo_batcher import BatchingWoo
from cloverwoo_daemon.actors.woo_poller import WooPoller
from cloverwoo_daemon.config import Config, Secrets, parse_duration
from cloverwoo_daemon.core.alerts import AlertPolicy
from cloverwoo_daemon.core.merge import MergeConfig
from cloverwoo_daemon.core.model import Binding, Conflict
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.io import control, systemd, webhooks
from cloverwoo_daemon.io.clover import AppGate, CloverClient, TokenProvider
from cloverwoo_daemon.io.clover_oauth import oauth_providers
from cloverwoo_daemon.io.metrics import Metrics
from cloverwoo_daemon.io.smtp import SmtpMailer
from cloverwoo_daemon.io.store import Store
from cloverwoo_daemon.io.woocommerce import WooClient
from cloverwoo_daemon.messages import EventsSettled, InboxEvent, ShardCommand
from cloverwoo_daemon.ports import CloverPort, WooPort

log = structlog.get_logger("cloverwoo.app")


@dataclass
class Running:
    """What a started daemon reports to whoever started it (tests, the demo)."""

    webhook_url: str
    control_socket: str
    admin: Admin
    stop: Callable[[], None]
    stopped: trio.Event = field(default_factory=trio.Event)


def merge_config(cfg: Config) -> MergeConfig:
    deduct = cfg.sync.deduct if isinstance(cfg.sync.deduct, str) else tuple(cfg.sync.deduct)
    return MergeConfig(
        mode=cfg.sync.mode,
        locations=tuple(loc.name for loc in cfg.active_locations),
        primary=cfg.primary_location.name,
        deduct=deduct,
        source_of_truth=cfg.sync.source_of_truth,
    )


def build_clients(
    cfg: Config, secrets: Secrets, tokens: Mapping[str, TokenProvider] | None = None, metrics: Metrics | None = None
) -> tuple[WooPort, dict[str, CloverPort]]:
    """The API clients; a location with ``oauth = true`` gets its expiring token from ``tokens``."""
    gate = AppGate(rate=cfg.clover.app_rate, in_flight=cfg.clover.app_in_flight)
    timeout = parse_duration(cfg.clover.timeout, key="clover.timeout") or 30.0
    clovers: dict[str, CloverPort] = {}
    # a client for every configured location (the mode can change at run time); the merge config's
    # ``locations`` decides which are called (oauth_providers makes a provider for every OAuth location).
    for loc in cfg.clover.locations:
        if loc.name not in (tokens or {}) and loc.name not in secrets.clover_tokens:
            continue
        clovers[loc.name] = CloverClient(
            base_url=cfg.clover.base_url,
            merchant_id=loc.merchant_id,
            token=(tokens or {}).get(loc.name) or secrets.clover_tokens[loc.name],
            location=loc.name,
            app_gate=gate,
            rate=cfg.clover.token_rate,
            in_flight=cfg.clover.token_in_flight,
            timeout=timeout,
            hooks=metrics.client_hooks("clover") if metrics is not None else None,
        )
    woo = WooClient(
        base_url=cfg.woocommerce.base_url,
        consumer_key=secrets.woo_consumer_key,
        consumer_secret=secrets.woo_consumer_secret,
        auth=cfg.woocommerce.auth,
        max_in_flight=cfg.woocommerce.max_in_flight,
        timeout=parse_duration(cfg.woocommerce.timeout, key="woocommerce.timeout") or 30.0,
        hooks=metrics.client_hooks("woo") if metrics is not None else None,
    )
    return woo, clovers


async def run_daemon(
    cfg: Config,
    secrets: Secrets,
    *,
    handle_signals: bool = True,
    drain_seconds: float = 10.0,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``Running.stop()``), then shut down in phases."""
    stop_requested = trio.Event()
    intake_closed = trio.Event()
    metrics = Metrics()
    supervisor = Supervisor()

    async with trio.open_nursery() as root:
        # -- store
        store = Store(cfg.state.path)
        await root.start(store.run)
        table = BindingTable(await store.load_bindings())
        intents = await store.load_intents()
        log.info("store_open", path=cfg.state.path, bindings=len(table), intents=len(intents))

        # -- clients and channels (OAuth locations: tokens refreshed ahead of expiry, committed first)
        providers, oauth_http = oauth_providers(cfg, store)
        woo, clovers = build_clients(cfg, secrets, providers, metrics)
        mcfg = merge_config(cfg)
        # -- the mode chosen with `cloverwoo mode` outlives a restart unless the config's changed
        mode, mode_recount = await resolve_mode(store, cfg.sync.mode)
        all_locations = tuple(loc.name for loc in cfg.clover.locations)
        mcfg = mode_config(mcfg, mode, all_locations)
        reach = Reachability()
        router_send, router_recv = trio.open_memory_channel[RouterInput](cfg.server.queue_size)
        settled_send, settled_recv = trio.open_memory_channel[EventsSettled](10_000)
        shard_chans = [trio.open_memory_channel[ShardCommand](10_000) for _ in range(cfg.sync.shards)]
        lookup_chans = {name: trio.open_memory_channel[LookupOrder](1_000) for name in clovers}
        # lookups are answered on a channel of their own: router -> lookups -> router inbox was a cycle
        answers_send, answers_recv = trio.open_memory_channel[Resolved](1_000)
        health = WebhookHealth(verification=VerificationGate(configured=bool(secrets.clover_auth_code)))
        if not secrets.clover_auth_code:
            log.warning("clover_auth_code_missing", file=cfg.clover.auth_code_file,
                        detail="Clover deliveries are refused until it is set; the URL verification is answered")

        router = Router(RouterDeps(
            store=store,
            table=table,
            shards=[s for s, _ in shard_chans],
            location_of_merchant={loc.merchant_id: loc.name for loc in cfg.clover.locations},  # all
            lookups={name: s for name, (s, _) in lookup_chans.items()},
            on_event=health.saw,
        ))
        batching_woo = BatchingWoo(woo, max_parallel=max(1, cfg.woocommerce.max_in_flight))
        woo_timeout = parse_duration(cfg.woocommerce.timeout, key="woocommerce.timeout") or 30.0
        companion = CompanionWatch(woo)  # writes go through the WordPress companion while it answers
        alerts = build_alerts(cfg, secrets, store, table, on_sent=metrics.alert_sent)
        # -- out-of-stock behaviour, fed after the alert actor by the same on_stock hook
        woo_admin = cast(WooClient, woo)  # build_clients makes a WooClient: presentation and webhook calls too
        stock_policy = StockPolicyActor(StockPolicyDeps(
            woo=woo_admin, store=store, action=cfg.alerts.out_of_stock,
            overrides=dict(cfg.alerts.out_of_stock_overrides), message=cfg.alerts.contact_message,
            bindings=table.all,
        ))

        def stock_seen(b: Binding) -> None:
            alerts.notice_stock(b)
            stock_policy.notice_stock(b)

        def conflict_seen(c: Conflict) -> None:
            metrics.conflicts.inc()
            alerts.notice_conflict(c)

        shard_deps = ShardDeps(
            store=store, woo=batching_woo, clovers=clovers, table=table, merge_config=mcfg, settled=settled_send,
            intents=intents, on_merge=metrics.observe_merge, on_conflict=conflict_seen,
            on_stock=stock_seen, on_failure=alerts.notice_failure,
            reach=reach, companion=companion.current, companion_gone=companion.gone,
            woo_write_grace=3 * woo_timeout, woo_crash_grace=woo_timeout,
        )
        shards = [ShardActor(i, shard_deps) for i in range(cfg.sync.shards)]
        # -- the witness: orders feeds against the windows our own writes leave (erased sales found)
        witness = LossWitness(WitnessDeps(store=store, woo=batching_woo, clovers=clovers, table=table,
                                          shards=[s for s, _ in shard_chans], on_conflict=conflict_seen))
        shard_deps.on_write = witness.record
        clover_poll = parse_duration(cfg.clover.poll_every, key="clover.poll_every")
        locations = {
            name: LocationActor(name, client, store, table, router_send, clover_poll,
                                active=lambda n=name: n in shard_deps.merge_config.locations, reach=reach,
                                answers=answers_send)
            for name, client in clovers.items()
        }
        for name, client in clovers.items():  # reachability from every request attempt
            if isinstance(client, CloverClient):
                client.on_attempt = locations[name].observe
        woo_poll_every = parse_duration(cfg.woocommerce.poll_every, key="woocommerce.poll_every")
        woo_poller = WooPoller(woo, store, router_send, woo_poll_every, table)
        reconcile_every = parse_duration(cfg.sync.reconcile_every, key="sync.reconcile_every")

        def has_pending(bid: str) -> bool:
            return shards[shard_of(bid, len(shards))].has_pending(bid)

        jobs = JobRunner(store=store, woo=batching_woo, clovers=clovers, table=table,
                         shards=[s for s, _ in shard_chans], merge_config=mcfg, is_busy=has_pending,
                         reconcile_every=reconcile_every, on_drift=alerts.notice_drift)
        shard_deps.on_job_item = jobs.item_done
        # -- `cloverwoo mode` swaps the config the shards and pollers read
        jobs.all_locations = all_locations
        jobs.mode_recount_at_start = mode_recount
        shard_deps.mode_job = jobs.is_mode_job
        shard_deps.mode_switching = jobs.mode_switching
        shard_deps.clears_location_meta = jobs.clears_location_meta

        def set_mode(new: MergeConfig) -> None:
            shard_deps.merge_config = new
            log.info("mode_in_effect", mode=new.mode, locations=list(new.locations))

        jobs.on_mode = set_mode
        # events stored by the webhook server reach the router through the intake (its overflow when full)
        intake = Intake(store, router_send, capacity=cfg.server.queue_size)
        admin = Admin(
            store=store, table=table, supervisor=supervisor, router=router, router_inbox=router_send,
            shards=shards, shard_inboxes=[s for s, _ in shard_chans], locations=locations,
            woo_poller=woo_poller, webhooks=health, reconcile_every=reconcile_every,
            store_stats=store.statistics, jobs=jobs,
        )
        admin.alerts = alerts  # type: ignore[attr-defined]
        admin.intake = intake
        # -- webhook and reachability health
        health_monitor = HealthActor(HealthDeps(
            woo=woo_admin, alert=alerts.notice_health,
            check_every=parse_duration(cfg.alerts.webhook_check_every, key="alerts.webhook_check_every") or 300.0,
            clover_silence=parse_duration(cfg.alerts.clover_silence, key="alerts.clover_silence"),
            last_clover_event=lambda: health.last_event.get("clover"),
            last_woo_event=lambda: health.last_event.get("woocommerce"),
            clover_found=lambda: sum(a.status.found for a in locations.values()),
            reachability=lambda: {
                **{f"Clover location {n}": (a.status.reachable, a.status.last_error) for n, a in locations.items()},
                "WooCommerce": (woo_poller.status.reachable, woo_poller.status.last_error),
            },
        ))
        admin.stock_policy = stock_policy
        admin.health_monitor = health_monitor
        # -- exclusions (the committed SKU set, loaded before any shard applies a catalogue update)
        exclusions = Exclusions(store=store, table=table, shards=[s for s, _ in shard_chans])
        await exclusions.load()
        shard_deps.excluded_sku = exclusions.excluded_sku
        jobs.excluded_sku = exclusions.excluded_sku
        admin.exclusions = exclusions
        admin.companion = companion
        admin.witness = witness
        refresh_metrics = watch(metrics, store=store, table=table, shards=shards,
                                shard_inboxes=[s for s, _ in shard_chans])

        # -- actors, supervised
        async with trio.open_nursery() as actors:
            await actors.start(supervisor.supervise, "intake", intake.run)
            await actors.start(supervisor.supervise, "woo-writer", batching_woo.run)
            await actors.start(supervisor.supervise, "companion", companion.run)  # asks once before going on
            await actors.start(supervisor.supervise, "witness", witness.run)
            for name, provider in providers.items():
                await actors.start(supervisor.supervise, f"oauth-{name}", provider.keep_fresh)
            await actors.start(supervisor.supervise, "router",
                               lambda task_status: router.run(router_recv, settled_recv, answers_recv,
                                                              task_status=task_status))
            for i, shard in enumerate(shards):
                recv = shard_chans[i][1]
                await actors.start(supervisor.supervise, f"shard-{i}",
                                   lambda task_status, s=shard, r=recv: s.run(r, task_status=task_status))
            for name, actor in locations.items():
                recv_l = lookup_chans[name][1]
                await actors.start(supervisor.supervise, f"location-{name}",
                                   lambda task_status, a=actor, r=recv_l: a.run(r, task_status=task_status))
            if woo_poll_every:  # "off": no poller runs, so none is expected to (health, status)
                await actors.start(supervisor.supervise, "woo-poller", woo_poller.run)
            await actors.start(supervisor.supervise, "jobs", jobs.run)
            await actors.start(supervisor.supervise, "alerts", alerts.run)
            await actors.start(supervisor.supervise, "stock-policy", stock_policy.run)
            await actors.start(supervisor.supervise, "health", health_monitor.run)
            await actors.start(supervisor.supervise, "maintenance",
                               lambda task_status: _maintenance_loop(store, task_status))
            interval = systemd.watchdog_interval()
            await actors.start(lambda task_status: supervisor.heartbeat(_watchdog_beat, interval=interval or 1.0,
                                                                        task_status=task_status))

            await exclusions.reconcile()  # finish an exclude/include a crash interrupted

            # -- replay what was accepted but not settled before the last stop; a row that no longer decodes
            # (another version wrote it, or it is damaged) is set aside, never a reason to fail every start
            pending = await store.pending_events()
            now = trio.current_time()
            unreadable: list[tuple[int, str]] = []
            for event_id, raw, received_at in pending:
                try:
                    event = decode_event(raw)
                except msgspec.DecodeError as exc:  # ValidationError included
                    unreadable.append((event_id, f"{type(exc).__name__}: {exc}"[:300]))
                    continue
                await router_send.send(RouteEvent(InboxEvent(event_id, event, received_at), now))
            if unreadable:
                await store.quarantine_events(unreadable)
                for event_id, error in unreadable:
                    log.error("inbox_event_quarantined", event_id=event_id, error=error,
                              hint="kept in the state file's inbox_quarantine table; `cloverwoo reconcile` "
                                   "catches up whatever it named")
            if pending:
                log.info("inbox_replayed", events=len(pending) - len(unreadable), set_aside=len(unreadable))

            # -- the outside: webhook server, control socket
            def healthy() -> tuple[bool, dict[str, Any]]:
                down = sorted(name for name, a in supervisor.actors.items() if not a.running)
                detail: dict[str, Any] = {"actors_running": not down, "bindings": len(table)}
                if down:
                    detail["actors_down"] = down
                return not down, detail

            app = webhooks.create_app(webhooks.WebhookDeps(
                clover_auth_code=secrets.clover_auth_code,
                woo_webhook_secret=secrets.woo_webhook_secret,
                max_body_bytes=cfg.server.max_body_bytes,
                intake=intake,
                verification=health.verification,
                health=healthy,
                registry=metrics.registry,
                queue_depth=intake.depth,
                on_received=metrics.received,
                before_metrics=refresh_metrics,
            ))
            listen_url = await root.start(
                lambda task_status: webhooks.serve_webhooks(app, cfg.server.listen,
                                                            shutdown_trigger=intake_closed.wait,
                                                            task_status=task_status)
            )
            admin.listen_url = listen_url
            control_scope = trio.CancelScope()

            async def serve_ctl(task_status: trio.TaskStatus[str]) -> None:
                with control_scope:
                    await control.serve_control(cfg.control.socket, admin.handle, task_status=task_status)

            await root.start(serve_ctl)
            if handle_signals:
                root.start_soon(_signals, stop_requested)
            systemd.notify(f"READY=1\nSTATUS=listening on {listen_url}")
            log.info("daemon_ready", listen=listen_url, control=cfg.control.socket, bindings=len(table),
                     locations=list(clovers))
            # Everything loaded at start lives as long as the process: move it out of the collector's way,
            # so full collections stop freezing the event loop for tens of milliseconds under load.
            gc.freeze()
            running = Running(listen_url, cfg.control.socket, admin, stop_requested.set)
            task_status.started(running)

            await stop_requested.wait()
            supervisor.shutdown()  # from here an actor that returns is done, not restarted
            # 1. stop intake
            log.info("shutdown", phase="stop_intake")
            systemd.notify("STOPPING=1")
            intake.closed = True
            intake_closed.set()
            # 2. drain
            log.info("shutdown", phase="drain")
            with trio.move_on_after(drain_seconds):
                while not admin.idle():
                    await trio.sleep(0.05)
            # 3. deadline
            log.info("shutdown", phase="deadline", idle=admin.idle())
            actors.cancel_scope.cancel()
        # 4. release
        log.info("shutdown", phase="release")
        control_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await woo.aclose()
            for c in clovers.values():
                await c.aclose()
            for o in oauth_http:
                await o.aclose()
        root.cancel_scope.cancel()
    running.stopped.set()


LOG_RETENTION_S = 90 * 86400  # the sync log keeps 90 days: an audit trail, not the last 50 rows


async def _maintenance_loop(store: Store, task_status: trio.TaskStatus[None], *, every: float = 3600.0) -> None:
    """Hourly: forget settled inbox dedup keys past their window, and sync-log rows past retention."""
    import time as _time

    task_status.started()
    while True:
        now = _time.time()
        pruned = await store.prune(now)
        dropped = await store.prune_log(now - LOG_RETENTION_S)
        if pruned or dropped:
            log.info("store_pruned", dedup_keys=pruned, log_rows=dropped)
        await trio.sleep(every)


def watch(
    metrics: Metrics,
    *,
    store: Store,
    table: BindingTable,
    shards: list[ShardActor],
    shard_inboxes: list[trio.MemorySendChannel[ShardCommand]],
) -> Callable[[], Awaitable[None]]:
    """Point the scrape-time series at the actors' own figures; returns the refresh to await before a scrape.

    Open conflicts live in the store only, so they are read before each scrape
    (one indexed read of the open ones); everything else is read in memory.
    """
    conflicted: list[Conflict] = []

    async def refresh() -> None:
        conflicted[:] = await store.list_conflicts()

    def stats() -> list[dict[str, int]]:
        return [s.statistics() for s in shards]

    def backlog() -> dict[str, int]:
        st = stats()
        return {"queued": sum(s["dirty"] + s["again"] for s in st), "running": sum(s["running"] for s in st),
                "retrying": sum(s["retrying"] for s in st)}

    src = metrics.sources
    src.merges = lambda: {"ok": sum(s.merges for s in shards), "failed": sum(s.failed_merges for s in shards)}
    src.backlog = backlog
    src.shard_queues = lambda: [ch.statistics().current_buffer_used for ch in shard_inboxes]
    src.inbox_pending = lambda: store.statistics().pending_inbox
    src.bindings = lambda: table.states(conflicted=[c.binding_id for c in conflicted],
                                        stale=set().union(*(s.stale_ids() for s in shards)))
    src.open_conflicts = lambda: len(conflicted)
    return refresh


def build_alerts(
    cfg: Config, secrets: Secrets, store: Store, table: BindingTable, *,
    on_sent: Callable[[str], None] = lambda kind: None,
) -> AlertActor:
    """The alert actor; with no ``alerts.email_to`` it only logs (the config checked the SMTP URL at load)."""
    a = cfg.alerts
    mailer = None
    if a.email_to:
        mailer = SmtpMailer(a.smtp_url, sender=a.email_from, password=secrets.smtp_password)
    policy = AlertPolicy(low_stock_threshold=a.low_stock_threshold, thresholds=dict(a.thresholds))
    return AlertActor(AlertDeps(store=store, policy=policy, mailer=mailer, recipients=tuple(a.email_to),
                                lookup=table.get, on_sent=on_sent))


def _watchdog_beat() -> None:
    systemd.notify("WATCHDOG=1")


async def _signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async for signum in sigs:
            log.info("signal", signal=signal.Signals(signum).name)
            stop.set()
            return
