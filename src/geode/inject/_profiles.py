"""What a pod in each TEE needs: the profiles the chart renders from its ``tee.profiles``.

A profile gives a runtime class (a confidential VM per pod), device plugin resources (SGX enclave
memory and devices), node labels, node paths to mount (a TEE interface, aesmd's socket) and the
launcher that starts ``geode run`` (e.g. under Gramine). The chart writes them as one JSON file
keyed by the manifest's kind (``sgx``, ``tdx``, ``sev-snp``); ``simulated`` needs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geode.errors import GeodeError

__all__ = ["SIMULATED", "HostPathMount", "TeeProfile", "TeeProfiles"]

SIMULATED = "simulated"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HostPathMount(_Strict):
    """A node path mounted into each wrapped container (a TEE interface of the node)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")]
    path: Annotated[str, Field(pattern=r"^/")]
    type: str = ""
    mount_path: Annotated[str, Field(alias="mountPath", pattern=r"^/")]
    read_only: bool = Field(default=False, alias="readOnly")


class TeeProfile(_Strict):
    """What the webhook adds to a pod whose service runs in one TEE kind. The field names are
    the chart's (``tee.profiles.<kind>``)."""

    runtime_class_name: str = Field(default="", alias="runtimeClassName")
    resources: dict[str, str | int] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, object]] = Field(default_factory=list)
    host_paths: list[HostPathMount] = Field(default_factory=list, alias="hostPaths")
    launcher: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


@dataclass(frozen=True)
class TeeProfiles:
    """The profiles by the manifest's TEE kind; a hardware kind without one is refused."""

    by_kind: Mapping[str, TeeProfile] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TeeProfiles:
        """Read the chart's ``profiles.json``; ``GeodeError`` naming the first bad field."""
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise GeodeError(f"{path}: not a JSON file of TEE profiles ({exc})") from None
        if not isinstance(data, dict):
            raise GeodeError(f"{path}: expected an object of TEE profiles by kind")
        profiles: dict[str, TeeProfile] = {}
        for kind, value in data.items():
            try:
                profiles[str(kind)] = TeeProfile.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in (kind, *first["loc"]))
                raise GeodeError(f"{path}: {where}: {first['msg']}") from None
        return cls(profiles)

    def for_kind(self, kind: str) -> TeeProfile | None:
        """The profile of ``kind``; an empty one for simulated; ``None`` when there is none."""
        if kind == SIMULATED:
            return TeeProfile()
        return self.by_kind.get(kind)
