"""Real TLS proxies in front of the daemon, configured from the documents' own examples.

nginx and Caddy from Debian's packages (``install-proxies`` installs them as root when missing),
each run as a process of its own on a free loopback port.

Rules these helpers keep:

- The example is read from the document, never retyped: ``nginx_example()`` is docs/SETUP.md's
  nginx ``server`` block, ``caddy_example(doc)`` the Caddyfile of docs/SETUP.md or README.md.
  ``render_*`` substitutes only what a merchant substitutes: the certificate paths, the server
  name, the listen port (on loopback), and the daemon's address ``127.0.0.1:8787`` (its
  ``server.listen``, which a test cannot assume free). Every substitution must find its text, so
  a document that changes its example fails here instead of a different config being run.
- Around the example, only what a whole server needs and the documents leave to the
  distribution's own files: nginx's main context (pid, logs, temporary paths, and an access log
  in JSON that the tests read), Caddy's global options (its files in the test's directory, its
  local CA instead of Let's Encrypt, no admin API, no redirect server on port 80).
- Certificates: nginx gets a self-signed one made with openssl; Caddy issues its own from its
  local CA, as it gets one from Let's Encrypt in production. ``Proxy.ca`` is what a client must
  trust (the Clover simulator: ``CloverSim.trust_certificate``; WooCommerce on the realwoo rig
  does not verify loopback certificates).
- Resource handling: ``start_nginx`` / ``start_caddy`` return a running ``Proxy`` (its answer on
  the port awaited); ``Proxy.stop`` ends exactly that process by its pid (gracefully, then
  SIGKILL) and deletes its directory. Use them as context managers.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.daemon_proc import free_port
from tests.test_docs_agree import blocks

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "SETUP.md"
README = REPO / "README.md"
INSTALL = Path(__file__).with_name("install-proxies")
DOC_DAEMON = "127.0.0.1:8787"  # the daemon's address in the documents' examples
START_TIMEOUT = 30.0


# --------------------------------------------------------------------------
# The binaries


def binary(name: str) -> str | None:
    for place in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{place}/{name}", os.X_OK):
            return f"{place}/{name}"
    return shutil.which(name)


def ensure_installed(name: str) -> tuple[str | None, str]:
    """The binary of ``nginx`` or ``caddy`` (installing Debian's packages when missing), or None and why not."""
    found = binary(name)
    if found:
        return found, ""
    done = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=900, check=False)
    found = binary(name)
    if found:
        return found, ""
    tail = " ".join(done.stderr.strip().splitlines()[-3:])
    return None, f"{name} is not installed and {INSTALL.name} could not install it: {tail or 'no reason given'}"


# --------------------------------------------------------------------------
# The examples, from the documents


def _one_block(doc: Path, needle: str, *langs: str) -> str:
    found = [b for b in blocks(doc.read_text(encoding="utf-8"), *langs) if needle in b]
    assert len(found) == 1, f"{doc.relative_to(REPO)}: expected one code block with {needle!r}, found {len(found)}"
    return found[0] + "\n"


def nginx_example() -> str:
    """docs/SETUP.md step 5's nginx ``server`` block, as written."""
    return _one_block(GUIDE, "proxy_pass", "", "nginx")


def caddy_example(doc: Path = GUIDE) -> str:
    """The Caddyfile example of docs/SETUP.md (or README.md), as written."""
    return _one_block(doc, "reverse_proxy", "", "caddyfile")


def _sub(text: str, pattern: str, new: str, what: str, doc: str) -> str:
    out, n = re.subn(pattern, lambda _: new, text)
    assert n >= 1, f"{doc}'s example no longer matches {pattern!r} ({what}); tests/real/proxies.py substitutes it"
    return out


def render_nginx(example: str, *, cert: Path, key: Path, port: int, server_name: str, upstream: str) -> str:
    """The example with only the merchant's values replaced (module docstring)."""
    doc = "docs/SETUP.md nginx"
    text = _sub(example, r"ssl_certificate\s+[^;\s]+;", f"ssl_certificate     {cert};", "certificate", doc)
    text = _sub(text, r"ssl_certificate_key\s+[^;\s]+;", f"ssl_certificate_key {key};", "certificate key", doc)
    text = _sub(text, r"server_name\s+[^;]+;", f"server_name {server_name};", "server name", doc)
    text = _sub(text, r"listen\s+443\s+ssl;", f"listen 127.0.0.1:{port} ssl;", "listen port", doc)
    return _sub(text, re.escape(DOC_DAEMON), upstream, "the daemon's address", doc)


def render_caddy(example: str, *, server_name: str, upstream: str, doc: str = "docs/SETUP.md") -> str:
    text = _sub(example, r"(?m)^sync\.example\.com(?=\s*\{)", server_name, "site address", f"{doc} Caddy")
    return _sub(text, re.escape(DOC_DAEMON), upstream, "the daemon's address", f"{doc} Caddy")


# --------------------------------------------------------------------------
# Running one


@dataclass
class Proxy:
    """A running proxy: ``url`` (``https://127.0.0.1:PORT``), ``ca`` (what a client trusts), its site config."""

    kind: str  # "nginx" | "caddy"
    url: str
    ca: Path
    site: str  # the example as rendered
    dir: Path
    proc: subprocess.Popen[bytes]
    access_log: Path | None = None  # nginx: one JSON object per request
    stop_signal: int = signal.SIGTERM
    notes: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTPS client that trusts this proxy's certificate, as Clover trusts a public CA's."""
        return httpx.AsyncClient(base_url=self.url, verify=self.ssl_context(), **{"timeout": 60.0, **kwargs})

    def accesses(self) -> list[dict[str, Any]]:
        """nginx's access log so far (``request``, ``status``, ``upstream_status``, ``user_agent``, ...)."""
        assert self.access_log is not None, f"{self.kind} keeps no access log here"
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def log_tail(self) -> str:
        out = []
        for name in ("error.log", "caddy.log"):
            f = self.dir / name
            if f.exists():
                out += [f"--- {self.kind} {name} (tail) ---", *f.read_text(errors="replace").splitlines()[-15:]]
        return "\n".join(out)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def wait_ready(self) -> None:
        """The port answers TLS with the certificate ``ca`` vouches for (any HTTP status)."""
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode} at start\n{self.log_tail()}")
            if self.ca.exists():
                try:
                    with httpx.Client(verify=self.ssl_context(), timeout=5.0) as http:
                        http.get(self.url + "/")
                    return
                except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                    last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer TLS on {self.url} within {START_TIMEOUT:g} s "
                           f"(last error: {last!r})\n{self.log_tail()}")


def _private_dir(kind: str) -> Path:
    """A directory of its own under the system temp dir, traversable by nginx's unprivileged workers."""
    d = Path(tempfile.mkdtemp(prefix=f"cloverwoo-{kind}-"))
    d.chmod(0o711)
    return d


def self_signed_certificate(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) for ``name`` (and localhost), valid two days, made by openssl."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=IP:{name},DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl could not make a certificate: {done.stderr.strip()}")
    key.chmod(0o600)
    return cert, key


NGINX_MAIN = """\
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format cloverwoo_test escape=json '{{"request":"$request","status":$status,'
        '"upstream_status":"$upstream_status","user_agent":"$http_user_agent","length":$request_length}}';
    access_log {d}/access.log cloverwoo_test;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"""


@contextmanager
def start_nginx(nginx: str, upstream: str, *, port: int | None = None) -> Iterator[Proxy]:
    """docs/SETUP.md's nginx example in front of ``upstream`` (``127.0.0.1:PORT``), on a free port."""
    d = _private_dir("nginx")
    try:
        cert, key = self_signed_certificate(d)
        port = port or free_port()
        site = render_nginx(nginx_example(), cert=cert, key=key, port=port, server_name="127.0.0.1",
                            upstream=upstream)
        (d / "site.conf").write_text(site)
        (d / "nginx.conf").write_text(NGINX_MAIN.format(d=d))
        args = [nginx, "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refuses docs/SETUP.md's example:\n{check.stderr}\n{site}")
        with (d / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen([*args, "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    proxy = Proxy("nginx", f"https://127.0.0.1:{port}", cert, site, d, proc, access_log=d / "access.log",
                  stop_signal=signal.SIGQUIT)  # nginx's graceful shutdown
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


CADDY_GLOBAL = """\
{{
	admin off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	http_port {http_port}
	https_port {port}
	storage file_system {d}/data
}}
"""


def caddy_config(example: str, *, upstream: str, port: int, http_port: int, d: Path, doc: str) -> str:
    return CADDY_GLOBAL.format(http_port=http_port, port=port, d=d) + render_caddy(
        example, server_name="127.0.0.1", upstream=upstream, doc=doc)


def caddy_routes(caddy: str, config: str) -> list[dict[str, Any]]:
    """``caddy adapt``: the JSON routes Caddy builds from a Caddyfile (its own reading, not ours)."""
    with tempfile.TemporaryDirectory(prefix="cloverwoo-caddy-adapt-") as tmp:
        path = Path(tmp) / "Caddyfile"
        path.write_text(config)
        done = subprocess.run([caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "HOME": tmp, "XDG_DATA_HOME": tmp, "XDG_CONFIG_HOME": tmp})
    assert done.returncode == 0, f"caddy adapt refuses the example:\n{done.stderr}\n{config}"
    servers = json.loads(done.stdout)["apps"]["http"]["servers"]
    return [route for server in servers.values() for route in server.get("routes", [])]


@contextmanager
def start_caddy(caddy: str, upstream: str, *, doc: Path = GUIDE) -> Iterator[Proxy]:
    """The document's Caddy example in front of ``upstream``, on a free port, with Caddy's local CA."""
    d = _private_dir("caddy")
    try:
        port, http_port = free_port(), free_port()
        config = caddy_config(caddy_example(doc), upstream=upstream, port=port, http_port=http_port, d=d,
                              doc=str(doc.relative_to(REPO)))
        (d / "Caddyfile").write_text(config)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d),
               "XDG_DATA_HOME": str(d / "xdg-data"), "XDG_CONFIG_HOME": str(d / "xdg-config")}
        with (d / "caddy.log").open("wb") as stderr:
            proc = subprocess.Popen([caddy, "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                    cwd=str(d))
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    proxy = Proxy("caddy", f"https://127.0.0.1:{port}", d / "data/pki/authorities/local/root.crt", config, d, proc)
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


# --------------------------------------------------------------------------
# A sender that reads while it sends


def post_reading_early(url: str, body: bytes, headers: dict[str, str], *, ca: Path | None = None,
                       timeout: float = 60.0) -> tuple[int, dict[str, str], int]:
    """POST ``body`` to ``url`` the way curl (WooCommerce's sender) does: while the body is still going out,
    an answer that arrives ends the sending. Returns (status, response headers lower-cased, body bytes sent).

    httpx writes the whole body before it reads, so a server that answers 413 early and stops reading
    would leave it waiting for its timeout; a real sender is not held up that way.
    """
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port_text = hostport.partition(":")
    port = int(port_text or (443 if scheme == "https" else 80))
    head = (f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as raw:
        conn: socket.socket = raw
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
            conn = context.wrap_socket(raw, server_hostname=host)
        try:
            conn.sendall(head)
            conn.setblocking(False)
            view, sent, got = memoryview(body), 0, b""
            while b"\r\n\r\n" not in got:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {url} within {timeout:g} s ({sent} of {len(body)} bytes sent)")
                sending = sent < len(body)
                readable, writable, _ = select.select([conn], [conn] if sending else [], [], 0.5)
                if readable or (isinstance(conn, ssl.SSLSocket) and conn.pending()):
                    try:
                        chunk = conn.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        chunk = None
                    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                        chunk = b""  # closed (a TLS close without close_notify, too)
                    if chunk == b"":
                        if not got:
                            raise ConnectionError(f"{url} closed the connection without an answer "
                                                  f"({sent} of {len(body)} bytes sent)")
                        break
                    got += chunk or b""
                if writable and sending:
                    try:
                        sent += conn.send(view[sent: sent + 65536])
                    except (ssl.SSLWantWriteError, BlockingIOError):
                        pass
                    except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                        # the server stopped reading (Caddy closes TLS mid-body once it has answered):
                        sent = len(body)  # its answer may still be there to read
        finally:
            if conn is not raw:
                conn.close()
    lines = got.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), fields, sent
