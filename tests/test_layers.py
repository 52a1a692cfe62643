"""The import rules of docs/ARCHITECTURE.md: core is pure, actors never import io."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cloverwoo_daemon"
IO_LIBS = {"trio", "httpx", "sqlite3", "structlog", "quart", "quart_trio", "hypercorn", "socket", "asyncio",
           "prometheus_client", "rich"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_is_pure() -> None:
    for path in (PKG / "core").glob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in IO_LIBS, f"{path.name} imports {name}"
            assert not name.startswith(("cloverwoo_daemon.io", "cloverwoo_daemon.actors", "cloverwoo_daemon.app")), \
                f"{path.name} imports {name}"


def test_actors_do_not_import_io() -> None:
    for path in (PKG / "actors").rglob("*.py"):
        for name in imports(path):
            assert not name.startswith("cloverwoo_daemon.io"), f"actors/{path.name} imports {name}"
            assert not name.startswith("cloverwoo_daemon.sim"), f"actors/{path.name} imports {name}"


def test_io_does_not_import_actors() -> None:
    for path in (PKG / "io").glob("*.py"):
        for name in imports(path):
            assert not name.startswith("cloverwoo_daemon.actors"), f"io/{path.name} imports {name}"
