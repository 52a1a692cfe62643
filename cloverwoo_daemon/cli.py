"""``cloverwoo``: the daemon (``run``), the demo and simulators, and the admin commands.

Every admin command talks to a running daemon over the control socket (found
through ``--config`` or ``--socket``). Exit codes (interface.md): 0 ok,
1 the operation failed, 2 bad usage or config, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec
import trio

from cloverwoo_daemon.config import Config, ConfigError, check_service_directories, load_config, load_secrets
from cloverwoo_daemon.messages import (
    ConflictsRequest,
    ControlRequest,
    ControlResponse,
    ExportCsvRequest,
    ImportCsvRequest,
    JobRequest,
    LogRequest,
    ModeRequest,
    ReconcileRequest,
    StatusRequest,
    SyncRequest,
)

DEFAULT_CONFIG = "/etc/cloverwoo/cloverwoo.toml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _add_global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--config``, ``--socket`` and ``--json``, accepted before or after any (nested) subcommand.

    Only the top-level parser holds the defaults. argparse copies every
    attribute a subparser's namespace has over the parent's, defaults
    included, so a default on a subcommand's copy would silently replace a
    value given before the subcommand; ``SUPPRESS`` leaves the attribute out
    unless the option is given there.
    """
    if defaults:
        config: Any = os.environ.get("CLOVERWOO_CONFIG") or DEFAULT_CONFIG
        socket_path: Any = None
        as_json: Any = False
    else:
        config = socket_path = as_json = argparse.SUPPRESS
    p.add_argument("--config", metavar="PATH", default=config,
                   help=f"config file (default: $CLOVERWOO_CONFIG, else {DEFAULT_CONFIG})")
    p.add_argument("--socket", metavar="PATH", default=socket_path,
                   help="control socket (default: [control] socket of the config)")
    p.add_argument("--json", action="store_true", default=as_json, help="machine-readable output")


class _SubcommandParser(argparse.ArgumentParser):
    """Every subcommand's parser (nested ones too: ``add_subparsers`` reuses the class) takes the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self, defaults=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloverwoo", description="Clover POS <-> WooCommerce inventory sync daemon")
    _add_global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    sub.add_parser("run", help="run the daemon (what systemd starts)")
    cc = sub.add_parser("check-config", help="validate the config and credentials files")
    cc.add_argument("--offline", action="store_true", help="do not contact Clover or WooCommerce")

    demo = sub.add_parser("demo", help="daemon + simulated stores with random sales, live view and summary")
    demo.add_argument("--seconds", type=float, default=60.0)
    demo.add_argument("--products", type=int, default=20)
    demo.add_argument("--locations", type=int, default=1)
    demo.add_argument("--rate", type=float, default=4.0, help="sales per second, both sides together")
    demo.add_argument("--seed", type=int, default=1)

    sim = sub.add_parser("simulate", help="serve only the simulated Clover and WooCommerce APIs")
    sim.add_argument("--listen", default="127.0.0.1:8788", help="Clover on HOST:PORT, WooCommerce on PORT+1")
    sim.add_argument("--products", type=int, default=20)
    sim.add_argument("--locations", type=int, default=1)
    sim.add_argument("--realistic", action="store_true", help="WooCommerce latency as measured on a real store")
    sim.add_argument("--clover-webhooks", choices=["legacy", "split"], default="legacy",
                     help="Clover's inventory webhooks: I: for every stock change (legacy), or IS:/IA: (split)")

    sub.add_parser("status", help="actors, queues, webhook health, last events")
    lg = sub.add_parser("log", help="the sync log")
    lg.add_argument("--follow", action="store_true")
    lg.add_argument("--sku")
    lg.add_argument("--level", choices=["info", "warning", "error"])
    lg.add_argument("--since", help="unix time, or a duration ago like 10m / 2h")
    lg.add_argument("--limit", type=int, default=200)
    cf = sub.add_parser("conflicts", help="flagged oversells and conflicts")
    cf.add_argument("--resolve", type=int, nargs="+", metavar="ID")
    rc = sub.add_parser("reconcile", help="compare every binding on both sides now and correct drift")
    rc.add_argument("--dry-run", action="store_true", help="report the drift, correct nothing")
    rc.add_argument("--full", action="store_true", help="merge every binding from fresh reads (slow, thorough)")
    sy = sub.add_parser("sync", help="initial sync: import (Clover is the truth) or push (WooCommerce is the truth)")
    sy.add_argument("direction", choices=["import", "push"])
    sy.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    sub.add_parser("job", help="progress of the running job, or the last one of each kind")
    ex = sub.add_parser("export-csv", help="write the stock of every binding and location to a CSV file")
    ex.add_argument("file", help="where to write it ('-' for stdout)")
    im = sub.add_parser("import-csv", help="set Clover counts from a CSV (WooCommerce follows); rows checked first")
    im.add_argument("file")
    im.add_argument("--match", choices=["sku", "id"], default="sku")
    im.add_argument("--dry-run", action="store_true", help="check every row, apply nothing")
    _add_clover_parser(sub)
    _add_issue6_parsers(sub)
    _add_exclusion_parsers(sub)
    md = sub.add_parser("mode", help="switch the multi-location mode; every binding is recounted (persisted)")
    md.add_argument("mode", choices=["aggregate", "single", "per-location"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except ConfigError as exc:
        print(f"cloverwoo: config error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "run":
            return _run(args)
        case "check-config":
            return _check_config(args)
        case "demo":
            from cloverwoo_daemon.demo import run_demo

            return run_demo(seconds=args.seconds, products=args.products, locations=args.locations,
                            rate=args.rate, seed=args.seed, as_json=args.json)
        case "simulate":
            from cloverwoo_daemon.sim.harness import serve_simulators

            return serve_simulators(args.listen, products=args.products, locations=args.locations,
                                    realistic=args.realistic, clover_webhooks=args.clover_webhooks)
        case "status":
            return _admin(args, StatusRequest(), _print_status)
        case "log":
            return _log(args)
        case "conflicts":
            return _admin(args, ConflictsRequest(resolve=tuple(args.resolve or ())), _print_conflicts)
        case "reconcile":
            return _job(args, ReconcileRequest(dry_run=args.dry_run, full=args.full))
        case "sync":
            truth = "clover" if args.direction == "import" else "woo"
            return _job(args, SyncRequest(truth=truth, dry_run=args.dry_run))
        case "job":
            return _job(args, JobRequest(follow=True))
        case "mode":
            return _job(args, ModeRequest(mode=args.mode))
        case "export-csv":
            return _admin(args, ExportCsvRequest(), lambda d: _write_csv(args.file, d["csv"]))
        case "import-csv":
            try:
                with open(args.file, encoding="utf-8-sig", newline="") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                print(f"cloverwoo: cannot read {args.file}: {exc}", file=sys.stderr)
                return EXIT_USAGE
            code = _admin(args, ImportCsvRequest(text=text, match=args.match, dry_run=args.dry_run), _print_import)
            return code
        case "exclude" | "include":
            return _exclusions(args)
        case "clover":
            return _clover(args)
        case "threshold" | "out-of-stock" | "dashboard" | "webhooks":
            return _issue6(args)
    return EXIT_USAGE


# ------------------------------------------------------------------ daemon


def _run(args: argparse.Namespace) -> int:
    """The daemon. Every config error exits 2 with one line, before anything starts where it can be seen then,
    and wherever it is found later; a daemon that cannot start (its state file, its socket taken) or that
    escalated a crash loop exits 1 with one line. Anything else is a bug: its traceback is kept."""
    from cloverwoo_daemon.actors.supervisor import CrashBudgetExceeded
    from cloverwoo_daemon.app import run_daemon
    from cloverwoo_daemon.io.control import AlreadyServed, SocketPathUnusable, check_socket_path
    from cloverwoo_daemon.io.logs import configure_logging
    from cloverwoo_daemon.io.store import StoreError
    from cloverwoo_daemon.io.webhooks import ListenUnavailable, check_listen

    cfg = load_config(args.config)
    check_service_directories(cfg, os.environ, source=args.config)
    secrets = load_secrets(cfg)
    try:
        check_socket_path(cfg.control.socket)
    except SocketPathUnusable as exc:
        raise ConfigError(str(exc)) from None
    try:
        check_listen(cfg.server.listen)
    except ListenUnavailable as exc:
        print(f"cloverwoo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    configure_logging(secrets=secrets.values())
    config_errors: list[BaseException] = []
    failed: list[BaseException] = []
    try:
        trio.run(_preflight_then_run, cfg, secrets, run_daemon)  # preflight at start
    except* (ConfigError, SocketPathUnusable) as group:
        config_errors.extend(_leaves(group))
    except* (CrashBudgetExceeded, StoreError, AlreadyServed, ListenUnavailable) as group:
        failed.extend(_leaves(group))
    if config_errors:
        print(f"cloverwoo: config error: {config_errors[0]}", file=sys.stderr)
        return EXIT_USAGE
    if failed:
        print(f"cloverwoo: {failed[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions inside (possibly nested) groups, for a one-line message."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    secrets = load_secrets(cfg)
    print(f"✓ {args.config}: valid; {len(cfg.clover.locations)} location(s), mode {cfg.sync.mode}")
    print("✓ secrets: every secret file or variable is present")
    if args.offline:
        from cloverwoo_daemon.io.preflight import clover_webhook_check

        if not secrets.clover_auth_code:  # expected during set-up, so a note rather than a failure here
            print(f"  note: {clover_webhook_check(secrets).detail}")
        return EXIT_OK
    return trio.run(_reach_apis, cfg, secrets)


async def _reach_apis(cfg: Config, secrets: Any) -> int:
    from cloverwoo_daemon.io.logs import configure_logging
    from cloverwoo_daemon.io.preflight import print_checks, run_preflight

    configure_logging(level="error", secrets=secrets.values(), stream=sys.stderr)  # the ✓/✗ lines say it all
    return print_checks(await run_preflight(cfg, secrets))


# ------------------------------------------- threshold, out-of-stock, dashboard, webhooks register


def _add_issue6_parsers(sub: Any) -> None:
    th = sub.add_parser("threshold", help="set a SKU's low-stock threshold at run time (persisted)")
    th.add_argument("sku")
    th.add_argument("value", nargs="?", type=int, help="the threshold (negative: no low-stock alerts)")
    th.add_argument("--clear", action="store_true", help="back to the config's threshold")
    oos = sub.add_parser("out-of-stock", help="set a SKU's out-of-stock behaviour at run time (persisted)")
    oos.add_argument("sku")
    oos.add_argument("action", nargs="?", choices=["hide", "backorder", "contact"])
    oos.add_argument("--clear", action="store_true", help="back to the config's behaviour")
    db = sub.add_parser("dashboard", help="low and out-of-stock products, most urgent first; conflicts; webhooks")
    db.add_argument("--limit", type=int, default=100)
    wh = sub.add_parser("webhooks", help="WooCommerce webhooks")
    whsub = wh.add_subparsers(dest="webhooks_command", required=True)
    whsub.add_parser("register", help="create the WooCommerce webhooks (idempotent); print the Clover URL")


def _issue6(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.messages import DashboardRequest, OutOfStockRequest, ThresholdRequest

    if args.command == "threshold":
        if args.clear == (args.value is not None):
            print("cloverwoo: give a threshold or --clear", file=sys.stderr)
            return EXIT_USAGE
        return _admin(args, ThresholdRequest(sku=args.sku, threshold=None if args.clear else args.value),
                      lambda d: print(f"{d['sku']}: threshold {d['threshold']}"
                                      + (" (config)" if d["override"] is None else "")))
    if args.command == "out-of-stock":
        if args.clear == (args.action is not None):
            print("cloverwoo: give hide, backorder or contact, or --clear", file=sys.stderr)
            return EXIT_USAGE
        return _admin(args, OutOfStockRequest(sku=args.sku, action=None if args.clear else args.action),
                      lambda d: print(f"{d['sku']}: out of stock -> {d['action']}"
                                      + (" (config)" if d["override"] is None else "")))
    if args.command == "dashboard":
        return _admin(args, DashboardRequest(limit=args.limit), _print_dashboard)
    return _webhooks_register(args)


def _print_dashboard(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"low and out of stock ({data['total_listed']}), most urgent first")
    for col, just in (("SKU", "left"), ("name", "left"), ("stock", "right"), ("threshold", "right"),
                      ("sold/day", "right"), ("per location", "left"), ("shop shows", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in data["products"]:
        stock = f"[red]{r['stock']}[/red]" if r["state"] == "out" else f"[yellow]{r['stock']}[/yellow]"
        locs = ", ".join(f"{k} {'-' if v is None else v}" for k, v in sorted(r["locations"].items()))
        t.add_row(r["sku"], r["name"], stock, str(r["threshold"]), f"{r['per_day']:g}", locs,
                  r.get("out_of_stock_action") or "")
    console.print(t)
    conflicts = data["conflicts"]
    console.print(f"open conflicts: {len(conflicts)}" + ("  (cloverwoo conflicts)" if conflicts else ""))
    for c in conflicts[:10]:
        console.print(f"  #{c['id']} {c['kind']} sku={c['sku']}")
    wh = data["webhooks"]
    for source, ts in sorted(wh["last_event"].items()):
        console.print(f"last {source} webhook: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))}")
    if not wh["last_event"]:
        console.print("[yellow]no webhook received yet[/yellow]")
    woo = wh.get("woo") or {}
    for h in woo.get("webhooks", []):
        if h.get("ours"):
            color = "green" if h["status"] == "active" else "red"
            console.print(f"woo webhook #{h['id']} {h['topic']}: [{color}]{h['status']}[/{color}]")
    if woo.get("re_enabled"):
        console.print(f"[yellow]re-enabled {woo['re_enabled']} disabled WooCommerce webhook(s)[/yellow]")
    for hook_id, at in sorted((woo.get("held_back") or {}).items()):
        console.print(f"[red]woo webhook #{hook_id} still failing[/red] (disabled again before any delivery reached "
                      f"the daemon): re-enabled again at {time.strftime('%H:%M:%S', time.localtime(at))}; "
                      "check that WooCommerce can reach the delivery URL")
    if woo.get("clover_silent_since"):
        console.print("[red]no Clover webhook lately while the poll finds changes[/red]")
    for name, loc in sorted(wh["locations"].items()):
        if not loc["reachable"]:
            console.print(f"[red]location {name} unreachable[/red]: {loc['last_error']}")
    if not wh["woocommerce_reachable"]:
        console.print("[red]WooCommerce unreachable[/red]")


def _webhooks_register(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.config import _read_secret
    from cloverwoo_daemon.io.webhook_setup import public_urls, register_webhooks
    from cloverwoo_daemon.io.woocommerce import WooClient
    from cloverwoo_daemon.ports import RemoteError

    cfg = load_config(args.config)
    public_urls(cfg)  # refuse a missing server.public_url before anything is written
    key = _read_secret("woocommerce.consumer_key", cfg.woocommerce.consumer_key_file)
    secret = _read_secret("woocommerce.consumer_secret", cfg.woocommerce.consumer_secret_file)

    async def go() -> Any:
        async with WooClient(cfg.woocommerce.base_url, key, secret, auth=cfg.woocommerce.auth) as woo:
            return await register_webhooks(cfg, woo)

    try:
        report = trio.run(go)
    except RemoteError as exc:
        print(f"✗ webhooks register: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(msgspec.to_builtins(report), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"WooCommerce webhooks -> {report.delivery_url}")
    for topic in report.created:
        print(f"  ✓ {topic}: created")
    for topic in report.existing:
        print(f"  ✓ {topic}: already registered" + (" (re-activated)" if topic in report.reactivated else ""))
    if report.secret_reused:
        print(f"  secret: the one in {report.secret_config_file or '$CLOVERWOO_WOOCOMMERCE_WEBHOOK_SECRET'}")
    else:
        print(f"  secret: new, written to {report.secret_state_file} (0600)"
              + (f" and {report.secret_config_file}" if report.secret_config_written else ""))
    print(f"Clover webhook URL: {report.clover_url}")
    print("Next:")
    for i, step in enumerate(report.instructions, 1):
        print(f"  {i}. {step}")
    return EXIT_OK


# ------------------------------------------------------- exclusions, preflight at start


def _add_exclusion_parsers(sub: Any) -> None:
    for name, verb in (("exclude", "take products out of sync: never written on either side (persisted)"),
                       ("include", "put excluded products back in sync: recounted from the source of truth")):
        ex = sub.add_parser(name, help=verb)
        ex.add_argument("skus", nargs="*", metavar="SKU")
        ex.add_argument("--from-file", metavar="FILE",
                        help="SKUs one a line ('-' for stdin); blank lines and lines starting with # are skipped")


def _read_sku_file(path: str) -> list[str]:
    with (sys.stdin if path == "-" else open(path, encoding="utf-8-sig")) as f:
        return [s for line in f if (s := line.strip()) and not s.startswith("#")]


def _exclusions(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.messages import ExcludeRequest

    skus = list(args.skus)
    if args.from_file:
        try:
            skus += _read_sku_file(args.from_file)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"cloverwoo: cannot read {args.from_file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not skus:
        print(f"cloverwoo: {args.command}: give SKUs or --from-file", file=sys.stderr)
        return EXIT_USAGE

    def show(d: dict[str, Any]) -> None:
        verb = "excluded" if d["excluded"] else "included"
        print(f"{verb} {len(d['skus'])} SKU(s) ({len(d['changed'])} changed), "
              f"{d['bindings_changed']} binding(s) changed; {d['total_excluded']} SKU(s) excluded in all")
        if d["not_bound"]:
            note = "excluded as soon as they are bound" if d["excluded"] else "not bound"
            print(f"  no binding with SKU ({note}): {', '.join(d['not_bound'])}")
        if not d["excluded"] and d["bindings_changed"]:
            print("  included products are recounted from the source of truth now (`cloverwoo log` to watch)")

    return _admin(args, ExcludeRequest(skus=tuple(skus), excluded=args.command == "exclude"), show)


# The checks run before the daemon, not beside it: a check of an OAuth location may refresh its token, and a
# refresh racing the daemon's own would spend the single-use refresh token twice. Bounded well under the unit's
# TimeoutStartSec=60s, so a store that hangs at boot delays READY=1 by this much at most.
PREFLIGHT_AT_START_S = 20.0


async def _preflight_then_run(cfg: Config, secrets: Any, run_daemon: Any) -> None:
    """`cloverwoo run`: the preflight checks, each logged, then the daemon, whatever they said.

    A failed check is logged at error level and the daemon starts anyway: the
    daemon retries unreachable stores and reports them in `status`, and a
    refusal to start would turn a network blip at boot into a systemd restart
    loop. Config and secret errors were refused before this (exit 2).
    """
    import structlog

    from cloverwoo_daemon.io.preflight import run_preflight

    log = structlog.get_logger("cloverwoo.preflight")
    checks = None
    with trio.move_on_after(PREFLIGHT_AT_START_S):
        try:
            checks = await run_preflight(cfg, secrets)
        except Exception as exc:  # a check that cannot run must not stop the daemon from starting
            log.error("preflight_error", error=str(exc)[:300])
    if checks is None:
        log.error("preflight_incomplete", hint="`cloverwoo check-config` shows every check")
    else:
        for c in checks:
            if c.ok:
                log.info("preflight", ok=True, check=c.subject, result=c.line())
            elif c.advisory:  # advice the daemon runs without (the companion): a warning, not a failure
                log.warning("preflight", ok=False, advisory=True, check=c.subject, result=c.line())
            else:
                log.error("preflight", ok=False, check=c.subject, result=c.line())
        failed = sum(not c.ok and not c.advisory for c in checks)
        advice = sum(not c.ok and c.advisory for c in checks)
        (log.error if failed else log.info)("preflight_done", checks=len(checks), failed=failed, advice=advice)
    await run_daemon(cfg, secrets)


# ------------------------------------------------------- clover connect (Clover OAuth v2)


def _add_clover_parser(sub: Any) -> None:
    cl = sub.add_parser("clover", help="Clover app set-up")
    clsub = cl.add_subparsers(dest="clover_command", required=True)
    con = clsub.add_parser("connect", help="approve the Clover app for a location and store its OAuth tokens")
    con.add_argument("location", help="the name of a [[clover.locations]] with oauth = true")
    con.add_argument("--code", help="the code (or the whole address) Clover redirected to; else asked for")
    con.add_argument("--redirect-uri", default="", help="where Clover sends the merchant after approval "
                                                        "(a path under the app's Site URL)")
    ver = clsub.add_parser("verify", help="answer Clover's webhook URL verification for a while (running daemon)")
    ver.add_argument("--minutes", type=float, default=10.0, help="how long to answer it (default 10)")
    ver.add_argument("--close", action="store_true", help="stop answering it now")


def _clover_verify(args: argparse.Namespace) -> int:
    """Open (or close) the window in which the daemon answers Clover's verification handshake."""
    from cloverwoo_daemon.messages import CloverVerifyRequest

    def show(d: dict[str, Any]) -> None:
        if d["window_until"]:
            until = time.strftime("%H:%M:%S", time.localtime(d["window_until"]))
            print(f"Clover verification answered until {until}: in the Clover developer dashboard, App Settings > "
                  "Webhooks, press Send Verification Code; the code shows in `cloverwoo status`")
        elif d["expected"]:
            print(f"Clover verification answered: {d['reason']}")
        else:
            print("Clover verification not answered (a Clover auth code is configured; no window open)")
        _print_codes(d["codes"], print)

    return _admin(args, CloverVerifyRequest(minutes=args.minutes, close=args.close), show)


def _print_codes(codes: list[dict[str, Any]], out: Any) -> None:
    for c in codes:
        first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["first_at"]))
        again = f", {c['count']} times, last {time.strftime('%H:%M:%S', time.localtime(c['last_at']))}" \
            if c["count"] > 1 else ""
        out(f"  verification code {c['code']}  received {first}{again}")


def _clover(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.core.tokens import authorize_url, code_from_paste
    from cloverwoo_daemon.io.clover_oauth import connect_location
    from cloverwoo_daemon.io.logs import configure_logging
    from cloverwoo_daemon.io.store import StoreError
    from cloverwoo_daemon.ports import RemoteError

    if args.clover_command == "verify":
        return _clover_verify(args)
    cfg = load_config(args.config)
    loc = next((x for x in cfg.clover.locations if x.name == args.location), None)
    if loc is None:
        names = ", ".join(x.name for x in cfg.clover.locations)
        print(f"cloverwoo: no location {args.location!r} in {args.config} (locations: {names})", file=sys.stderr)
        return EXIT_USAGE
    if not loc.oauth:
        print(f"cloverwoo: location {loc.name} uses a static token (token_file); for Clover OAuth set oauth = true, "
              "client_id and client_secret_file in its [[clover.locations]] and remove token_file", file=sys.stderr)
        return EXIT_USAGE
    secrets = load_secrets(cfg)
    configure_logging(level="warning", secrets=secrets.values(), stream=sys.stderr)
    if loc.name not in secrets.clover_client_secrets:
        print(f"cloverwoo: config error: the app secret of location {loc.name} is needed: set its "
              f"client_secret_file (or CLOVERWOO_CLOVER_CLIENT_SECRET_{loc.name.upper()})", file=sys.stderr)
        return EXIT_USAGE
    text = args.code
    if not text:
        url = authorize_url(cfg.clover.base_url, loc.client_id, merchant_id=loc.merchant_id,
                            redirect_uri=args.redirect_uri)
        print(f"1. Open this address, signed in as merchant {loc.merchant_id} ({loc.name}), and approve the app:")
        print(f"   {url}")
        print("2. Clover then sends the browser to the app's site address with ...&code=... at the end.")
        try:
            text = input("   Paste that whole address (or only the code): ")
        except EOFError:
            text = ""
    try:
        code, merchant = code_from_paste(text)
    except ValueError as exc:
        print(f"cloverwoo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if merchant and merchant != loc.merchant_id:
        print(f"cloverwoo: that code is for merchant {merchant}, but {loc.name} is merchant {loc.merchant_id}; "
              "approve the app as the right merchant", file=sys.stderr)
        return EXIT_FAILED
    try:
        pair, name = trio.run(connect_location, cfg, secrets, loc.name, code)
    except (RemoteError, StoreError) as exc:
        print(f"✗ clover connect {loc.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    until = (time.strftime("%Y-%m-%d %H:%M", time.localtime(pair.access_expires_at))
             if pair.access_expires_at else "no stated expiry")
    print(f"✓ Clover {loc.name}: connected to merchant {loc.merchant_id}" + (f" ({name})" if name else "")
          + f"; tokens stored in {cfg.state.path} (mode 0600), access token valid until {until}, "
            "refreshed automatically by the daemon")
    return EXIT_OK


# ------------------------------------------------------------------- admin


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return load_config(args.config).control.socket


def _call(args: argparse.Namespace, req: ControlRequest) -> ControlResponse:
    from cloverwoo_daemon.io.control import control_call

    return trio.run(lambda: control_call(_socket_path(args), req, timeout=30.0))


def _admin(args: argparse.Namespace, req: ControlRequest, show: Any) -> int:
    from cloverwoo_daemon.io.control import ControlError, DaemonUnreachable

    try:
        resp = _call(args, req)
    except DaemonUnreachable as exc:
        print(f"cloverwoo: daemon unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ControlError as exc:  # a request over the upload limit, an answer that is not a valid frame
        print(f"cloverwoo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not resp.ok:
        print(f"cloverwoo: {resp.error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(resp.data, indent=2, sort_keys=True, default=str))
    else:
        show(resp.data)
    return EXIT_OK


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]cloverwoo-daemon[/bold] up {data['uptime_s']}s, listening on {data['listen']}, "
                  f"{data['bindings']} bindings")
    t = Table(title="actors")
    t.add_column("actor")
    t.add_column("running")
    t.add_column("restarts", justify="right")
    t.add_column("last error")
    for name, a in data["actors"].items():
        t.add_row(name, "yes" if a["running"] else "[red]no[/red]", str(a["restarts"]), a["last_error"] or "")
    console.print(t)
    q = data["queues"]
    s = data["shards"]
    console.print(f"queues: router {q['router']}, shards {sum(q['shards'])}; merges {s['merges']} "
                  f"(failed {s['failed_merges']}, in flight {s['in_flight']}, waiting {s['dirty']}, "
                  f"retrying {s['retrying']})")
    store = data.get("store") or {}
    if store.get("quarantined"):
        console.print(f"[yellow]inbox: {store['quarantined']} event(s) set aside: they no longer decode[/yellow] "
                      "(table inbox_quarantine of the state file; a reconcile covers what they named)")
    if "mode" in data:
        console.print(f"mode: {data['mode']}; bindings merged without a location that is down: "
                      f"{data.get('stale_bindings', 0)}")
    for name, loc in data["locations"].items():
        state = "reachable" if loc["reachable"] else f"[red]UNREACHABLE[/red] ({loc['last_error']})"
        if not loc.get("active", True):  # single mode, not the primary
            state = "inactive (single mode: never called)"
        console.print(f"location {name}: {state}, polls {loc['polls']}")
    wp = data["woocommerce_poll"]
    console.print(f"woocommerce: {'reachable' if wp['reachable'] else '[red]UNREACHABLE[/red]'}, polls {wp['polls']}")
    sw = data.get("stock_writes")
    if sw is not None:
        console.print(stock_writes_line(sw))
    wit = data.get("witness")
    if wit is not None:
        console.print(f"witness of erased sales: {wit['judged']} writes judged ({wit['pending']} waiting), "
                      f"{wit['flagged']} flagged, {wit['repaired']} repaired"
                      + (f", {wit['dropped']} dropped unjudged" if wit.get("dropped") else ""))
    wh = data["webhooks"]
    for source, ts in sorted(wh["last_event"].items()):
        console.print(f"last {source} event: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))}")
    ver = wh.get("clover_verification") or {}
    if ver.get("expected"):
        until = (f" until {time.strftime('%H:%M:%S', time.localtime(ver['window_until']))}"
                 if ver.get("window_until") else "")
        console.print(f"[yellow]Clover verification answered{until}[/yellow] ({ver['reason']})")
    if ver.get("codes"):
        console.print("[yellow]Clover verification codes[/yellow] (paste the one you just asked for into the "
                      "Clover developer dashboard, then Verify):")
        _print_codes(ver["codes"], console.print)
    rec = data["reconcile"]
    every = f"{rec['every_s']:g} s" if rec["every_s"] else "off"
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["last"])) if rec["last"] else "never"
    console.print(f"reconcile every: {every}, last: {last}")
    if data.get("jobs"):
        console.print(_jobs_text(data["jobs"]), markup=False, highlight=False)
    ex = data.get("exclusions")
    if ex:
        listed = ", ".join(ex["skus"]) + (" ..." if ex["count"] > len(ex["skus"]) else "")
        console.print(f"excluded from sync: {ex['count']} SKU(s), {ex['bindings_excluded']} binding(s)"
                      + (f": {listed}" if ex["count"] else ""))
        if ex["not_bound"]:
            console.print(f"  not bound yet (excluded when they are): {', '.join(ex['not_bound'])}")


def stock_writes_line(sw: dict[str, Any]) -> str:
    """Whether WooCommerce stock writes are atomic: ``✓ companion vN`` or ``✗`` with the one-line install."""
    if sw.get("atomic"):
        webhooks = {True: "webhooks synchronous", False: "webhooks asynchronous"}.get(sw.get("sync_webhooks"),
                                                                                    "webhook mode unknown")
        return f"stock writes: ✓ atomic (companion v{sw.get('companion')}; {webhooks})"
    unknown = " (not asked yet)" if sw.get("checked_at") is None else ""
    return (f"stock writes: ✗ not atomic{unknown}: a checkout during a daemon stock write can be lost; "
            f"{sw.get('install')}")


def _job(args: argparse.Namespace, req: ControlRequest) -> int:
    """Start (or follow) a job; a progress bar on a tty, JSON lines with --json, the result at the end."""
    from cloverwoo_daemon.io.control import ControlError, DaemonUnreachable, control_stream

    async def follow() -> int:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        progress = None
        task = None
        result: dict[str, Any] | None = None
        try:
            async with control_stream(_socket_path(args), req, timeout=30.0, idle_timeout=120.0) as stream:
                async for resp in stream:
                    if not resp.ok and not (resp.data and "result" in resp.data):
                        print(f"cloverwoo: {resp.error}", file=sys.stderr)
                        return EXIT_FAILED
                    data = resp.data or {}
                    if "progress" in data:
                        p = data["progress"]
                        if args.json:
                            print(json.dumps({"progress": {k: p[k] for k in ("kind", "state", "done", "total")}}),
                                  flush=True)
                        elif console.is_terminal:
                            if progress is None:
                                progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                                    MofNCompleteColumn(), TimeElapsedColumn(), console=console)
                                progress.start()
                                task = progress.add_task(f"{p['kind']} ({p['state']})", total=p["total"] or None)
                            assert task is not None
                            progress.update(task, completed=p["done"], total=p["total"] or None,
                                            description=f"{p['kind']} ({p['state']})")
                    elif "result" in data:
                        result = data["result"]
                    elif "current" in data:  # `cloverwoo job` with nothing running
                        result = None
                        print(json.dumps(data, indent=2, default=str) if args.json else _jobs_text(data))
                        return EXIT_OK
        except DaemonUnreachable as exc:
            print(f"cloverwoo: daemon unreachable: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except ControlError as exc:
            print(f"cloverwoo: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            if progress is not None:
                progress.stop()
        if result is None:
            print("cloverwoo: the job ended without a result", file=sys.stderr)
            return EXIT_FAILED
        if args.json:
            print(json.dumps({"result": result}, default=str))
        else:
            _print_job(result)
        return EXIT_OK if result.get("state") == "done" else EXIT_FAILED

    return trio.run(follow)


def _jobs_text(data: dict[str, Any]) -> str:
    """The running job (if any) and the last of each kind; takes `cloverwoo job`'s answer or status's "jobs"."""
    cur = data.get("current")
    if cur:
        since = time.strftime("%H:%M:%S", time.localtime(cur.get("started_at") or 0))
        lines = [f"running: {cur['kind']} ({cur['state']} {cur.get('done', 0)}/{cur.get('total', 0)}) "
                 f"since {since}"]
    else:
        lines = ["no job running"]
    for label, jobs in (("last", data.get("last") or {}), ("last dry run of", data.get("last_dry_run") or {})):
        for kind, job in sorted(jobs.items()):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.get("finished_at") or 0))
            line = f"{label} {kind}: {job['state']} at {when}, {job['total']} bindings, "
            if kind in ("reconcile", "full") or job.get("dry_run"):
                line += f"{job['writes_planned']} to correct"
            else:
                line += f"{job.get('changed', 0)} changed"
            if job.get("failed"):
                line += f", {job['failed']} failed"
            lines.append(line)
    return "\n".join(lines)


def _print_job(job: dict[str, Any]) -> None:
    secs = (job.get("finished_at") or time.time()) - job["started_at"]
    verb = "would change" if job["dry_run"] else "changed"
    state = job["state"] if job["state"] != "done" else "done"
    resumed = " (resumed)" if job.get("resumed") else ""
    print(f"{job['kind']} {state} in {secs:.1f}s: {job['total']} bindings{resumed}")
    rep = job.get("report") or {}
    if rep:
        keys = ("bindings", "by_sku", "by_name", "untracked", "ambiguous", "unmatched_woo", "unmatched_clover",
                "drifted", "drifted_woo_side", "drifted_clover_side", "in_flight", "never_synced")
        print("  " + ", ".join(f"{k.replace('_', ' ')} {rep[k]}" for k in keys if k in rep))
        if rep.get("reason"):
            print(f"  why: {rep['reason']}")
    counts = {k: job.get(k, 0) for k in ("changed", "unchanged", "skipped", "failed")}
    if not job["dry_run"] and any(counts.values()):
        # what the recount did, binding by binding (a reconcile: the never-synced ones it recounted)
        print("  " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        for f in job.get("failures", [])[:20]:
            print(f"    failed {f.get('sku') or f.get('name') or f['binding_id']}: {f['reason']}")
    if job["kind"] in ("import", "push") and job["dry_run"]:
        print(f"  {job['writes_planned']} binding(s) {verb}:")
        for row in job.get("diff", [])[:200]:
            clover = ", ".join(f"{loc} {a} -> {b}" for loc, (a, b) in row.get("clover", {}).items())
            woo = row.get("woo")
            woo_text = f"woo {woo[0]} -> {woo[1]}" if woo and woo[0] != woo[1] else ""
            who = row["sku"] or row.get("name", "")
            print(f"    {who:<20} {woo_text}{'; ' if woo_text and clover else ''}{clover}")
        if len(job.get("diff", [])) > 200:
            print(f"    ... and {len(job['diff']) - 200} more (use --json for all)")
    elif job["kind"] == "reconcile" and job["dry_run"]:
        for row in job.get("diff", [])[:200]:
            who = row["sku"] or row.get("name", "")
            print(f"    {who:<20} woo moved {row['woo_moved_by']:+d}, clover moved {row['clover_moved_by']}")
    if job.get("error"):
        print(f"  error: {job['error']}")


def _write_csv(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    print(f"wrote {text.count(chr(10)) - 1} rows to {path}")


def _print_import(data: dict[str, Any]) -> None:
    verb = "would apply" if data["dry_run"] else "applied"
    print(f"{verb} {data['accepted']} row(s); rejected {len(data['rejected'])}")
    if "changed" in data:
        print(f"  {data['changed']} count(s) to set, {data['unchanged']} already at that count")
    for r in data["rejected"]:
        print(f"  line {r['line']}: {r['reason']}")


def _print_conflicts(data: Any) -> None:
    if isinstance(data, dict):
        print(f"resolved {data.get('resolved', 0)}")
        return
    if not data:
        print("no open conflicts")
        return
    for c in data:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["created_at"]))
        print(f"#{c['id']} {when} {c['kind']:<24} sku={c['sku']} {c['detail']}")


def _parse_since(text: str | None) -> float | None:
    if not text:
        return None
    from cloverwoo_daemon.config import parse_duration

    try:
        return float(text)
    except ValueError:
        ago = parse_duration(text, key="--since")
        return time.time() - (ago or 0)


def _log(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.io.control import DaemonUnreachable

    since = _parse_since(args.since)
    after = 0
    try:
        while True:
            resp = _call(args, LogRequest(sku=args.sku, level=args.level, since=since, after_id=after,
                                          limit=args.limit))
            if not resp.ok:
                print(f"cloverwoo: {resp.error}", file=sys.stderr)
                return EXIT_FAILED
            for row in resp.data:
                after = max(after, row["id"])
                if args.json:
                    print(json.dumps(row, sort_keys=True))
                else:
                    when = time.strftime("%H:%M:%S", time.localtime(row["ts"]))
                    lat = f" {row['latency_ms']:.0f}ms" if row.get("latency_ms") is not None else ""
                    err = f" error={row['error']}" if row.get("error") else ""
                    print(f"{when} {row['level']:<7} {row['event']:<13} sku={row['sku']} "
                          f"trigger={row['trigger']}{lat}{err} {row['detail']}")
            if not args.follow:
                return EXIT_OK
            sys.stdout.flush()
            time.sleep(0.5)
    except DaemonUnreachable as exc:
        print(f"cloverwoo: daemon unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def encode_json(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


if __name__ == "__main__":
    main()
