"""A whole simulated world: Clover locations and a WooCommerce store, seeded with matching products.

Used by ``cloverwoo demo``, ``cloverwoo simulate``, the end-to-end tests and the
benchmarks, so they all exercise the daemon the same way: over real HTTP, with
a real config file and real secret files, exactly as in production.
"""

from __future__ import annotations

import secrets as pysecrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from cloverwoo_daemon.config import Config, Secrets, load_config, load_secrets
from cloverwoo_daemon.core.model import WooRef
from cloverwoo_daemon.sim.clover import CloverSim, RateLimits
from cloverwoo_daemon.sim.common import Faults
from cloverwoo_daemon.sim.woocommerce import WooSim

LOCATION_NAMES = ["downtown", "airport", "harbour", "uptown", "mall", "station", "campus", "market"]


@dataclass
class SimProduct:
    sku: str
    name: str
    woo: WooRef
    clover: dict[str, str]  # location -> item id


@dataclass
class World:
    clover: CloverSim
    woo: WooSim
    dir: Path
    config_path: Path
    locations: dict[str, str]  # location name -> merchant id
    products: list[SimProduct] = field(default_factory=list)
    webhook_secret: str = ""

    @property
    def cfg(self) -> Config:
        return load_config(self.config_path)

    def secrets(self) -> Secrets:
        return load_secrets(self.cfg)

    def clover_stock(self, p: SimProduct, location: str | None = None) -> int | None:
        """A location's stock, or the total over locations when ``location`` is None."""
        if location is not None:
            q = self.clover.stock(self.locations[location], p.clover[location])
            return None if q is None else round(q)
        total = 0
        for loc, item in p.clover.items():
            q = self.clover.stock(self.locations[loc], item)
            if q is None:
                return None
            total += round(q)
        return total

    def woo_stock(self, p: SimProduct) -> int | None:
        return self.woo.stock(p.woo)

    def in_sync(self, p: SimProduct) -> bool:
        return self.clover_stock(p) == self.woo_stock(p)

    async def connect(self, daemon_url: str) -> None:
        """Point both simulators' webhooks at a running daemon (as an admin would in the dashboards)."""
        self.clover.set_webhook_url(daemon_url.rstrip("/") + "/webhooks/clover")
        async with httpx.AsyncClient(auth=(self.woo.consumer_key, self.woo.consumer_secret)) as client:
            for topic in ("product.updated", "product.deleted", "order.created", "order.updated"):
                r = await client.post(self.woo.api_url + "/webhooks", json={
                    "name": f"cloverwoo {topic}", "topic": topic,
                    "delivery_url": daemon_url.rstrip("/") + "/webhooks/woocommerce", "secret": self.webhook_secret,
                })
                r.raise_for_status()


def write_config(
    world_dir: Path,
    *,
    clover_url: str,
    woo_url: str,
    locations: dict[str, str],
    tokens: dict[str, str],
    woo_key: str,
    woo_secret: str,
    webhook_secret: str,
    auth_code: str,
    mode: str = "aggregate",
    deduct: str = "primary",
    poll_every: str = "1s",
    shards: int = 4,
    reconcile_every: str = "off",
    listen: str = "127.0.0.1:0",
) -> Path:
    creds = world_dir / "credentials"
    creds.mkdir(parents=True, exist_ok=True)
    files = {"woo_key": woo_key, "woo_secret": woo_secret, "woo_webhook_secret": webhook_secret,
             "clover_auth_code": auth_code}
    files |= {f"{name}_token": tok for name, tok in tokens.items()}
    for name, value in files.items():
        path = creds / name
        path.write_text(value)
        path.chmod(0o600)
    loc_blocks = "".join(
        f'\n[[clover.locations]]\nname = "{name}"\nmerchant_id = "{mid}"\ntoken_file = "{creds / (name + "_token")}"\n'
        f"primary = {'true' if i == 0 else 'false'}\n"
        for i, (name, mid) in enumerate(locations.items())
    )
    text = f"""# written by cloverwoo_daemon.sim.harness for the simulated stores
[server]
listen = "{listen}"

[control]
socket = "{world_dir / 'control.sock'}"

[state]
path = "{world_dir / 'state.sqlite3'}"

[woocommerce]
base_url = "{woo_url}"
auth = "basic"
consumer_key_file = "{creds / 'woo_key'}"
consumer_secret_file = "{creds / 'woo_secret'}"
webhook_secret_file = "{creds / 'woo_webhook_secret'}"
poll_every = "{poll_every}"
timeout = "10s"

[clover]
base_url = "{clover_url}"
auth_code_file = "{creds / 'clover_auth_code'}"
poll_every = "{poll_every}"
timeout = "10s"
{loc_blocks}
[sync]
mode = "{mode}"
deduct = "{deduct}"
reconcile_every = "{reconcile_every}"
shards = {shards}
"""
    path = world_dir / "cloverwoo.toml"
    path.write_text(text)
    return path


async def start_world(
    nursery: trio.Nursery,
    world_dir: Path,
    *,
    products: int = 10,
    locations: int = 1,
    stock: int = 20,
    variable_products: int = 0,
    untracked: int = 0,
    realistic: bool = False,
    clover_faults: Faults | None = None,
    woo_faults: Faults | None = None,
    clover_limits: RateLimits | None = None,
    seed: int = 0,
    woo_companion: bool = False,
    clover_webhooks: str = "legacy",
    **config: object,
) -> World:
    """Start both simulators in ``nursery`` and seed them with products that match by SKU.

    Stock starts in agreement (each location holds ``stock``; WooCommerce the
    total), so a sync that works writes nothing until something sells.
    ``clover_limits`` replaces Clover's documented rate limits (tests tighten them).
    ``woo_companion`` serves the WordPress companion's routes in the WooCommerce simulator.
    ``clover_webhooks`` is the simulated Clover's webhook style: ``"legacy"`` (``I:`` for every stock
    change) or ``"split"`` (``IS:``/``IA:``, as Clover announced; ``sim.clover``'s docstring).
    """
    world_dir.mkdir(parents=True, exist_ok=True)
    auth_code = pysecrets.token_hex(16)
    clover = CloverSim(auth_code=auth_code, faults=clover_faults, limits=clover_limits, seed=seed,
                       webhook_style=clover_webhooks)
    woo = WooSim.realistic(faults=woo_faults) if realistic else WooSim(faults=woo_faults)
    woo.companion = woo_companion  # the WordPress companion's routes (exactly-once stock changes)
    clover_url = await nursery.start(clover.run)
    woo_url = await nursery.start(woo.run)
    locs: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for i in range(locations):
        name = LOCATION_NAMES[i] if i < len(LOCATION_NAMES) else f"store{i}"
        m = clover.add_merchant(name.title(), merchant_id=f"SIMMERCHANT{i:02d}")
        locs[name] = m.id
        tokens[name] = m.token
    world = World(clover=clover, woo=woo, dir=world_dir, config_path=world_dir / "cloverwoo.toml", locations=locs,
                  webhook_secret=pysecrets.token_hex(24))
    for i in range(products):
        sku, name = f"SKU-{i:04d}", f"Product {i}"
        items = {loc: clover.add_item(mid, name, sku=sku, quantity=stock) for loc, mid in locs.items()}
        ref = woo.add_product(name, sku=sku, stock=stock * len(locs))
        world.products.append(SimProduct(sku, name, ref, items))
    for i in range(variable_products):
        name, base = f"Tee {i}", f"TEE{i}"
        options = ["S", "M", "L"]
        refs = woo.add_variable_product(name, {o: stock * len(locs) for o in options}, sku=base)
        per_loc = {}
        for loc, mid in locs.items():
            _, ids = clover.add_item_group(mid, name, [
                {"options": {"Size": o}, "sku": f"{base}-{o}", "quantity": stock} for o in options
            ])
            per_loc[loc] = ids
        for j, o in enumerate(options):
            world.products.append(SimProduct(f"{base}-{o}", f"{name} - {o}", refs[j],
                                             {loc: ids[j] for loc, ids in per_loc.items()}))
    for i in range(untracked):
        sku, name = f"UNTRACKED-{i:03d}", f"Gift card {i}"
        for mid in locs.values():
            clover.add_item(mid, name, sku=sku, quantity=stock)
        woo.add_product(name, sku=sku, stock=None, manage_stock=False)
    write_config(world_dir, clover_url=clover_url, woo_url=woo_url, locations=locs, tokens=tokens,
                 woo_key=woo.consumer_key, woo_secret=woo.consumer_secret, webhook_secret=world.webhook_secret,
                 auth_code=auth_code, **config)  # type: ignore[arg-type]
    return world


def serve_simulators(listen: str, *, products: int, locations: int, realistic: bool,
                     clover_webhooks: str = "legacy") -> int:
    """``cloverwoo simulate``: serve the simulators and write a config that points a daemon at them."""
    host, _, port = listen.rpartition(":")

    async def main() -> None:
        world_dir = Path(tempfile.mkdtemp(prefix="cloverwoo-sim-"))
        async with trio.open_nursery() as n:
            clover = CloverSim(auth_code=pysecrets.token_hex(16), webhook_style=clover_webhooks)
            woo = WooSim.realistic() if realistic else WooSim()
            clover_url = await n.start(lambda task_status: clover.run(host=host, port=int(port),
                                                                      task_status=task_status))
            woo_url = await n.start(lambda task_status: woo.run(host=host, port=int(port) + 1,
                                                                task_status=task_status))
            locs, tokens = {}, {}
            for i in range(locations):
                name = LOCATION_NAMES[i % len(LOCATION_NAMES)]
                m = clover.add_merchant(name.title(), merchant_id=f"SIMMERCHANT{i:02d}")
                locs[name], tokens[name] = m.id, m.token
            for i in range(products):
                for mid in locs.values():
                    clover.add_item(mid, f"Product {i}", sku=f"SKU-{i:04d}", quantity=20)
                woo.add_product(f"Product {i}", sku=f"SKU-{i:04d}", stock=20 * len(locs))
            webhook_secret = pysecrets.token_hex(24)
            cfg = write_config(world_dir, clover_url=clover_url, woo_url=woo_url, locations=locs, tokens=tokens,
                               woo_key=woo.consumer_key, woo_secret=woo.consumer_secret,
                               webhook_secret=webhook_secret, auth_code=clover.auth_code,
                               listen="127.0.0.1:8787")
            clover.set_webhook_url("http://127.0.0.1:8787/webhooks/clover")
            print(f"simulated Clover:      {clover_url}  ({locations} location(s))")
            print(f"simulated WooCommerce: {woo_url}  ({products} products)")
            print(f"a daemon config for them: {cfg}")
            print(f"  try: cloverwoo run --config {cfg}")
            first = f"SKU-{0:04d}"
            print("a test sale on each side (admin routes of the simulators; Ctrl-C stops them):")
            print(f"  curl -s -X POST {clover_url}/_sim/merchants/{next(iter(locs.values()))}/sales"
                  f" -d '{{\"items\": {{\"{first}\": 1}}}}'")
            print(f"  curl -s -X POST {woo_url}/_sim/orders -d '{{\"items\": {{\"{first}\": 1}}}}'")
            await trio.sleep_forever()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    return 0
