"""SIGKILL at named moments, landed deterministically: the daemon subprocess is killed while a fault proxy holds
exactly the request that defines the moment, then restarted on the same state file.

The moments (each trial picks the next, in turn, while a burst of sales runs on both sides):

- ``ack``: a webhook was committed by the daemon and its 200 is parked at the proxy (the sender has not yet
  heard it); after the kill the 200 is delivered: an acknowledged event whose daemon is dead.
- ``merge``: a merge's fresh WooCommerce read is parked (a merge in progress, nothing written yet).
- ``between``: a merge that must write both sides (a POS sale and an online sale of one product, both seen by
  one merge); WooCommerce's write has landed and the Clover write is parked: killed between the two writes.
  Armed once X is converged and quiet, so the parked reads are this merge's, not a replayed one's.
- ``batch``: a WooCommerce ``/batch`` carrying several merges' deltas is parked.
- ``initial``: a fresh daemon's initial sync, its WooCommerce catalogue read parked (test 2).

After each kill the parked request is forwarded (it lands, but the dead daemon never hears the answer) or
dropped (it never lands), chosen by the seeded RNG. Then: restart, settle, and both sides must equal initial
stock minus every sale; at the end no event is pending, no write intent is left and no conflict is open.
A sale applied twice would show as stock below the ledger; one lost, above it.

``CLOVERWOO_CHAOS_SCALE`` multiplies the trials (``make chaos``); the default keeps this file short for
``make test``. Trials and outcomes are printed (``pytest -s``).
"""

from __future__ import annotations

import random
import re
import signal
from pathlib import Path

import trio

from cloverwoo_daemon.sim.harness import SimProduct
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.rig import SCALE, Rig, start_rig
from tests.e2e.conftest import wait_for
from tests.e2e.daemon_proc import pending_inbox, pending_intents, read_state

SEED = 20_261_201
MOMENTS = ("ack", "merge", "between", "batch")
TRIALS = len(MOMENTS) * SCALE
_WOO_GET_ONE = re.compile(r"/wp-json/wc/v3/products/(\d+)$")
_rearmed = [0]  # ``between`` arms that caught a merge of X already under way and were made again


async def _wait_held(proxy: FaultProxy, what: str, timeout: float = 30.0) -> None:
    await wait_for(lambda: bool(proxy.pending_holds()), timeout=timeout, what=what)


def _disarm(rig: Rig) -> None:
    for proxy in (rig.woo, rig.clover, rig.hooks):
        proxy.knobs.hold = proxy.knobs.hold_reply = None


def _release(rig: Rig, rng: random.Random) -> str:
    """Let every parked request go on or drop it; returns what happened, for the report."""
    done = []
    for proxy in (rig.woo, rig.clover, rig.hooks):
        for h in proxy.pending_holds():
            forward = rng.random() < 0.5
            h.release(forward)
            done.append(f"{proxy.name} {h.method} {h.path.rsplit('/', 1)[-1]} {'forwarded' if forward else 'dropped'}")
    return ", ".join(done) or "nothing parked"


async def _arm_ack(rig: Rig, rng: random.Random) -> None:
    rig.hooks.knobs.hold_reply = lambda m, p: m == "POST" and p.startswith("/webhooks/")
    prods = rig.world.products[:6]  # not X: a register sale of X could race the daemon's Clover write of it
    if rng.random() < 0.5:
        rig.pos_sale(rng.choice(prods[0::2]), rng.randint(1, 2))
    else:
        rig.web_sale(rng.choice(prods[1::2]), rng.randint(1, 2))
    await _wait_held(rig.hooks, "a webhook's 200 parked at the proxy")


async def _arm_merge(rig: Rig, rng: random.Random) -> None:
    rig.woo.knobs.hold = lambda m, p: m == "GET" and bool(_WOO_GET_ONE.search(p))
    rig.pos_sale(rng.choice(rig.world.products[0:6:2]))
    await _wait_held(rig.woo, "a merge's WooCommerce read parked")


async def _x_quiet(rig: Rig, x: SimProduct, woo_path: str, clover_path: str) -> None:
    """X converged, no write intent for it, and no request about it at either store for a second: no merge of
    X is under way that a hold of X's reads could catch halfway (its Woo read passed, its Clover read parked)."""
    bid = f"woo:{x.woo.product_id}:{x.woo.variation_id}"

    def quiet() -> bool:
        now = trio.current_time()
        for proxy, path in ((rig.woo, woo_path), (rig.clover, clover_path)):
            if any(t > now - 1.0 and p.endswith(path) for t, _, p in proxy.arrivals[-300:]):
                return False
        return (rig.world.clover_stock(x) == rig.world.woo_stock(x) == rig.expected(x)
                and not read_state(rig.state, f"SELECT 1 FROM intents WHERE binding_id = '{bid}'"))

    await wait_for(quiet, timeout=60, what="X converged and quiet before arming")


async def _arm_between(rig: Rig, rng: random.Random) -> None:
    x = rig.world.products[-1]  # never sold by the burst: no register sale can race its Clover write
    item = next(iter(x.clover.values()))
    pid = str(x.woo.product_id)
    woo_path, clover_path = f"/products/{pid}", f"/item_stocks/{item}"
    reads = lambda m, p: m == "GET" and (p.endswith(woo_path) or p.endswith(clover_path))  # noqa: E731
    for _attempt in range(5):
        await _x_quiet(rig, x, woo_path, clover_path)
        rig.woo.knobs.hold = reads
        rig.clover.knobs.hold = reads
        rig.pos_sale(x, rng.randint(1, 2))
        # Both reads of one merge are sent together. One side parked alone for a second belongs to a merge that
        # began before the holds (a replayed event); let it finish and arm again.
        lone_since: float | None = None
        with trio.move_on_after(30) as waiting:
            while not (rig.woo.pending_holds() and rig.clover.pending_holds()):
                if bool(rig.woo.pending_holds()) != bool(rig.clover.pending_holds()):
                    lone_since = lone_since if lone_since is not None else trio.current_time()
                    if trio.current_time() - lone_since > 1.0:
                        break
                else:
                    lone_since = None
                await trio.sleep(0.02)
        if waiting.cancelled_caught:
            raise AssertionError("timed out after 30s waiting for the merge's reads of X parked")
        if rig.woo.pending_holds() and rig.clover.pending_holds():
            break
        rig.woo.knobs.hold = rig.clover.knobs.hold = None
        rig.woo.release_all(), rig.clover.release_all()
        _rearmed[0] += 1
    else:
        raise AssertionError("five arming attempts each caught a merge of X already under way")
    rig.web_sale(x, rng.randint(1, 2))  # the merge will now see a change on each side
    writes_before = len(rig.world.woo.stock_writes_for(x.woo))
    rig.woo.knobs.hold = None
    rig.clover.knobs.hold = lambda m, p: m == "POST" and p.endswith(clover_path)
    for proxy in (rig.woo, rig.clover):
        for h in proxy.pending_holds():
            h.release(True)
    await _wait_held(rig.clover, "the merge's Clover write of X parked")
    assert len(rig.world.woo.stock_writes_for(x.woo)) > writes_before, "the WooCommerce write did not land first"


async def _arm_batch(rig: Rig, rng: random.Random) -> None:
    rig.woo.knobs.hold = lambda m, p: m == "POST" and p.endswith("/batch")
    for p in rig.world.products[0:6:2]:
        rig.pos_sale(p, rng.randint(1, 2))
    await _wait_held(rig.woo, "a WooCommerce /batch parked")


ARM = {"ack": _arm_ack, "merge": _arm_merge, "between": _arm_between, "batch": _arm_batch}


async def test_sigkill_at_each_named_moment_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    async with trio.open_nursery() as nursery:
        rig = await start_rig(nursery, tmp_path, seed=SEED, products=7, stock=100 * SCALE + 100, timeout="3s")
        lines: list[str] = []
        try:
            stop = trio.Event()
            async with trio.open_nursery() as shoppers:
                burst_rng = random.Random(SEED + 1)
                shoppers.start_soon(_burst, rig, burst_rng, stop)
                for trial in range(TRIALS):
                    moment = MOMENTS[trial % len(MOMENTS)]
                    try:
                        await ARM[moment](rig, rng)
                    except AssertionError as exc:
                        (rig.world.dir / "daemon.log").write_text(rig.daemon.output_text())
                        raise AssertionError(f"trial {trial + 1} [{moment}]: {exc}; after\n" + "\n".join(lines[-8:])
                                             + f"\n{rig.table()}\n{rig.daemon.tail()}") from None
                    code = await rig.daemon.kill()
                    at_kill = (pending_inbox(rig.state), pending_intents(rig.state))
                    _disarm(rig)
                    released = _release(rig, rng)
                    await trio.sleep(rng.uniform(0.0, 0.3))  # sales go on while it is down
                    await rig.daemon.start(nursery)
                    lines.append(f"trial {trial + 1} [{moment}]: exit {code}, {at_kill[0]} pending event(s), "
                                 f"{at_kill[1]} intent(s) at kill; {released}")
                    assert code == -signal.SIGKILL
                stop.set()
            await rig.wait_converged(timeout=60)
            await rig.daemon.wait_idle(timeout=60)
            assert rig.converged(), rig.table()
            assert await rig.daemon.terminate() == 0
            assert pending_inbox(rig.state) == 0
            assert pending_intents(rig.state) == 0
            conflicts = read_state(rig.state, "SELECT kind, sku FROM conflicts WHERE resolved_at IS NULL")
            replayed = len(rig.daemon.events("inbox_replayed"))
            print("\n" + "\n".join(f"[crash-moments] {ln}" for ln in lines))
            print(f"[crash-moments] {TRIALS} kills, {rig.sales} sales, lost 0, doubled 0 (both sides = initial - "
                  f"sales for all {len(rig.world.products)} products); inbox replays {replayed}; "
                  f"open conflicts {conflicts}; 'between' re-armed {_rearmed[0]} time(s)")
            assert conflicts == []
        finally:
            rig.woo.release_all(), rig.clover.release_all(), rig.hooks.release_all()
            await rig.daemon.aclose()
            nursery.cancel_scope.cancel()


async def _burst(rig: Rig, rng: random.Random, stop: trio.Event) -> None:
    """Background sales on the six burst products (X, the last, is reserved for the ``between`` moment)."""
    prods = rig.world.products[:6]
    while not stop.is_set():
        if rng.random() < 0.5:
            rig.pos_sale(rng.choice(prods[0::2]), 1)
        else:
            rig.web_sale(rng.choice(prods[1::2]), 1)
        await trio.sleep(rng.uniform(0.05, 0.25))


async def test_sigkill_mid_initial_sync_then_restart_converges(tmp_path: Path) -> None:
    rng = random.Random(SEED + 7)
    async with trio.open_nursery() as nursery:
        rig = await start_rig(nursery, tmp_path, seed=SEED + 7, products=6, stock=100, start=False, timeout="3s")
        try:
            kills = 0
            # The first catalogue read of the first start is parked: the daemon is mid initial sync.
            rig.woo.knobs.hold = lambda m, p: m == "GET" and p.endswith("/wp-json/wc/v3/products")
            for _ in range(SCALE):
                await _start_unready(rig, nursery)
                await _wait_held(rig.woo, "the initial sync's WooCommerce catalogue read parked")
                # Register sales only: before a binding's first sync there is no base, so the configured
                # source of truth (Clover) wins and an online sale made then is overwritten by design.
                for p in rng.sample(rig.world.products, 3):
                    rig.pos_sale(p, rng.randint(1, 2))
                assert await rig.daemon.kill() == -signal.SIGKILL
                kills += 1
                for h in rig.woo.pending_holds():
                    h.release(rng.random() < 0.5)
            rig.woo.knobs.hold = None
            await rig.world.connect(rig.hooks.url)
            await rig.daemon.start(nursery)
            n = len(rig.world.products)
            await rig.daemon.wait_status(lambda s: s["bindings"] == n, what=f"{n} bindings", timeout=60)
            await rig.daemon.wait_idle(timeout=60)
            for _ in range(5):
                rig.random_sale(rng)
            await rig.wait_converged(timeout=60)
            await rig.daemon.wait_idle(timeout=60)
            assert await rig.daemon.terminate() == 0
            assert pending_inbox(rig.state) == 0 and pending_intents(rig.state) == 0
            print(f"\n[crash-initial] {kills} kill(s) mid initial sync, {rig.sales} sales; converged, "
                  f"nothing pending")
        finally:
            rig.woo.release_all()
            await rig.daemon.aclose()
            nursery.cancel_scope.cancel()


async def _start_unready(rig: Rig, nursery: trio.Nursery) -> None:
    """Start the daemon; it may log ``daemon_ready`` before or after its catalogue read, so wait for either."""
    with trio.move_on_after(60):
        async with trio.open_nursery() as n:
            async def started() -> None:
                await rig.daemon.start(nursery)
                n.cancel_scope.cancel()

            async def parked() -> None:
                await _wait_held(rig.woo, "catalogue read parked", timeout=60)
                n.cancel_scope.cancel()

            n.start_soon(started)
            n.start_soon(parked)


async def test_clover_write_landed_but_its_target_never_committed_is_not_applied_twice(tmp_path: Path) -> None:
    """The one crash state a proxy cannot time: the target of a read-then-write is committed *concurrently* with
    the Clover POST (io/clover.py ``read_then_write``), so a kill can leave a landed write with no recorded
    target. The state is made exactly: the POST is parked, the daemon killed, the target removed from the
    stored intent (as if the kill beat that commit), then the POST is forwarded (it lands) or dropped; one of
    each per ``CLOVERWOO_CHAOS_SCALE``."""
    import sqlite3

    import msgspec

    from cloverwoo_daemon.core.merge import WriteIntent

    async with trio.open_nursery() as nursery:
        rig = await start_rig(nursery, tmp_path, seed=SEED + 11, products=2, stock=50 * SCALE, timeout="3s")
        try:
            outcomes = []
            p = rig.world.products[1]  # sold online only: the daemon writes its Clover item
            item = next(iter(p.clover.values()))
            for forward in (True, False) * SCALE:
                rig.clover.knobs.hold = lambda m, path: m == "POST" and path.endswith(f"/item_stocks/{item}")
                rig.web_sale(p, 2)
                await _wait_held(rig.clover, "the Clover write parked")
                assert await rig.daemon.kill() == -signal.SIGKILL
                rig.clover.knobs.hold = None
                conn = sqlite3.connect(rig.state)
                try:
                    (bid, raw), = conn.execute("SELECT binding_id, intent FROM intents").fetchall()
                    intent = msgspec.json.decode(raw, type=WriteIntent)
                    assert intent.clover_started, intent
                    unknown = msgspec.structs.replace(intent, clover_targets={})
                    conn.execute("UPDATE intents SET intent = ? WHERE binding_id = ?",
                                 (msgspec.json.encode(unknown), bid))
                    conn.commit()
                finally:
                    conn.close()
                rig.clover.release_all(forward)
                await trio.sleep(0.2)
                await rig.daemon.start(nursery)
                await rig.wait_converged(timeout=30)
                await rig.daemon.wait_idle(timeout=30)
                assert rig.converged(), rig.table()
                outcomes.append(f"write {'landed' if forward else 'lost'}: clover {rig.world.clover_stock(p)}, "
                                f"woo {rig.world.woo_stock(p)}, expected {rig.expected(p)}")
            assert await rig.daemon.terminate() == 0
            conflicts = read_state(rig.state, "SELECT kind, detail FROM conflicts WHERE resolved_at IS NULL")
            shown = outcomes
            if len(outcomes) > 4:
                shown = outcomes[:2] + [f"... {len(outcomes) - 4} more ..."] + outcomes[-2:]
            print(f"\n[crash-target-unknown] {len(outcomes)} recoveries: " + "; ".join(shown)
                  + f"; open conflicts {conflicts}")
            assert conflicts == []
        finally:
            rig.clover.release_all()
            await rig.daemon.aclose()
            nursery.cancel_scope.cancel()
