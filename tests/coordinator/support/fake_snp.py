"""A small SEV-SNP host TEE for the Coordinator's tests: reports signed under a test AMD
root (``tests.attestation.support.snp``) with their certificate table, and a derived key bound to
the chip and the launched measurement and policy, as ``SNP_GET_DERIVED_KEY`` with guest field
select policy | measurement gives it. The same chip launched with another measurement derives
another key; a chip without ``/dev/sev-guest`` (``derived_keys=False``) derives none."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, TrustAnchors
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from tests.attestation.support.snp import AmdPki, forge_report, tcb_raw

TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
MEASUREMENT = b"\x42" * 48


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class SnpChip:
    """One AMD chip: its test PKI, its VCEK and the secret its derived keys come from."""

    pki: AmdPki
    chip_id: bytes = field(default_factory=lambda: os.urandom(64))
    secret: bytes = field(default_factory=lambda: os.urandom(32))

    @classmethod
    def create(cls, pki: AmdPki | None = None) -> SnpChip:
        return cls(pki or AmdPki.create("Milan"))

    @property
    def trust(self) -> TrustAnchors:
        """The anchors a verifier needs for this chip's reports: the test ARK."""
        return TrustAnchors().with_roots("sev-snp", [self.pki.ark])

    def launch(
        self,
        measurement: bytes = MEASUREMENT,
        *,
        policy: int = 0x30000,
        host_data: bytes = bytes(32),
        derived_keys: bool = True,
    ) -> FakeSnpHost:
        """A guest launched on this chip with ``measurement``."""
        key, vcek = self.pki.endorsement(hwid=self.chip_id, tcb=TCB)
        return FakeSnpHost(self, key, vcek, measurement, policy, host_data, derived_keys)


@dataclass(frozen=True)
class FakeSnpHost:
    """``geode.attestation.HostTee`` of a guest on an ``SnpChip``."""

    chip: SnpChip
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    launched: bytes
    policy: int
    host_data: bytes
    derived_keys: bool

    kind = "sev-snp"
    name = "sev-snp via a fake /dev/sev-guest"

    @property
    def sealing(self) -> str:
        if not self.derived_keys:
            return "none (no /dev/sev-guest)"
        return "SNP_GET_DERIVED_KEY (VCEK; policy, measurement)"

    def evidence(self, report_data: bytes) -> Evidence:
        report = forge_report(
            self.vcek_key,
            tcb=tcb_raw("Milan", **TCB),
            chip_id=self.chip.chip_id,
            report_data=report_data,
            measurement=self.launched,
            host_data=self.host_data,
            policy=self.policy,
        )
        table = build_cert_table(
            (CERT_TABLE_GUIDS[name], _der(cert))
            for name, cert in (("ark", self.chip.pki.ark), ("ask", self.chip.pki.ask),
                               ("vcek", self.vcek))
        )  # fmt: skip
        return Evidence("sev-snp", report + table)

    def sealing_key(self) -> bytes | None:
        if not self.derived_keys:
            return None
        fields = struct.pack("<Q", self.policy) + self.launched
        return hmac.new(self.chip.secret, fields, hashlib.sha256).digest()

    def relaunched(self, measurement: bytes) -> FakeSnpHost:
        """The same chip and launch configuration, another image."""
        return dataclasses.replace(self, launched=measurement)
