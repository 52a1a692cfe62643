"""Preflight: ``cloverwoo check-config`` (without ``--offline``) and the checks run at start.

Rules:

- Each check is one line, ``✓`` or ``✗``, and a ``✗`` line ends with the fix
  (what to click or type), so a new user can act on it without the docs.
  The result is ok only when every check passed (the CLI exits 0 then).
- Nothing is changed anywhere: every probe is a read, except the WooCommerce
  key-permission probe, which is a write that changes nothing: an *empty*
  ``POST /products/batch`` (no create, update or delete). WooCommerce checks
  the key's permission before it looks at the body, so a read-only key gets
  401 "The API key provided does not have write permissions", and a
  read_write key gets an empty answer. Clover has no such harmless write
  (a stock write races with a sale), so Clover's inventory *write*
  permission is proven by the first sync write, not here.
- Clover answers 401 both for a bad token and for a missing permission, so
  the order matters: the merchant record first (token and merchant id
  belong together), then inventory (read permission), then the properties
  (``trackStock``, ``updateStock``).
- Unreachable stores are reported quickly (two attempts), not retried for
  minutes like the daemon does.
- Files: every secret file the config names must not be readable by other
  users (a file is readable by others when its mode has o+r and every
  directory above it o+x), and so must the state file when it holds OAuth
  tokens. The state and runtime (control socket) directories must exist and
  be writable by whoever runs the check: run it as the service user
  (``sudo -u cloverwoo cloverwoo check-config``), since root can write anywhere.
- A secret given as an environment variable has no file to check.
- Secrets never appear in a line; errors are the clients' own messages,
  which carry no secret.
- Some lines are advice, not requirements (``advisory``): a ``✗`` that the
  daemon works without, at a known cost, and that does not fail the check.
  The first is the WordPress companion: without it a WooCommerce checkout
  landing during one of the daemon's stock writes can be lost, so its absence
  is shown as ``✗`` with the one-line install, yet the daemon runs (it falls
  back to ``inventory_delta``).
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import trio

from cloverwoo_daemon.config import Config, LocationConfig, Secrets, _env_name, parse_duration
from cloverwoo_daemon.core.backoff import Backoff
from cloverwoo_daemon.io.clover import AppGate, CloverClient, TokenProvider
from cloverwoo_daemon.io.clover_oauth import CloverOAuth, KeyValue, OAuthTokens, ReconnectRequired
from cloverwoo_daemon.io.store import Store, StoreError
from cloverwoo_daemon.io.woocommerce import COMPANION_FILE, WooClient
from cloverwoo_daemon.ports import NotFound, PermanentError, RemoteError

__all__ = ["Check", "exit_code", "file_checks", "print_checks", "run_preflight"]

QUICK = Backoff(base=0.2, cap=1.0, max_attempts=2)


class Check(msgspec.Struct, frozen=True):
    """One line of the report."""

    ok: bool
    subject: str
    detail: str
    fix: str = ""
    advisory: bool = False  # a failure here is advice: it does not fail the check (exit 0)

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        text = f"{mark} {self.subject}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} (fix: {self.fix})"


def exit_code(checks: list[Check]) -> int:
    return 0 if checks and all(c.ok or c.advisory for c in checks) else 1


def print_checks(checks: list[Check], out: Callable[[str], None] = print) -> int:
    for c in checks:
        out(c.line())
    return exit_code(checks)


# --------------------------------------------------------------------------
# Files and directories


def _secret_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, file value) for every secret the config reads from a file (not from the environment)."""
    w = cfg.woocommerce
    pairs = [
        ("woocommerce.consumer_key", w.consumer_key_file, _env_name("woocommerce.consumer_key")),
        ("woocommerce.consumer_secret", w.consumer_secret_file, _env_name("woocommerce.consumer_secret")),
        ("woocommerce.webhook_secret", w.webhook_secret_file, _env_name("woocommerce.webhook_secret")),
        ("clover.auth_code", cfg.clover.auth_code_file, _env_name("clover.auth_code")),
        ("alerts.smtp_password", cfg.alerts.smtp_password_file, _env_name("alerts.smtp_password")),
    ]
    for i, loc in enumerate(cfg.clover.locations):
        if loc.oauth:
            pairs.append((f"clover.locations[{i}].client_secret", loc.client_secret_file,
                          _env_name(f"clover.client_secret.{loc.name}")))
        else:
            pairs.append((f"clover.locations[{i}].token", loc.token_file, _env_name(f"clover.token.{loc.name}")))
    return [(key, value) for key, value, env in pairs if value and not os.environ.get(env)]


def _resolve(file_value: str) -> Path:
    """The path ``config.load_secrets`` reads (a relative name is looked up in $CREDENTIALS_DIRECTORY first)."""
    path = Path(file_value)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return path


def others_can_read(path: Path) -> bool:
    """True when a user who is neither the owner nor in the group can read the file."""
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


def _dir_check(what: str, directory: Path, fix_missing: str) -> Check:
    if not directory.is_dir():
        return Check(False, what, f"{directory} does not exist", fix_missing)
    try:
        fd, name = tempfile.mkstemp(prefix=".cloverwoo-check-", dir=directory)
    except OSError as exc:
        return Check(False, what, f"{directory} is not writable ({exc.strerror})",
                     f"chown cloverwoo: {directory} (or run the check as the service user)")
    os.close(fd)
    os.unlink(name)
    return Check(True, what, f"{directory} is writable")


def file_checks(cfg: Config) -> list[Check]:
    """The checks that need no network: secret file modes, state and runtime directories."""
    checks: list[Check] = []
    exposed: list[Check] = []
    files = [(key, _resolve(value)) for key, value in _secret_files(cfg)]
    state = Path(cfg.state.path)
    if any(loc.oauth for loc in cfg.clover.locations):
        files.append(("state.path (holds the Clover OAuth tokens)", state))
    checked = 0
    for key, path in files:
        try:
            readable = others_can_read(path)
        except OSError:
            continue  # a missing secret file is load_secrets' complaint; a missing state file is created 0600
        checked += 1
        if readable:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            exposed.append(Check(False, "secret file", f"{key}: {path} is readable by every user (mode {mode:04o})",
                                 f"chmod 600 {path}"))
    checks += exposed or [Check(True, "secret files", f"none of the {checked} file(s) is readable by other users")]
    checks.append(_dir_check("state directory", state.parent,
                             f"mkdir -p {state.parent} && chown cloverwoo: {state.parent} "
                             "(the systemd unit's StateDirectory= does this)"))
    runtime = Path(cfg.control.socket).parent
    checks.append(_dir_check("runtime directory", runtime,
                             f"the systemd unit's RuntimeDirectory= creates it at start; outside systemd: "
                             f"mkdir -p {runtime} && chown cloverwoo: {runtime}"))
    return checks


# --------------------------------------------------------------------------
# WooCommerce

_KEY_PAGE = "WooCommerce > Settings > Advanced > REST API"


async def woo_checks(woo: WooClient, base_url: str) -> list[Check]:
    subject = "WooCommerce"
    try:
        manage = await woo.get_setting("products", "woocommerce_manage_stock")
    except PermanentError as exc:
        text = str(exc)
        if "read permission" in text:
            return [Check(False, subject, f"the API key may not read ({text})",
                          f"{_KEY_PAGE}: edit the key, Permissions: Read/Write")]
        if " 401 " in text or " 403 " in text:
            return [Check(False, subject, f"{base_url} refused the API key ({text})",
                          f"check consumer_key_file and consumer_secret_file against {_KEY_PAGE}; "
                          "on plain http or behind a TLS proxy try woocommerce.auth = \"oauth1\"")]
        return [Check(False, subject, f"{base_url}: {text}",
                      "check woocommerce.base_url (the site address, without /wp-json)")]
    except RemoteError as exc:
        return [Check(False, subject, f"{base_url} unreachable: {exc}",
                      "check woocommerce.base_url and that the site is up")]
    checks = [Check(True, subject, f"{base_url} reachable with the configured key")]
    if manage == "yes":
        checks.append(Check(True, "WooCommerce stock management", "on (woocommerce_manage_stock = yes)"))
    else:
        checks.append(Check(False, "WooCommerce stock management", f"off (woocommerce_manage_stock = {manage})",
                            "WooCommerce > Settings > Products > Inventory: tick \"Enable stock management\""))
    checks.append(await _key_permission(woo))
    checks.append(await _variations(woo))
    checks.append(await companion_check(woo))
    return checks


COMPANION_INSTALL = f"copy {COMPANION_FILE} into wp-content/mu-plugins/"


async def companion_check(woo: WooClient) -> Check:
    """Whether stock writes are atomic: the WordPress companion answers its status route."""
    subject = "stock writes"
    try:
        info = await woo.companion()
    except RemoteError as exc:
        return Check(False, subject, f"the companion could not be asked ({exc})", "try again; check the site's error "
                     "log", advisory=True)
    if info is None:
        return Check(False, subject, "not atomic: a checkout during a daemon stock write can be lost",
                     COMPANION_INSTALL, advisory=True)
    webhooks = {True: "webhooks synchronous", False: "webhooks asynchronous", None: "webhook mode unknown"}
    detail = f"atomic (companion v{info.version}; {webhooks[info.sync_webhooks]})"
    if not info.transactional:
        return Check(False, subject, detail.replace("atomic", "atomic, but the post meta table is not InnoDB, so a "
                                                               "crash can apply a change twice", 1),
                     "convert wp_postmeta to InnoDB (ALTER TABLE wp_postmeta ENGINE=InnoDB)", advisory=True)
    return Check(True, subject, detail)


async def _key_permission(woo: WooClient) -> Check:
    subject = "WooCommerce key permission"
    try:
        # The empty batch: authorised like any write, changes nothing (see the module docstring).
        await woo._json("POST", "/products/batch", json={})
    except PermanentError as exc:
        text = str(exc)
        if "write permission" in text:
            return Check(False, subject, "read only: the daemon could not write stock",
                         f"{_KEY_PAGE}: edit the key, Permissions: Read/Write (or create a new key)")
        return Check(False, subject, f"writes refused ({text})",
                     "create the key for a user who may edit products (Shop Manager or Administrator)")
    except RemoteError as exc:
        return Check(False, subject, f"could not be checked ({exc})", "try again; check the site's error log")
    return Check(True, subject, "read_write (an empty products batch was accepted)")


async def _variations(woo: WooClient) -> Check:
    subject = "WooCommerce version"
    try:
        await woo._request("GET", "/variations", params={"per_page": "1"})
    except NotFound:
        return Check(True, subject, "no store-wide /variations (WooCommerce before 10.3): "
                                    "variations are read per parent product (slower polls on big catalogues)")
    except RemoteError as exc:
        return Check(False, subject, f"/variations could not be read ({exc})", "try again; check the site's error log")
    return Check(True, subject, "store-wide /variations available (WooCommerce 10.3 or later)")


# --------------------------------------------------------------------------
# Clover

_INVENTORY_FIX = ("give the app (or the dashboard API token) Inventory Read and Write; after changing an app's "
                  "permissions the merchant must reinstall it and you run `cloverwoo clover connect {name}` again")


async def clover_checks(client: CloverClient, loc: LocationConfig) -> list[Check]:
    subject = f"Clover {loc.name}"
    reconnect = f"cloverwoo clover connect {loc.name}"
    token_fix = (f"{reconnect}" if loc.oauth else
                 f"check token_file (a token works only for its own merchant, and sandbox tokens only on "
                 f"apisandbox.dev.clover.com) and merchant_id {loc.merchant_id}")
    try:
        record = await client.merchant()
    except ReconnectRequired as exc:
        return [Check(False, subject, str(exc), reconnect)]
    except PermanentError as exc:
        return [Check(False, subject, f"token refused for merchant {loc.merchant_id} ({exc})", token_fix)]
    except RemoteError as exc:
        return [Check(False, subject, f"unreachable ({exc})",
                      "check clover.base_url (region, sandbox or production) and the network")]
    if record.get("id") != loc.merchant_id:
        return [Check(False, subject, f"the token belongs to merchant {record.get('id')}, not {loc.merchant_id}",
                      token_fix)]
    name = record.get("name") or ""
    checks = [Check(True, subject, f"token valid for merchant {loc.merchant_id}" + (f" ({name})" if name else ""))]
    try:
        await client.probe_inventory_read()
        checks.append(Check(True, f"{subject} inventory", "read permission granted"))
    except PermanentError as exc:
        checks.append(Check(False, f"{subject} inventory", f"cannot read items ({exc})",
                            _INVENTORY_FIX.format(name=loc.name)))
    except RemoteError as exc:
        checks.append(Check(False, f"{subject} inventory", f"could not be checked ({exc})", "try again"))
    try:
        props = await client.properties()
    except RemoteError as exc:
        checks.append(Check(False, f"{subject} settings", f"cannot read the merchant's properties ({exc})",
                            "give the app Merchant Read permission"))
        return checks
    setup = "in the Clover Dashboard's inventory settings"
    if props.get("trackStock") is True:
        checks.append(Check(True, f"{subject} stock tracking", "on (trackStock)"))
    else:
        checks.append(Check(False, f"{subject} stock tracking", "off (trackStock): Clover keeps no stock counts",
                            f"turn on Track stock {setup}"))
    if props.get("updateStock") is True:
        checks.append(Check(True, f"{subject} stock after sales", "on (updateStock)"))
    else:
        checks.append(Check(False, f"{subject} stock after sales",
                            "off (updateStock): POS sales do not change Clover's stock at all",
                            f"turn on updating the stock count after each sale {setup}"))
    return checks


# --------------------------------------------------------------------------
# All of it


async def _with_store(path: str, body: Callable[[KeyValue | None], Awaitable[None]]) -> None:
    """Run ``body`` with the state store open (when the file exists: a check never creates it)."""
    if not Path(path).exists():
        await body(None)
        return
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        try:
            await body(store)
        finally:
            nursery.cancel_scope.cancel()


async def run_preflight(
    cfg: Config,
    secrets: Secrets,
    *,
    woo_transport: httpx.AsyncBaseTransport | None = None,
    clover_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Check]:
    """Every check, in the order a merchant fixes things: WooCommerce, each Clover location, files."""
    checks: list[Check] = []
    woo = WooClient(
        base_url=cfg.woocommerce.base_url, consumer_key=secrets.woo_consumer_key,
        consumer_secret=secrets.woo_consumer_secret, auth=cfg.woocommerce.auth,
        timeout=parse_duration(cfg.woocommerce.timeout, key="woocommerce.timeout") or 30.0,
        backoff=QUICK, transport=woo_transport,
    )
    try:
        checks += await woo_checks(woo, cfg.woocommerce.base_url)
    finally:
        await woo.aclose()

    async def clovers(kv: KeyValue | None) -> None:
        gate = AppGate(rate=cfg.clover.app_rate, in_flight=cfg.clover.app_in_flight)
        timeout = parse_duration(cfg.clover.timeout, key="clover.timeout") or 30.0
        for loc in cfg.active_locations:
            oauth: CloverOAuth | None = None
            token: str | TokenProvider
            if loc.oauth:
                if kv is None:
                    checks.append(Check(False, f"Clover {loc.name}", "no OAuth tokens stored yet (no state file)",
                                        f"cloverwoo clover connect {loc.name}"))
                    continue
                oauth = CloverOAuth(base_url=cfg.clover.base_url, client_id=loc.client_id, timeout=timeout,
                                    transport=clover_transport, clock=clock)
                token = OAuthTokens(location=loc.name, merchant_id=loc.merchant_id, oauth=oauth, kv=kv,
                                    clock=clock, backoff=QUICK)
            else:
                token = secrets.clover_tokens[loc.name]
            client = CloverClient(location=loc.name, merchant_id=loc.merchant_id, token=token,
                                  base_url=cfg.clover.base_url, app_gate=gate, timeout=timeout, backoff=QUICK,
                                  transport=clover_transport)
            try:
                checks.extend(await clover_checks(client, loc))
            finally:
                await client.aclose()
                if oauth is not None:
                    await oauth.aclose()

    needs_store = any(loc.oauth for loc in cfg.active_locations)
    if needs_store:
        try:
            await _with_store(cfg.state.path, clovers)
        except StoreError as exc:
            checks.append(Check(False, "state store", f"cannot be opened to read the Clover tokens ({exc})",
                                "see the state directory check below"))
    else:
        await clovers(None)
    checks.append(clover_webhook_check(secrets))
    checks += file_checks(cfg)
    return checks


def clover_webhook_check(secrets: Secrets) -> Check:
    """Whether Clover deliveries can be authenticated: an empty auth code file means the URL is not verified yet."""
    if secrets.clover_auth_code:
        return Check(True, "Clover webhooks", "Clover Auth Code set: deliveries are authenticated")
    return Check(False, "Clover webhooks", "no Clover Auth Code yet (clover.auth_code_file is empty): every Clover "
                 "delivery is refused and the URL verification is answered",
                 "verify the webhook URL in the Clover dashboard, put the Clover Auth Code it then shows in the "
                 "file and restart (docs/SETUP.md, step 8)")
