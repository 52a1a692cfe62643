"""One command-line contract: every command line the project ships parses, and the global options work anywhere.

The shipped lines are collected by ``tests/command_lines.py`` (units'
``ExecStart``, the hints the package prints, README.md, docs/*.md, the example
config's comments), so a new hint or a new document line is covered without
touching this file. A line that fails here would exit 2 for whoever types it
(or, for a unit, put systemd in a restart loop).
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from cloverwoo_daemon.cli import DEFAULT_CONFIG, _parser
from tests.command_lines import (
    CommandLine,
    code_commands,
    document_commands,
    expand,
    shipped_commands,
    text_commands,
    unit_commands,
)


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _parser().parse_args(argv), ""
    except SystemExit:
        return None, err.getvalue().strip()


def _names_a_command(argv: list[str]) -> bool:
    """``out-of-stock``, ``webhooks``: a bare reference to a (sub)command, as prose writes it."""
    parser: argparse.ArgumentParser = _parser()
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return bool(argv)


def _cases() -> list[tuple[CommandLine, tuple[str, ...]]]:
    return [(c, v) for c in shipped_commands() for v in c.variants]


@pytest.mark.parametrize("cmd,argv", _cases(), ids=lambda v: v.where if isinstance(v, CommandLine) else " ".join(v))
def test_every_shipped_command_line_parses(cmd: CommandLine, argv: tuple[str, ...]) -> None:
    args, error = _parse(list(argv))
    if args is None and not _names_a_command(list(argv)):
        pytest.fail(f"{cmd.where}: `{cmd.text}` is not a valid cloverwoo command line "
                    f"(as `cloverwoo {' '.join(argv)}`): {error}")


def test_the_collectors_find_what_is_shipped() -> None:
    """The collectors cannot silently go blind: each source yields the lines known to be there."""
    units = {c.where: c.argv for c in unit_commands()}
    assert units == {"systemd/cloverwoo.service": ["run", "--config", "/etc/cloverwoo/cloverwoo.toml"],
                     "systemd/cloverwoo@.service": ["run", "--config", "/etc/cloverwoo/shop1.toml"]}
    hints = {(c.where.split(":")[0], " ".join(c.argv)) for c in code_commands()}
    assert ("cloverwoo_daemon/sim/harness.py", "run --config 1") in hints  # `simulate`'s "try: ..." line
    assert ("cloverwoo_daemon/core/alerts.py", "conflicts --resolve 1") in hints
    docs = {(c.where.split(":")[0], " ".join(c.argv)) for c in document_commands()}
    assert ("README.md", "status") in docs and ("docs/SETUP.md", "sync import --dry-run") in docs
    assert ("README.md", "log --follow --sku SKU-0001 --level warning --since 10m") in docs  # a synopsis


def test_the_collector_reads_prose_and_synopses_as_written() -> None:
    got = [c.argv for c in text_commands("x", "[bold]see[/bold] `cloverwoo log --since 5m` and (cloverwoo conflicts)")]
    assert got == [["log", "--since", "5m"], ["conflicts"]]
    got = [c.argv for c in text_commands("x", "try: cloverwoo run --config /tmp/a.toml")]
    assert got == [["run", "--config", "/tmp/a.toml"]]
    assert text_commands("x", "cloverwoo-daemon keeps stock; cloverwoo: config error") == []
    assert expand("cloverwoo mode aggregate\\|single") == [("mode", "aggregate"), ("mode", "single")]
    assert expand("cloverwoo conflicts [--resolve ID ...]") == [("conflicts", "--resolve", "12"), ("conflicts",)]
    assert expand("CREDENTIALS_DIRECTORY=/c cloverwoo status | head") == [("status",)]


# ------------------------------------------------------------------ the global options, before or after


@pytest.mark.parametrize("argv", [
    ["run", "--config", "/a.toml"],
    ["--config", "/a.toml", "run"],
    ["--config", "/b.toml", "run", "--config", "/a.toml"],  # the later one wins
    ["sync", "import", "--dry-run", "--config", "/a.toml"],
    ["webhooks", "register", "--config", "/a.toml"],
    ["webhooks", "--config", "/a.toml", "register"],
    ["clover", "connect", "downtown", "--config", "/a.toml"],
    ["check-config", "--offline", "--config=/a.toml"],
])
def test_config_before_or_after_the_subcommand(argv: list[str]) -> None:
    args, error = _parse(argv)
    assert args is not None, error
    assert args.config == "/a.toml"


@pytest.mark.parametrize("argv", [
    ["--config", "/a.toml", "status"],
    ["--config", "/a.toml", "sync", "import"],
    ["--config", "/a.toml", "webhooks", "register"],
    ["--config", "/a.toml", "clover", "connect", "downtown"],
    ["--socket", "/s", "--json", "--config", "/a.toml", "log", "--follow"],
])
def test_a_value_before_the_subcommand_is_not_replaced_by_a_default_after_it(argv: list[str]) -> None:
    args, error = _parse(argv)
    assert args is not None, error
    assert args.config == "/a.toml"
    if "--socket" in argv:
        assert args.socket == "/s" and args.json is True


@pytest.mark.parametrize("argv", [
    ["status", "--json"], ["--json", "status"], ["sync", "import", "--json"], ["webhooks", "register", "--json"],
    ["webhooks", "--json", "register"], ["job", "--json"], ["demo", "--seconds", "1", "--json"],
])
def test_json_anywhere(argv: list[str]) -> None:
    args, error = _parse(argv)
    assert args is not None, error
    assert args.json is True


@pytest.mark.parametrize("argv", [["status", "--socket", "/s"], ["--socket", "/s", "status"],
                                  ["clover", "--socket", "/s", "connect", "x"], ["sync", "push", "--socket=/s"]])
def test_socket_anywhere(argv: list[str]) -> None:
    args, error = _parse(argv)
    assert args is not None, error
    assert args.socket == "/s"


def test_defaults_the_same_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOVERWOO_CONFIG", raising=False)
    for argv in (["status"], ["run"], ["webhooks", "register"], ["clover", "connect", "x"]):
        args, error = _parse(argv)
        assert args is not None, error
        assert (args.config, args.socket, args.json) == (DEFAULT_CONFIG, None, False), argv
    monkeypatch.setenv("CLOVERWOO_CONFIG", "/env.toml")
    for argv in (["status"], ["webhooks", "register"], ["sync", "import", "--dry-run"]):
        args, error = _parse(argv)
        assert args is not None, error
        assert args.config == "/env.toml", argv
    args, _ = _parse(["run", "--config", "/given.toml"])
    assert args is not None and args.config == "/given.toml"  # given beats the environment


def test_unknown_options_still_refused() -> None:
    args, error = _parse(["status", "--confg", "/a.toml"])
    assert args is None and "unrecognized arguments" in error
