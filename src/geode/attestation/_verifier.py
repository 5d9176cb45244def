"""Dispatch evidence to the verifier of its kind, under the trust the caller configured.

The interface every hardware kind implements
--------------------------------------------
A kind's verifier is one function in its own module, named in ``_KIND_VERIFIERS`` below and
loaded on first use (a module that does not exist yet makes its kind "not supported yet")::

    def verify_<kind>(
        data: bytes,                       # the evidence as the TEE produced it
        *,
        certs: bytes | None = None,        # extra certificates (PEM or DER): an SNP VCEK/VLEK,
                                           # an NVIDIA chain, an Intel PCK chain that the quote
                                           # lacks; None: what the evidence carries
        collateral: bytes | None = None,   # kind-specific collateral (Intel: JSON, see _intel)
        at: datetime.datetime,             # the time certificates, CRLs and collateral must be
                                           # valid at (aware, UTC)
        roots: Sequence[x509.Certificate] | None = None,  # None: the kind's pinned vendor roots
    ) -> Claims

It returns ``Claims`` (``_evidence.Claims``: fill ``tee``, ``report_data`` (64 bytes),
``debug``, ``tcb_status`` and the fields of the kind) or raises ``EvidenceError`` naming the
field and offset; any other exception from malformed input is a bug. ``EvidenceVerifier``
still turns such a bug into an ``EvidenceError`` (field ``evidence``) and logs it as one, so
that no caller -- an activation, a cluster join, ``geode evidence verify`` -- ever sees anything
but claims or a refusal; the mutation fuzzer (tests/attestation/test_mutations.py) checks that
nothing reaches that last line of defence. Matching the claims
against a package is ``_reference.match_claims``, not the verifier's business. Vendor root
certificates ship in ``roots/`` and are loaded with ``_roots.load_pinned_root`` (SHA-256 pinned in
code).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation._evidence import Claims, Evidence
from geode.attestation._simulated import MAGIC, platform_key_id, verify_simulated_quote
from geode.attestation._trust import TrustAnchors
from geode.errors import EvidenceError

__all__ = ["EvidenceVerifier", "KindVerifier", "detect_kind", "kind_verifier"]

log = logging.getLogger("geode.attestation")


class KindVerifier(Protocol):
    def __call__(
        self,
        data: bytes,
        *,
        certs: bytes | None = None,
        collateral: bytes | None = None,
        at: datetime.datetime,
        roots: Sequence[x509.Certificate] | None = None,
    ) -> Claims: ...


# kind -> (module, function). Modules load on first use, so a kind costs nothing until seen.
_KIND_VERIFIERS: dict[str, tuple[str, str]] = {
    "sgx": ("geode.attestation._intel", "verify_sgx_quote"),
    "tdx": ("geode.attestation._intel", "verify_tdx_quote"),
    "sev-snp": ("geode.attestation._snp", "verify_snp_report"),
    "nvidia": ("geode.attestation._nvidia", "verify_nvidia_report"),
}


def kind_verifier(kind: str) -> KindVerifier:
    """The verifier function of a hardware evidence kind."""
    try:
        module_name, function = _KIND_VERIFIERS[kind]
    except KeyError:
        raise EvidenceError(f"unknown evidence kind {kind!r}", field="kind") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise EvidenceError(
            f"verification of {kind!r} evidence is not supported yet", field="kind"
        ) from None
    return cast(KindVerifier, getattr(module, function))


_INTEL_QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_SPDM_GET_MEASUREMENTS = bytes.fromhex("11e0")


def detect_kind(data: bytes) -> str:
    """Guess the kind of raw evidence from its first bytes (``--kind auto``)."""
    if data.startswith(MAGIC):
        return "simulated"
    if len(data) >= 48:
        version, key_type, tee_type = struct.unpack_from("<HHI", data)
        if version in (3, 4, 5) and key_type == 2 and data[12:28] == _INTEL_QE_VENDOR:
            if version == 3 or tee_type == 0:
                return "sgx"
            if tee_type == 0x81:
                return "tdx"
    if data.startswith(_SPDM_GET_MEASUREMENTS):
        return "nvidia"
    if len(data) >= 0x38:
        (version,) = struct.unpack_from("<I", data)
        (algorithm,) = struct.unpack_from("<I", data, 0x34)
        if 2 <= version <= 5 and algorithm == 1:  # ECDSA P-384 with SHA-384
            return "sev-snp"
    raise EvidenceError("not evidence of any known kind", field="kind", offset=0)


class EvidenceVerifier:
    """Verifies evidence of every kind it was configured to accept.

    Simulated evidence is accepted only with ``simulation=True`` and only when signed by one of
    ``platform_keys``. Hardware evidence chains to the pinned vendor roots (``roots`` overrides
    them per kind, for tests), checked at ``clock()``; ``collateral`` maps a kind to the
    collateral its verifier takes (Intel: a JSON document or a list of them). ``trust`` gives
    all of these at once (``TrustAnchors``); the other arguments add to it.
    """

    def __init__(
        self,
        *,
        simulation: bool = False,
        platform_keys: Sequence[Ed25519PublicKey] = (),
        collateral: Mapping[str, bytes] | None = None,
        roots: Mapping[str, Sequence[x509.Certificate]] | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
        trust: TrustAnchors | None = None,
    ) -> None:
        trust = trust or TrustAnchors()
        self.simulation = simulation
        self.trust = trust
        self._platform_keys = {platform_key_id(key): key for key in platform_keys}
        self._collateral = {**trust.collateral, **(collateral or {})}
        self._roots: dict[str, Sequence[x509.Certificate]] = {**trust.roots, **(roots or {})}
        self._certs = dict(trust.certs)
        self._clock = clock or trust.clock

    def verify(
        self,
        evidence: Evidence,
        *,
        certs: bytes | None = None,
        collateral: bytes | None = None,
        at: datetime.datetime | None = None,
    ) -> Claims:
        """The claims of ``evidence``; ``EvidenceError`` for anything else, whatever the input."""
        try:
            return self._verify(evidence, certs=certs, collateral=collateral, at=at)
        except EvidenceError:
            raise
        except Exception as exc:
            # The last line of defence: a parser let an exception of its own through. The input
            # is refused all the same, and the bug is logged for someone to fix it where the
            # field is known.
            log.error(
                "bug: verifying %s evidence raised %s (%s); refused as malformed",
                evidence.kind,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            raise EvidenceError(
                f"malformed evidence ({type(exc).__name__})", field="evidence"
            ) from exc

    def _verify(
        self,
        evidence: Evidence,
        *,
        certs: bytes | None,
        collateral: bytes | None,
        at: datetime.datetime | None,
    ) -> Claims:
        if evidence.kind == "simulated":
            if not self.simulation:
                raise EvidenceError(
                    "simulated evidence is refused: simulation is not enabled", field="kind"
                )
            return verify_simulated_quote(evidence.data, self._platform_keys)
        verify = kind_verifier(evidence.kind)
        return verify(
            evidence.data,
            certs=certs if certs is not None else self._certs.get(evidence.kind),
            collateral=collateral
            if collateral is not None
            else self._collateral.get(evidence.kind),
            at=at or self._clock(),
            roots=self._roots.get(evidence.kind),
        )
