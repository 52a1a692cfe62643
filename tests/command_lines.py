"""Every ``cloverwoo ...`` command line the project ships, collected from where it ships it.

Sources, and how a command line is recognised in each:

- ``systemd/*.service``: each ``ExecStart=`` (``%i`` becomes an instance name).
- The package's own string literals (the hints it prints, e.g. ``try:
  cloverwoo run --config ...``): every ``cloverwoo`` followed by a space and
  a lowercase word. In backticks the command is the backticked text; bare, it
  runs to the end of the string or to the first ``)``, ``;``, ``,``, ``: ``
  or `` (``. An f-string's replacement fields read as ``1`` (a value every
  argument accepts), and so does a ``str.format`` field. Bare string statements (docstrings) are not printed and
  are skipped; rich markup (``[bold]``) is removed first. Prose that names the
  product rather than a command says ``cloverwoo-daemon``.
- ``README.md``, ``docs/*.md``: shell code blocks (no language, or sh/bash/
  shell/console), one command per line and per ``&&``; and inline code in the
  prose. ``config/*.toml``: comments, read like a printed string.

Documents also write synopses (``cloverwoo log [--follow] [--sku S]``,
``mode aggregate|single|per-location``, ``exclude SKU ...``): each expands to
concrete command lines (every optional group present, then none; each
alternative in turn; ``...`` dropped; placeholders from ``PLACEHOLDERS``).
A bare command name (``cloverwoo out-of-stock``) is a reference to a command
and only has to name one.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTANCE = "shop1"  # what %i becomes in a template unit

# What a synopsis placeholder stands for. A new placeholder in a document gets a line here.
PLACEHOLDERS = {
    "SKU": "SKU-0001", "S": "SKU-0001", "N": "5", "ID": "12", "L": "warning", "T": "10m", "F": "skus.txt",
    "FILE": "stock.csv", "LOCATION": "downtown", "NAME": INSTANCE, "PATH": "/etc/cloverwoo/cloverwoo.toml",
    "HOST:PORT": "127.0.0.1:8788", "MINUTES": "10",
}
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
_INLINE = re.compile(r"`([^`\n]*\bcloverwoo [^`\n]*)`")
_BARE = re.compile(r"(?<![\w./@-])cloverwoo (?=[a-z-])")
_BARE_END = re.compile(r"\)|;|,|: | \(|\n|$")
_FORMAT_FIELD = re.compile(r"\{[a-z_]+\}")  # a str.format template's field reads like an f-string's
_MARKUP = re.compile(r"\[/?[a-z]+(?: [a-z]+)*\]")
_SHELL_OPS = {"|", "||", ">", ">>", "<", "2>&1", "&"}
_SHELL_LANGS = {"", "sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class CommandLine:
    """One command line as shipped: where, the text as written, and what argv it stands for."""

    where: str  # "README.md:113"
    text: str
    env: dict[str, str] = field(default_factory=dict)  # leading VAR=value assignments
    variants: tuple[tuple[str, ...], ...] = ()  # argv after `cloverwoo`; a synopsis has several

    @property
    def argv(self) -> list[str]:
        return list(self.variants[0])


def split_shell(text: str) -> tuple[dict[str, str], list[str]] | None:
    """(environment assignments, argv after ``cloverwoo``) of one shell command, or None if not a cloverwoo one."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    env: dict[str, str] = {}
    while words and _ENV.match(words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if words[:2] == ["sudo", "-u"]:
        words = words[3:]
    if not words or not (words[0] == "cloverwoo" or words[0].endswith("/bin/cloverwoo")):
        return None
    argv = words[1:]
    for i, w in enumerate(argv):
        if w in _SHELL_OPS:
            argv = argv[:i]
            break
    return env, argv


def expand(text: str) -> list[tuple[str, ...]]:
    """The concrete command lines a (possibly synopsis) text stands for; one for a plain command."""
    text = text.replace("\\|", "|").replace("…", "...")
    shapes = [text]
    if "[" in text:
        keep, drop = text, text
        inner = re.compile(r"\[([^\[\]]*)\]")
        while inner.search(keep):
            keep = inner.sub(r"\1", keep)
        while inner.search(drop):
            drop = inner.sub("", drop)
        shapes = [keep, drop]
    out: list[tuple[str, ...]] = []
    for shape in shapes:
        parsed = split_shell(shape)
        if parsed is None:
            continue
        words = [w for w in parsed[1] if w != "..."]
        alternatives = max((len(w.split("|")) for w in words), default=1)
        for i in range(alternatives):
            argv = []
            for w in words:
                options = w.split("|") if "|" in w and not w.startswith("|") else [w]
                w = options[min(i, len(options) - 1)]
                argv.append(PLACEHOLDERS.get(w, w))
            if tuple(argv) not in out:
                out.append(tuple(argv))
    return out


def _line(where: str, text: str) -> CommandLine | None:
    parsed = split_shell(text.replace("\\|", "|"))
    if parsed is None:
        return None
    variants = expand(text)
    return CommandLine(where, text, parsed[0], tuple(variants)) if variants else None


def markdown_commands(path: Path) -> list[CommandLine]:
    """Every cloverwoo command of a Markdown file, in order: shell code blocks, then inline code, line by line."""
    found: list[CommandLine] = []
    in_code, lang = False, ""
    rel = path.relative_to(REPO)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code, lang = not in_code, line.lstrip()[3:].strip().lower()
            continue
        if in_code:
            if lang not in _SHELL_LANGS:  # toml, nginx, Caddyfile, php...: not shell
                continue
            snippets = [part.strip() for part in line.split("&&")]
        else:
            snippets = _INLINE.findall(line)
        for snippet in snippets:
            cmd = _line(f"{rel}:{n}", snippet) if snippet else None
            if cmd is not None:
                found.append(cmd)
    return found


def text_commands(where: str, text: str) -> list[CommandLine]:
    """The command lines inside one printed text (a string literal, a comment)."""
    text = _FORMAT_FIELD.sub("1", _MARKUP.sub("", text))
    found: list[CommandLine] = []
    for snippet in _INLINE.findall(text):
        cmd = _line(where, snippet)
        if cmd is not None:
            found.append(cmd)
    bare = re.sub(r"`[^`]*`", " ", text)
    for m in _BARE.finditer(bare):
        end = _BARE_END.search(bare, m.end())
        snippet = bare[m.start(): end.start() if end else len(bare)].strip()
        cmd = _line(where, snippet)
        if cmd is not None:
            found.append(cmd)
    return found


class _Strings(ast.NodeVisitor):
    """The printed strings of a module: literals and f-strings (fields as ``1``), not bare string statements."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant | ast.JoinedStr):
            return  # a docstring or a bare string: never printed
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self.found.append((node.lineno, node.value))

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                parts.append(v.value)
            elif isinstance(v, ast.FormattedValue):
                parts.append("1")
                self.visit(v.value)  # strings inside the field's expression are literals too
        self.found.append((node.lineno, "".join(parts)))


def code_commands() -> list[CommandLine]:
    """Every command line in the package's string literals (what it prints or logs as a hint)."""
    found: list[CommandLine] = []
    for path in sorted((REPO / "cloverwoo_daemon").rglob("*.py")):
        visitor = _Strings()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        rel = path.relative_to(REPO)
        for lineno, text in visitor.found:
            found += text_commands(f"{rel}:{lineno}", text)
    return found


def config_commands() -> list[CommandLine]:
    found: list[CommandLine] = []
    for path in sorted((REPO / "config").glob("*.toml")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            _, hash_, comment = line.partition("#")
            if hash_:
                found += text_commands(f"{path.relative_to(REPO)}:{n}", comment)
    return found


def unit_exec_starts() -> list[tuple[Path, str, list[str]]]:
    """(unit file, ExecStart as written, its words with %i filled in) of every shipped unit."""
    found = []
    for unit in sorted((REPO / "systemd").glob("*.service")):
        for line in unit.read_text(encoding="utf-8").splitlines():
            if line.startswith("ExecStart="):
                value = line.partition("=")[2].lstrip("-@:+!")
                found.append((unit, value, shlex.split(value.replace("%i", INSTANCE))))
    return found


def unit_commands() -> list[CommandLine]:
    found = []
    for unit, value, words in unit_exec_starts():
        assert words[0].endswith("/bin/cloverwoo"), f"{unit.name}: ExecStart does not run cloverwoo: {value}"
        found.append(CommandLine(f"systemd/{unit.name}", value, {}, (tuple(words[1:]),)))
    return found


def document_commands() -> list[CommandLine]:
    found: list[CommandLine] = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        found += markdown_commands(path)
    return found


def shipped_commands() -> list[CommandLine]:
    """All of them: units, the package's printed hints, the documents, the example config's comments."""
    return unit_commands() + code_commands() + document_commands() + config_commands()
