"""The deployment file of ``geode up`` (``DIR/geode-up.yaml``), its run directory, and the
manifest it sets."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import IO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    "prepare_manifest",
    "split_address",
]

DEPLOYMENT_FILE = "geode-up.yaml"
_SYSTEM_BIN = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


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
    ready: str | None = None  # HOST:PORT that accepts connections once the service is up
    page: str | None = None  # its page; ``page`` + "raw" gives its counters as JSON
    requires: str | None = None  # a program that must be installed, else the service is skipped
    skipped_note: str | None = None  # what skipping it means, said when it is skipped
    skipped_env: dict[str, str] = {}  # set for the services after it when it is skipped


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


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SYSTEM_BIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


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


def prepare_manifest(path: Path, permissive: bool, operator: str | None = None) -> bytes:
    """The manifest to set: the file as it is, or with a permissive policy, or with the
    operator (a user whose certificate is ``operator``, PEM) allowed to update it alone."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GeodeError(f"{path}: {exc.strerror}") from None
    if not permissive and operator is None:
        return raw
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise GeodeError(f"{path}: not YAML ({exc})") from None
    if not isinstance(document, dict):
        raise GeodeError(f"{path}: not a manifest")
    if permissive:
        policies = document.get("policies") or {}
        if not isinstance(policies, dict):
            raise GeodeError(f"{path}: policies: not a mapping")
        document["policies"] = {**policies, "mode": "permissive"}
    if operator is not None:
        for section in ("users", "roles"):
            if not isinstance(document.get(section) or {}, dict):
                raise GeodeError(f"{path}: {section}: not a mapping")
        document["users"] = {
            **(document.get("users") or {}),
            "operator": {"certificate": operator, "roles": ["geode-up-operator"]},
        }
        document["roles"] = {
            **(document.get("roles") or {}),
            "geode-up-operator": {"resource": "manifest", "actions": ["update"]},
        }
        document["updates"] = {"threshold": 1}
    return json.dumps(document).encode()
