"""The bundles ``geode up`` builds and the measurements it pins.

A lock file names this machine's executables by hash (the interpreter, ``mariadbd``), so a
deployment directory cannot carry one that fits every machine. ``geode up`` builds them instead:
each service's bundle is copied to ``{run}/bundles/<service>``, the executables its ``lock``
names are pinned there in ``geode.lock`` (found on the ``PATH`` the services run with), and the
copy is measured. Those measurements replace the ones of the services' packages in the manifest
before it is set, and the services run with ``geode run --bundle {run}/bundles/<service>``: what
the Coordinator pins is what was built, and ``geode run`` refuses any other program.

Everything is built before anything starts: an executable that is not installed is one line
naming the service and the executable.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import measure_bundle
from geode.cli._up_deployment import Deployment, ServiceSpec, find_program
from geode.errors import GeodeError
from geode.runtime import write_lock

__all__ = ["BuiltBundle", "build_bundles", "bundle_dir", "service_path", "skipped"]

_SYSTEM_BIN = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class BuiltBundle:
    """A service's bundle as ``geode up`` built it: where, and its measurement (hex)."""

    service: str
    directory: Path
    measurement: str


def service_path(environ: Mapping[str, str] = os.environ) -> str:
    """The ``PATH`` the services run with, and their executables are locked from: the running
    interpreter's directory first (its virtual environment, with Geode and the apps' libraries),
    then ``$PATH``, then the system directories (where ``mariadbd`` lives)."""
    entries = [
        str(Path(sys.executable).parent),
        *environ.get("PATH", "").split(os.pathsep),
        *_SYSTEM_BIN,
    ]
    return os.pathsep.join(dict.fromkeys(entry for entry in entries if entry))


def bundle_dir(run_dir: Path, service: str) -> Path:
    return run_dir / "bundles" / service


def skipped(spec: ServiceSpec, path: str) -> bool:
    """Whether the service is skipped: the program it ``requires`` is not installed."""
    return spec.requires is not None and find_program(spec.requires, path) is None


def build_bundles(
    directory: Path, deployment: Deployment, run_dir: Path, path: str
) -> list[BuiltBundle]:
    """Copy, lock and measure the bundle of every service that is not skipped."""
    built = []
    for spec in deployment.services:
        if skipped(spec, path):
            continue
        source = (directory / spec.bundle).resolve()
        if not source.is_dir():
            raise GeodeError(f"{spec.name}: bundle {source} is not a directory")
        target = bundle_dir(run_dir, spec.name)
        try:
            shutil.copytree(
                source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        except (OSError, shutil.Error) as exc:
            raise GeodeError(f"{spec.name}: cannot copy the bundle {source}: {exc}") from None
        if spec.lock:
            try:
                write_lock(target, spec.lock, path=path)
            except GeodeError as exc:
                raise GeodeError(f"{spec.name}: lock: {exc}") from None
        built.append(BuiltBundle(spec.name, target, measure_bundle(target).hex()))
    return built
