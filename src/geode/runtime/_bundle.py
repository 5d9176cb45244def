"""What ``geode run`` runs is what it measured: the bundle is staged, measured, and the command
resolved inside the staged copy.

Staging
-------
``stage_bundle`` copies the bundle into a private directory (0700) of the runtime directory,
never following a symbolic link out of it, and measures the copy (``measure_bundle``); the
activation uses that measurement and the command runs from the copy (its working directory), so
changing the original after the launch changes nothing that runs. The copy is removed when the
launcher exits (and by the next launcher, when one was killed outright: ``_leftovers``).

The lock file
-------------
A bundle names the system executables it needs (an interpreter, ``mariadbd``) in ``geode.lock``
at its root, a JSON document that is part of the bundle and so of its measurement::

    {"version": 1,
     "executables": {"python3": {"path": "/usr/bin/python3.11", "sha256": "<64 hex>",
                                 "interpreter": true}}}

``path`` is absolute and resolved (no symbolic link in it) when the lock is written
(``write_lock``, ``geode bundle lock``); ``interpreter`` says the executable's first operand is a
script, which must then resolve inside the copy too. Every locked executable is hashed again
before the command starts (``check_executables``), and a mismatch refuses the launch.

Resolving the command
---------------------
``resolve_command`` maps the command's argv onto the staged copy:

- a program given as a path (``./app``, ``bin/serve``) must resolve inside the copy;
- a bare name is a file at the copy's root, else an executable of the lock (run by its locked
  absolute path, so ``$PATH`` cannot substitute it), else refused;
- ``geode`` names the running Geode itself (``sys.executable -m geode``): the runtime is what the
  platform measures, not the bundle;
- an interpreter's script operand must resolve inside the copy (``python app.py``); ``-c`` and
  ``-m`` for a module outside the copy are refused.

Anything else is a ``LaunchError`` whose one line says what lies outside the bundle.
Services that start locked executables themselves (``geode db serve`` starting ``mariadbd``)
find them through ``$GEODE_BUNDLE_LOCK`` (``locked_executable``), which re-checks the hash.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUNDLE_LOCK_ENV",
    "LOCK_FILE",
    "BundleLock",
    "LockedExecutable",
    "StagedBundle",
    "check_executables",
    "locked_executable",
    "read_lock",
    "remove_staged",
    "resolve_command",
    "stage_bundle",
    "write_lock",
]

LOCK_FILE = "geode.lock"
# Set by ``geode run`` for the command: the staged copy's lock file.
BUNDLE_LOCK_ENV = "GEODE_BUNDLE_LOCK"


@dataclass(frozen=True)
class LockedExecutable:
    """A system executable a bundle needs, pinned by its resolved path and SHA-256."""

    name: str
    path: Path
    sha256: str
    interpreter: bool = False


@dataclass(frozen=True)
class BundleLock:
    """A bundle's ``geode.lock``: its system executables by name (empty: none needed)."""

    executables: Mapping[str, LockedExecutable]

    def to_json(self) -> dict[str, object]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, value: object, *, source: str) -> BundleLock:
        """``LaunchError`` naming ``source`` and the field for anything malformed."""
        raise NotImplementedError


@dataclass(frozen=True)
class StagedBundle:
    """A private copy of a bundle, its measurement, and its lock."""

    directory: Path
    measurement: bytes
    lock: BundleLock


def read_lock(bundle: Path) -> BundleLock:
    """The lock of ``bundle`` (an empty one when it has no ``geode.lock``)."""
    raise NotImplementedError


def write_lock(
    bundle: Path, names: Sequence[str], *, interpreters: Sequence[str] = (), path: str | None = None
) -> BundleLock:
    """Lock the executables ``names`` (found on ``path``, default ``$PATH``; resolved; hashed)
    into ``bundle/geode.lock``, keeping entries already there for other names. ``interpreters``
    marks names whose first operand is a script (default: ``python*``, ``sh``, ``bash``, ``node``,
    ``perl``, ``ruby``)."""
    raise NotImplementedError


def stage_bundle(source: Path, base_dir: Path | None = None) -> StagedBundle:
    """Copy ``source`` into a new private directory under ``base_dir`` (default: the runtime
    directory) and measure the copy. ``LaunchError`` for what cannot be copied (a special file,
    a link out of the bundle)."""
    raise NotImplementedError


def remove_staged(staged: StagedBundle) -> None:
    """Remove the staged copy (quietly; what is left is removed by the next launcher)."""
    raise NotImplementedError


def check_executables(lock: BundleLock) -> None:
    """Hash every locked executable again; ``LaunchError`` naming the first that is missing,
    changed, or no longer the resolved path the lock names."""
    raise NotImplementedError


def resolve_command(staged: StagedBundle, argv: Sequence[str]) -> list[str]:
    """The argv to execute, in the staged copy (see the module docstring)."""
    raise NotImplementedError


def locked_executable(name: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The checked path of the executable ``name`` in the lock ``$GEODE_BUNDLE_LOCK`` names, or
    ``None`` outside ``geode run`` (no such variable). ``LaunchError`` when the lock does not
    name it or its hash no longer matches."""
    raise NotImplementedError
