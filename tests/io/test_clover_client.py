"""CloverClient against CloverSim over real loopback HTTP (port 0)."""

from __future__ import annotations

import random

import pytest
import trio
from structlog.testing import capture_logs

from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.io.clover import AppGate, CloverClient, whole_units
from cloverwoo_daemon.ports import NotFound, PermanentError, RemoteError
from cloverwoo_daemon.sim.clover import CloverSim, RateLimits

FAST = Backoff(base=0.01, cap=0.05, max_attempts=4)


@pytest.fixture
async def sim(nursery):
    s = CloverSim(seed=1)
    s.add_merchant("Downtown", merchant_id="MERCHANTAAAAA", token="tok-a-secret-0001")
    s.add_merchant("Airport", merchant_id="MERCHANTBBBBB", token="tok-b-secret-0002")
    await nursery.start(s.run)
    return s


@pytest.fixture
async def make_client(sim):
    clients = []
    app_gate = AppGate()

    def make(mid="MERCHANTAAAAA", token="tok-a-secret-0001", **kw):
        kw.setdefault("backoff", FAST)
        kw.setdefault("rng", random.Random(0))
        c = CloverClient(location=mid.lower(), merchant_id=mid, token=token, base_url=sim.base_url,
                         app_gate=kw.pop("app_gate", app_gate), **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


MID = "MERCHANTAAAAA"


@pytest.mark.parametrize("q,expected", [(None, None), (5.0, 5), (160.5, 160), (2.4999, 2), (-2.5, -3),
                                        (-0.4, -1), (2.9999999999999996, 3), (float("nan"), None)])
def test_whole_units_never_shows_more_than_clover_holds(q, expected):
    assert whole_units(q) == expected


async def test_a_change_keeps_the_fraction_clover_holds(sim, make_client):
    """Sold by weight: 2.4 in stock, one unit sold online is 1.4 left, not round(2.4) - 1 = 1."""
    a = sim.add_item(MID, "Cheese", quantity=2.4)
    c = make_client()
    seen: list[int] = []

    async def record(target: int) -> None:
        seen.append(target)

    assert await c.get_stock(a) == 2
    assert (await c.read_then_write(a, -1, record))[:2] == (2, 1)
    assert sim.stock(MID, a) == pytest.approx(1.4) and seen == [1]
    assert (await c.read_then_write(a, -2, record))[:2] == (1, -1)
    assert sim.stock(MID, a) == pytest.approx(-0.6)  # negative stays negative, fraction and all
    assert await c.get_stock(a) == -1  # a shop shows -1: never more than Clover holds


async def test_an_unanswered_stock_write_is_not_sent_again(sim, make_client):
    """A 503 after Clover applied the write: a resend would set the count again over a sale made since."""
    a = sim.add_item(MID, "Mug", quantity=5)
    sim.faults.down = True
    c = make_client(backoff=Backoff(base=0.01, cap=0.02, max_attempts=3))
    with pytest.raises(RemoteError) as exc:
        await c.set_stock(a, 1)
    assert "not resent" in str(exc.value)
    assert sim.count("POST item_stocks/{id}", MID) == 1


async def test_reads_and_writes_stock(sim, make_client):
    a = sim.add_item(MID, "Mug", sku=" MUG-1 ", quantity=7.6)
    b = sim.add_item(MID, "Gift card", sku="", quantity=None)
    c = make_client()
    assert await c.get_stock(a) == 7  # 7.6: seven whole units to sell
    assert await c.get_stock(b) is None  # no stock record: unknown, never 0
    assert await c.set_stock(a, 3) == 3
    assert sim.stock(MID, a) == 3.0
    assert await c.set_stock(b, 0) == 0  # a write creates the record
    assert sim.stock(MID, b) == 0.0
    assert sim.count("POST item_stocks/{id}", MID) == 2
    items = {i.item_id: i for i in await c.list_items()}
    assert items[a].quantity == 3 and items[a].sku == "MUG-1" and items[a].name == "Mug"
    assert items[b].quantity == 0 and items[b].sku is None


async def test_list_items_variants_and_filter(sim, make_client):
    gid, (small, large) = sim.add_item_group(MID, "Tee", [
        {"options": {"Size": "S"}, "sku": "TEE-S", "quantity": 2},
        {"options": {"Size": "L"}, "sku": "TEE-L", "quantity": 4},
    ])
    c = make_client()
    items = {i.item_id: i for i in await c.list_items()}
    assert items[small].item_group_id == gid and items[small].name == "Tee S"
    assert items[large].quantity == 4
    after = sim.now_ms() + 1
    await trio.sleep(0.01)
    sim.adjust(MID, large, 9)
    changed = await c.list_items(modified_since_ms=after)
    assert [(i.item_id, i.quantity) for i in changed] == [(large, 9)]


async def test_pagination_over_more_than_1000_items(sim, make_client):
    for n in range(2345):
        sim.add_item(MID, f"Item {n}", sku=f"SKU-{n:05d}", quantity=n)
    c = make_client()
    items = await c.list_items()
    assert len(items) == 2345
    assert len({i.item_id for i in items}) == 2345
    assert sorted(i.quantity for i in items) == list(range(2345))
    assert sim.count("GET items", MID) == 3  # 1000 + 1000 + 345


async def test_exact_multiple_of_page_ends_on_empty_page(sim, make_client):
    for n in range(1000):
        sim.add_item(MID, f"Item {n}", quantity=1)
    assert len(await make_client().list_items()) == 1000
    assert sim.count("GET items", MID) == 2


async def test_orders_feed_and_order_items(sim, make_client):
    x = sim.add_item(MID, "X", quantity=10)
    y = sim.add_item(MID, "Y", quantity=10)
    z = sim.add_item(MID, "Z", quantity=200)
    c = make_client()
    since = sim.now_ms()
    o1 = sim.pos_sale(MID, {x: 2, y: 1})
    big = sim.pos_sale(MID, {x: 1, z: 150})  # 151 line items: the expanded list stops at 100
    assert await c.order_item_ids(o1) == {x, y}
    assert await c.order_item_ids(big) == {x, z}
    ids, newest = await c.changed_item_ids_from_orders(since_ms=since)
    assert ids == {x, y, z}
    assert newest >= since
    assert await c.changed_item_ids_from_orders(since_ms=newest + 1) == (set(), newest + 1)
    with pytest.raises(NotFound):
        await c.order_item_ids("NOSUCHORDER00")


async def test_preflight_reads(sim, make_client):
    c = make_client()
    assert (await c.merchant())["name"] == "Downtown"
    props = await c.properties()
    assert props["trackStock"] is True and props["updateStock"] is True


async def test_wrong_token_or_other_merchants_token_is_permanent(sim, make_client):
    bad = make_client(token="not-a-token")
    with pytest.raises(PermanentError) as e1:
        await bad.list_items()
    other = make_client(token="tok-b-secret-0002")  # B's token on A's merchant
    with pytest.raises(PermanentError) as e2:
        await other.get_stock("ANYITEM000000")
    assert not isinstance(e2.value, NotFound)
    for e in (e1, e2):
        assert "401" in str(e.value) and "secret" not in str(e.value)


async def test_unknown_item_is_not_found(sim, make_client):
    c = make_client()
    gone = sim.add_item(MID, "Gone", quantity=1)
    sim.delete_item(MID, gone)
    for item_id in ("NOSUCHITEM000", gone):
        with pytest.raises(NotFound):
            await c.get_stock(item_id)
        with pytest.raises(NotFound):
            await c.set_stock(item_id, 1)


async def test_5xx_is_retried_then_succeeds(sim, make_client):
    a = sim.add_item(MID, "Mug", quantity=5)
    sim.faults.error_rate = 0.5  # seeded: some calls fail, the retries get through
    c = make_client(backoff=Backoff(base=0.01, cap=0.05, max_attempts=20))
    for _ in range(10):
        assert await c.get_stock(a) == 5
    calls = sim.count("GET item_stocks/{id}", MID)
    assert calls > 10  # some attempts failed and were retried


async def test_5xx_forever_raises_remote_error_after_bounded_attempts(sim, make_client):
    a = sim.add_item(MID, "Mug", quantity=5)
    sim.faults.down = True
    c = make_client(backoff=Backoff(base=0.01, cap=0.02, max_attempts=3))
    with capture_logs() as logs, pytest.raises(RemoteError) as exc:
        await c.get_stock(a)
    assert not isinstance(exc.value, PermanentError)
    assert "503" in str(exc.value) and "3 attempts" in str(exc.value)
    assert sim.count("GET item_stocks/{id}", MID) == 3
    assert "tok-a-secret-0001" not in repr(logs)


async def test_timeouts_are_retried(sim, make_client):
    a = sim.add_item(MID, "Mug", quantity=5)
    sim.faults.hang_rate = 1.0
    sim.faults.hang_seconds = 5.0
    c = make_client(timeout=0.2, backoff=Backoff(base=0.01, cap=0.02, max_attempts=2))
    with pytest.raises(RemoteError) as exc:
        await c.get_stock(a)
    assert "timeout" in str(exc.value)
    sim.faults.hang_rate = 0.0
    assert await c.get_stock(a) == 5


async def test_connection_refused_is_remote_error():
    # a port nothing listens on: bind one, note it, close it
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    c = CloverClient(location="x", merchant_id=MID, token="t", base_url=f"http://127.0.0.1:{port}",
                     app_gate=AppGate(), backoff=Backoff(base=0.01, cap=0.02, max_attempts=2))
    try:
        with pytest.raises(RemoteError) as exc:
            await c.get_stock("ITEM")
        assert "connection error" in str(exc.value)
    finally:
        await c.aclose()


async def test_burst_of_100_writes_stays_within_clover_limits(sim, make_client):
    ids = [sim.add_item(MID, f"Item {n}", quantity=0) for n in range(100)]
    c = make_client()
    sim.reset_stats()
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            for k, iid in enumerate(ids):
                n.start_soon(c.set_stock, iid, k)
    assert [sim.stock(MID, i) for i in ids] == [float(k) for k in range(100)]
    stats = sim.token_stats(MID)
    assert stats.max_concurrency <= 5
    assert sim.app_stats().max_concurrency <= 5
    assert c.token_gate.max_in_flight <= 5
    assert sim.count("POST item_stocks/{id}", MID) == 100 + stats.rejected_429
    assert not [e for e in logs if e["event"] == "clover_request_failed"]


async def test_429_with_retry_after_is_honoured_and_logged(sim, make_client):
    sim.limits = RateLimits(token_rate=4, token_burst=4, early_retry_penalty=0.0)
    ids = [sim.add_item(MID, f"Item {n}", quantity=0) for n in range(12)]
    c = make_client(backoff=Backoff(base=0.05, cap=0.5, max_attempts=10))  # client paces at 16/s: too fast
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            for k, iid in enumerate(ids):
                n.start_soon(c.set_stock, iid, k + 1)
    assert [sim.stock(MID, i) for i in ids] == [float(k + 1) for k in range(12)]
    limited = [e for e in logs if e["event"] == "clover_rate_limited"]
    assert limited, "the sim's lower limit should have produced 429s"
    assert sim.token_stats(MID).rejected_429 == len(limited)
    assert {e["limit_header"] for e in limited} == {"X-RateLimit-tokenLimit"}
    assert all(e["retry_after"] >= 1 and e["limit"] == "4" for e in limited)
    assert "tok-a-secret-0001" not in repr(logs)


async def test_concurrency_429_blocks_the_token_gate(sim, make_client):
    sim.limits = RateLimits(token_concurrent=2)
    sim.faults.latency = 0.2  # several pacing intervals (1/13 s): more than two requests overlap
    ids = [sim.add_item(MID, f"Item {n}", quantity=0) for n in range(6)]
    c = make_client(backoff=Backoff(base=0.05, cap=0.5, max_attempts=10))
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            for iid in ids:
                n.start_soon(c.set_stock, iid, 5)
    assert all(sim.stock(MID, i) == 5.0 for i in ids)
    limited = [e for e in logs if e["event"] == "clover_rate_limited"]
    assert limited and {e["limit_header"] for e in limited} == {"X-RateLimit-tokenConcurrentLimit"}


async def test_app_gate_is_shared_across_locations(sim, make_client):
    gate = AppGate(rate=50, in_flight=3)
    sim.faults.latency = 0.02
    a_items = [sim.add_item("MERCHANTAAAAA", f"A{n}", quantity=0) for n in range(10)]
    b_items = [sim.add_item("MERCHANTBBBBB", f"B{n}", quantity=0) for n in range(10)]
    a = make_client(app_gate=gate)
    b = make_client("MERCHANTBBBBB", "tok-b-secret-0002", app_gate=gate)
    async with trio.open_nursery() as n:
        for iid in a_items:
            n.start_soon(a.set_stock, iid, 1)
        for iid in b_items:
            n.start_soon(b.set_stock, iid, 2)
    assert gate.max_in_flight == 3
    assert sim.app_stats().max_concurrency <= 3
    assert sim.stock("MERCHANTBBBBB", b_items[-1]) == 2.0


async def test_token_never_in_repr(sim, make_client):
    c = make_client()
    assert "tok-a" not in repr(c)


async def test_app_limit_429_without_retry_after_blocks_the_app_gate(sim, make_client):
    sim.limits = RateLimits(app_rate=4, app_burst=4, early_retry_penalty=0.0, rate_retry_after=False)
    a_items = [sim.add_item("MERCHANTAAAAA", f"A{n}", quantity=0) for n in range(4)]
    b_items = [sim.add_item("MERCHANTBBBBB", f"B{n}", quantity=0) for n in range(4)]
    a = make_client(backoff=Backoff(base=0.05, cap=0.5, max_attempts=10))
    b = make_client("MERCHANTBBBBB", "tok-b-secret-0002", backoff=Backoff(base=0.05, cap=0.5, max_attempts=10))
    with capture_logs() as logs:
        async with trio.open_nursery() as n:
            for iid in a_items:
                n.start_soon(a.set_stock, iid, 3)
            for iid in b_items:
                n.start_soon(b.set_stock, iid, 4)
    assert [sim.stock("MERCHANTBBBBB", i) for i in b_items] == [4.0] * 4
    assert [sim.stock("MERCHANTAAAAA", i) for i in a_items] == [3.0] * 4
    limited = [e for e in logs if e["event"] == "clover_rate_limited"]
    assert limited
    assert {(e["limit_header"], e["gate"], e["retry_after"]) for e in limited} == {
        ("X-RateLimit-crossTokenLimit", "app", None)
    }
