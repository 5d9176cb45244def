"""The PCK certificate chain of an Intel quote, and the SGX extension of the PCK certificate.

The chain is PCK leaf -> PCK Platform or Processor CA -> Intel SGX Root CA. Trust comes from the
pinned root alone: the root a quote carries must be that very certificate. The leaf's SGX
extension (OID 1.2.840.113741.1.13.1) says which platform it certifies: its FMSPC and PCE ID pick
the TCB info, and its TCB (16 CPU SVN components and the PCE SVN) picks the TCB level.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from geode.attestation._evidence_certs import (
    check_validity,
    common_name,
    fully_decoded,
    load_evidence_certificates,
)
from geode.attestation._roots import INTEL_SGX_ROOT_SHA256, load_pinned_root
from geode.errors import EvidenceError

__all__ = [
    "PckChain",
    "PckTcb",
    "intel_roots",
    "issuing_root",
    "parse_sgx_extension",
    "verify_pck_chain",
]

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX = "1.2.840.113741.1.13.1"
_FIELD = "pck_certification_data"


def intel_roots() -> list[x509.Certificate]:
    """The pinned Intel SGX Root CA."""
    return [load_pinned_root("intel_sgx_root_ca.pem", INTEL_SGX_ROOT_SHA256)]


@dataclass(frozen=True)
class PckTcb:
    """What the PCK certificate's SGX extension says about its platform."""

    fmspc: bytes
    pce_id: bytes
    cpu_svn_components: tuple[int, ...]  # 16 SGX TCB component SVNs
    pce_svn: int
    cpu_svn: bytes
    ppid: bytes


@dataclass(frozen=True)
class PckChain:
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate
    tcb: PckTcb


def _pem_chain(blob: bytes, offset: int) -> list[x509.Certificate]:
    text = blob.rstrip(b"\0")
    certs = load_evidence_certificates(text, _FIELD, offset)
    # The chain must be exactly the certificates it holds, so no byte of it goes unchecked.
    canonical = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if not certs or text != canonical:
        raise EvidenceError("not a plain PEM certificate chain", field=_FIELD, offset=offset)
    return [fully_decoded(cert, _FIELD, offset) for cert in certs]


# A platform's chain does not change from quote to quote: its parse and the signatures of its
# links are remembered. Validity windows depend on the time and are checked on every call.
@functools.lru_cache(maxsize=64)
def _parsed_chain(blob: bytes, offset: int) -> tuple[tuple[x509.Certificate, ...], PckTcb]:
    certs = _pem_chain(blob, offset)
    if len(certs) not in (2, 3):
        raise EvidenceError(
            f"expected the PCK certificate, its CA and optionally the root; got {len(certs)}",
            field=_FIELD,
            offset=offset,
        )
    return tuple(certs), parse_sgx_extension(certs[0])


@functools.lru_cache(maxsize=256)
def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_pck_chain(
    cert_data: bytes,
    offset: int,
    *,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate],
) -> PckChain:
    """Check the PEM chain leaf -> intermediate -> one of ``roots`` at time ``at``."""
    certs, tcb = _parsed_chain(cert_data, offset)
    leaf, intermediate = certs[0], certs[1]
    root = issuing_root(intermediate, roots)
    if root is None or (len(certs) == 3 and certs[2] != root):
        carried = common_name(certs[2]) if len(certs) == 3 else common_name(intermediate)
        raise EvidenceError(
            f"the PCK chain does not end at a trusted root ({carried!r} is not pinned)",
            field=_FIELD,
            offset=offset,
        )
    if not _issued_by(leaf, intermediate):
        raise EvidenceError(
            f"the PCK certificate is not issued by {common_name(intermediate)!r}", field="certs"
        )
    _require_ca(intermediate, "PCK CA certificate")
    for cert, what in (
        (leaf, "the PCK certificate"),
        (intermediate, "the PCK CA certificate"),
        (root, "the root"),
    ):
        check_validity(cert, at, what)
    return PckChain(leaf, intermediate, root, tcb)


def issuing_root(
    cert: x509.Certificate, roots: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The root among ``roots`` whose key signed ``cert``, if any."""
    return next((root for root in roots if _issued_by(cert, root)), None)


def _require_ca(cert: x509.Certificate, what: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise EvidenceError(f"the {what} is not a CA", field="certs")


# -- a little DER, enough for the SGX extension ------------------------------------------------

_SEQUENCE, _INTEGER, _OCTETS, _OID, _ENUMERATED = 0x30, 0x02, 0x04, 0x06, 0x0A


def _tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, content, next offset) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("truncated element")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 3 or offset + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    else:
        length = first
    if offset + length > len(data):
        raise ValueError("truncated content")
    return tag, data[offset : offset + length], offset + length


def _children(content: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(content):
        tag, value, offset = _tlv(content, offset)
        out.append((tag, value))
    return out


def _oid(dotted: str) -> bytes:
    """The DER content of an OID: OIDs are compared encoded, never decoded."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        septets = [arc & 0x7F]
        while arc := arc >> 7:
            septets.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(septets))
    return bytes(out)


_PPID, _TCB, _PCE_ID, _FMSPC = (_oid(f"{_SGX}.{n}") for n in (1, 2, 3, 4))
_TCB_COMPONENTS = tuple(_oid(f"{_SGX}.2.{n}") for n in range(1, 17))
_PCE_SVN, _CPU_SVN = _oid(f"{_SGX}.2.17"), _oid(f"{_SGX}.2.18")


def _named_values(content: bytes) -> dict[bytes, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE {OID, value} as {encoded oid: (tag, value)}."""
    out: dict[bytes, tuple[int, bytes]] = {}
    for tag, item in _children(content):
        pair = _children(item) if tag == _SEQUENCE else []
        if len(pair) != 2 or pair[0][0] != _OID:
            raise ValueError("expected SEQUENCE {OID, value}")
        out[pair[0][1]] = pair[1]
    return out


def _integer(entry: tuple[int, bytes] | None) -> int:
    if entry is None or entry[0] not in (_INTEGER, _ENUMERATED) or not entry[1]:
        raise ValueError("expected an INTEGER")
    return int.from_bytes(entry[1], "big", signed=True)


def _octets(entry: tuple[int, bytes] | None, size: int) -> bytes:
    if entry is None or entry[0] != _OCTETS or len(entry[1]) != size:
        raise ValueError(f"expected an OCTET STRING of {size} bytes")
    return entry[1]


def parse_sgx_extension(leaf: x509.Certificate) -> PckTcb:
    try:
        extension = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise EvidenceError("the PCK certificate has no SGX extension", field="certs") from None
    raw = extension.value if isinstance(extension, x509.UnrecognizedExtension) else b""
    try:
        tag, content, end = _tlv(raw, 0)
        if tag != _SEQUENCE or end != len(raw):
            raise ValueError("expected one SEQUENCE")
        top = _named_values(content)
        tcb_entry = top.get(_TCB)
        if tcb_entry is None or tcb_entry[0] != _SEQUENCE:
            raise ValueError("no TCB")
        tcb = _named_values(tcb_entry[1])
        components = tuple(_integer(tcb.get(oid)) for oid in _TCB_COMPONENTS)
        pce_svn = _integer(tcb.get(_PCE_SVN))
        cpu_svn = _octets(tcb.get(_CPU_SVN), 16)
        pce_id = _octets(top.get(_PCE_ID), 2)
        fmspc = _octets(top.get(_FMSPC), 6)
        ppid = _octets(top.get(_PPID), 16)
    except ValueError as exc:
        raise EvidenceError(
            f"the PCK certificate's SGX extension is malformed: {exc}", field="certs"
        ) from None
    return PckTcb(fmspc, pce_id, components, pce_svn, cpu_svn, ppid)
