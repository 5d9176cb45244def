"""What a relying party accepts of a Coordinator: a verification policy, and the file it is read
from (``geode verify --policy FILE``).

The file is YAML or JSON::

    version: 1
    accept:                      # one matching entry suffices
      - tee: sev-snp
        measurement: <96 hex digits>
        min_tcb: {snp: 21, microcode: 210}
      - tee: tdx
        mrtd: <96 hex digits>
        rtmr0: ...
        sept_ve_disable: true
    collateral: {sev-snp: amd-crl.der, tdx: intel-collateral.json}   # relative to this file
    certs: {sev-snp: vcek.der}
    require_collateral: true     # refuse evidence no collateral checked (AMD CRL for sev-snp)

Each ``accept`` entry is the reference values of a manifest package (``geode.tee.
ReferenceValues``: ``tee`` and the fields of its kind), and, as a package, must name what pins
the code (a measurement, MRTD, or signer with product id). A file holding a single package
mapping, the format of earlier versions, still loads as a policy of that one entry. A ``tdx``
entry must name ``rtmr0``, ``rtmr1`` and ``rtmr2``, and an ``sgx`` entry naming ``signer`` must
name ``min_svn`` (``_refuse_loose``). Collateral
and certificates add to what the caller trusts; no field of the file can add a root of trust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geode.attestation import (
    TCB_UNVERIFIED,
    Claims,
    ReferenceValues,
    TrustAnchors,
    Verdict,
    match_claims,
)
from geode.errors import ClaimsMismatch, GeodeError, ManifestError
from geode.manifest import Package, load_package, parse_manifest_data
from geode.tee import HARDWARE_KINDS, TeeKind

__all__ = ["PolicyError", "PolicyMatch", "VerificationPolicy"]

# A policy names collateral and certificates of hardware kinds only.
_HardwareKind = Literal["sgx", "tdx", "sev-snp", "nvidia"]
if set(get_args(_HardwareKind)) != set(HARDWARE_KINDS):
    raise AssertionError("_HardwareKind must name the hardware kinds of geode.tee")
# Collateral files are small (Intel's ~20 KB, AMD's CRL ~1 KB); the bound keeps a mistyped path
# (a disk image) from being read whole.
MAX_COLLATERAL_FILE = 4 * 1024 * 1024


class PolicyError(GeodeError):
    """A verification policy file is invalid; ``field`` is the dotted path of the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.reason = message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}" if field else f"{where}{message}")


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Literal[1]
    accept: Annotated[list[Package], Field(min_length=1)]
    collateral: dict[_HardwareKind, str] = Field(default_factory=dict)
    certs: dict[_HardwareKind, str] = Field(default_factory=dict)
    require_collateral: bool = False


@dataclass(frozen=True)
class PolicyMatch:
    """Which entry of a policy the claims matched (its index in ``accept``), and the verdict:
    what the acceptance rests on (``attestation.Verdict``)."""

    index: int
    reference: ReferenceValues
    verdict: Verdict


@dataclass(frozen=True)
class VerificationPolicy:
    """Reference values a Coordinator's evidence must match (any one of ``accept``), with the
    collateral and certificates to verify it with; ``require_collateral`` refuses evidence
    whose collateral was not checked (an ``Unverified`` TCB; for SEV-SNP, whose TCB status
    AMD does not publish, no CRL check: ``revocation`` not in ``Claims.checked``)."""

    accept: tuple[ReferenceValues, ...]
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    certs: Mapping[str, bytes] = field(default_factory=dict)
    require_collateral: bool = False

    def __post_init__(self) -> None:
        if not self.accept:
            raise ValueError("a verification policy accepts at least one set of values")

    @classmethod
    def of(cls, *reference: ReferenceValues) -> VerificationPolicy:
        return cls(accept=tuple(reference))

    @classmethod
    def load(cls, path: Path) -> VerificationPolicy:
        """Read a policy file; paths in it are relative to its directory."""
        return cls.parse(path.read_bytes(), base=path.parent, source=str(path))

    @classmethod
    def parse(cls, raw: bytes, *, base: Path, source: str = "") -> VerificationPolicy:
        """A policy from the text of a file (YAML or JSON); ``PolicyError`` naming the field."""
        try:
            data = parse_manifest_data(raw)
            if isinstance(data, dict) and not {"version", "accept"} & set(data):
                single = load_package(raw)  # a single package: the earlier format
                _refuse_loose(source, "", single)
                return cls.of(single)
        except ManifestError as exc:
            raise PolicyError(source, exc.path, exc.reason) from None
        if not isinstance(data, dict):
            raise PolicyError(source, "", "a policy file is a mapping (version, accept, ...)")
        try:
            model = _PolicyFile.model_validate(data)
        except ValidationError as exc:
            raise _policy_error(source, exc) from None
        for index, entry in enumerate(model.accept):
            _refuse_loose(source, f"accept[{index}]", entry)
        return cls(
            accept=tuple(model.accept),
            collateral=_read_files(source, base, "collateral", model.collateral),
            certs=_read_files(source, base, "certs", model.certs),
            require_collateral=model.require_collateral,
        )

    def with_documents(
        self,
        *,
        collateral: Mapping[str, bytes] | None = None,
        certs: Mapping[str, bytes] | None = None,
    ) -> VerificationPolicy:
        """This policy with more collateral and certificates (given ones win)."""
        return VerificationPolicy(
            self.accept,
            {**self.collateral, **(collateral or {})},
            {**self.certs, **(certs or {})},
            self.require_collateral,
        )

    def anchors(self, trust: TrustAnchors) -> TrustAnchors:
        """``trust`` with this policy's collateral and certificates (never its roots: a policy
        cannot add a root of trust)."""
        for kind, blob in self.collateral.items():
            trust = trust.with_collateral(kind, blob)
        for kind, blob in self.certs.items():
            trust = trust.with_certs(kind, blob)
        return trust

    @property
    def kinds(self) -> frozenset[TeeKind]:
        return frozenset(ref.tee for ref in self.accept)

    def match(self, claims: Claims) -> PolicyMatch:
        """The first entry the claims match; ``ClaimsMismatch`` naming why each did not."""
        unchecked = claims.tcb_status == TCB_UNVERIFIED and "revocation" not in claims.checked
        if self.require_collateral and unchecked:
            raise ClaimsMismatch(
                "tcb unverified",
                "the policy requires collateral: give it (--collateral, the policy's "
                "collateral) or fetch it (--online)",
            )
        reasons: list[str] = []
        for index, reference in enumerate(self.accept):
            try:
                verdict = match_claims(claims, reference)
            except ClaimsMismatch as exc:
                if len(self.accept) == 1:
                    raise
                reasons.append(f"accept[{index}] ({reference.tee}): {exc}")
                continue
            return PolicyMatch(index, reference, verdict)
        raise ClaimsMismatch("no accepted reference values match", "; ".join(reasons))


def _read_files(
    source: str, base: Path, name: str, paths: Mapping[_HardwareKind, str]
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for kind, relative in paths.items():
        path = base / relative
        try:
            if path.stat().st_size > MAX_COLLATERAL_FILE:
                raise PolicyError(source, f"{name}.{kind}", f"{path}: larger than 4 MiB")
            out[kind] = path.read_bytes()
        except OSError as exc:
            raise PolicyError(
                source, f"{name}.{kind}", f"cannot read {path} ({exc.strerror or exc})"
            ) from None
    return out


def _refuse_loose(source: str, where: str, entry: ReferenceValues) -> None:
    """``PolicyError`` for an entry that would accept more than one Coordinator image: a TDX
    entry must pin RTMR0-2 (MRTD covers the firmware only; the kernel, its command line and the
    initrd the Coordinator lives in are measured into RTMR1-2), and an SGX entry naming a
    signer must set ``min_svn`` (else every older, perhaps vulnerable, enclave of that signer
    matches)."""
    if entry.tee == "tdx":
        missing = [name for name in ("rtmr0", "rtmr1", "rtmr2") if getattr(entry, name) is None]
        if missing:
            raise PolicyError(
                source,
                where,
                f"a tdx entry must name {', '.join(missing)} (MRTD covers the firmware only: "
                "the kernel, command line and initrd are measured into RTMR1-2)",
            )
    if entry.tee == "sgx" and entry.signer is not None and entry.min_svn is None:
        raise PolicyError(
            source,
            where,
            "an sgx entry naming signer must name min_svn (else any older enclave of that "
            "signer matches)",
        )


def _policy_error(source: str, exc: ValidationError) -> PolicyError:
    error = exc.errors(include_url=False)[0]
    loc: Sequence[int | str] = [part for part in error["loc"] if part != "[key]"]
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    messages = {"extra_forbidden": "unknown field", "missing": "field required"}
    message = messages.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "string_type" and isinstance(error.get("input"), int | float):
        message = "expected a valid string, got a number (quote the value in YAML)"
    return PolicyError(source, path, message)
