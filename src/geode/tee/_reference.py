"""Reference values: what evidence of a package must show, validated per kind (``TEE_KINDS``)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geode.tee._kinds import TEE_KINDS, TcbStatus, TeeKind, TeeSpec

__all__ = ["ReferenceValues", "SnpTcb"]

# A field that is meaningless without another (MRSIGNER pins a vendor, not a product).
_NEEDS = {"signer": "product_id"}

_HEX = re.compile(r"^[0-9a-f]*$")
_SHA384_HEX = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{96}$")]
_TCB_COMPONENT = Annotated[int, Field(ge=0, le=255)]
# An Intel security advisory or technical document id, as TCB info lists them.
_ADVISORY_ID = Annotated[str, Field(pattern=r"^INTEL-(SA|DOC)-[0-9]{5}$")]


def _check_hex(value: str, nbytes: int) -> str:
    value = value.lower()
    if len(value) != 2 * nbytes or not _HEX.fullmatch(value):
        raise ValueError(f"expected {nbytes} bytes as {2 * nbytes} hex digits")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SnpTcb(_Strict):
    """Minimum SEV-SNP TCB by component; a component left out is not checked."""

    bootloader: _TCB_COMPONENT | None = None
    tee: _TCB_COMPONENT | None = None
    snp: _TCB_COMPONENT | None = None
    microcode: _TCB_COMPONENT | None = None
    fmc: _TCB_COMPONENT | None = None  # Turin and later


class ReferenceValues(_Strict):
    """What evidence of a package must show. Which fields apply depends on ``tee``
    (``TEE_KINDS``); a field that does not apply is refused, and one left out is not checked.

    - ``simulated``, ``sgx``: ``measurement`` (MRENCLAVE), or ``signer`` (MRSIGNER) with
      ``product_id`` and optionally ``min_svn``;
    - ``tdx``: ``mrtd``, optionally ``rtmr0``..``rtmr3`` and ``mrconfigid`` (48 bytes each), and
      ``sept_ve_disable`` (TD attribute bit 28: ``true`` requires it set, ``false`` clear, left
      out: not checked);
    - ``sev-snp``: ``measurement`` (48 bytes), optionally ``host_data`` (32 bytes), ``min_tcb``
      and ``vmpl``; ``migrate_ma`` allows a guest policy that lets a migration agent take the
      guest's memory away (policy bit 18; refused by default);
    - ``nvidia``: ``measurements``, golden values by measurement index (one or more allowed
      SHA-384 values each).

    ``debug`` allows debug evidence (SGX/TDX debug attribute, SNP policy bit 19, NVIDIA devtools
    mode; refused by default). ``accepted_tcb_statuses`` (sgx, tdx) lists the TCB statuses
    accepted, UpToDate only by default; ``accepted_advisories`` (sgx, tdx) the Intel advisories
    (``INTEL-SA-00615``) a platform may still be exposed to: evidence accepted at a status other
    than ``UpToDate`` whose TCB level lists an advisory not named here is refused, naming it (none
    by default). A relying party may match against a partial set (say, a minimum SNP TCB alone);
    a manifest package must also name its ``identity`` (``manifest.Package``).
    """

    # Whether the fields of the kind's ``identity`` are required (the manifest's packages).
    _require_identity: ClassVar[bool] = False

    tee: TeeKind
    measurement: str | None = None
    signer: str | None = None
    product_id: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    min_svn: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    mrconfigid: str | None = None
    host_data: str | None = None
    min_tcb: SnpTcb | None = None
    vmpl: Annotated[int, Field(ge=0, le=3)] | None = None
    migrate_ma: bool = False
    sept_ve_disable: bool | None = None
    measurements: dict[int, list[_SHA384_HEX]] | None = None
    debug: bool = False
    accepted_tcb_statuses: Annotated[list[TcbStatus], Field(min_length=1)] = Field(
        default_factory=lambda: list[TcbStatus](["UpToDate"])
    )
    accepted_advisories: list[_ADVISORY_ID] = Field(default_factory=list)

    @property
    def spec(self) -> TeeSpec:
        return TEE_KINDS[self.tee]

    @field_validator("measurement")
    @classmethod
    def _measurement_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if len(value) not in (64, 96) or not _HEX.fullmatch(value):
            raise ValueError("expected a SHA-256 or SHA-384 digest in hex (64 or 96 hex digits)")
        return value

    @field_validator("signer", "host_data")
    @classmethod
    def _hex32(cls, value: str | None) -> str | None:
        return None if value is None else _check_hex(value, 32)

    @field_validator("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid")
    @classmethod
    def _hex48(cls, value: str | None) -> str | None:
        return None if value is None else _check_hex(value, 48)

    @field_validator("measurements", mode="before")
    @classmethod
    def _golden_values(cls, value: object) -> object:
        # YAML gives integer keys, JSON string keys; a single value stands for a list of one.
        if not isinstance(value, dict):
            return value
        out: dict[object, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and key.isdigit():
                key = int(key)
            out[key] = [item] if isinstance(item, str) else item
        return out

    @field_validator("measurements")
    @classmethod
    def _golden_lower(cls, value: dict[int, list[str]] | None) -> dict[int, list[str]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one golden measurement")
        for index, items in value.items():
            if not 0 <= index <= 255 or not items:
                raise ValueError(f"measurement {index}: an index 0-255 with at least one value")
        return {index: [v.lower() for v in items] for index, items in value.items()}

    @model_validator(mode="after")
    def _fields_fit_the_tee(self) -> ReferenceValues:
        spec = TEE_KINDS[self.tee]
        allowed = spec.fields | {"tee", "debug"}
        for name in sorted(self.model_fields_set - allowed):
            raise ValueError(f"'{name}' does not apply to {self.tee} packages")
        if self._require_identity:
            self._check_identity(spec)
        size = spec.measurement_bytes
        if self.measurement is not None and size and len(self.measurement) != 2 * size:
            raise ValueError(f"a {self.tee} measurement is {size} bytes ({2 * size} hex digits)")
        return self

    def _check_identity(self, spec: TeeSpec) -> None:
        def described(name: str) -> str:
            needs = _NEEDS.get(name)
            return f"a '{name}'" + (f" with a '{needs}'" if needs else "")

        if all(getattr(self, name) is None for name in spec.identity):
            if len(spec.identity) == 1:
                raise ValueError(f"a {self.tee} package needs {described(spec.identity[0])}")
            raise ValueError("a package needs " + ", or ".join(described(n) for n in spec.identity))
        for name, needs in _NEEDS.items():
            if getattr(self, name) is not None and getattr(self, needs) is None:
                raise ValueError(f"'{name}' needs a '{needs}'")
