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

# What each package may import from Geode. The base modules (errors, _files, _process,
# _sockets) and the base package tee (the TEE kinds and reference values) import nothing of
# Geode and may be used by everyone. Nothing imports the CLI.
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
BASE = {"errors", "tee", "_files", "_process", "_sockets"}


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Every module of ``src/geode`` and the modules of Geode it imports, at module level or
    under ``TYPE_CHECKING`` (a cycle there is a cycle in the design all the same). ``from
    geode.x import y`` is an import of ``geode.x.y`` when that is a module, else of ``geode.x``."""
    modules = {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:  # a module asked for by name is that module's import
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = (found & modules.keys()) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(_module_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = _module_graph()
    ingress, message = "geode.proxy._http_ingress", "geode.proxy._http_message"
    assert message in graph[ingress]
    graph[message] = graph[message] | {ingress}
    assert any({ingress, message} <= set(cycle) for cycle in _cycles(graph))


def test_the_allowed_imports_point_one_way() -> None:
    """The table itself has no cycle: no package may reach itself through others."""
    graph = {package: set(allowed) for package, allowed in ALLOWED.items()}
    assert _cycles(graph) == []
