"""What the documents point to exists: relative links resolve to files, and ``§`` citations to sections.

A citation is ``NAME.md §N`` or ``NAME.md §N.M`` (in a document, or in a comment
of the package, the tests or the benchmarks), or a bare ``§N.M`` inside a
document, which cites that document itself. ``§N`` is a ``## N.`` heading;
``§N.M`` is a ``### N.M`` heading, or else item ``M.`` of a numbered list in
section N (WOOCOMMERCE_API.md §9 numbers its observations that way).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SOURCES = sorted(p for d in ("cloverwoo_daemon", "tests", "benchmarks") for p in (REPO / d).rglob("*.py"))

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CITED = re.compile(r"\b([A-Z][A-Z_]*\.md) §(\d+(?:\.\d+)?)")
_BARE = re.compile(r"(?<![\w.])(?<!\.md )§(\d+(?:\.\d+)?)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def sections(doc: Path) -> set[str]:
    """The section numbers a document defines: headings ``## N.``/``### N.M`` and list items of section N."""
    found: set[str] = set()
    current = ""
    in_code = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if m := re.match(r"#{2,4} (\d+(?:\.\d+)?)\.? ", line):
            found.add(m.group(1))
            if line.startswith("## "):
                current = m.group(1)
        elif line.startswith("## "):
            current = ""
        elif current and (m := re.match(r"(\d+)\. ", line)):
            found.add(f"{current}.{m.group(1)}")
    return found


def _docs_dir_file(name: str) -> Path:
    return REPO / "docs" / name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    text = _CODE_SPAN.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)} links to files that do not exist: {broken}"


def _citations() -> list[tuple[str, Path, str]]:
    """(where, cited document, section) of every citation in the documents and the sources."""
    out = []
    for path in [*DOCS, *SOURCES]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{n}"
            for name, number in _CITED.findall(line):
                out.append((where, _docs_dir_file(name) if name != "README.md" else REPO / name, number))
            if path.suffix == ".md" and path.parent.name == "docs":
                for number in _BARE.findall(line):
                    out.append((where, path, number))
    return out


def test_every_citation_names_an_existing_section() -> None:
    cache: dict[Path, set[str]] = {}
    bad = []
    for where, doc, number in _citations():
        if not doc.exists():
            bad.append(f"{where}: {doc.name} is not in docs/")
            continue
        if number not in cache.setdefault(doc, sections(doc)):
            bad.append(f"{where}: {doc.name} has no §{number}")
    assert not bad, "citations that resolve to nothing:\n" + "\n".join(bad)


def test_the_section_reader_sees_headings_and_numbered_items(tmp_path: Path) -> None:
    doc = tmp_path / "X.md"
    doc.write_text("# X\n## 1. One\n### 1.2 Sub\n## 9. Seen\n1. first\n2. second\n```\n## 5. in code\n```\n")
    assert sections(doc) == {"1", "1.2", "9", "9.1", "9.2"}
