"""The public surface is what we mean it to be, and dependencies point downwards (DESIGN.md)."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "geode"
PACKAGES = [
    "manifest",
    "attestation",
    "pki",
    "protocol",
    "coordinator",
    "proxy",
    "runtime",
    "client",
    "db",
    "inject",
    "cli",
    "testing",
]

# What each package may import from Geode. The base modules (errors, _files, _process) and the
# base package tee (the TEE kinds and reference values) import nothing of Geode and may be used
# by everyone. Nothing imports the CLI.
ALLOWED = {
    "manifest": set(),
    "attestation": set(),
    "pki": set(),
    "protocol": {"attestation", "pki", "manifest"},
    "client": {"attestation", "pki", "manifest", "protocol"},
    "coordinator": {"attestation", "pki", "manifest", "protocol"},
    "proxy": {"manifest", "pki"},
    "runtime": {"attestation", "pki", "manifest", "protocol", "proxy"},
    "db": {"pki", "manifest", "protocol", "runtime"},
    # Its fakes stand in for the Coordinator's store and the CA's clock. No package imports
    # testing: the helpers never end up in what they test.
    "testing": {"coordinator", "pki"},
    "inject": {"manifest", "pki", "protocol", "client"},
    "cli": {
        "attestation",
        "pki",
        "manifest",
        "protocol",
        "client",
        "coordinator",
        "runtime",
        "db",
        "inject",
    },
}
BASE = {"errors", "tee", "_files", "_process"}


# Public modules inside a package, with an ``__all__`` of their own.
SUBMODULES = ["geode.runtime.launcher"]


@pytest.mark.parametrize(
    "name", ["geode", *(f"geode.{p}" for p in PACKAGES), *SUBMODULES, "geode.errors", "geode.tee"]
)
def test_all_is_the_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert exported, f"{name} exports nothing"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names missing {item!r}"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr != "annotations"
    }
    public |= exported & {"__version__"}
    assert public == exported, f"{name}: public but not exported {public - exported}"


def _geode_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for full in names:
            parts = full.split(".")
            if parts[0] == "geode" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_downwards(package: str) -> None:
    for path in sorted((SRC / package).glob("*.py")):
        outside = _geode_imports(path) - {package} - BASE
        assert outside <= ALLOWED[package], f"{path.name} imports {outside - ALLOWED[package]}"


def test_base_modules_import_nothing_of_geode() -> None:
    for name in BASE:
        # A base package (tee) may import its own modules, and nothing else of Geode.
        files = sorted((SRC / name).glob("*.py")) if (SRC / name).is_dir() else [SRC / f"{name}.py"]
        assert files
        for path in files:
            assert _geode_imports(path) - {name} == set(), f"{path.name}"


def _module_graph(package: str) -> dict[str, set[str]]:
    """The modules of ``package`` and, for each, those of the package it imports (at module
    level or under ``TYPE_CHECKING``: a cycle there is a cycle in the design all the same)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / package).glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["geode", package] and len(parts) > 2:
                    found.add(parts[2])
                elif parts == ["geode", package]:  # the package itself, or a module of it
                    found.update({"__init__", *(alias.name for alias in node.names)})
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[:2] == ["geode", package] and len(parts) > 2:
                        found.add(parts[2])
        graph[path.stem] = found & {p.stem for p in (SRC / package).glob("*.py")}
    return graph


@pytest.mark.parametrize("package", ["proxy", "runtime"])
def test_no_import_cycle_within(package: str) -> None:
    graph = _module_graph(package)
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError(f"import cycle in geode.{package}: {' -> '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
