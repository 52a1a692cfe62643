"""README.md and docs/SETUP.md tell the same story where a merchant copies from either.

What is compared: the credential files each creates (every secret the
daemon needs at start, ``woo_webhook_secret`` included), the mode of the
credentials directory (0700, root), the Caddy example (only ``/webhooks/``
reaches the daemon), and the synchronous-webhook mu-plugin (the same file).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = {"README.md": REPO / "README.md", "docs/SETUP.md": REPO / "docs" / "SETUP.md"}
NEEDED_AT_START = {"woo_key", "woo_secret", "woo_webhook_secret", "clover_auth_code"}


def blocks(text: str, *langs: str) -> list[str]:
    """The fenced code blocks of those languages ("" for none), the indentation of a list item's block removed."""
    found: list[str] = []
    current: list[str] | None = None
    indent, lang = 0, ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            if current is None:
                current, indent, lang = [], len(line) - len(stripped), stripped[3:].strip().lower()
            else:
                if lang in langs:
                    found.append("\n".join(current))
                current = None
            continue
        if current is not None:
            current.append(line[indent:])
    return found


@pytest.mark.parametrize("name", DOCS)
def test_every_secret_needed_at_start_is_created(name: str) -> None:
    shell = "\n".join(blocks(DOCS[name].read_text(), ""))
    created = set(re.findall(r">\s*(?:/etc/cloverwoo/credentials/)?([a-z_]+)\b", shell))
    missing = NEEDED_AT_START - created
    assert not missing, f"{name} never creates {sorted(missing)}: check-config and the start would exit 2"


@pytest.mark.parametrize("name", DOCS)
def test_the_credentials_directory_is_0700_root_only(name: str) -> None:
    text = DOCS[name].read_text()
    made = [line for line in text.splitlines() if "install -d" in line and "credentials" in line]
    assert made, f"{name} never creates the credentials directory"
    for line in made:
        assert "-m 0700" in line and " -g " not in line, f"{name}: {line.strip()}"


def test_the_caddy_examples_are_the_same_and_proxy_only_webhooks() -> None:
    found = {name: blocks(path.read_text(), "", "caddyfile") for name, path in DOCS.items()}
    caddy = {name: [b for b in bs if "reverse_proxy" in b] for name, bs in found.items()}
    for name, bs in caddy.items():
        assert len(bs) == 1, f"{name}: expected one Caddy example in a code block"
    readme, setup = caddy["README.md"][0], caddy["docs/SETUP.md"][0]
    assert readme.split() == setup.split()
    # Caddy runs `respond` before `reverse_proxy` whatever their order in the file: the proxy must sit in a
    # `handle /webhooks/*` block, else the bare `respond 404` answers the webhooks too (tests/real/test_proxy.py
    # runs the example in a real Caddy)
    assert re.search(r"handle\s+/webhooks/\*\s*\{\s*reverse_proxy\s+127\.0\.0\.1:\d+\s*\}", readme), readme
    assert readme.count("reverse_proxy") == 1 and "respond 404" in readme


def test_the_mu_plugin_is_the_same_file() -> None:
    php = {name: blocks(path.read_text(), "php") for name, path in DOCS.items()}
    assert php["README.md"] and php["README.md"] == php["docs/SETUP.md"]
    for name, path in DOCS.items():
        assert "mu-plugins/cloverwoo-sync-webhooks.php" in path.read_text(), name


@pytest.mark.parametrize("name", DOCS)
def test_systemd_sysusers_is_given_a_full_path(name: str) -> None:
    """``systemd-sysusers FILE`` looks a relative FILE up in the sysusers.d directories, not in the current
    one: ``systemd-sysusers systemd/cloverwoo.sysusers.conf`` fails ("Failed to open ... ignoring", exit 1)."""
    lines = [ln for ln in DOCS[name].read_text().splitlines() if "systemd-sysusers " in ln and "`" not in ln]
    assert lines, f"{name} never creates the cloverwoo user"
    for line in lines:
        words = line.split("#")[0].split()
        assert words[words.index("systemd-sysusers") + 1].startswith("/"), f"{name}: {line.strip()}"
