"""Manifest updates: package updates, the secrets a new manifest keeps, and the pending update.

A **package update** raises a package's ``min_svn`` or replaces its ``measurement``; one user with
``update`` on each named package applies it at once. A **manifest update** replaces the whole
manifest and applies once enough users with ``update`` on the manifest have acknowledged it. Both
produce a new manifest (a package update: the current one as JSON, with the packages changed)
and a new mesh CA; the activation counts of the services it keeps carry over (``Governance``).
An update must change something: a package it names whose values it only restates is refused
(``UpdateChangesNothing``), as is a manifest equal to the one in force (``Governance``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from geode.coordinator._secrets import generate_secret
from geode.coordinator._state import StoredSecret
from geode.errors import ManifestError, UpdateChangesNothing
from geode.manifest import Manifest, Package, parse_manifest_data
from geode.pki import CertificateAuthority, Clock

__all__ = ["PackageChange", "PackageUpdate", "apply_package_update", "carry_secrets"]


class PackageChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_svn: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    measurement: str | None = None

    @field_validator("measurement")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        # The package model checks the digest itself; this only normalises case.
        return None if value is None else value.lower()


class PackageUpdate(BaseModel):
    """``{"packages": {NAME: {"min_svn": N} | {"measurement": HEX}}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    packages: Annotated[dict[str, PackageChange], Field(min_length=1)]

    @classmethod
    def parse(cls, data: object) -> PackageUpdate:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            path = ".".join(str(p) for p in error["loc"]) or "update"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            raise ManifestError(path, message) from None


def _changed(
    name: str, current: Package, fields: dict[str, object], change: PackageChange
) -> dict[str, object]:
    where = f"packages.{name}"
    if change.min_svn is None and change.measurement is None:
        raise ManifestError(where, "give a new 'min_svn' or 'measurement'")
    if change.min_svn is not None:
        if change.min_svn < (current.min_svn or 0):
            raise ManifestError(
                f"{where}.min_svn",
                f"can only be raised (it is {current.min_svn}): lowering it would admit "
                "code the deployment has retired",
            )
        fields["min_svn"] = change.min_svn
    if change.measurement is not None:
        if current.measurement is None:
            raise ManifestError(f"{where}.measurement", "the package has no measurement to replace")
        fields["measurement"] = change.measurement
    try:
        Package.model_validate(fields)
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise ManifestError(where, message) from None
    # A package named in an update must change: otherwise the log and the audit would name it
    # as updated, and an update of nothing but restatements would still rotate the mesh CA.
    # No ``min_svn`` admits any SVN, as 0 does.
    restated = []
    if change.min_svn is not None and change.min_svn == (current.min_svn or 0):
        restated.append(f"min_svn is already {change.min_svn}")
    if change.measurement is not None and change.measurement == current.measurement:
        restated.append("the measurement is already this one")
    if len(restated) == (change.min_svn is not None) + (change.measurement is not None):
        raise UpdateChangesNothing(f"{where} changes nothing: {' and '.join(restated)}")
    return fields


def apply_package_update(raw: bytes, manifest: Manifest, update: PackageUpdate) -> bytes:
    """The manifest ``raw`` with the packages of ``update`` changed, as JSON.

    Only the named packages' fields change; everything else keeps its value (and order).
    """
    data = parse_manifest_data(raw)
    for name, change in update.packages.items():
        current = manifest.packages.get(name)
        if current is None:
            raise ManifestError(f"packages.{name}", f"unknown package {name!r}")
        data["packages"][name] = _changed(name, current, dict(data["packages"][name]), change)
    return (json.dumps(data, indent=2) + "\n").encode()


def carry_secrets(
    old: Manifest,
    stored: Mapping[str, StoredSecret],
    new: Manifest,
    issuer: CertificateAuthority,
    *,
    clock: Clock,
) -> dict[str, StoredSecret]:
    """The secrets of ``new``: a secret whose name and specification are unchanged keeps its
    value (generated or set by a user); a new or changed one is generated (or starts empty)."""
    secrets: dict[str, StoredSecret] = {}
    for name, spec in new.secrets.items():
        if spec.per_instance:
            continue
        if old.secrets.get(name) == spec and name in stored:
            secrets[name] = stored[name]
        else:
            secrets[name] = generate_secret(name, spec, issuer, clock=clock)
    return secrets
