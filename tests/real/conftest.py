"""The real-store tier: tests against a real WordPress 7.1 + WooCommerce 11.0.1 on loopback.

The store comes from the realwoo rig (``up``/``down`` scripts beside the repo,
see ``stores.find_rig``). It is started once per test session in a fresh
temporary directory and purged at the end; with ``CLOVERWOO_REALWOO_DIR=DIR``
the store in DIR is used instead and kept running, which turns a 10-15 s
start into 0.5 s (docs/TESTING.md). Without a rig every test that needs the
store is SKIPPED, and the run's summary says why. If the rig exists but
``up`` fails, those tests ERROR with the end of its output: a broken rig is
never a silent skip.

How to use it
-------------
Fixtures (all function-scoped unless said):

``realwoo`` -> ``stores.RealStore``
    The real store for one test. REST helpers that need no knowledge of the
    store's contents: ``create_product(stock=, manage_stock=, backorders=)``,
    ``create_variable_product({"S": 5, "M": None})`` (None: stock not
    managed), ``order({item: units}, set_paid=True)``,
    ``refund(order, {item: units}, restock=True)``,
    ``set_order_status(id, "cancelled")``, ``set_stock(item, n)`` (a hand
    edit), ``create_webhook(topic, url, secret)`` / ``set_webhook_status`` /
    ``delete_webhook``, raw ``request``/``ok``, and ``client()``: the
    daemon's own ``WooClient`` for this store. Every product gets a unique
    SKU, so tests never assume an empty store. Store-level switches:
    ``await set_sync_webhooks(True)`` (WooCommerce delivers inside the request
    that fires, 70-200 ms; off is the default async delivery),
    ``async with cron_ticking():`` (the WP-Cron traffic async deliveries need:
    they arrive 20-60 s late), ``async with deliveries_held():`` (WP-Cron
    runs nothing, async deliveries stay queued), ``add_key("read")`` (another
    API key), ``rig.dir`` / ``rig.mu_plugins`` (to install a plugin file; it
    is live on the next request) and ``rig.sql(query)``. At the end of the
    test its webhooks and keys are deleted and delivery is async again.
    A plugin file a test installs is removed when that test ends (see the
    ``store`` fixture of ``test_companion.py``): every other test sees the
    store as the rig made it, without the companion.

``webhook_listener`` -> ``stores.WebhookListener``
    A receiver on ``127.0.0.1:<port 0>`` with its own ``secret``: give
    ``listener.url`` and ``listener.secret`` to ``create_webhook``. It checks
    every signature and parses every body with the daemon's own
    ``core.webhook_parse``; ``deliveries(topic, resource_id)``, ``pings()``.

``store`` -> ``stores.WooStore``
    Parametrized: the simulator (``[sim]``) and the real store (``[real]``,
    marked ``realwoo``), same helpers. For contract tests: one test body, run
    against both, so a difference between them fails a test.

``realwoo_rig`` (session) -> ``stores.Rig``
    The running store itself (URL, key, directory).

``daemon_world`` (module) -> ``daemon_world.DaemonWorld``
    The daemon in the loop: the real store, the Clover simulator and the
    daemon started as the units start it (``cloverwoo run --config``), Basic
    auth, the store's webhooks created by ``cloverwoo webhooks register``.
    One per test module; tests make their own products (``pair``,
    ``variable_pair``) and ``bind`` them. Read ``daemon_world.py``'s docstring.

Every test that uses the real store is marked ``realwoo``:
``pytest -m realwoo`` runs only them, ``-m "not realwoo"`` none of them.
Use ``stores.wait_for(predicate, timeout=, what=)`` for every wait.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.real.daemon_world import DaemonWorld
from tests.real.stores import RealStore, Rig, SimStore, WebhookListener, WooStore, find_rig

_REPORT: dict[str, Any] = {"skip": None, "rig": None, "seconds": 0.0, "tests": 0}


@pytest.fixture(scope="session")
def realwoo_rig() -> Iterator[Rig]:
    path, why = find_rig()
    if path is None:
        _REPORT["skip"] = why
        pytest.skip(why)
    kept = os.environ.get("CLOVERWOO_REALWOO_DIR")
    try:
        rig = Rig.start(path, Path(kept) if kept else None)
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"the realwoo rig is there but the store did not start: {exc}", pytrace=False)
    _REPORT["rig"] = rig
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="module")
def daemon_world(realwoo_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonWorld]:
    with DaemonWorld.start(realwoo_rig, tmp_path_factory.mktemp("daemon-world")) as world:
        yield world
    assert world.exit_code == 0, f"the daemon exited {world.exit_code} on SIGTERM\n{world.tail()}"


@pytest.fixture
async def realwoo(realwoo_rig: Rig) -> AsyncIterator[RealStore]:
    store = RealStore(realwoo_rig)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def webhook_listener(nursery: trio.Nursery) -> WebhookListener:
    listener = WebhookListener()
    await listener.start(nursery)
    return listener


@pytest.fixture(params=[pytest.param("sim"), pytest.param("real", marks=pytest.mark.realwoo)])
def store_rig(request: pytest.FixtureRequest) -> Rig | None:
    """The rig for ``store[real]``, None for ``store[sim]`` (a sync fixture: it may start the session's store)."""
    return request.getfixturevalue("realwoo_rig") if request.param == "real" else None


@pytest.fixture
async def store(store_rig: Rig | None, nursery: trio.Nursery) -> AsyncIterator[WooStore]:
    chosen: WooStore = RealStore(store_rig) if store_rig is not None else await SimStore.start(nursery)
    try:
        yield chosen
    finally:
        await chosen.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of the real store, and keep them on one xdist worker (``--dist loadgroup``):
    one store per run, started once, its tests one after the other as on a merchant's server."""
    for item in items:
        if "realwoo_rig" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realwoo)
        if item.get_closest_marker("realwoo") is not None:
            item.add_marker(pytest.mark.xdist_group("realwoo"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "realwoo" in report.keywords and _REPORT["rig"] is not None:
        _REPORT["seconds"] += report.duration
        if report.when == "call":
            _REPORT["tests"] += 1


def _summary() -> tuple[str, bool] | None:
    """What the real-store tier did (the line, and whether it is a warning), or None if it did not run."""
    rig: Rig | None = _REPORT["rig"]
    if _REPORT["skip"]:
        return f"real-store tests SKIPPED: {_REPORT['skip']}", True
    if rig is None:
        return None
    how = "fresh, purged after" if rig.created else "kept"
    return (f"real-store tier: {_REPORT['tests']} tests in {_REPORT['seconds']:.0f} s (the store's up "
            f"{rig.up_seconds:.1f} s included), then down {rig.down_seconds:.1f} s ({how}: {rig.dir})"), False


_FROM_WORKERS: list[tuple[str, bool]] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker, hand the tier's line to the controller (it prints the terminal summary).
    trylast: the session fixtures (the store's teardown, timed into the line) are finished by then."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and (line := _summary()) is not None:
        workeroutput["realwoo_summary"] = list(line)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist, never called
def pytest_testnodedown(node: Any, error: Any) -> None:
    line = getattr(node, "workeroutput", {}).get("realwoo_summary")
    if line:
        _FROM_WORKERS.append((line[0], bool(line[1])))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say what the real-store tier did: skipped and why, or what the store cost."""
    own = _summary()
    for text, warn in _FROM_WORKERS + ([own] if own is not None else []):
        terminalreporter.write_line(text, yellow=warn, bold=warn)
