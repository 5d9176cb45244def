"""Deployment statements with hardware evidence forged under test roots (the SNP and Intel kits):
what a Coordinator on SEV-SNP or TDX would answer, without the Coordinator. The evidence binds
the root certificate, the manifest hash and the nonce exactly as a real one does, so every check
of ``verify_statement`` runs for real; ``trust`` is what a verifier needs to accept the kit's
roots (only through the Python API / ``CliDeps``)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, TrustAnchors
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from geode.pki import CertificateAuthority, certificate_der, certificate_pem
from geode.protocol import (
    DeploymentStatement,
    EvidenceBody,
    manifest_signing_payload,
    statement_binding,
    statement_signing_payload,
)
from tests.attestation.support import intel
from tests.attestation.support.snp import AT, AmdPki, forge_report, tcb_raw

SNP_MEASUREMENT = b"\x5a" * 48
SNP_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
SNP_POLICY = 0x30000
TDX_MRTD = b"\x33" * 48  # the Intel kit's default


@dataclass
class SnpKit:
    """A fake SEV-SNP chip: its ARK/ASK, a VCEK for its chip id and TCB."""

    pki: AmdPki = field(default_factory=lambda: AmdPki.create("Milan"))
    chip: bytes = field(default_factory=lambda: os.urandom(64))
    at: datetime.datetime = AT

    def __post_init__(self) -> None:
        self.vcek_key, self.vcek = self.pki.endorsement(hwid=self.chip, tcb=SNP_TCB)

    def evidence(
        self,
        report_data: bytes,
        *,
        measurement: bytes = SNP_MEASUREMENT,
        policy: int = SNP_POLICY,
        with_vcek: bool = True,
    ) -> Evidence:
        report = forge_report(
            self.vcek_key,
            tcb=tcb_raw("Milan", **SNP_TCB),
            chip_id=self.chip,
            report_data=report_data,
            measurement=measurement,
            policy=policy,
        )
        certs = [("ask", self.pki.ask)] + ([("vcek", self.vcek)] if with_vcek else [])
        table = build_cert_table(
            (CERT_TABLE_GUIDS[name], cert.public_bytes(Encoding.DER)) for name, cert in certs
        )
        return Evidence("sev-snp", report + table)

    def trust(self) -> TrustAnchors:
        return TrustAnchors().with_roots("sev-snp", [self.pki.ark]).with_clock(lambda: self.at)


@dataclass
class TdxKit:
    """A fake TDX platform: the Intel kit's PKI, its quotes and collateral."""

    at: datetime.datetime = intel.NOW

    def evidence(self, report_data: bytes, *, mrtd: bytes = TDX_MRTD, **report: object) -> Evidence:
        body = intel.td_report(mrtd=mrtd, report_data=report_data, **report)  # type: ignore[arg-type]
        return Evidence("tdx", intel.build_quote(intel.QuoteSpec(version=4, tee="tdx", body=body)))

    def collateral(self) -> bytes:
        return intel.collateral_bytes(tdx=True)

    def trust(self) -> TrustAnchors:
        return TrustAnchors().with_roots("tdx", [intel.pki().root]).with_clock(lambda: self.at)


@dataclass
class FakeCoordinator:
    """The signing side of a Coordinator: its root and mesh CA, a manifest hash, and a TEE that
    produces evidence for report data."""

    quote: Callable[[bytes], Evidence]
    manifest: bytes = b"version: 1\n"
    root: CertificateAuthority = field(default_factory=CertificateAuthority.create_root)

    def __post_init__(self) -> None:
        self.mesh = self.root.create_intermediate("Geode Mesh CA")
        self.manifest_sha = hashlib.sha256(self.manifest).digest()

    def statement(
        self,
        nonce: bytes,
        *,
        tee: str | None = None,
        simulation: bool = False,
        evidence: Evidence | None = None,
    ) -> DeploymentStatement:
        root_der = certificate_der(self.root.certificate)
        evidence = evidence or self.quote(statement_binding(root_der, self.manifest_sha, nonce))
        key = self.root.key
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signed = statement_signing_payload(
            nonce, self.manifest_sha, certificate_der(self.mesh.certificate), "accepting"
        )
        return DeploymentStatement(
            version=1,
            state="accepting",
            simulation=simulation,
            tee=tee or evidence.kind,
            nonce=nonce.hex(),
            evidence=EvidenceBody.of(evidence),
            root_certificate=certificate_pem(self.root.certificate),
            mesh_ca_certificate=certificate_pem(self.mesh.certificate),
            manifest_sha256=self.manifest_sha.hex(),
            manifest_signature=base64.b64encode(
                key.sign(manifest_signing_payload(self.manifest_sha), ec.ECDSA(hashes.SHA256()))
            ).decode(),
            statement_signature=base64.b64encode(
                key.sign(signed, ec.ECDSA(hashes.SHA256()))
            ).decode(),
        )
