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

from cloverwoo_daemon.config import Config, ConfigError, load_config, load_secrets
from cloverwoo_daemon.messages import (
    ConflictsRequest,
    ControlRequest,
    ControlResponse,
    LogRequest,
    ReconcileRequest,
    StatusRequest,
)

DEFAULT_CONFIG = "/etc/cloverwoo/cloverwoo.toml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloverwoo", description="Clover POS <-> WooCommerce inventory sync daemon")
    p.add_argument("--config", default=os.environ.get("CLOVERWOO_CONFIG", DEFAULT_CONFIG), help="config file")
    p.add_argument("--socket", help="control socket (default: [control].socket of the config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)

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

    sub.add_parser("status", help="actors, queues, webhook health, last events")
    lg = sub.add_parser("log", help="the sync log")
    lg.add_argument("--follow", action="store_true")
    lg.add_argument("--sku")
    lg.add_argument("--level", choices=["info", "warning", "error"])
    lg.add_argument("--since", help="unix time, or a duration ago like 10m / 2h")
    lg.add_argument("--limit", type=int, default=200)
    cf = sub.add_parser("conflicts", help="flagged oversells and conflicts")
    cf.add_argument("--resolve", type=int, nargs="+", metavar="ID")
    sub.add_parser("reconcile", help="compare every binding on both sides now and correct drift")
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
                                    realistic=args.realistic)
        case "status":
            return _admin(args, StatusRequest(), _print_status)
        case "log":
            return _log(args)
        case "conflicts":
            return _admin(args, ConflictsRequest(resolve=tuple(args.resolve or ())), _print_conflicts)
        case "reconcile":
            return _admin(args, ReconcileRequest(), lambda d: print(f"reconciling {d['bindings']} bindings"))
    return EXIT_USAGE


# ------------------------------------------------------------------ daemon


def _run(args: argparse.Namespace) -> int:
    from cloverwoo_daemon.actors.supervisor import CrashBudgetExceeded
    from cloverwoo_daemon.app import run_daemon
    from cloverwoo_daemon.io.logs import configure_logging

    cfg = load_config(args.config)
    secrets = load_secrets(cfg)
    configure_logging(secrets=secrets.values())
    failed: list[BaseException] = []
    try:
        trio.run(run_daemon, cfg, secrets)
    except* CrashBudgetExceeded as group:
        failed.extend(group.exceptions)
    if failed:
        print(f"cloverwoo: {failed[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    secrets = load_secrets(cfg)
    print(f"✓ {args.config}: valid; {len(cfg.clover.locations)} location(s), mode {cfg.sync.mode}")
    print("✓ secrets: every secret file or variable is present")
    if args.offline:
        return EXIT_OK
    return trio.run(_reach_apis, cfg, secrets)


async def _reach_apis(cfg: Config, secrets: Any) -> int:
    from cloverwoo_daemon.app import build_clients
    from cloverwoo_daemon.ports import RemoteError

    woo, clovers = build_clients(cfg, secrets)
    ok = True
    try:
        try:
            value = await woo.get_setting("products", "woocommerce_manage_stock")  # type: ignore[attr-defined]
            mark = "✓" if value == "yes" else "✗"
            ok &= value == "yes"
            fix = "" if value == "yes" else " (fix: WooCommerce > Settings > Products > Inventory > Manage stock)"
            print(f"{mark} WooCommerce reachable at {cfg.woocommerce.base_url}; stock management {value}{fix}")
        except RemoteError as exc:
            ok = False
            print(f"✗ WooCommerce at {cfg.woocommerce.base_url}: {exc}")
        for name, client in clovers.items():
            try:
                props = await client.properties()  # type: ignore[attr-defined]
                track, update = props.get("trackStock"), props.get("updateStock")
                good = bool(track) and bool(update)
                ok &= good
                mark = "✓" if good else "✗"
                print(f"{mark} Clover location {name}: reachable; trackStock={track} updateStock={update}"
                      + ("" if good else " (fix: Clover Dashboard > Inventory > Setup: track stock and update "
                                         "item count after each sale)"))
            except RemoteError as exc:
                ok = False
                print(f"✗ Clover location {name}: {exc}")
    finally:
        await woo.aclose()
        for c in clovers.values():
            await c.aclose()
    return EXIT_OK if ok else EXIT_FAILED


# ------------------------------------------------------------------- admin


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return load_config(args.config).control.socket


def _call(args: argparse.Namespace, req: ControlRequest) -> ControlResponse:
    from cloverwoo_daemon.io.control import control_call

    return trio.run(lambda: control_call(_socket_path(args), req, timeout=30.0))


def _admin(args: argparse.Namespace, req: ControlRequest, show: Any) -> int:
    from cloverwoo_daemon.io.control import DaemonUnreachable

    try:
        resp = _call(args, req)
    except DaemonUnreachable as exc:
        print(f"cloverwoo: daemon unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
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
    console.print(f"[bold]cloverwoo[/bold] up {data['uptime_s']}s, listening on {data['listen']}, "
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
    for name, loc in data["locations"].items():
        state = "reachable" if loc["reachable"] else f"[red]UNREACHABLE[/red] ({loc['last_error']})"
        console.print(f"location {name}: {state}, polls {loc['polls']}")
    wp = data["woocommerce_poll"]
    console.print(f"woocommerce: {'reachable' if wp['reachable'] else '[red]UNREACHABLE[/red]'}, polls {wp['polls']}")
    wh = data["webhooks"]
    for source, ts in sorted(wh["last_event"].items()):
        console.print(f"last {source} event: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))}")
    if wh.get("clover_verification_code"):
        console.print(f"[yellow]Clover verification code:[/yellow] {wh['clover_verification_code']} "
                      "(paste it into the Clover developer dashboard, then Verify)")
    rec = data["reconcile"]
    console.print(f"reconcile every: {rec['every_s'] or 'off'}s, last: {rec['last'] or 'never'}")


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
