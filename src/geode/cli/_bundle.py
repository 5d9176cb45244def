"""``geode bundle``: prepare a service's bundle for what runs it.

- ``lock DIR NAME...``: pin the system executables the bundle needs in ``DIR/geode.lock``
  (``geode.runtime``'s lock file), so that ``geode run`` checks them before it starts anything;
- ``gramine-manifest DIR``: write the Gramine manifest of a Python service whose trusted files are
  the bundle, so that MRENCLAVE covers it.
"""

from __future__ import annotations

from pathlib import Path

import click

from geode.runtime import LOCK_FILE, write_lock

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
    "replaces the guess: python*, sh, bash, node, perl, ruby).",
)
def lock(directory: Path, names: tuple[str, ...], interpreters: tuple[str, ...]) -> None:
    """Pin the system executables NAMES (found on $PATH) in DIRECTORY/geode.lock."""
    pinned = write_lock(directory, names, interpreters=interpreters)
    for name in dict.fromkeys([*names, *interpreters]):
        entry = pinned.executables[name]
        kind = " (interpreter)" if entry.interpreter else ""
        click.echo(f"{name}: {entry.path} sha256 {entry.sha256[:16]}...{kind}")
    click.echo(f"geode: wrote {directory / LOCK_FILE}", err=True)


@bundle.command("gramine-manifest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def gramine_manifest(directory: Path) -> None:
    """Write the Gramine manifest of the Python service in DIRECTORY."""
    raise NotImplementedError
