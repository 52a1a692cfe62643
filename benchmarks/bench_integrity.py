"""Count integrity where it happens: units lost on one product under contention, daemon in the loop.

    .venv/bin/python benchmarks/bench_integrity.py [--store DIR] [--sales 2000] [--rate 10]
        [--modes companion,inventory_delta] [--clover-writes 1000] [--quiet-sales 30]

Three parts, each printed as it ends (``cloverwoo_daemon/sim/contention.py`` runs them):

1. A REAL WooCommerce (the realwoo rig; ``DIR`` is started with ``../shared/realwoo/up DIR`` when it is not
   running): ``--sales`` sales on one product at ``--rate`` a second, half POS sales through the Clover
   simulator, half real checkouts (``POST /orders`` with ``set_paid``), the daemon between them; once with
   the WordPress companion copied into the store's mu-plugins, once without it. Units lost on WooCommerce,
   the checkouts the daemon's witness repaired or flagged, and the Clover overwrites the simulator
   recorded against those the witness flagged.
2. Clover's witness, over at least ``--clover-writes`` contested Clover writes (the WooCommerce simulator
   with synchronous webhooks drives one merge per checkout; POS sales at the same item at the same rate):
   every overwrite the simulator records must be flagged (recall), and how many writes were flagged.
3. No contention (the simulators): ``--quiet-sales`` sales, one every 3 s, alternating sides: nothing may
   be flagged.

Exit code 0 only when: with the companion, 0 units lost on WooCommerce; without it, every unit lost is
repaired or among the checkouts flagged; every Clover overwrite flagged; no flag without contention; every
run settled. Figures depend on the machine (printed first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from cloverwoo_daemon.sim.contention import Contention, real_target, run_contention, sim_target, summary_json
from cloverwoo_daemon.sim.woocommerce import WooSim

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "wordpress" / "cloverwoo-companion.php"


def start_store(store: Path) -> dict[str, str]:
    rig = Path(os.environ.get("CLOVERWOO_REALWOO_RIG") or REPO.parent / "shared" / "realwoo")
    up = subprocess.run([str(rig / "up"), str(store)], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        sys.exit(f"realwoo up {store} failed:\n{up.stderr[-2000:]}")
    return json.loads((store / "env.json").read_text())


def companion(store: Path, on: bool) -> None:
    """The whole install is one file in mu-plugins; removing it is the whole uninstall."""
    target = store / "www" / "wp-content" / "mu-plugins" / PLUGIN.name
    if on:
        shutil.copyfile(PLUGIN, target)
    else:
        target.unlink(missing_ok=True)


async def real_part(env: dict[str, str], store: Path, workdir: Path, args: argparse.Namespace) -> list[Contention]:
    out = []
    for mode in args.modes:
        on = mode == "companion"
        companion(store, on)
        target, http = real_target(env["REALWOO_URL"], env["REALWOO_CK"], env["REALWOO_CS"])
        try:
            r = await run_contention(target, workdir / f"real-{mode}", companion=on, sales=args.sales,
                                     rate=args.rate)
        finally:
            await http.aclose()
        print(f"  real store, {r.line()}", flush=True)
        out.append(r)
    companion(store, False)
    return out


async def sim_part(workdir: Path, *, sales: int, rate: float, min_clover_writes: int, companion_on: bool,
                   webhooks: bool) -> Contention:
    async with trio.open_nursery() as n:
        sim = WooSim(async_webhooks=False, companion=companion_on)
        await n.start(sim.run)
        r = await run_contention(sim_target(sim), workdir, companion=companion_on, sales=sales, rate=rate,
                                 woo_webhooks=webhooks, min_clover_writes=min_clover_writes)
        n.cancel_scope.cancel()
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, help="the realwoo store directory (default: a new temporary one, purged)")
    p.add_argument("--sales", type=int, default=2000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--modes", type=lambda s: s.split(","), default=["companion", "inventory_delta"])
    p.add_argument("--clover-writes", type=int, default=1000, help="contested Clover writes for the recall (0: skip)")
    p.add_argument("--quiet-sales", type=int, default=30, help="sales without contention (0: skip)")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{platform.platform()} | {os.cpu_count()} cores | Python {platform.python_version()} | "
          f"load {' '.join(load)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_integrity_"))
    fresh = args.store is None
    store = args.store or workdir / "store"
    results: list[Contention] = []
    ok = True
    try:
        if not args.skip_real:
            print(f"1. real WooCommerce ({store}): {args.sales} sales on one product at {args.rate:g}/s, half POS "
                  "(Clover simulator), half checkouts", flush=True)
            env = start_store(store)
            real = trio.run(real_part, env, store, workdir, args)
            results += real
            for r in real:
                lost = r.woo_units_lost
                ok &= r.settled and lost is not None
                if r.companion:
                    ok &= lost == 0
                else:
                    ok &= lost is not None and lost <= r.woo_flagged_units and (lost == 0 or r.woo_flagged_writes > 0)
                ok &= r.clover_overwrites_flagged == r.clover_overwrites
        if args.clover_writes:
            print(f"2. Clover's witness: at least {args.clover_writes} contested Clover writes (simulators; "
                  "a checkout and a POS sale on one item alternately, 10/s)", flush=True)
            r = trio.run(lambda: sim_part(workdir / "recall", sales=args.clover_writes, rate=10.0,
                                          min_clover_writes=args.clover_writes, companion_on=True, webhooks=True))
            results.append(r)
            recall = r.clover_overwrites_flagged / r.clover_overwrites if r.clover_overwrites else 1.0
            print(f"  {r.line()}\n  recall {recall:.1%} ({r.clover_overwrites_flagged} of {r.clover_overwrites} "
                  f"overwrites flagged over {r.clover_writes} Clover writes; {r.clover_flagged_writes} writes "
                  "flagged in all)", flush=True)
            ok &= r.settled and r.clover_writes >= args.clover_writes and recall == 1.0 and r.woo_units_lost == 0
        if args.quiet_sales:
            print(f"3. no contention: {args.quiet_sales} sales, one every 3 s, alternating sides (simulators, "
                  "without the companion)", flush=True)
            r = trio.run(lambda: sim_part(workdir / "quiet", sales=args.quiet_sales, rate=1 / 3,
                                          min_clover_writes=0, companion_on=False, webhooks=True))
            results.append(r)
            flagged = r.clover_flagged_writes + r.woo_flagged_writes
            print(f"  {r.line()}\n  false flags: {flagged}", flush=True)
            ok &= r.settled and flagged == 0 and r.woo_units_lost == 0 and r.clover_overwrites == 0
        if args.json:
            print(summary_json(results))
    finally:
        if fresh and not args.skip_real:
            rig = Path(os.environ.get("CLOVERWOO_REALWOO_RIG") or REPO.parent / "shared" / "realwoo")
            subprocess.run([str(rig / "down"), str(store), "--purge"], capture_output=True, timeout=300)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"verdict: {'ok' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
