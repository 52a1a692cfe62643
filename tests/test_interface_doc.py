"""docs/INTERFACE.md is held to the code: the CLI parser, the config structs, the example config, the HTTP routes.

Each check runs both ways: what the code has must be documented, and what the
page documents must exist. So a new option, key or route fails here until the
page says what it does, and a removed one fails until the page stops promising
it. (That the documented command lines parse is ``tests/test_command_lines.py``.)
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import prometheus_client
import pytest

from cloverwoo_daemon import cli, config
from cloverwoo_daemon.core.verification import VerificationGate
from cloverwoo_daemon.io.webhooks import WebhookDeps, create_app

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "INTERFACE.md"
EXAMPLE = REPO / "config" / "cloverwoo.example.toml"
GLOBAL_OPTIONS = {"--config", "--socket", "--json"}

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE = re.compile(r"`([^`]*)`")
_FLAG = re.compile(r"--[a-z][a-z-]*")


# ------------------------------------------------------------------ reading the page


def _section(number: str) -> list[str]:
    """The lines of ``## <number>. ...`` up to the next ``## `` heading."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"## {number}. ")), None)
    assert start is not None, f"docs/INTERFACE.md has no section '## {number}. ...'"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def _rows(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(nearest ``###`` heading, cells) of every table row, the header and separator rows left out."""
    def separator(i: int) -> bool:
        return i < len(lines) and re.fullmatch(r"\|[\s|:-]*\|", lines[i].strip()) is not None

    heading = ""
    out = []
    for i, line in enumerate(lines):
        if line.startswith("### "):
            heading = line[4:]
        elif line.startswith("|") and not separator(i) and not separator(i + 1):
            cells = [c.strip() for c in _CELL_SPLIT.split(line.strip())[1:-1]]
            out.append((heading, cells))
    return out


def _first_code(cell: str) -> str | None:
    m = _CODE.search(cell)
    return m.group(1).replace("\\|", "|") if m else None


# ------------------------------------------------------------------ the command line


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every runnable (sub)command of the parser, by its words after ``cloverwoo``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    out: dict[tuple[str, ...], Any] = {}
    for name, sub in subs[0].choices.items():
        out.update(_leaf_parsers(sub, (*path, name)))
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - GLOBAL_OPTIONS - {"--help"}


def _choices(parser: argparse.ArgumentParser) -> list[set[str]]:
    return [set(a.choices) for a in parser._actions if a.choices and not isinstance(a, argparse._SubParsersAction)]


def _documented_commands() -> dict[tuple[str, ...], list[str]]:
    """Synopses of §2 by command words: the first cell of a table row, as ``cloverwoo <words> [...]``."""
    found: dict[tuple[str, ...], list[str]] = {}
    for _, cells in _rows(_section("2")):
        text = _first_code(cells[0])
        if text is None or not text.startswith("cloverwoo "):
            continue
        words = text.split()[1:]
        path = []
        for w in words:  # command words: lowercase, no alternatives; then placeholders, [options], a|b
            if not re.fullmatch(r"[a-z][a-z-]*", w):
                break
            path.append(w)
        found.setdefault(tuple(path), []).append(text)
    return found


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    parsers = _leaf_parsers(cli._parser())
    documented = _documented_commands()
    missing = sorted(" ".join(p) for p in parsers.keys() - documented.keys())
    unknown = sorted(" ".join(p) for p in documented.keys() - parsers.keys())
    assert not missing, f"docs/INTERFACE.md §2 does not document: {missing}"
    assert not unknown, f"docs/INTERFACE.md §2 documents commands the CLI does not have: {unknown}"


def test_every_option_is_documented_and_every_documented_option_exists() -> None:
    parsers = _leaf_parsers(cli._parser())
    for path, synopses in _documented_commands().items():
        parser = parsers[path]
        documented = {f for s in synopses for f in _FLAG.findall(s)}
        command = "cloverwoo " + " ".join(path)
        assert documented <= _options(parser) | GLOBAL_OPTIONS, (
            f"docs/INTERFACE.md: `{command}` documents {sorted(documented - _options(parser))}, which it does not take")
        assert _options(parser) <= documented, (
            f"docs/INTERFACE.md: `{command}` takes {sorted(_options(parser) - documented)}, undocumented")
        alternatives = [{a for a in w.strip("[]").split("|") if not a.startswith("-")}
                        for s in synopses for w in s.split() if "|" in w]
        for choices in _choices(parser):
            assert choices in alternatives, (
                f"docs/INTERFACE.md: `{command}` accepts {'|'.join(sorted(choices))}; the synopsis should list "
                f"exactly those")


def test_global_options_and_exit_codes() -> None:
    top = cli._parser()
    assert {o for a in top._actions for o in a.option_strings if o.startswith("--")} - {"--help"} == GLOBAL_OPTIONS
    lines = _section("2")
    documented = {(_first_code(cells[0]) or "").split()[0] for heading, cells in _rows(lines)
                  if heading.startswith("2.1") and _first_code(cells[0])}
    assert documented == GLOBAL_OPTIONS, f"docs/INTERFACE.md §2.1 lists {sorted(documented)}"
    codes = {cells[0] for heading, cells in _rows(lines) if heading.startswith("2.2")}
    expected = {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_UNREACHABLE}
    assert codes == {str(c) for c in expected}, f"docs/INTERFACE.md §2.2 lists exit codes {sorted(codes)}"


# ------------------------------------------------------------------ the config


_REQUIRED = object()


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if get_origin(tp) is list:
        (arg,) = get_args(tp)
        return _struct_of(arg)
    return None


def _config_keys(struct: type[msgspec.Struct] = config.Config, prefix: str = "") -> dict[str, Any]:
    """Every key of the config structs (``clover.locations.name``) with its default (``_REQUIRED`` if none)."""
    keys: dict[str, Any] = {}
    for f in msgspec.structs.fields(struct):
        name = f"{prefix}{f.name}"
        nested = _struct_of(f.type)
        if nested is not None:
            keys.update(_config_keys(nested, name + "."))
        elif f.default is not msgspec.NODEFAULT:
            keys[name] = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            keys[name] = f.default_factory()
        else:
            keys[name] = _REQUIRED
    return keys


def _documented_keys() -> dict[str, str]:
    """Keys of §3's tables, as ``section.key``, with the default cell as written."""
    found: dict[str, str] = {}
    for heading, cells in _rows(_section("3")):
        section = re.search(r"\[\[?([a-z_.]+)\]\]?", heading)
        key = _first_code(cells[0])
        if section is None or key is None or not re.fullmatch(r"[a-z_]+", key):
            continue
        name = f"{section.group(1)}.{key}"
        assert name not in found, f"docs/INTERFACE.md §3 documents {name} twice"
        found[name] = cells[1]
    return found


def test_every_config_key_is_documented_with_its_default() -> None:
    keys = _config_keys()
    documented = _documented_keys()
    assert not keys.keys() - documented.keys(), (
        f"docs/INTERFACE.md §3 does not document {sorted(keys.keys() - documented.keys())}")
    assert not documented.keys() - keys.keys(), (
        f"docs/INTERFACE.md §3 documents keys config.py does not have: {sorted(documented.keys() - keys.keys())}")
    for name, cell in documented.items():
        default = keys[name]
        if default is _REQUIRED:
            assert cell == "required", f"docs/INTERFACE.md §3: {name} is required, not {cell!r}"
            continue
        literal = _first_code(cell)
        assert literal is not None, f"docs/INTERFACE.md §3: {name}'s default should be a TOML value in backticks"
        assert tomllib.loads(f"v = {literal}")["v"] == default, (
            f"docs/INTERFACE.md §3: {name} defaults to {default!r}, not {literal}")


def _example_keys() -> set[str]:
    """What the example config shows, set or commented out (``# app_rate = 50.0``): ``section.key`` for each
    key, and each table it opens (``[alerts.thresholds]`` shows the key ``alerts.thresholds``)."""
    shown: set[str] = set()
    section = ""
    for raw in EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip().lstrip("#").strip()
        if m := re.fullmatch(r"\[\[?([a-z_.]+)\]\]?(?:\s+#.*)?", line):
            section = m.group(1)
            shown.add(section)
        elif (m := re.match(r"([a-z_]+)\s*=", line)) and section:
            shown.add(f"{section}.{m.group(1)}")
    return shown


def test_the_example_config_shows_every_key() -> None:
    missing = set(_config_keys()) - _example_keys()
    assert not missing, f"config/cloverwoo.example.toml does not show {sorted(missing)} (set, or commented out)"
    config.parse_config(EXAMPLE.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ HTTP


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    async def accept(items: Any) -> int:
        return len(items)

    intake = type("Intake", (), {"accept": staticmethod(accept)})()
    app = create_app(WebhookDeps(clover_auth_code="a", woo_webhook_secret="s", max_body_bytes=1024, intake=intake,
                                 verification=VerificationGate(configured=True), health=lambda: (True, {}),
                                 registry=prometheus_client.CollectorRegistry()))
    routes = {(m, rule.rule) for rule in app.url_map.iter_rules() for m in rule.methods or ()
              if m in ("GET", "POST") and not rule.rule.startswith("/static")}
    documented = set()
    for heading, cells in _rows(_section("4")):
        text = _first_code(cells[0])
        if heading == "" and text and re.fullmatch(r"(GET|POST) /\S*", text):
            method, path = text.split()
            documented.add((method, path))
    assert routes == documented, (
        f"docs/INTERFACE.md §4: undocumented {sorted(routes - documented)}, not served {sorted(documented - routes)}")


# ------------------------------------------------------------------ the checks can fail


@pytest.mark.parametrize("bad, why", [
    ("| `cloverwoo status [--verbose]` | x |", "--verbose"),
    ("| `cloverwoo frobnicate` | x |", "frobnicate"),
])
def test_a_wrong_line_would_be_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str, why: str) -> None:
    text = DOC.read_text(encoding="utf-8").replace("### 2.4 Admin commands", f"### 2.4 Admin commands\n\n{bad}\n", 1)
    doc = tmp_path / "INTERFACE.md"
    doc.write_text(text, encoding="utf-8")
    monkeypatch.setitem(globals(), "DOC", doc)
    with pytest.raises(AssertionError, match=why):
        test_every_command_is_documented_and_every_documented_command_exists()
        test_every_option_is_documented_and_every_documented_option_exists()
