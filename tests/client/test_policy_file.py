"""geode.client.VerificationPolicy: the policy file of ``geode verify --policy`` -- alternatives,
collateral relative to the file, one-line errors naming the field, the earlier single-package
format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geode.client import PolicyError, VerificationPolicy, verify_statement
from geode.errors import StatementError
from tests.support.hardware_statement import SNP_MEASUREMENT, TDX_MRTD, FakeCoordinator, SnpKit

SNP = {"tee": "sev-snp", "measurement": SNP_MEASUREMENT.hex()}
RTMRS = {f"rtmr{i}": bytes([0x40 + i]).hex() * 48 for i in range(3)}
TDX = {"tee": "tdx", "mrtd": TDX_MRTD.hex(), **RTMRS, "sept_ve_disable": True}
SGX_SIGNER = {"tee": "sgx", "signer": "22" * 32, "product_id": 1}


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


@pytest.fixture(scope="module")
def coordinator(snp: SnpKit) -> FakeCoordinator:
    return FakeCoordinator(snp.evidence)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_two_alternatives_in_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "policy.yaml",
        f"""version: 1
accept:
  - tee: tdx
    mrtd: "{TDX_MRTD.hex()}"
    rtmr0: "{RTMRS["rtmr0"]}"
    rtmr1: "{RTMRS["rtmr1"]}"
    rtmr2: "{RTMRS["rtmr2"]}"
    sept_ve_disable: true
  - tee: sev-snp
    measurement: {SNP_MEASUREMENT.hex()}
    min_tcb: {{snp: 8}}
    vmpl: 0
""",
    )
    policy = VerificationPolicy.load(path)
    assert [ref.tee for ref in policy.accept] == ["tdx", "sev-snp"]
    assert policy.accept[0].sept_ve_disable is True
    assert policy.accept[1].min_tcb is not None
    assert policy.accept[1].min_tcb.snp == 8
    assert policy.require_collateral is False


def test_the_entry_that_matches_is_named(
    tmp_path: Path, snp: SnpKit, coordinator: FakeCoordinator
) -> None:
    wrong = {**SNP, "measurement": "01" * 48}
    policy = VerificationPolicy.load(
        write(tmp_path / "p.json", json.dumps({"version": 1, "accept": [TDX, wrong, SNP]}))
    )
    nonce = os.urandom(32)
    verified = verify_statement(
        coordinator.statement(nonce), policy=policy, nonce=nonce, trust=snp.trust()
    )
    assert verified.matched.index == 2


def test_no_matching_entry_names_each_reason(
    tmp_path: Path, snp: SnpKit, coordinator: FakeCoordinator
) -> None:
    wrong = {**SNP, "measurement": "01" * 48}
    policy = VerificationPolicy.load(
        write(tmp_path / "p.json", json.dumps({"version": 1, "accept": [TDX, wrong]}))
    )
    nonce = os.urandom(32)
    with pytest.raises(StatementError) as caught:
        verify_statement(
            coordinator.statement(nonce), policy=policy, nonce=nonce, trust=snp.trust()
        )
    message = str(caught.value)
    assert "no accepted reference values match" in message
    assert "accept[0] (tdx): tee mismatch" in message
    assert "accept[1] (sev-snp): measurement mismatch" in message


@pytest.mark.parametrize(
    ("document", "field", "fragment"),
    [
        (
            {"version": 1, "accept": [{**SNP, "measurment": "00"}]},
            "accept[0].measurment",
            "unknown",
        ),
        (
            {"version": 1, "accept": [TDX, {**SNP, "measurement": "zz"}]},
            "accept[1].measurement",
            "",
        ),
        ({"version": 1, "accept": [{**SNP, "mrtd": TDX_MRTD.hex()}]}, "accept[0]", "mrtd"),
        ({"version": 1, "accept": [{"tee": "sev-snp"}]}, "accept[0]", "needs a 'measurement'"),
        ({"version": 1, "accept": []}, "accept", ""),
        ({"version": 2, "accept": [SNP]}, "version", ""),
        ({"version": 1, "accept": [SNP], "collateral": {"amd": "x"}}, "collateral.amd", ""),
        (
            {"version": 1, "accept": [SNP], "collateral": {"sev-snp": "nope.der"}},
            "collateral.sev-snp",
            "cannot read",
        ),
        ({"version": 1, "accept": [SNP], "require_collateral": "yes"}, "require_collateral", ""),
        ({"version": 1, "accept": [SNP], "extra": 1}, "extra", "unknown field"),
        (
            {"version": 1, "accept": [SNP, {**TDX, "rtmr1": None, "rtmr2": None}]},
            "accept[1]",
            "a tdx entry must name rtmr1, rtmr2",
        ),
        (
            {"version": 1, "accept": [{"tee": "tdx", "mrtd": TDX_MRTD.hex()}]},
            "accept[0]",
            "must name rtmr0, rtmr1, rtmr2",
        ),
        ({"version": 1, "accept": [SGX_SIGNER]}, "accept[0]", "must name min_svn"),
        (SGX_SIGNER, "", "must name min_svn"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(
    tmp_path: Path, document: dict[str, object], field: str, fragment: str
) -> None:
    path = write(tmp_path / "policy.json", json.dumps(document))
    with pytest.raises(PolicyError) as caught:
        VerificationPolicy.load(path)
    message = str(caught.value)
    assert caught.value.field == field
    assert message.startswith(f"{path}: {field}: " if field else f"{path}: ")
    assert fragment in message
    assert "\n" not in message


def test_collateral_and_certs_are_read_relative_to_the_file(
    tmp_path: Path, snp: SnpKit, coordinator: FakeCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "policies" / "prod"
    write(
        folder / "policy.yaml",
        f"""version: 1
accept: [{json.dumps(SNP)}]
collateral: {{sev-snp: amd/crl.der}}
certs: {{sev-snp: ../vcek.pem}}
require_collateral: true
""",
    )
    (folder / "amd").mkdir()
    crl = snp.pki.crl()
    (folder / "amd" / "crl.der").write_bytes(crl)
    (tmp_path / "policies" / "vcek.pem").write_bytes(b"vcek")
    monkeypatch.chdir(tmp_path)  # elsewhere than the file
    policy = VerificationPolicy.load(Path("policies/prod/policy.yaml"))
    assert policy.collateral == {"sev-snp": crl}
    assert policy.certs == {"sev-snp": b"vcek"}
    assert policy.require_collateral is True
    # The collateral is used: the chain was checked against AMD's CRL, which satisfies
    # require_collateral (the TCB status stays Unverified: AMD publishes none). (The certs
    # file is not a certificate: the report brings its VCEK, so leave it out here.)
    nonce = os.urandom(32)
    verified = verify_statement(
        coordinator.statement(nonce),
        policy=VerificationPolicy(policy.accept, policy.collateral, {}, True),
        nonce=nonce,
        trust=snp.trust(),
    )
    assert "revocation" in verified.claims.checked
    assert verified.claims.tcb_status == "Unverified"


def test_require_collateral_refuses_an_unverified_tcb(
    snp: SnpKit, coordinator: FakeCoordinator
) -> None:
    single = VerificationPolicy.parse(json.dumps(SNP).encode(), base=Path())
    policy = VerificationPolicy(single.accept, require_collateral=True)
    nonce = os.urandom(32)
    with pytest.raises(StatementError, match="tcb unverified"):
        verify_statement(
            coordinator.statement(nonce), policy=policy, nonce=nonce, trust=snp.trust()
        )


def test_a_revoked_chain_in_the_policys_collateral_is_refused(
    snp: SnpKit, coordinator: FakeCoordinator
) -> None:
    single = VerificationPolicy.parse(json.dumps(SNP).encode(), base=Path())
    policy = VerificationPolicy(single.accept, {"sev-snp": snp.pki.crl(revoked=(snp.pki.ask,))})
    nonce = os.urandom(32)
    with pytest.raises(StatementError, match="revoked"):
        verify_statement(
            coordinator.statement(nonce), policy=policy, nonce=nonce, trust=snp.trust()
        )


def test_a_single_package_still_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "coordinator.yaml", f"tee: sev-snp\nmeasurement: {'ab' * 48}\n")
    policy = VerificationPolicy.load(path)
    assert len(policy.accept) == 1
    assert policy.accept[0].measurement == "ab" * 48
    with pytest.raises(PolicyError, match="measurment: unknown field"):
        VerificationPolicy.load(write(tmp_path / "bad.yaml", "tee: sev-snp\nmeasurment: ab\n"))


def test_a_policy_cannot_name_roots(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.json", json.dumps({"version": 1, "accept": [SNP], "roots": {"sev-snp": "x"}})
    )
    with pytest.raises(PolicyError, match="roots: unknown field"):
        VerificationPolicy.load(path)


def test_pinned_tdx_and_sgx_signer_entries_load(tmp_path: Path) -> None:
    signer = {**SGX_SIGNER, "min_svn": 3}
    path = write(tmp_path / "p.json", json.dumps({"version": 1, "accept": [TDX, signer]}))
    policy = VerificationPolicy.load(path)
    assert policy.accept[0].rtmr2 == RTMRS["rtmr2"]
    assert policy.accept[1].min_svn == 3
