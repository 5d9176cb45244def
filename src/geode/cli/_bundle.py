"""``geode bundle``: prepare a service's bundle for what runs it.

- ``lock DIR NAME...``: pin the system executables the bundle needs in ``DIR/geode.lock``
  (``geode.runtime``'s lock file), so that ``geode run`` checks them before it starts anything;
- ``gramine-manifest DIR``: write the Gramine manifest of a Python service whose trusted files are
  the bundle, so that MRENCLAVE covers it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geode.cli._common import DEFAULT_MESH_ADDR
from geode.runtime import LOCK_FILE, write_lock
from geode.runtime.launcher import gramine_manifest as render_gramine_manifest
from geode.runtime.launcher import python_layout

__all__ = ["bundle"]


@click.group()
def bundle() -> None:
    """Prepare a service's bundle (lock its executables, write its Gramine manifest)."""


@bundle.command("lock")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--interpreter",
    "interpreters",
    multiple=True,
    help="A name whose first operand is a script that must be in the bundle (repeatable; "
    "replaces the guess: python*, sh, bash, dash, zsh, ksh, node, perl, ruby).",
)
@click.option(
    "--program",
    "programs",
    multiple=True,
    help="A name (not an interpreter) that geode run may run as the command itself, with the "
    "caller's arguments (repeatable). Without it, a locked executable that is not an "
    "interpreter is for the bundle's own use (e.g. mariadbd, started by geode db serve).",
)
def lock(
    directory: Path,
    names: tuple[str, ...],
    interpreters: tuple[str, ...],
    programs: tuple[str, ...],
) -> None:
    """Pin the system executables NAMES (found on $PATH) in DIRECTORY/geode.lock."""
    pinned = write_lock(directory, names, interpreters=interpreters, programs=programs)
    for name in dict.fromkeys([*names, *interpreters, *programs]):
        entry = pinned.executables[name]
        kind = " (interpreter)" if entry.interpreter else " (program)" if entry.program else ""
        click.echo(f"{name}: {entry.path} sha256 {entry.sha256[:16]}...{kind}")
    click.echo(f"geode: wrote {directory / LOCK_FILE}", err=True)


@bundle.command("gramine-manifest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--entrypoint",
    required=True,
    metavar="SCRIPT",
    help="The service's Python script, a path inside DIRECTORY.",
)
@click.option("--service", required=True, help="The manifest service the enclave activates as.")
@click.option(
    "--coordinator",
    default=DEFAULT_MESH_ADDR,
    show_default=True,
    help="Mesh API address HOST:PORT (fixed in the enclave's arguments).",
)
@click.option(
    "--root-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The deployment's root certificate (a trusted file: the enclave trusts only it).",
)
@click.option(
    "--python",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=sys.executable,
    show_default="this Python",
    help="The interpreter, with Geode installed (the bundle's geode.lock must lock it).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the manifest here (default: standard output).",
)
def gramine_manifest(
    directory: Path,
    entrypoint: str,
    service: str,
    coordinator: str,
    root_ca: Path,
    python: Path,
    output: Path | None,
) -> None:
    """Write the Gramine manifest of the Python service in DIRECTORY: every file of it a
    trusted file with its SHA-256, so that MRENCLAVE covers the bundle."""
    text = render_gramine_manifest(
        directory,
        entrypoint,
        python_layout(python),
        service=service,
        coordinator=coordinator,
        root_ca=root_ca,
    )
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"geode: wrote {output}", err=True)
