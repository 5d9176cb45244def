"""Test roots and fake TEEs reach a ``geode`` command only through the Python API
(``CliDeps`` as click's ``obj``): no option and no environment variable of any production
command can name a vendor root, a trust anchor or a TEE device path. A host that controls the
Coordinator's command line and environment must not be able to make it trust a forged chain or
attest through a device of its own making."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click

import geode
from geode.cli import cli

SRC = Path(geode.__file__).parent

# Words that would mean "what hardware evidence is trusted under" or "where the TEE is".
FORBIDDEN = re.compile(
    r"root|trust|anchor|vendor|\bark\b|\bask\b|pck|vcek|tsm|sev[-_]?guest|tdx[-_]?guest|"
    r"gramine|attestation|probe|fake|host[-_]?paths|device",
    re.IGNORECASE,
)
# What those words name today, none of it a TEE's root of trust or device: the deployment's own
# root certificate (pinned by 'geode verify'), and simulated platform keys (simulation only: a
# hardware Coordinator refuses them, ``tests/cli/test_coordinator_tee.py``).
ALLOWED_OPTIONS = {
    "--root-ca",
    "--root-ca-configmap",
    "--trust-platform-key",
    "--trust-coordinator-platform-key",
}
ALLOWED_ENV = {"GEODE_ROOT_CA", "GEODE_ROOT_CA_FILE"}  # the latter: what a service is handed


def _params(command: click.Command, path: str) -> Iterator[tuple[str, click.Parameter]]:
    for param in command.params:
        yield path, param
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _params(sub, f"{path} {name}")


def _commands(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _commands(sub)


def test_no_option_names_a_root_or_a_tee_device() -> None:
    offending = []
    for path, param in _params(cli, "geode"):
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("-") and FORBIDDEN.search(name) and name not in ALLOWED_OPTIONS:
                offending.append(f"{path} {name}")
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        for envvar in envvars:
            if FORBIDDEN.search(envvar) and envvar not in ALLOWED_ENV:
                offending.append(f"{path} {'/'.join(param.opts)} (env {envvar})")
    assert not offending, offending
    # ... and no command takes every option from the environment.
    for command in _commands(cli):
        assert command.context_settings.get("auto_envvar_prefix") is None, command.name


def _env_names(tree: ast.AST) -> Iterator[str]:
    """Every string in a module that looks like one of Geode's environment variables, and
    every constant read through ``os.environ``/``os.getenv``."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"GEODE_[A-Z0-9_]+", node.value)
        ):
            yield node.value
        if isinstance(node, ast.Call) and node.args:
            func = ast.unparse(node.func)
            arg = node.args[0]
            if func in ("os.getenv", "os.environ.get", "environ.get", "getenv") and isinstance(
                arg, ast.Constant
            ):
                yield str(arg.value)
        if (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) in ("os.environ", "environ")
            and isinstance(node.slice, ast.Constant)
        ):
            yield str(node.slice.value)


def test_no_environment_variable_names_a_root_or_a_tee_device() -> None:
    found = {
        (name, str(path.relative_to(SRC)))
        for path in SRC.rglob("*.py")
        for name in _env_names(ast.parse(path.read_text()))
    }
    assert any(name == "GEODE_ROOT_CA" for name, _ in found)  # the scan sees them
    offending = sorted(
        f"{name} ({where})"
        for name, where in found
        if FORBIDDEN.search(name.removeprefix("GEODE_")) and name not in ALLOWED_ENV
    )
    assert not offending, offending
