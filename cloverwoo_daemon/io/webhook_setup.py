"""`cloverwoo webhooks register`: create the WooCommerce webhooks the daemon listens to, once.

Rules this module keeps:

- Idempotent: a topic that already has a webhook delivering to our URL is
  not created again (a disabled one is re-activated).
- One secret for all of them, alphanumeric (48 characters), so it survives
  any quoting. Where it lives, in order:
  1. the file named by ``woocommerce.webhook_secret_file`` (what the daemon
     reads) when it exists and holds one: it is reused, and the existing
     webhooks are assumed to carry it;
  2. otherwise a new secret is written (mode 0600) to ``webhook_secret`` in
     the state directory, and copied to ``woocommerce.webhook_secret_file``
     when that path is writable; if it is not (a root-owned /etc, a systemd
     credential), the report says where to put it. Webhooks of ours that
     already exist get the new secret too, so all deliveries verify.
- The secret is never printed or logged.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import string
from pathlib import Path

import msgspec

from cloverwoo_daemon.config import Config, ConfigError, _read_secret
from cloverwoo_daemon.io.logs import redact_also
from cloverwoo_daemon.io.woocommerce import WooClient

__all__ = ["TOPICS", "RegisterReport", "register_webhooks"]

TOPICS = ("product.updated", "product.deleted", "order.created", "order.updated")
SECRET_LENGTH = 48


class RegisterReport(msgspec.Struct, kw_only=True):
    delivery_url: str
    clover_url: str
    created: list[str] = msgspec.field(default_factory=list)  # topics
    existing: list[str] = msgspec.field(default_factory=list)
    reactivated: list[str] = msgspec.field(default_factory=list)
    secret_reused: bool = False
    secret_state_file: str = ""
    secret_config_file: str = ""  # where the daemon reads it (empty: not configured)
    secret_config_written: bool = False
    instructions: list[str] = msgspec.field(default_factory=list)


def _new_secret() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(pysecrets.choice(alphabet) for _ in range(SECRET_LENGTH))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)


def _configured_secret(cfg: Config) -> str:
    if not cfg.woocommerce.webhook_secret_file and not os.environ.get("CLOVERWOO_WOOCOMMERCE_WEBHOOK_SECRET"):
        return ""
    try:
        return _read_secret("woocommerce.webhook_secret", cfg.woocommerce.webhook_secret_file, required=False)
    except ConfigError:
        return ""  # missing or empty: a new one is made


def public_urls(cfg: Config) -> tuple[str, str]:
    base = cfg.server.public_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError("server.public_url: required for `webhooks register` (the https:// address Clover and "
                          "WooCommerce post to, behind the TLS proxy)")
    return base + "/webhooks/woocommerce", base + "/webhooks/clover"


async def register_webhooks(cfg: Config, woo: WooClient) -> RegisterReport:
    """Create the missing webhooks; see the module docstring for the secret."""
    woo_url, clover_url = public_urls(cfg)
    report = RegisterReport(delivery_url=woo_url, clover_url=clover_url,
                            secret_config_file=cfg.woocommerce.webhook_secret_file)
    secret = _configured_secret(cfg)
    state_file = Path(cfg.state.path).parent / "webhook_secret"
    fresh = not secret
    secret = secret or _new_secret()
    redact_also(secret)  # sent to WooCommerce below: an error quoting the request must not show it
    if not fresh:
        report.secret_reused = True
    else:
        _write_private(state_file, secret)
        report.secret_state_file = str(state_file)
        target = cfg.woocommerce.webhook_secret_file
        if target:
            path = Path(target)
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if not path.is_absolute() and creds:
                path = Path(creds) / path
            try:
                _write_private(path, secret)
                report.secret_config_written = True
            except OSError:
                report.instructions.append(f"copy {state_file} to {target} (mode 0600, readable by the daemon)")
        else:
            report.instructions.append(f'set woocommerce.webhook_secret_file = "{state_file}" in the config')
    ours = [h for h in await woo.list_webhooks("all") if h.delivery_url.rstrip("/") == woo_url]
    for topic in TOPICS:
        hooks = [h for h in ours if h.topic == topic]
        if not hooks:
            await woo.create_webhook(topic, woo_url, secret, name=f"cloverwoo {topic}")
            report.created.append(topic)
            continue
        report.existing.append(topic)
        for h in hooks:
            body_status = "active" if h.status == "disabled" else None
            if not report.secret_reused or body_status:
                await woo.update_webhook(h.id, secret=None if report.secret_reused else secret, status=body_status)
            if body_status:
                report.reactivated.append(topic)
    report.instructions += [
        "restart the daemon if the webhook secret is new (it reads it at start): systemctl restart cloverwoo",
        f"Clover: in the developer dashboard, app > Webhooks, set the URL to {clover_url} and press "
        "'Send Verification Code'; `cloverwoo status` then shows the code: paste it and press Verify",
        "Clover: subscribe to Inventory and Orders events",
        "check: `cloverwoo status` shows a recent 'last woocommerce event' after a product is saved in WooCommerce",
    ]
    return report
