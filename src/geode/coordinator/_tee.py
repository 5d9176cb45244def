"""What the Coordinator needs of the TEE it runs in: evidence bound to report data, and who it is.

The Coordinator attests in four places: its deployment statement, a recovery offer, and both
ends of a cluster-key handover (``_cluster``). Each asks its ``CoordinatorTee`` for evidence over
a report-data binding and, for a handover, compares the other end's verified claims with its own
``identity``. Two implementations:

- ``SimulatedTee``: a simulated platform key signs quotes for the installed package's
  measurement. Whoever holds that key can sign any measurement; it is used only in simulation.
- ``HardwareTee``: the host's TEE (``geode.attestation.HostTee``: SEV-SNP, TDX or SGX under
  Gramine). Its ``identity`` is not what this process believes it runs, but what its own evidence
  says once verified (``HardwareTee.start``) with the same verifier and trust anchors it checks
  peers with, so a peer matching it is exactly "the same code on the same kind of TEE":

  ========= =====================================================================================
  sev-snp   launch measurement, ``host_data``, VMPL and the guest policy (debug, migration agent,
            SMT, single socket: a launch with another policy is another Coordinator); this
            Coordinator's reported TCB as the minimum (a peer on older firmware is refused)
  tdx       MRTD, RTMR0-2, MRCONFIGID and the TD attributes (RTMR3 is extended at run time:
            left out)
  sgx       MRENCLAVE; or MRSIGNER and ISVPRODID when sealing with the signer's key
            (``--sgx-sealing mrsigner``: code updated by the same signer is the same Coordinator),
            with this Coordinator's ISVSVN as the minimum (an older enclave is refused)
  ========= =====================================================================================

  The TCB status of a peer's evidence is not part of the identity: any status but ``Revoked``
  is accepted (``Unverified`` without collateral); a relying party decides on TCB with
  ``geode verify``.

How the state is sealed is the server's business (``_server``): the key comes from the host's
TEE, or a file in simulation; this interface only describes it (``sealing``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation import (
    AMD_KDS,
    REPORT_DATA_SIZE,
    Claims,
    Evidence,
    EvidenceVerifier,
    HostTee,
    ReferenceValues,
    SgxSealing,
    SimulatedPlatform,
    TrustAnchors,
    Verdict,
    match_claims,
    reference_values_of,
    snp_endorsement_query,
)
from geode.errors import ClaimsMismatch, EvidenceError, GeodeError
from geode.tee import TcbStatus

__all__ = ["CoordinatorTee", "HardwareTee", "SimulatedTee"]

_IDENTITY_LABEL = b"geode coordinator identity v1\0"
# A peer's TCB status is the verifier's business; only a revoked platform is never a peer.
_PEER_TCB_STATUSES: list[TcbStatus] = [s for s in get_args(TcbStatus) if s != "Revoked"]


def _launch_of(claims: Claims) -> tuple[tuple[str, bytes], ...]:
    """The launch configuration reference values do not name but a peer must share, from the
    typed claims: the SNP guest policy, the TDX TD attributes."""
    if claims.tee == "sev-snp":
        return (("policy", (claims.policy or 0).to_bytes(8, "little")),)
    if claims.tee == "tdx":
        return (("td_attributes", claims.td_attributes),)
    return ()


class CoordinatorTee(Protocol):
    """The TEE a Coordinator attests with."""

    @property
    def tee(self) -> str:
        """The kind of its evidence: "simulated", "sev-snp", "tdx" or "sgx"."""
        ...

    @property
    def simulated(self) -> bool: ...

    @property
    def identity(self) -> ReferenceValues:
        """What a peer Coordinator's verified claims must show to be this same Coordinator."""
        ...

    @property
    def measurement(self) -> str:
        """The measurement in hex, for the status and the audit log (SNP launch measurement,
        TDX MRTD, SGX MRENCLAVE, or the simulated package's)."""
        ...

    @property
    def interface(self) -> str:
        """How it is reached, e.g. "sev-snp via configfs-tsm"."""
        ...

    @property
    def sealing(self) -> str:
        """How the state's sealing key is obtained."""
        ...

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report data is ``report_data`` (64 bytes)."""
        ...

    def match_peer(self, claims: Claims) -> Verdict:
        """``ClaimsMismatch`` unless a peer's verified ``claims`` show this same Coordinator;
        the verdict of the match otherwise."""
        ...

    def peer_verifier(
        self,
        coordinator_keys: Sequence[Ed25519PublicKey] = (),
        collateral: dict[str, bytes] | None = None,
        trust: TrustAnchors | None = None,
    ) -> EvidenceVerifier:
        """The verifier of peer Coordinators' evidence (``_cluster``): never the services'."""
        ...


@dataclass(frozen=True)
class SimulatedTee:
    """Simulation: ``platform`` signs quotes for ``package`` (the measurement of the installed
    ``geode`` package). No hardware isolation."""

    platform: SimulatedPlatform
    package: bytes
    sealing: str = "sealing key file"

    tee = "simulated"
    simulated = True
    interface = "simulated platform key"

    @property
    def identity(self) -> ReferenceValues:
        return ReferenceValues(tee="simulated", measurement=self.package.hex())

    @property
    def measurement(self) -> str:
        return self.package.hex()

    def evidence(self, report_data: bytes) -> Evidence:
        return self.platform.quote(self.package, report_data)

    def match_peer(self, claims: Claims) -> Verdict:
        return match_claims(claims, self.identity)

    def peer_verifier(
        self,
        coordinator_keys: Sequence[Ed25519PublicKey] = (),
        collateral: dict[str, bytes] | None = None,
        trust: TrustAnchors | None = None,
    ) -> EvidenceVerifier:
        """Simulated evidence signed by this Coordinator's own platform key (a peer on the same
        simulated platform) or by one of ``coordinator_keys`` (``--trust-coordinator-platform-
        key``); never a key trusted for services."""
        return EvidenceVerifier(
            simulation=True,
            platform_keys=[self.platform.public_key, *coordinator_keys],
            collateral=collateral,
            trust=trust,
        )


@dataclass(frozen=True)
class HardwareTee:
    """The host's TEE, with the identity its own verified evidence shows (``start``)."""

    host: HostTee
    identity: ReferenceValues
    measurement: str
    # The launch configuration a peer must share beyond ``identity`` (``_launch_of``).
    launch: tuple[tuple[str, bytes], ...] = ()

    simulated = False

    @property
    def tee(self) -> str:
        return str(self.host.kind)

    @property
    def interface(self) -> str:
        return self.host.name

    @property
    def sealing(self) -> str:
        return self.host.sealing

    @classmethod
    def start(
        cls, host: HostTee, verifier: EvidenceVerifier, *, sgx_sealing: SgxSealing = "mrenclave"
    ) -> HardwareTee:
        """Attest once to learn who this Coordinator is: evidence over a fresh value, verified
        with ``verifier`` (hardware only, the trust anchors in use). ``GeodeError`` when the
        host's evidence does not verify: then neither would a relying party's."""
        expected = hashlib.sha512(_IDENTITY_LABEL + os.urandom(32)).digest()
        evidence = None
        try:
            evidence = host.evidence(expected)
            if evidence.kind != host.kind:
                raise EvidenceError(f"{host.name} gave {evidence.kind} evidence", field="kind")
            claims = verifier.verify(evidence)
        except (EvidenceError, OSError) as exc:
            hint = _missing_certs_hint(evidence) if evidence is not None else ""
            raise GeodeError(
                f"this Coordinator's own evidence ({host.name}): {exc}{hint}"
            ) from None
        if not hmac.compare_digest(claims.report_data, expected):
            raise GeodeError(f"{host.name} gave evidence over other report data than asked")
        identity = identity_of(claims, sgx_sealing=sgx_sealing)
        return cls(host, identity, claims.measurement.hex(), _launch_of(claims))

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError("report data takes 64 bytes")
        return self.host.evidence(report_data)

    def match_peer(self, claims: Claims) -> Verdict:
        verdict = match_claims(claims, self.identity)
        for (name, own), (_, theirs) in zip(self.launch, _launch_of(claims), strict=True):
            if not hmac.compare_digest(theirs, own):
                raise ClaimsMismatch(f"{name.replace('_', ' ')} mismatch", f"got {theirs.hex()}")
        return verdict

    def peer_verifier(
        self,
        coordinator_keys: Sequence[Ed25519PublicKey] = (),
        collateral: dict[str, bytes] | None = None,
        trust: TrustAnchors | None = None,
    ) -> EvidenceVerifier:
        """Hardware evidence only, under ``trust`` (simulated platform keys are never given to a
        hardware Coordinator: ``_server`` refuses them)."""
        return EvidenceVerifier(simulation=False, collateral=collateral, trust=trust)


def _missing_certs_hint(evidence: Evidence) -> str:
    """What to do when the host's SEV-SNP report came without the certificate of the key that
    signed it (the interface gives none): give it with ``--tee-certs``, and where it is."""
    if evidence.kind != "sev-snp":
        return ""
    try:
        query = snp_endorsement_query(evidence.data)
    except EvidenceError:
        return (
            "; the interface gives no certificates: start with --tee-certs FILE holding the "
            "VCEK (AMD's KDS) or the VLEK (the cloud provider's)"
        )
    if query.carried:
        return ""
    if query.signing_key != "VCEK":
        return (
            f"; the interface gives no certificates: start with --tee-certs FILE holding the "
            f"{query.signing_key} (AMD hands it to the cloud provider only: ask them for it)"
        )
    return (
        "; the interface gives no certificates: start with --tee-certs FILE holding this "
        f"chip's VCEK (PEM or DER) as AMD's KDS serves it ({AMD_KDS}/{query.vcek_path}, the "
        "one geode verify --online fetches)"
    )


def identity_of(claims: Claims, *, sgx_sealing: SgxSealing = "mrenclave") -> ReferenceValues:
    """A Coordinator's identity (see the module docstring) from its own claims, which the
    caller has VERIFIED (``HardwareTee.start``): the reference values they show
    (``reference_values_of``, the mapping golden evidence is read with too), with any TCB status
    but ``Revoked``. The SNP reported TCB (``min_tcb``) and, sealing by signer, the SGX ISVSVN
    (``min_svn``) are this Coordinator's own as minimums: a peer may be newer, never older (an
    older enclave of the same signer, or a guest on older firmware, may be the vulnerable one)."""
    try:
        shown = reference_values_of(claims, by_signer=sgx_sealing == "mrsigner")
    except EvidenceError:
        raise GeodeError(f"a Coordinator does not run in a {claims.tee} TEE") from None
    fields = shown.model_dump(exclude_unset=True)
    if shown.spec.checks_tcb_status:
        fields["accepted_tcb_statuses"] = _PEER_TCB_STATUSES
    return ReferenceValues(**fields)
