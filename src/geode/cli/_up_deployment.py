"""The deployment file of ``geode up`` (``DIR/geode-up.yaml``), its run directory, and the
manifest it sets: the file's, with the measurements of the bundles ``geode up`` built pinned in
their packages (``_up_bundles``), and the permissive policy or the operator when asked for."""

from __future__ import annotations

import fcntl
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from geode.errors import GeodeError

__all__ = [
    "DEPLOYMENT_FILE",
    "CoordinatorSpec",
    "Deployment",
    "ServiceSpec",
    "accepts",
    "find_program",
    "fresh_run_dir",
    "load_deployment",
    "log_tail",
    "package_pins",
    "prepare_manifest",
    "split_address",
]

DEPLOYMENT_FILE = "geode-up.yaml"
# An executable's name as a lock names it, looked up on PATH: no directory in it.
_ExecutableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CoordinatorSpec(_Strict):
    client_addr: str = "127.0.0.1:14100"
    mesh_addr: str = "127.0.0.1:14101"
    leaf_ttl: str | None = None


class ServiceSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    bundle: str
    command: list[str] = Field(min_length=1)
    lock: list[_ExecutableName] = []  # the system executables to pin in the built bundle
    ready: str | None = None  # HOST:PORT that accepts connections once the service is up
    page: str | None = None  # its page; ``page`` + "raw" gives its counters as JSON
    requires: str | None = None  # a program that must be installed, else the service is skipped
    skipped_note: str | None = None  # what skipping it means, said when it is skipped
    # When it is skipped: arguments added to the commands of the services named (geode run passes
    # the command only an allow list of the caller's environment, so this goes by argument).
    skipped_args: dict[str, list[str]] = {}


class Deployment(_Strict):
    manifest: str
    coordinator: CoordinatorSpec = CoordinatorSpec()
    # A user "operator" (certificate and key made for the run) who alone may update the manifest.
    operator: bool = False
    services: list[ServiceSpec] = Field(min_length=1)


def load_deployment(directory: Path) -> Deployment:
    path = directory / DEPLOYMENT_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GeodeError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GeodeError(f"{path}: not YAML ({exc})") from None
    try:
        deployment = Deployment.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top)"
        raise GeodeError(f"{path}: {where}: {error['msg']}") from None
    names = [s.name for s in deployment.services]
    if len(set(names)) != len(names):
        raise GeodeError(f"{path}: services: a name appears twice")
    return deployment


def find_program(name: str, path: str) -> str | None:
    """``name`` on ``path`` (the services' PATH, which has the system directories)."""
    return shutil.which(name, path=path)


def split_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def accepts(address: str) -> bool:
    try:
        socket.create_connection(split_address(address), timeout=0.5).close()
    except OSError:
        return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def fresh_run_dir(run_dir: Path) -> IO[bytes]:
    """Empty (or make) the run directory and lock it for this ``geode up``; the open lock file
    holds the lock until the process ends. A directory that some other ``geode up`` holds, or
    that is not a run directory, is left alone."""
    marker = run_dir / ".geode-up"
    if run_dir.exists() and not marker.exists():
        raise GeodeError(f"{run_dir} exists and is not a geode up run directory: not emptied")
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = marker.open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise GeodeError(f"{run_dir} is in use by another geode up: not emptied") from None
    for entry in run_dir.iterdir():
        if entry != marker:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return lock


def _manifest_document(path: Path) -> dict[str, object]:
    try:
        document = yaml.safe_load(path.read_bytes())
    except OSError as exc:
        raise GeodeError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GeodeError(f"{path}: not YAML ({exc})") from None
    if not isinstance(document, dict):
        raise GeodeError(f"{path}: not a manifest")
    for section in ("packages", "services", "policies", "users", "roles"):
        if not isinstance(document.get(section) or {}, dict):
            raise GeodeError(f"{path}: {section}: not a mapping")
    return document


def _section(document: dict[str, object], name: str) -> dict[str, object]:
    value = document.get(name) or {}
    assert isinstance(value, dict)  # checked by _manifest_document
    return value


def package_pins(path: Path, measurements: Mapping[str, str]) -> dict[str, str]:
    """The measurement (hex) to pin in each package, from ``measurements`` of the bundles
    built for the services (by service name): a service's package is the manifest's. Services
    of one package must have built the same bundle, and the package must be simulated."""
    document = _manifest_document(path)
    services, packages = _section(document, "services"), _section(document, "packages")
    pins: dict[str, str] = {}
    for service, measurement in measurements.items():
        entry = services.get(service)
        package = entry.get("package") if isinstance(entry, dict) else None
        if not isinstance(package, str):
            raise GeodeError(f"{path}: services.{service}.package: missing (geode up runs it)")
        package_entry = packages.get(package)
        tee = package_entry.get("tee") if isinstance(package_entry, dict) else None
        if tee != "simulated":
            raise GeodeError(
                f"{path}: packages.{package}.tee: {tee!r}, not 'simulated': geode up runs "
                "services in simulation and pins their measurement"
            )
        if pins.setdefault(package, measurement) != measurement:
            raise GeodeError(
                f"{path}: packages.{package}: the bundles of its services measure differently"
            )
    return pins


def prepare_manifest(
    path: Path,
    permissive: bool,
    operator: str | None = None,
    pins: Mapping[str, str] | None = None,
) -> bytes:
    """The manifest to set: the file with ``pins`` (package -> measurement, from
    ``package_pins``) as its packages' measurements, with a permissive policy if asked, and
    with the operator (a user whose certificate is ``operator``, PEM) allowed to update it
    alone. The file as it is, comments and all, when nothing changes it."""
    document = _manifest_document(path)
    if not permissive and operator is None and not pins:
        return path.read_bytes()
    packages = _section(document, "packages")
    for package, measurement in (pins or {}).items():
        entry = packages.get(package)
        if not isinstance(entry, dict):
            raise GeodeError(f"{path}: packages.{package}: not a mapping")
        entry["measurement"] = measurement
    if permissive:
        document["policies"] = {**_section(document, "policies"), "mode": "permissive"}
    if operator is not None:
        document["users"] = {
            **_section(document, "users"),
            "operator": {"certificate": operator, "roles": ["geode-up-operator"]},
        }
        document["roles"] = {
            **_section(document, "roles"),
            "geode-up-operator": {"resource": "manifest", "actions": ["update"]},
        }
        document["updates"] = {"threshold": 1}
    changes = [
        *(["the measurements of the bundles it built (bundles/) pinned"] if pins else []),
        *(["a permissive policy"] if permissive else []),
        *(["its operator"] if operator is not None else []),
    ]
    header = f"# The manifest geode up set: {path.name} with {' and '.join(changes)}.\n"
    return (header + yaml.safe_dump(document, sort_keys=False, width=100)).encode()
