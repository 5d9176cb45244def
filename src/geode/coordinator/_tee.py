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
            SMT, single socket: a launch with another policy is another Coordinator)
  tdx       MRTD, RTMR0-2, MRCONFIGID and the TD attributes (RTMR3 is extended at run time:
            left out)
  sgx       MRENCLAVE; or MRSIGNER and ISVPRODID when sealing with the signer's key
            (``--sgx-sealing mrsigner``: code updated by the same signer is the same Coordinator)
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
    REPORT_DATA_SIZE,
    Claims,
    Evidence,
    EvidenceVerifier,
    HostTee,
    ReferenceValues,
    SgxSealing,
    SimulatedPlatform,
    TrustAnchors,
    match_claims,
)
from geode.errors import ClaimsMismatch, EvidenceError, GeodeError
from geode.tee import TcbStatus

__all__ = ["CoordinatorTee", "HardwareTee", "SimulatedTee"]

_IDENTITY_LABEL = b"geode coordinator identity v1\0"
# A peer's TCB status is the verifier's business; only a revoked platform is never a peer.
_PEER_TCB_STATUSES: list[TcbStatus] = [s for s in get_args(TcbStatus) if s != "Revoked"]
# Launch configuration that reference values do not name but a peer must share (claims.details).
_PEER_DETAILS = {"sev-snp": ("policy",), "tdx": ("td_attributes",)}


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

    def match_peer(self, claims: Claims) -> None:
        """``ClaimsMismatch`` unless a peer's verified ``claims`` show this same Coordinator."""
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

    def match_peer(self, claims: Claims) -> None:
        match_claims(claims, self.identity)

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
    # The launch configuration a peer must share beyond ``identity`` (``_PEER_DETAILS``).
    launch: tuple[tuple[str, str], ...] = ()

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
        try:
            evidence = host.evidence(expected)
            if evidence.kind != host.kind:
                raise EvidenceError(f"{host.name} gave {evidence.kind} evidence", field="kind")
            claims = verifier.verify(evidence)
        except (EvidenceError, OSError) as exc:
            raise GeodeError(f"this Coordinator's own evidence ({host.name}): {exc}") from None
        if not hmac.compare_digest(claims.report_data, expected):
            raise GeodeError(f"{host.name} gave evidence over other report data than asked")
        identity = identity_of(claims, sgx_sealing=sgx_sealing)
        launch = tuple(
            (name, claims.details.get(name, "")) for name in _PEER_DETAILS.get(claims.tee, ())
        )
        return cls(host, identity, claims.measurement.hex(), launch)

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError("report data takes 64 bytes")
        return self.host.evidence(report_data)

    def match_peer(self, claims: Claims) -> None:
        match_claims(claims, self.identity)
        for name, own in self.launch:
            theirs = claims.details.get(name, "")
            if not hmac.compare_digest(theirs.encode(), own.encode()):
                raise ClaimsMismatch(
                    f"{name.replace('_', ' ')} mismatch", f"got {theirs or 'none'}"
                )

    def peer_verifier(
        self,
        coordinator_keys: Sequence[Ed25519PublicKey] = (),
        collateral: dict[str, bytes] | None = None,
        trust: TrustAnchors | None = None,
    ) -> EvidenceVerifier:
        """Hardware evidence only, under ``trust`` (simulated platform keys are never given to a
        hardware Coordinator: ``_server`` refuses them)."""
        return EvidenceVerifier(simulation=False, collateral=collateral, trust=trust)


def identity_of(claims: Claims, *, sgx_sealing: SgxSealing = "mrenclave") -> ReferenceValues:
    """A Coordinator's identity (see the module docstring) from its own verified claims."""
    if claims.tee == "sev-snp":
        return ReferenceValues(
            tee="sev-snp",
            measurement=claims.measurement.hex(),
            host_data=claims.host_data.hex(),
            vmpl=claims.vmpl,
            debug=claims.debug,
        )
    if claims.tee == "tdx":
        rtmrs = [r.hex() for r in claims.rtmrs] + [None] * (4 - len(claims.rtmrs))
        return ReferenceValues(
            tee="tdx",
            mrtd=claims.measurement.hex(),
            rtmr0=rtmrs[0],
            rtmr1=rtmrs[1],
            rtmr2=rtmrs[2],
            mrconfigid=claims.mrconfigid.hex(),
            debug=claims.debug,
            accepted_tcb_statuses=_PEER_TCB_STATUSES,
        )
    if claims.tee == "sgx":
        if sgx_sealing == "mrsigner":
            return ReferenceValues(
                tee="sgx",
                signer=claims.signer.hex(),
                product_id=claims.product_id,
                debug=claims.debug,
                accepted_tcb_statuses=_PEER_TCB_STATUSES,
            )
        return ReferenceValues(
            tee="sgx",
            measurement=claims.measurement.hex(),
            debug=claims.debug,
            accepted_tcb_statuses=_PEER_TCB_STATUSES,
        )
    raise GeodeError(f"a Coordinator does not run in a {claims.tee} TEE")
