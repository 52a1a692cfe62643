"""Crash safety, whole daemon: a real ``cloverwoo run`` subprocess SIGKILLed and restarted on its state file.

What these tests hold the daemon to (interface.md, sync-model.md, io/store.py):

- a delivery acknowledged with 200 is durable: a SIGKILL right after the
  acknowledgement leaves it pending in the inbox, the next start replays it,
  and the sale lands exactly once (not lost, not twice);
- killed at any moment while sales flow on both sides, and restarted, the
  daemon ends with both sides at initial stock minus every sale, and nothing
  left pending (no unsettled event, no write intent).

Stock is compared with what the test sold, never only side against side: a
sale applied twice propagates to both sides, which would then agree on a
wrong number.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import trio

from cloverwoo_daemon.sim.harness import SimProduct, World, start_world
from tests.chaos.rig import SCALE
from tests.e2e.conftest import wait_for
from tests.e2e.daemon_proc import DaemonProc, free_port, pending_inbox, pending_intents, read_state

SEED = 20261126
TRIALS = 5 * SCALE  # CLOVERWOO_CHAOS_SCALE (make chaos) multiplies the random kills


async def _start(nursery: trio.Nursery, tmp_path: Path, **world_kw: Any) -> tuple[World, DaemonProc]:
    world = await start_world(nursery, tmp_path / "world", listen=f"127.0.0.1:{free_port()}", **world_kw)
    daemon = DaemonProc(world.config_path)
    url = await daemon.start(nursery)
    await world.connect(url)
    n = len(world.products)
    await daemon.wait_status(lambda s: s["bindings"] == n, what=f"{n} bindings")
    await daemon.wait_idle()
    return world, daemon


async def test_sigkill_after_ack_before_merge_applies_the_sale_exactly_once(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world, daemon = await _start(nursery, tmp_path, products=2, stock=20)
        state = world.cfg.state.path
        try:
            p, other = world.products
            loc = "downtown"
            # WooCommerce answers 503 to everything: the merge cannot finish, so the
            # kill lands between the acknowledgement and the merge, every time.
            world.woo.faults.down = True
            before = len(world.clover.webhook_log)
            world.clover.pos_sale(world.locations[loc], {p.clover[loc]: 3})
            await wait_for(lambda: any(a.outcome == "sent" and a.status == 200
                                       for a in world.clover.webhook_log[before:]),
                           timeout=30, what="the sale's webhook acknowledged with 200")

            code = await daemon.kill()
            assert code == -signal.SIGKILL
            assert world.woo_stock(p) == 20  # nothing reached WooCommerce
            pending = pending_inbox(state)
            assert pending >= 1, "an acknowledged delivery must be in the inbox after SIGKILL"
            print(f"\n[crash-ack] killed with {pending} pending event(s), {pending_intents(state)} intent(s)")

            world.woo.faults.down = False
            url = await daemon.start(nursery)
            assert url == daemon.listen_url
            await wait_for(lambda: world.woo_stock(p) == 17, timeout=30, what="woo stock 17 after restart")
            await daemon.wait_idle()

            assert world.woo_stock(p) == 17 and world.clover_stock(p) == 17
            assert [(w.before, w.after) for w in world.woo.stock_writes_for(p.woo)] == [(20, 17)]
            assert world.woo_stock(other) == 20 and world.woo.stock_writes_for(other.woo) == []
            assert daemon.events("inbox_replayed", run=2), "the pending event was not replayed at start"

            assert await daemon.terminate() == 0
            assert pending_inbox(state) == 0
            assert pending_intents(state) == 0
            print(f"[crash-ack] after restart: woo {world.woo_stock(p)}, clover {world.clover_stock(p)}; "
                  f"inbox settled; exit codes {daemon.exit_codes}")
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()


class _Burst:
    """Random sales on both sides, recorded so the test knows what the stock must end at.

    Clover sells only the even products and WooCommerce only the odd ones, so
    the daemon never writes a Clover item that the register is selling at the
    same moment: that read-then-write race on Clover's absolute writes is the
    documented residual loss (sync-model.md, "The remote race"), measured by
    its own test, and would make this one flaky without saying anything about
    crashes.
    """

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.sold: dict[str, int] = {p.sku: 0 for p in world.products}
        self.sales = 0
        self.pos_side = world.products[0::2]
        self.web_side = world.products[1::2]

    def one(self) -> None:
        w, rng = self.world, self.rng
        qty = rng.randint(1, 2)
        if rng.random() < 0.5:
            p = rng.choice(self.pos_side)
            loc = rng.choice(list(p.clover))
            w.clover.pos_sale(w.locations[loc], {p.clover[loc]: qty})
        else:
            p = rng.choice(self.web_side)
            w.woo.online_order({p.woo: qty})
        self.sold[p.sku] += qty
        self.sales += 1

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            self.one()
            await trio.sleep(self.rng.uniform(0.01, 0.05))

    def expected(self, p: SimProduct, initial: int) -> int:
        return initial - self.sold[p.sku]


async def test_random_sigkills_during_a_burst_neither_lose_nor_double_a_sale(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    stock = 1000 * SCALE  # about 70 sales of 1.5 units a trial, over three products a side
    async with trio.open_nursery() as nursery:
        world, daemon = await _start(nursery, tmp_path, products=6, locations=2, stock=stock // 2)
        state = world.cfg.state.path
        burst = _Burst(world, rng)
        outcomes: list[str] = []
        try:
            for trial in range(1, TRIALS + 1):
                stop = trio.Event()
                async with trio.open_nursery() as sales:
                    sales.start_soon(burst.run, stop)
                    await trio.sleep(rng.uniform(0.1, 1.5))  # the random moment
                    sold_at_kill = burst.sales
                    code = await daemon.kill()
                    at_kill = (pending_inbox(state), pending_intents(state))
                    await trio.sleep(rng.uniform(0.0, 0.5))  # sales go on while it is down
                    await daemon.start(nursery)
                    await trio.sleep(rng.uniform(0.0, 0.8))  # and while it catches up
                    stop.set()

                def converged() -> bool:
                    return all(world.woo_stock(p) == burst.expected(p, stock)
                               and world.clover_stock(p) == burst.expected(p, stock) for p in world.products)

                ok = True
                try:
                    await wait_for(converged, timeout=45, what=f"trial {trial}: both sides at initial - sales")
                    await daemon.wait_idle()
                except AssertionError:
                    ok = False
                got = {p.sku: (world.clover_stock(p), world.woo_stock(p), burst.expected(p, stock))
                       for p in world.products}
                ok = ok and converged()
                line = (f"trial {trial}: killed (exit {code}) after {sold_at_kill} sales with {at_kill[0]} pending "
                        f"event(s) and {at_kill[1]} write intent(s); {burst.sales} sales in all; "
                        f"{'converged' if ok else 'DIVERGED'}")
                outcomes.append(line)
                print(("\n" if trial == 1 else "") + "[crash-burst] " + line)
                assert code == -signal.SIGKILL
                assert ok, f"{line}\n(clover, woo, expected) per sku: {got}\n{daemon.tail()}"

            assert await daemon.terminate() == 0
            assert pending_inbox(state) == 0
            assert pending_intents(state) == 0
            conflicts = read_state(state, "SELECT kind, sku FROM conflicts WHERE resolved_at IS NULL")
            print(f"[crash-burst] {TRIALS} trials, {burst.sales} sales, all converged; open conflicts: {conflicts}")
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()


async def test_an_inbox_row_that_no_longer_decodes_is_set_aside_not_a_crash_loop(tmp_path: Path) -> None:
    """A pending inbox row this version cannot decode (another version wrote it, or it is damaged) beside a
    pending sale's event. Before, every start replayed it, failed to decode it and exited: under systemd a crash
    loop, with every later sale waiting. Now it is moved to ``inbox_quarantine`` with a log line and counted in
    ``status``; the sale beside it is replayed and lands, and the next start is clean."""
    import msgspec

    from cloverwoo_daemon.io.store import Store
    from cloverwoo_daemon.messages import CloverChange, InboundEvent

    async with trio.open_nursery() as nursery:
        world = await start_world(nursery, tmp_path / "world", products=2, listen=f"127.0.0.1:{free_port()}",
                                  poll_every="off")  # only the replayed event can carry the sale
        daemon = DaemonProc(world.config_path)
        try:
            url = await daemon.start(nursery)
            await world.connect(url)
            await daemon.wait_status(lambda s: s["bindings"] == 2, what="2 bindings")
            await daemon.wait_idle()
            assert await daemon.terminate() == 0
            p = world.products[0]
            mid, item = world.locations["downtown"], p.clover["downtown"]
            world.clover.faults.webhooks_enabled = False
            world.clover.pos_sale(mid, {item: 2})  # stored below as the daemon would have stored its webhook
            sale: InboundEvent = CloverChange(mid, "I", item, "UPDATE", 1_790_000_000_000)
            state = world.cfg.state.path
            async with trio.open_nursery() as n:
                store = Store(state)
                await n.start(store.run)
                await store.accept_events([
                    ("sale", msgspec.json.encode(sale)),
                    ("from-elsewhere", b'{"source": "square", "id": 7}'),
                ])
                n.cancel_scope.cancel()
            assert pending_inbox(state) == 2

            await daemon.start(nursery)
            await wait_for(lambda: world.woo_stock(p) == 18, timeout=30, what="the replayed sale in WooCommerce")
            await daemon.wait_status(lambda s: s["store"]["quarantined"] == 1, what="1 event quarantined")
            assert (await daemon.wait_idle())["store"]["pending_inbox"] == 0
            [line] = daemon.events("inbox_event_quarantined", run=2)
            assert line["level"] == "error" and "ValidationError" in line["error"]
            assert read_state(state, "SELECT dedup_key FROM inbox_quarantine") == [("from-elsewhere",)]
            assert await daemon.terminate() == 0
            await daemon.start(nursery)  # and the start after that is clean
            await daemon.wait_idle()
            assert daemon.events("inbox_event_quarantined", run=3) == []
            assert pending_inbox(state) == 0 and world.woo_stock(p) == 18 and world.clover_stock(p) == 18
            assert await daemon.terminate() == 0
        finally:
            await daemon.aclose()
            nursery.cancel_scope.cancel()
