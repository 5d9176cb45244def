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
    "runtime",
    "client",
    "db",
    "inject",
    "cli",
    "testing",
]

# What each package may import from Geode. The base modules (errors, _files, _process) import
# nothing of Geode and may be used by everyone. Nothing imports the CLI.
ALLOWED = {
    "manifest": set(),
    "attestation": set(),
    "pki": set(),
    "protocol": {"attestation", "pki", "manifest"},
    "client": {"attestation", "pki", "manifest", "protocol"},
    "coordinator": {"attestation", "pki", "manifest", "protocol"},
    "runtime": {"attestation", "pki", "manifest", "protocol"},
    "db": {"pki", "manifest", "runtime"},
    "testing": set(),
    "inject": {"manifest", "pki", "client"},
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
BASE = {"errors", "_files", "_process"}


@pytest.mark.parametrize("name", ["geode", *(f"geode.{p}" for p in PACKAGES), "geode.errors"])
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
        assert _geode_imports(SRC / f"{name}.py") == set()
