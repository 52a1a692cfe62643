"""The TOML config of interface.md, decoded into frozen msgspec structs.

Rules:

- Unknown keys and wrong types are refused with one line that names the key
  (``ConfigError``; the CLI exits 2). msgspec's ``forbid_unknown_fields``
  does the checking; we only reword its path (``$.clover.locations[0].nme``)
  into the TOML key the operator typed.
- Secrets are never inline. Every secret has a ``*_file`` form (systemd
  ``LoadCredential=`` puts files in ``$CREDENTIALS_DIRECTORY``; a relative
  ``*_file`` path is looked up there first) and an environment variable form.
  ``load_secrets`` reads them once at start and refuses a missing or empty one.
- Durations are strings (``"2s"``, ``"15m"``, ``"1h"``, ``"off"``) parsed here.
- Every value is judged here, at load, not where it is first used: a rate,
  a limit, the SMTP URL, a location list. ``check-config`` then catches what
  ``run`` would trip on, and ``run`` refuses a bad config (exit 2, one line)
  before anything starts, never with a traceback from deep inside.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from cloverwoo_daemon.core.smtp_url import parse_smtp_url


class ConfigError(Exception):
    """The config is unusable; the message names the key and what is wrong."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, key: str) -> float | None:
    """Seconds for ``"2s"``-style text; ``None`` for ``"off"``."""
    if text.strip().lower() == "off":
        return None
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"{key}: {text!r} is not a duration (use e.g. \"2s\", \"15m\", \"1h\" or \"off\")")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Base):
    listen: str = "127.0.0.1:8787"
    max_body_bytes: int = 1_048_576
    queue_size: int = 10_000  # events waiting for the actors before we answer 503
    public_url: str = ""  # what Clover/Woo post to (behind the TLS proxy); shown by `webhooks register`


class ControlConfig(_Base):
    socket: str = "/run/cloverwoo/control.sock"


class StateConfig(_Base):
    path: str = "/var/lib/cloverwoo/state.sqlite3"


class WooConfig(_Base):
    base_url: str
    auth: Literal["auto", "basic", "oauth1"] = "auto"
    consumer_key_file: str = ""
    consumer_secret_file: str = ""
    webhook_secret_file: str = ""
    poll_every: str = "2s"
    max_in_flight: int = 4
    timeout: str = "30s"


class LocationConfig(_Base):
    name: str
    merchant_id: str
    token_file: str = ""
    primary: bool = False
    # Clover OAuth v2 (expiring tokens kept in the state store) instead of a static token_file;
    # `cloverwoo clover connect NAME` does the first code exchange.
    oauth: bool = False
    client_id: str = ""  # the Clover app's App ID
    client_secret_file: str = ""  # the app's App Secret (needed for the code exchange only)


class CloverConfig(_Base):
    base_url: str = "https://api.clover.com"
    auth_code_file: str = ""
    poll_every: str = "2s"
    timeout: str = "30s"
    app_rate: float = 50.0  # per app, requests per second (Clover's documented limit)
    app_in_flight: int = 10
    token_rate: float = 16.0  # per token
    token_in_flight: int = 5
    locations: list[LocationConfig] = msgspec.field(default_factory=list)


class SyncConfig(_Base):
    mode: Literal["aggregate", "single", "per-location"] = "aggregate"
    deduct: str | list[str] = "primary"
    source_of_truth: Literal["clover", "woo"] = "clover"
    reconcile_every: str = "15m"
    shards: int = 8


class AlertsConfig(_Base):
    email_to: list[str] = msgspec.field(default_factory=list)
    email_from: str = "cloverwoo@localhost"
    smtp_url: str = "smtp://localhost:25"
    smtp_password_file: str = ""
    low_stock_threshold: int = 5
    out_of_stock: Literal["hide", "backorder", "contact"] = "backorder"
    thresholds: dict[str, int] = msgspec.field(default_factory=dict)
    # -- out-of-stock behaviour per SKU, the "contact" message, webhook health
    out_of_stock_overrides: dict[str, Literal["hide", "backorder", "contact"]] = msgspec.field(default_factory=dict)
    contact_message: str = "Out of stock - contact us to order"  # product meta for the theme ("contact")
    webhook_check_every: str = "5m"  # GET /webhooks: re-enable a disabled one, alert
    clover_silence: str = "30m"  # no Clover webhook this long while polls find changes: alert ("off": never)


class Config(_Base):
    woocommerce: WooConfig
    clover: CloverConfig
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    sync: SyncConfig = msgspec.field(default_factory=SyncConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)

    @property
    def primary_location(self) -> LocationConfig:
        for loc in self.clover.locations:
            if loc.primary:
                return loc
        return self.clover.locations[0]

    @property
    def active_locations(self) -> list[LocationConfig]:
        """The locations the daemon reads and writes (single mode: only the primary)."""
        if self.sync.mode == "single":
            return [self.primary_location]
        return list(self.clover.locations)


class Secrets(msgspec.Struct, frozen=True):
    """Secrets read at start. ``repr`` never shows values, so a traceback cannot leak them."""

    woo_consumer_key: str
    woo_consumer_secret: str
    woo_webhook_secret: str
    clover_auth_code: str  # "": not configured yet (Clover deliveries refused, verification handshake answered)
    clover_tokens: dict[str, str]  # location name -> token (static-token locations only)
    clover_client_secrets: dict[str, str] = msgspec.field(default_factory=dict)  # OAuth locations: name -> secret
    smtp_password: str = ""  # alerts.smtp_password_file (read only when alerts are emailed)

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"

    __str__ = __repr__

    def values(self) -> list[str]:
        """Every secret value, for log redaction and for the tests that scan output."""
        vals = [self.woo_consumer_key, self.woo_consumer_secret, self.woo_webhook_secret, self.clover_auth_code]
        vals += list(self.clover_tokens.values())
        vals += list(self.clover_client_secrets.values())
        vals.append(self.smtp_password)
        return [v for v in vals if v]


def _toml_key(path: str) -> str:
    """``$.clover.locations[0].name`` -> ``clover.locations[0].name``."""
    return path[2:] if path.startswith("$.") else path.lstrip("$")


def _reword(err: msgspec.ValidationError) -> str:
    msg = str(err)
    # msgspec: "Object contains unknown field `nme` - at `$.clover.locations[0]`"
    m = re.match(r"Object contains unknown field `([^`]+)`(?: - at `([^`]+)`)?", msg)
    if m:
        where = _toml_key(m.group(2) or "$")
        key = f"{where}.{m.group(1)}" if where else m.group(1)
        return f"{key}: unknown key"
    m = re.match(r"Object missing required field `([^`]+)`(?: - at `([^`]+)`)?", msg)
    if m:
        where = _toml_key(m.group(2) or "$")
        key = f"{where}.{m.group(1)}" if where else m.group(1)
        return f"{key}: required key is missing"
    m = re.match(r"(.*) - at `([^`]+)`$", msg)
    if m:
        return f"{_toml_key(m.group(2))}: {m.group(1)}"
    return msg


def parse_config(text: str, *, source: str = "config") -> Config:
    """Decode and check config text; raises ``ConfigError`` with a one-line reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_reword(exc)) from None
    _check(cfg)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    return parse_config(text, source=str(p))


def _check(cfg: Config) -> None:
    parse_duration(cfg.woocommerce.poll_every, key="woocommerce.poll_every")
    parse_duration(cfg.woocommerce.timeout, key="woocommerce.timeout")
    parse_duration(cfg.clover.poll_every, key="clover.poll_every")
    parse_duration(cfg.clover.timeout, key="clover.timeout")
    parse_duration(cfg.alerts.webhook_check_every, key="alerts.webhook_check_every")
    parse_duration(cfg.alerts.clover_silence, key="alerts.clover_silence")
    every = cfg.sync.reconcile_every
    if every not in ("5m", "15m", "1h", "off"):
        parse_duration(every, key="sync.reconcile_every")
    if not cfg.clover.locations:
        raise ConfigError("clover.locations: at least one [[clover.locations]] is required")
    names = [loc.name for loc in cfg.clover.locations]
    if len(set(names)) != len(names):
        raise ConfigError("clover.locations: location names must be unique")
    merchants = [loc.merchant_id for loc in cfg.clover.locations]
    if len(set(merchants)) != len(merchants) or not all(m.strip() for m in merchants):
        raise ConfigError("clover.locations: each location needs its own merchant_id (a webhook names its merchant)")
    for i, loc in enumerate(cfg.clover.locations):
        if loc.oauth and not loc.client_id:
            raise ConfigError(f"clover.locations[{i}].client_id: required when oauth = true (the app's App ID)")
        if loc.oauth and loc.token_file:
            raise ConfigError(f"clover.locations[{i}].token_file: not used with oauth = true; remove one of them")
    if sum(1 for loc in cfg.clover.locations if loc.primary) > 1:
        raise ConfigError("clover.locations: only one location may have primary = true")
    deduct = cfg.sync.deduct
    if isinstance(deduct, str):
        if deduct not in ("primary", "most_stock"):
            raise ConfigError(f"sync.deduct: {deduct!r} is not primary, most_stock or a list of location names")
    else:
        unknown = [d for d in deduct if d not in names]
        if unknown or not deduct:
            raise ConfigError(f"sync.deduct: unknown location(s) {unknown} (known: {names})")
    if cfg.sync.shards < 1 or cfg.sync.shards > 256:
        raise ConfigError("sync.shards: must be between 1 and 256")
    if cfg.server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes: must be at least 1024")
    host, sep, port = cfg.server.listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"server.listen: {cfg.server.listen!r} is not HOST:PORT")
    if not cfg.woocommerce.base_url.startswith(("http://", "https://")):
        raise ConfigError("woocommerce.base_url: must start with http:// or https://")
    if not cfg.clover.base_url.startswith(("http://", "https://")):
        raise ConfigError("clover.base_url: must start with http:// or https://")
    _check_limits(cfg)
    _check_alerts(cfg.alerts)


def _check_limits(cfg: Config) -> None:
    """Rates and sizes the daemon builds its limiters and queues from (a 0 there fails at start, not here)."""
    for key, value in (("server.queue_size", cfg.server.queue_size),
                       ("woocommerce.max_in_flight", cfg.woocommerce.max_in_flight),
                       ("clover.app_in_flight", cfg.clover.app_in_flight),
                       ("clover.token_in_flight", cfg.clover.token_in_flight)):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, not {value}")
    for key, rate in (("clover.app_rate", cfg.clover.app_rate), ("clover.token_rate", cfg.clover.token_rate)):
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"{key}: must be a positive number of requests per second, not {rate}")


def _check_alerts(a: AlertsConfig) -> None:
    try:
        parse_smtp_url(a.smtp_url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None  # names alerts.smtp_url, never echoes a password
    for i, address in enumerate(a.email_to):
        local, at, domain = address.strip().partition("@")
        if not (local and at and domain) or any(c in address for c in "\r\n,<>"):
            raise ConfigError(f"alerts.email_to[{i}]: {address[:80]!r} is not one email address")
    if any(c in a.email_from for c in "\r\n"):
        raise ConfigError("alerts.email_from: one line, an email address")


def check_service_directories(cfg: Config, env: Mapping[str, str], *, source: str) -> None:
    """Refuse, under systemd, a state file or control socket outside the unit's own directories.

    ``ProtectSystem=strict`` leaves only ``StateDirectory=`` and
    ``RuntimeDirectory=`` writable (systemd passes them as
    ``$STATE_DIRECTORY`` / ``$RUNTIME_DIRECTORY``, colon-separated when
    several). A path elsewhere would fail later as a bare PermissionError,
    and for a template instance the defaults are another directory than its
    own. The paths are not derived from those variables instead: the admin
    commands run outside the unit and find the socket and state file through
    the config alone. Nothing is checked when the variables are unset.
    """
    outside: list[str] = []  # "state.path = /var/lib/cloverwoo/state.sqlite3"
    settings: list[str] = []  # '[state] path = "/var/lib/cloverwoo/shop1/state.sqlite3"'
    allowed: list[str] = []
    for section, name, value, variable in (("state", "path", cfg.state.path, "STATE_DIRECTORY"),
                                           ("control", "socket", cfg.control.socket, "RUNTIME_DIRECTORY")):
        dirs = [Path(d) for d in env.get(variable, "").split(":") if d]
        if not dirs:
            continue
        allowed.append(str(dirs[0]))
        path = Path(os.path.abspath(value))
        if not any(d in path.parents for d in dirs):
            outside.append(f"{section}.{name} = {value}")
            settings.append(f'[{section}] {name} = "{dirs[0] / path.name}"')
    if outside:
        verb = "is" if len(outside) == 1 else "are"
        raise ConfigError(f"{source}: {' and '.join(outside)} {verb} outside the directories the systemd unit lets the "
                          f"daemon write ({', '.join(allowed)}); set {' and '.join(settings)}")


def _env_name(key: str) -> str:
    return "CLOVERWOO_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def _read_secret(key: str, file_value: str, *, required: bool = True, env_name: str | None = None,
                 may_be_empty: bool = False) -> str:
    """A secret from ``CLOVERWOO_<KEY>`` or from the file named by ``<key>_file``.

    A relative file name is looked up in ``$CREDENTIALS_DIRECTORY`` first
    (systemd ``LoadCredential=``). ``may_be_empty``: an empty file is a
    deliberate "not yet" (the file must exist for ``LoadCredential=``) and
    reads as "".
    """
    env_name = env_name or _env_name(key)
    env = os.environ.get(env_name)
    if env:
        return env.strip()
    if not file_value:
        if required:
            raise ConfigError(f"{key}_file: required (or set {env_name})")
        return ""
    path = Path(file_value)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        path = Path(creds) / path
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{key}_file: {file_value} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{key}_file: cannot read {file_value}: {exc.strerror}") from None
    if not value and not may_be_empty:
        raise ConfigError(f"{key}_file: {file_value} is empty")
    return value


def load_secrets(cfg: Config) -> Secrets:
    """Read every secret the config names; refuse a missing or empty one."""
    tokens = {}
    client_secrets = {}
    for i, loc in enumerate(cfg.clover.locations):
        if loc.oauth:  # tokens live in the state store; the app secret only for `clover connect`
            secret = _read_secret(f"clover.locations[{i}].client_secret", loc.client_secret_file, required=False,
                                  env_name=_env_name(f"clover.client_secret.{loc.name}"))
            if secret:
                client_secrets[loc.name] = secret
            continue
        tokens[loc.name] = _read_secret(f"clover.locations[{i}].token", loc.token_file,
                                        env_name=_env_name(f"clover.token.{loc.name}"))
    return Secrets(
        woo_consumer_key=_read_secret("woocommerce.consumer_key", cfg.woocommerce.consumer_key_file),
        woo_consumer_secret=_read_secret("woocommerce.consumer_secret", cfg.woocommerce.consumer_secret_file),
        woo_webhook_secret=_read_secret("woocommerce.webhook_secret", cfg.woocommerce.webhook_secret_file),
        # Empty until the webhook URL is verified in Clover's dashboard: the handshake is answered meanwhile.
        clover_auth_code=_read_secret("clover.auth_code", cfg.clover.auth_code_file, may_be_empty=True),
        clover_tokens=tokens,
        clover_client_secrets=client_secrets,
        # Only when alerts are emailed: read like every other secret (env, $CREDENTIALS_DIRECTORY), so a missing
        # file is refused here, and the password is redacted from the logs like the rest.
        smtp_password=_read_secret("alerts.smtp_password", cfg.alerts.smtp_password_file, required=False)
        if cfg.alerts.email_to else "",
    )
