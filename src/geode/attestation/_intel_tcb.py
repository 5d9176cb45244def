"""Intel's TCB info and QE identity, and the TCB status they give a platform.

A platform's status is that of the first TCB level its PCK certificate's TCB (16 CPU SVN
components and the PCE SVN) reaches -- for TDX, the first that the TD's TEE TCB SVN reaches too,
its first two bytes left to the TDX module's identity when the module says its version. The QE
identity's status, and for TDX the module's, then converge with it: an out-of-date component makes
the platform out of date (keeping "configuration needed"), a revoked one revokes it. Advisories
are those of every level that applied.

A platform, TD, TDX module or QE below every level of the collateral is not a parse-level
refusal: Intel's library answers "TCB not supported", which says only that it is older than
anything Intel still appraises. Geode reports it ``OutOfDate`` -- converged like a component's,
so a platform level that says configuration is needed gives ``OutOfDateConfigurationNeeded`` --
with the reason ``BELOW_EVERY_LEVEL`` in ``TcbVerdict.reasons`` (the claims' ``tcb_reasons``),
and the package decides: one that accepts ``UpToDate`` only refuses it. What is below every level
is exposed to at least the advisories of the lowest level (the last: Intel lists levels from the
highest down), so those are carried, merged with the others: a package accepting ``OutOfDate``
with a narrow ``accepted_advisories`` does not accept the oldest platforms unawares.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from geode.attestation._evidence import TCB_STATUSES
from geode.attestation._intel_pck import PckChain
from geode.attestation._intel_quote import SgxReport, TdReport
from geode.errors import EvidenceError

__all__ = [
    "BELOW_EVERY_LEVEL",
    "QeIdentity",
    "TcbInfo",
    "TcbVerdict",
    "collateral_error",
    "parse_model",
    "tcb_verdict",
]

PLATFORM_STATUSES = TCB_STATUSES
IDENTITY_STATUSES = ("UpToDate", "OutOfDate", "Revoked")
BELOW_EVERY_LEVEL = "below every TCB level"


def _hex(value: object) -> object:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError("expected hex") from None
    return value


Hex = Annotated[bytes, BeforeValidator(_hex)]
Svn = Annotated[int, Field(ge=0, le=0xFFFF)]


# Dates carry their time zone (Intel's end in "Z"): a naive one could not be compared with the
# verification time, and is refused as the field it is.
class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Component(_Model):
    svn: Annotated[int, Field(ge=0, le=255)]


class _LevelTcb(_Model):
    sgxtcbcomponents: Annotated[list[_Component], Field(min_length=16, max_length=16)]
    pcesvn: Svn
    tdxtcbcomponents: Annotated[list[_Component], Field(min_length=16, max_length=16)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _version_2(cls, value: object) -> object:
        # TCB info version 2 spells the components sgxtcbcomp01svn .. sgxtcbcomp16svn.
        if (
            isinstance(value, dict)
            and "sgxtcbcomponents" not in value
            and "sgxtcbcomp01svn" in value
        ):
            parts = [{"svn": value.get(f"sgxtcbcomp{i:02d}svn")} for i in range(1, 17)]
            return {**value, "sgxtcbcomponents": parts}
        return value


class _TcbLevel(_Model):
    tcb: _LevelTcb
    tcb_date: str = Field(alias="tcbDate")
    status: str = Field(alias="tcbStatus")
    advisory_ids: list[str] = Field(default_factory=list, alias="advisoryIDs")


class _IsvTcb(_Model):
    isvsvn: Svn


class _IdentityLevel(_Model):
    tcb: _IsvTcb
    status: str = Field(alias="tcbStatus")
    advisory_ids: list[str] = Field(default_factory=list, alias="advisoryIDs")


class _TdxModule(_Model):
    mrsigner: Annotated[Hex, Field(min_length=48, max_length=48)]
    attributes: Annotated[Hex, Field(min_length=8, max_length=8)]
    attributes_mask: Annotated[Hex, Field(min_length=8, max_length=8, alias="attributesMask")]


class _TdxModuleIdentity(_TdxModule):
    id: str
    tcb_levels: Annotated[list[_IdentityLevel], Field(min_length=1, alias="tcbLevels")]


class TcbInfo(_Model):
    id: str = "SGX"  # version 2 has no id and is SGX only
    version: Annotated[int, Field(ge=2, le=3)]
    issue_date: AwareDatetime = Field(alias="issueDate")
    next_update: AwareDatetime = Field(alias="nextUpdate")
    fmspc: Annotated[Hex, Field(min_length=6, max_length=6)]
    pce_id: Annotated[Hex, Field(min_length=2, max_length=2, alias="pceId")]
    tcb_type: int = Field(0, alias="tcbType")
    evaluation_number: int = Field(0, alias="tcbEvaluationDataNumber")
    tdx_module: _TdxModule | None = Field(None, alias="tdxModule")
    tdx_module_identities: list[_TdxModuleIdentity] = Field(
        default_factory=list, alias="tdxModuleIdentities"
    )
    tcb_levels: Annotated[list[_TcbLevel], Field(min_length=1, alias="tcbLevels")]


class QeIdentity(_Model):
    id: str
    version: Annotated[int, Field(ge=2, le=2)]
    issue_date: AwareDatetime = Field(alias="issueDate")
    next_update: AwareDatetime = Field(alias="nextUpdate")
    evaluation_number: int = Field(0, alias="tcbEvaluationDataNumber")
    miscselect: Annotated[Hex, Field(min_length=4, max_length=4)]
    miscselect_mask: Annotated[Hex, Field(min_length=4, max_length=4, alias="miscselectMask")]
    attributes: Annotated[Hex, Field(min_length=16, max_length=16)]
    attributes_mask: Annotated[Hex, Field(min_length=16, max_length=16, alias="attributesMask")]
    mrsigner: Annotated[Hex, Field(min_length=32, max_length=32)]
    isvprodid: Svn
    tcb_levels: Annotated[list[_IdentityLevel], Field(min_length=1, alias="tcbLevels")]


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    advisory_ids: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()


def collateral_error(field_name: str, message: str) -> EvidenceError:
    """An ``EvidenceError`` naming a member of the collateral (``""``: the document)."""
    return EvidenceError(message, field=f"collateral.{field_name}" if field_name else "collateral")


_M = TypeVar("_M", bound=BaseModel)


@functools.lru_cache(maxsize=32)
def parse_model(model: type[_M], text: str, what: str) -> _M:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise collateral_error(f"{what}.{where}" if where else what, first["msg"]) from None


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    return all(v & m == e & m for v, e, m in zip(value, expected, mask, strict=True))


def _merge(*lists: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update(dict.fromkeys(items))
    return tuple(seen)


def _converge(platform: str, component: str) -> str:
    """A platform status with a QE's or TDX module's: an out-of-date component makes the
    platform out of date (keeping 'configuration needed'); a revoked one revokes it."""
    if component == "Revoked":
        return "Revoked"
    if component == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return platform


def _status(level_status: str, allowed: Sequence[str], what: str) -> str:
    if level_status not in allowed:
        raise collateral_error(what, f"unrecognised TCB status {level_status!r}")
    return level_status


def _identity_level(levels: Sequence[_IdentityLevel], isvsvn: int) -> _IdentityLevel | None:
    """The first level ``isvsvn`` reaches; ``None`` below every level."""
    return next((level for level in levels if isvsvn >= level.tcb.isvsvn), None)


def _identity_status(
    level: _IdentityLevel | None, what: str, field_name: str, reasons: list[str]
) -> str:
    if level is None:
        reasons.append(f"{BELOW_EVERY_LEVEL}: {what}")
        return "OutOfDate"
    return _status(level.status, IDENTITY_STATUSES, field_name)


def _identity_advisories(
    level: _IdentityLevel | None, levels: Sequence[_IdentityLevel]
) -> Sequence[str]:
    """The advisories of the level reached or, below every level, of the lowest one."""
    return (level or levels[-1]).advisory_ids


def tcb_verdict(
    info: TcbInfo,
    identity: QeIdentity,
    *,
    chain: PckChain,
    qe: SgxReport,
    td: TdReport | None,
    quote_version: int,
) -> TcbVerdict:
    """The TCB status of a platform (and TD) under checked TCB info and QE identity."""
    kind = "TDX" if td is not None else "SGX"
    if info.id != kind:
        raise collateral_error("tcb_info.id", f"TCB info for {info.id}, the quote is {kind}")
    if td is not None and info.version < 3:
        raise collateral_error("tcb_info.version", "TDX needs TCB info version 3")
    if info.tcb_type != 0:
        raise collateral_error("tcb_info.tcbType", f"unsupported TCB type {info.tcb_type}")
    if info.fmspc != chain.tcb.fmspc or info.pce_id != chain.tcb.pce_id:
        raise collateral_error(
            "tcb_info.fmspc",
            f"TCB info for FMSPC {info.fmspc.hex()} / PCE {info.pce_id.hex()}, the PCK "
            f"certificate is FMSPC {chain.tcb.fmspc.hex()} / PCE {chain.tcb.pce_id.hex()}",
        )
    expected_id = "TD_QE" if td is not None else "QE"
    if identity.id != expected_id:
        raise collateral_error(
            "qe_identity.id", f"identity of {identity.id}, the quote needs {expected_id}"
        )
    if qe.mrsigner != identity.mrsigner or qe.isv_prod_id != identity.isvprodid:
        raise collateral_error(
            "qe_identity", "the quoting enclave is not the one the identity names"
        )
    misc = qe.misc_select.to_bytes(4, "little")
    if not _masked_equal(misc, identity.miscselect, identity.miscselect_mask) or not _masked_equal(
        qe.attributes, identity.attributes, identity.attributes_mask
    ):
        raise collateral_error(
            "qe_identity", "the quoting enclave's MISCSELECT or attributes do not match"
        )
    reasons: list[str] = []
    qe_level = _identity_level(identity.tcb_levels, qe.isv_svn)
    qe_status = _identity_status(
        qe_level, f"the QE's ISVSVN {qe.isv_svn}", "qe_identity.tcbLevels", reasons
    )

    advisories: list[Sequence[str]] = []
    details: dict[str, str] = {}
    sgx_level, tdx_level = _match_levels(info.tcb_levels, chain, td)
    level = tdx_level or sgx_level
    if level is None:  # the platform's TCB is below every level
        reasons.insert(0, f"{BELOW_EVERY_LEVEL}: the platform's TCB")
        status = "OutOfDate"
        advisories.append(info.tcb_levels[-1].advisory_ids)
    else:
        status = _status(level.status, PLATFORM_STATUSES, "tcb_info.tcbLevels")
        advisories.append(level.advisory_ids)
        details["tcb_date"] = level.tcb_date
        if td is not None and tdx_level is None:  # the TD's TEE TCB SVN is below every level
            reasons.insert(0, f"{BELOW_EVERY_LEVEL}: the TD's TEE TCB SVN")
            status = _converge(status, "OutOfDate")
            advisories.append(info.tcb_levels[-1].advisory_ids)
    details["qe_tcb_status"] = qe_status
    if td is not None:
        levels, module = _module_level(info, td, quote_version)
        if levels:
            module_status = _identity_status(
                module,
                f"the TDX module's ISVSVN {td.tee_tcb_svn[0]}",
                "tcb_info.tdxModuleIdentities",
                reasons,
            )
            details["tdx_module_tcb_status"] = module_status
            status = _converge(status, module_status)
            advisories.append(_identity_advisories(module, levels))
    status = _converge(status, qe_status)
    advisories.append(_identity_advisories(qe_level, identity.tcb_levels))
    details["tcb_evaluation_data_number"] = str(info.evaluation_number)
    return TcbVerdict(status, _merge(*advisories), details, tuple(reasons))


def _match_levels(
    levels: Sequence[_TcbLevel], chain: PckChain, td: TdReport | None
) -> tuple[_TcbLevel | None, _TcbLevel | None]:
    """The first level the PCK's TCB reaches and, for TDX, the first the TD's TEE TCB SVN
    reaches too (its first two bytes left to the module identity when the module says so);
    ``None`` for what is below every level."""
    sgx_level: _TcbLevel | None = None
    for level in levels:
        if chain.tcb.pce_svn < level.tcb.pcesvn or any(
            mine < theirs.svn
            for mine, theirs in zip(
                chain.tcb.cpu_svn_components, level.tcb.sgxtcbcomponents, strict=True
            )
        ):
            continue
        sgx_level = sgx_level or level
        if td is None:
            return level, None
        if level.tcb.tdxtcbcomponents is None:
            raise collateral_error("tcb_info.tcbLevels", "a TDX TCB level without tdxtcbcomponents")
        start = 2 if td.tee_tcb_svn[1] > 0 else 0
        if all(td.tee_tcb_svn[i] >= level.tcb.tdxtcbcomponents[i].svn for i in range(start, 16)):
            return sgx_level, level
    return sgx_level, None


def _module_level(
    info: TcbInfo, td: TdReport, quote_version: int
) -> tuple[Sequence[_IdentityLevel], _IdentityLevel | None]:
    """The TDX module's identity levels (none when it has no identity) and the one it reaches
    (``None`` below every level), after checking the module's signer and attributes."""
    version, isvsvn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    module: _TdxModule | None
    if version == 0 and quote_version > 3:
        module, levels = info.tdx_module, None
    else:
        wanted = f"TDX_{version:02X}"
        found = next((m for m in info.tdx_module_identities if m.id.upper() == wanted), None)
        if found is None:
            raise collateral_error(
                "tcb_info.tdxModuleIdentities", f"no identity {wanted} for the TDX module"
            )
        module, levels = found, found.tcb_levels
    if module is None:
        raise collateral_error("tcb_info.tdxModule", "missing")
    if td.mrsignerseam != module.mrsigner or not _masked_equal(
        td.seam_attributes, module.attributes, module.attributes_mask
    ):
        raise collateral_error(
            "tcb_info.tdxModule", "the TDX module's signer or attributes do not match"
        )
    if levels is None:
        return (), None
    return levels, _identity_level(levels, isvsvn)
