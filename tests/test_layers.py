"""The layering rules of docs/architecture.md, checked on the source (no
import of the package): the sans-IO core imports no I/O; each server engine
imports neither the other engine nor the ``Server``'s privates; no package
reaches into another package's private modules or names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "sdk" / "unixrpc"
#: what the sans-IO core must never import: it never waits or touches a socket
IO_MODULES = {"socket", "select", "selectors", "anyio", "trio", "asyncio", "threading", "sniffio"}
#: library-internal packages every layer may use (the core and its helpers)
SHARED_PRIVATE = {"_core", "_wakeup", "_ratelog", "_readwatch"}


def _modules(under: Path) -> list[Path]:
    return sorted(path for path in under.rglob("*.py") if "__pycache__" not in path.parts)


def _package_of(path: Path) -> tuple[str, ...]:
    return path.relative_to(SDK).parent.parts


def _imports(path: Path) -> list[tuple[tuple[str, ...], list[str]]]:
    """Every import of *path*: (the imported module as parts from the
    package root, or absolute for a third-party module; the names taken)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((tuple(alias.name.split(".")), []))
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                found.append((tuple((node.module or "").split(".")), names))
                continue
            base = list(_package_of(path))
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            module = tuple(base) + (tuple(node.module.split(".")) if node.module else ())
            found.append((("unixrpc", *module), names))
    return found


@pytest.mark.parametrize("path", _modules(SDK / "_core"), ids=lambda p: str(p.relative_to(SDK)))
def test_the_core_imports_no_io(path: Path) -> None:
    for module, _ in _imports(path):
        assert module[0] not in IO_MODULES, f"{path.relative_to(SDK)} imports {'.'.join(module)}"


@pytest.mark.parametrize(("engine", "other"), [("anyio", "threads"), ("threads", "anyio")])
def test_an_engine_imports_neither_the_other_nor_server_privates(engine: str, other: str) -> None:
    for path in _modules(SDK / "server" / engine):
        for module, names in _imports(path):
            where = f"{path.relative_to(SDK)}: {'.'.join(module)}"
            assert module[:3] != ("unixrpc", "server", other), f"{where} is the other engine"
            if module[:3] == ("unixrpc", "server", "server"):
                assert all(not name.startswith("_") for name in names), f"{where} {names}"
        text = path.read_text()
        reach = re.findall(r"\b_?server\._[a-z]\w*", text)
        assert not reach, f"{path.relative_to(SDK)} reaches into the Server: {reach}"


@pytest.mark.parametrize("path", _modules(SDK), ids=lambda p: str(p.relative_to(SDK)))
def test_no_package_reaches_into_another_packages_privates(path: Path) -> None:
    own = ("unixrpc", *_package_of(path))
    for module, names in _imports(path):
        if module[0] != "unixrpc":
            continue
        for depth, part in enumerate(module[1:], start=1):
            if part.startswith("_") and not part.startswith("__") and part not in SHARED_PRIVATE:
                owner = module[:depth]  # the package the private module belongs to
                assert own[: len(owner)] == owner, (
                    f"{path.relative_to(SDK)} imports {'.'.join(module)}, private to {'.'.join(owner)}"
                )
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        if private and module[1:2] not in {(p,) for p in SHARED_PRIVATE}:
            owner = module[:-1]
            assert own[: len(owner)] == owner, (
                f"{path.relative_to(SDK)} takes private {private} from {'.'.join(module)}"
            )
