"""The mutation fuzzer's subjects (every evidence vector in ``../shared/vectors``, with its
certificates and collateral, at a time inside their windows) and its one step: draw mutation
number ``index`` of a subject from ``(seed, subject, index)`` alone, so any mutation replays by
itself, verify it with Geode's ``EvidenceVerifier``, and classify the outcome.
"""

from __future__ import annotations

import datetime
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Claims, Evidence, EvidenceVerifier
from geode.attestation._evidence_certs import load_evidence_certificates
from geode.attestation._intel_quote import SGX_REPORT_SIZE, parse_intel_quote
from geode.attestation._nvidia import CcMode, build_nvidia_evidence, parse_spdm_report
from geode.attestation._snp_report import SNP_REPORT_SIZE
from geode.errors import EvidenceError
from tests.attestation.support.mutations import (
    Region,
    mutate_bytes,
    mutate_der,
    mutate_der_in,
    mutate_json_document,
    mutate_length,
    mutate_pem,
)
from tests.attestation.support.vectors import gotdx_collateral, read_vector

__all__ = [
    "SUBJECT_NAMES",
    "Outcome",
    "Subject",
    "mutation",
    "pem_chain_bit_flipped",
    "replay",
    "subject",
    "try_mutation",
]


def _utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Subject:
    """Evidence as a verifier receives it, and where its structure is."""

    name: str
    kind: str
    data: bytes
    at: datetime.datetime
    certs: bytes | None = None
    collateral: bytes | None = None
    regions: tuple[Region, ...] = ()  # of ``data``
    lengths: tuple[tuple[str, int, int], ...] = ()  # (name, offset, size) in ``data``
    cert_table: bool = False  # ``data`` carries an SNP certificate table after the report

    def verify(self, verifier: EvidenceVerifier) -> Claims:
        return verifier.verify(
            Evidence(self.kind, self.data), certs=self.certs, collateral=self.collateral, at=self.at
        )


# -- the vectors --------------------------------------------------------------------------------

_INTEL = {  # name: (tee, time inside the chain's and the collateral's windows, collateral file)
    "sgx_v3_dcapqvl": ("sgx", _utc(2025, 7, 1), "sgx_v3_dcapqvl.collateral.json"),
    "sgx_v3_occlum": ("sgx", _utc(2025, 7, 1), None),
    "tdx_v4_dcapqvl": ("tdx", _utc(2025, 7, 1), "tdx_v4_dcapqvl.collateral.json"),
    "tdx_v5_dcapqvl_outdated": ("tdx", _utc(2026, 3, 1), "tdx_v5_dcapqvl_outdated.collateral.json"),
    "tdx_v4_gotdx_spr_trailing": ("tdx", _utc(2023, 7, 1), "pcs"),
}
_SNP = {  # name: (report, certificates or None, certificate table or None, time)
    "snp_milan_v2_vcek": ("snp_milan_v2_vcek.report.bin", "snp_milan_v2_vcek.vcek.der", None),
    "snp_milan_v3_vlek": ("snp_milan_v3_vlek.report.bin", "snp_milan_v3_vlek.vlek.der", None),
    "snp_genoa_v3_configfs_tsm": (
        "snp_genoa_v3_configfs_tsm.outblob.bin",
        None,
        "snp_genoa_v3_configfs_tsm.auxblob.bin",
    ),
    "snp_turin_v5_vcek": ("snp_turin_v5_vcek.report.bin", "snp_turin_v5_vcek.vcek.der", None),
}
_SNP_AT = {
    "snp_milan_v2_vcek": _utc(2026, 1, 1),
    "snp_milan_v3_vlek": _utc(2025, 6, 1),
    "snp_genoa_v3_configfs_tsm": _utc(2026, 1, 1),
    "snp_turin_v5_vcek": _utc(2026, 11, 1),
}
_NVIDIA_AT = _utc(2026, 11, 27)


def _intel(name: str) -> Subject:
    tee, at, collateral_file = _INTEL[name]
    data = read_vector(f"{name}.quote.bin")
    quote = parse_intel_quote(data)
    cert = quote.cert_data_offset
    auth = quote.qe_report_offset + SGX_REPORT_SIZE + 64
    lengths = [
        ("signature_data_len", quote.signature_offset - 4, 4),
        ("qe_auth_data.size", auth, 2),
        ("pck_certification_data.type", cert - 6, 2),
        ("pck_certification_data.size", cert - 4, 4),
    ]
    if quote.version != 3:
        lengths.append(("certification_data.size", quote.qe_report_offset - 4, 4))
    if quote.version == 5:
        lengths += [("body_type", 48, 2), ("body_size", 50, 4)]
    regions = (
        Region("the PCK chain (certification data type 5)", cert, cert + len(quote.cert_data)),
        Region("the quote's header and body", 0, quote.body_offset + len(quote.body)),
        Region("the QE report and its signature", quote.qe_report_offset, auth),
        Region("the data after the quote", quote.size, len(data)),
    )
    if collateral_file is None:
        collateral = None
    elif collateral_file == "pcs":
        collateral = gotdx_collateral()
    else:
        collateral = read_vector(collateral_file)
    return Subject(name, tee, data, at, None, collateral, regions, tuple(lengths))


def _snp(name: str) -> Subject:
    report, certs, table = _SNP[name]
    data = read_vector(report)
    regions: list[Region] = [Region("the signed report", 0, 0x2A0)]
    lengths: list[tuple[str, int, int]] = []
    if table is not None:
        auxblob = read_vector(table)
        data += auxblob
        regions.append(Region("the certificate table", SNP_REPORT_SIZE, len(data), "pem"))
        index = 0
        while any(auxblob[24 * index : 24 * index + 16]):
            start = SNP_REPORT_SIZE + 24 * index
            lengths += [(f"cert_table[{index}].offset", start + 16, 4)]
            lengths += [(f"cert_table[{index}].length", start + 20, 4)]
            index += 1
    return Subject(
        name,
        "sev-snp",
        data,
        _SNP_AT[name],
        read_vector(certs) if certs else None,
        regions=tuple(regions),
        lengths=tuple(lengths),
        cert_table=table is not None,
    )


def _nvidia_lengths(data: bytes) -> list[tuple[str, int, int]]:
    lengths = [("response.record_length", 42, 3)]
    offset, end = 45, 45 + int.from_bytes(data[42:45], "little")
    while offset + 7 <= end:
        lengths += [(f"block at {offset}.size", offset + 2, 2)]
        lengths += [(f"block at {offset}.value_size", offset + 5, 2)]
        offset += 4 + struct.unpack_from("<H", data, offset + 2)[0]
    lengths.append(("response.opaque_length", end + 32, 2))
    return lengths


def _nvidia(name: str) -> Subject:
    report = read_vector("nvidia_h100_spdm.report.bin")
    chain_pem = read_vector("nvidia_h100_spdm.certchain.pem")
    parsed = parse_spdm_report(report)
    signed = Region("the signed report", 0, parsed.signed_size)
    lengths = _nvidia_lengths(report)
    if name == "nvidia_h100_spdm":
        # The report stating mode on, its chain given apart (as ``geode evidence verify
        # --certs`` does); without the trailer the report is refused for its unstated mode.
        data = build_nvidia_evidence(report, [], CcMode.ON)
        lengths.append(("trailer.cc_mode", parsed.trailer_offset + 8, 1))
        return Subject(name, "nvidia", data, _NVIDIA_AT, chain_pem, None, (signed,), tuple(lengths))
    chain = [c.public_bytes(Encoding.DER) for c in load_evidence_certificates(chain_pem)]
    data = build_nvidia_evidence(report, chain, CcMode.ON)
    trailer = parsed.trailer_offset
    regions = (signed, Region("the trailer's DER chain", trailer + 16, len(data), "der"))
    lengths += [("trailer.chain_length", trailer + 12, 4), ("trailer.cc_mode", trailer + 8, 1)]
    return Subject(name, "nvidia", data, _NVIDIA_AT, None, None, regions, tuple(lengths))


_BUILDERS: dict[str, Callable[[str], Subject]] = {
    **dict.fromkeys(_INTEL, _intel),
    **dict.fromkeys(_SNP, _snp),
    "nvidia_h100_spdm": _nvidia,
    "nvidia_h100_spdm_trailer": _nvidia,
}
SUBJECT_NAMES = tuple(_BUILDERS)


def subject(name: str) -> Subject:
    return _BUILDERS[name](name)


def pem_chain_bit_flipped(name: str) -> tuple[bytes, int]:
    """Intel quote ``name`` with one bit flipped in the text of the PEM chain it carries, in the
    base64 character that holds the PCK certificate's version (2 becomes 10); and the offset of
    the chain in the quote."""
    data = bytearray(read_vector(f"{name}.quote.bin"))
    start = parse_intel_quote(bytes(data)).cert_data_offset
    header = b"-----BEGIN CERTIFICATE-----\n"
    assert data[start : start + len(header)] == header
    # DER byte 12 is the version's value (30 82 .. .. 30 82 .. .. a0 03 02 01 02): base64
    # character 16 holds its top six bits.
    at = start + len(header) + 16
    assert data[at : at + 1] == b"A"
    data[at] ^= 0x02  # "A" -> "C"
    return bytes(data), start


# -- one mutation -------------------------------------------------------------------------------


def mutation(seed: int, base: Subject, index: int) -> tuple[str, Subject]:
    """Mutation number ``index`` of ``base`` under ``seed``: (what changed, the mutated subject)."""
    rng = random.Random(f"{seed}:{base.name}:{index}")
    targets = ["data"] * 5
    if base.certs is not None:
        targets += ["certs"] * 2
    if base.collateral is not None:
        targets += ["collateral"] * 3
    target = rng.choice(targets)
    if target == "collateral":
        assert base.collateral is not None
        what, collateral = mutate_json_document(rng, base.collateral)
        return what, replace(base, collateral=collateral)
    if target == "certs":
        assert base.certs is not None
        if b"-----BEGIN" in base.certs:
            what, certs = rng.choice((mutate_pem, mutate_bytes))(rng, base.certs)
        else:
            der = rng.random() < 0.7
            what, certs = mutate_der(rng, base.certs) if der else mutate_bytes(rng, base.certs)
        return f"certs: {what}", replace(base, certs=certs)
    what, data = _mutate_data(rng, base)
    return f"data: {what}", replace(base, data=data)


def _mutate_data(rng: random.Random, base: Subject) -> tuple[str, bytes]:
    choice = rng.random()
    if base.lengths and choice < 0.2:
        name, offset, size = rng.choice(base.lengths)
        return mutate_length(rng, base.data, (offset, size), name)
    region = rng.choice(base.regions) if base.regions and choice < 0.8 else None
    if region is not None and rng.random() < 0.6:
        if region.name.startswith("the PCK chain") or region.holds == "pem":
            return mutate_pem(rng, base.data, region)
        if region.holds == "der":
            return mutate_der_in(rng, base.data, region)
    return mutate_bytes(rng, base.data, region)


@dataclass
class Outcome:
    """What a mutation came to: ``refused`` (an ``EvidenceError`` naming its field),
    ``identical`` (verified, with the unmutated evidence's claims), or a ``problem``."""

    kind: str
    detail: str = ""
    fallback: list[str] = field(default_factory=list)  # what reached the verifier's catch-all


class _Fallbacks(logging.Handler):
    """Records what the verifier's last line of defence caught (logged as a bug there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def try_mutation(
    verifier: EvidenceVerifier, mutated: Subject, baseline: Claims | EvidenceError
) -> Outcome:
    """Verify ``mutated`` and say whether the outcome is acceptable against ``baseline``."""
    handler = _Fallbacks()
    logger = logging.getLogger("geode.attestation")
    logger.addHandler(handler)
    try:
        claims = mutated.verify(verifier)
    except EvidenceError as exc:
        if handler.seen:
            return Outcome("problem", f"reached the catch-all: {exc}", handler.seen)
        if not exc.field:
            return Outcome("problem", f"EvidenceError without a field: {exc}")
        return Outcome("refused", exc.field)
    except Exception as exc:  # anything else is what the fuzzer looks for
        return Outcome("problem", f"{type(exc).__name__}: {exc}"[:500])
    finally:
        logger.removeHandler(handler)
    if isinstance(baseline, EvidenceError):
        return Outcome("problem", f"verified, where the unmutated evidence is refused ({baseline})")
    if claims != baseline:
        return Outcome("problem", f"verified with other claims: {claims.to_json()}")
    return Outcome("identical")


def replay(seed: int, name: str, index: int) -> None:
    """Print mutation ``index`` of vector ``name`` under ``seed`` and what it comes to, with the
    traceback of whatever the verifier's catch-all caught."""
    logging.basicConfig(level=logging.ERROR)
    base = subject(name)
    verifier = EvidenceVerifier()
    try:
        expected: Claims | EvidenceError = base.verify(verifier)
    except EvidenceError as exc:
        expected = exc
    what, mutated = mutation(seed, base, index)
    print(f"{name} #{index} (seed {seed}): {what}")
    outcome = try_mutation(verifier, mutated, expected)
    print(f"-> {outcome.kind}: {outcome.detail}")
    if outcome.kind == "problem" and not outcome.fallback:
        mutated.verify(verifier)  # raise it again, with its traceback


if __name__ == "__main__":
    import sys

    replay(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
