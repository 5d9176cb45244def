"""SEV-SNP guest policy against reference values: a report whose policy lets a migration agent
export the guest, or a debugger read it, is refused unless the reference values allow it."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import ReferenceValues, match_claims
from geode.attestation._snp import verify_snp_report
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from geode.errors import ClaimsMismatch
from geode.manifest import load_package
from tests.attestation.support.snp import AT, AmdPki, forge_report, tcb_raw

CHIP = os.urandom(64)
TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
BASE = 0x30000  # SMT allowed, bit 17 (reserved, must be one)
MIGRATE_MA = 1 << 18
DEBUG = 1 << 19
MEASUREMENT = b"\x42" * 48


@pytest.fixture(scope="module")
def pki() -> AmdPki:
    return AmdPki.create("Milan")


def claims_for(pki: AmdPki, policy: int):  # type: ignore[no-untyped-def]
    key, vcek = pki.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP, policy=policy)
    table = build_cert_table(
        (CERT_TABLE_GUIDS[n], c.public_bytes(Encoding.DER))
        for n, c in (("ask", pki.ask), ("vcek", vcek))
    )
    return verify_snp_report(data + table, at=AT, roots=[pki.ark])


def ref(**fields: object) -> ReferenceValues:
    return ReferenceValues(tee="sev-snp", measurement=MEASUREMENT.hex(), **fields)  # type: ignore[arg-type]


def test_the_policy_is_a_claim(pki: AmdPki) -> None:
    claims = claims_for(pki, BASE | MIGRATE_MA)
    assert claims.policy == BASE | MIGRATE_MA
    assert claims.to_json()["policy"] == "0x70000"


def test_a_plain_policy_is_accepted(pki: AmdPki) -> None:
    match_claims(claims_for(pki, BASE), ref())


def test_a_migration_agent_is_refused_by_default(pki: AmdPki) -> None:
    with pytest.raises(ClaimsMismatch, match="guest policy mismatch") as caught:
        match_claims(claims_for(pki, BASE | MIGRATE_MA), ref())
    assert "bit 18" in str(caught.value)


def test_a_migration_agent_is_accepted_when_allowed(pki: AmdPki) -> None:
    match_claims(claims_for(pki, BASE | MIGRATE_MA), ref(migrate_ma=True))


def test_debug_is_refused_by_default_and_accepted_when_allowed(pki: AmdPki) -> None:
    claims = claims_for(pki, BASE | DEBUG)
    with pytest.raises(ClaimsMismatch, match="debug"):
        match_claims(claims, ref())
    match_claims(claims, ref(debug=True))


def test_both_bits_need_both_allowances(pki: AmdPki) -> None:
    claims = claims_for(pki, BASE | DEBUG | MIGRATE_MA)
    with pytest.raises(ClaimsMismatch, match="guest policy"):
        match_claims(claims, ref(debug=True))
    with pytest.raises(ClaimsMismatch, match="debug"):
        match_claims(claims, ref(migrate_ma=True))
    match_claims(claims, ref(debug=True, migrate_ma=True))


def test_migrate_ma_is_a_package_field_of_sev_snp_only() -> None:
    package = load_package(
        b'{"tee": "sev-snp", "measurement": "' + b"42" * 48 + b'", "migrate_ma": true}'
    )
    assert package.migrate_ma is True
    with pytest.raises(ValueError, match="migrate_ma"):
        ReferenceValues(tee="tdx", mrtd="00" * 48, migrate_ma=True)
