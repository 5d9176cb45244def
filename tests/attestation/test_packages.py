"""Manifest packages of every TEE kind, and the match of claims against them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from pydantic import ValidationError

from geode.attestation import Claims, ReferenceValues, match_claims
from geode.errors import ClaimsMismatch
from geode.manifest import Package

H32 = "ab" * 32
H48 = "cd" * 48


def reference(**fields: object) -> ReferenceValues:
    """A package as the Coordinator matches claims against it: as the manifest parsed it."""
    return Package.model_validate(fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"tee": "sgx", "measurement": H32},
        {"tee": "sgx", "signer": H32, "product_id": 1, "min_svn": 2, "debug": True},
        {"tee": "sgx", "measurement": H32, "accepted_tcb_statuses": ["UpToDate", "Unverified"]},
        {"tee": "tdx", "mrtd": H48, "rtmr0": H48, "rtmr3": H48, "mrconfigid": "00" * 48},
        {"tee": "sev-snp", "measurement": H48, "host_data": H32, "vmpl": 0},
        {"tee": "sev-snp", "measurement": H48, "min_tcb": {"snp": 8, "microcode": 115}},
        {"tee": "nvidia", "measurements": {"1": H48, 2: [H48, "ef" * 48]}},
        {"tee": "simulated", "measurement": H32},
    ],
)
def test_valid_packages(fields: dict[str, object]) -> None:
    package = Package.model_validate(fields)
    assert package.tee == fields["tee"]
    assert isinstance(package, ReferenceValues)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tee": "tdx", "measurement": H48, "mrtd": H48}, "'measurement' does not apply to tdx"),
        ({"tee": "sgx", "mrtd": H48, "measurement": H32}, "'mrtd' does not apply to sgx"),
        ({"tee": "tdx"}, "needs a 'mrtd'"),
        ({"tee": "tdx", "mrtd": H32}, "48 bytes"),
        ({"tee": "sev-snp", "measurement": H32}, "sev-snp measurement is 48 bytes"),
        ({"tee": "sgx", "measurement": H48}, "sgx measurement is 32 bytes"),
        ({"tee": "sev-snp", "measurement": H48, "vmpl": 4}, "less than or equal to 3"),
        ({"tee": "sev-snp", "measurement": H48, "min_tcb": {"psp": 1}}, "Extra inputs"),
        ({"tee": "nvidia", "measurements": {}}, "at least one golden"),
        ({"tee": "nvidia", "measurements": {"1": "ab"}}, "String should match"),
        ({"tee": "sev-snp", "measurement": H48, "accepted_tcb_statuses": ["UpToDate"]}, "apply"),
        ({"tee": "sgx", "measurement": H32, "accepted_tcb_statuses": ["Fine"]}, "Input should"),
        ({"tee": "sgx", "measurement": H32, "accepted_tcb_statuses": []}, "at least 1"),
        ({"tee": "sgx", "signer": H32}, "needs a 'product_id'"),
    ],
)
def test_invalid_packages_say_why(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Package.model_validate(fields)


def test_golden_values_from_json_and_yaml_keys_agree() -> None:
    from_json = Package.model_validate(
        json.loads(f'{{"tee": "nvidia", "measurements": {{"7": "{H48.upper()}"}}}}')
    )
    from_yaml = Package.model_validate({"tee": "nvidia", "measurements": {7: [H48]}})
    assert from_json == from_yaml
    assert from_yaml.measurements == {7: [H48]}


def test_accepted_tcb_statuses_default_to_up_to_date_only() -> None:
    assert Package(tee="sgx", measurement=H32).accepted_tcb_statuses == ["UpToDate"]


# -- matching -----------------------------------------------------------------------------------

SGX = Claims(
    tee="sgx",
    measurement=bytes.fromhex(H32),
    report_data=bytes(64),
    debug=False,
    signer=bytes.fromhex(H32),
    product_id=1,
    svn=3,
    tcb_status="UpToDate",
)
TDX = Claims(
    tee="tdx",
    measurement=bytes.fromhex(H48),
    report_data=bytes(64),
    debug=False,
    rtmrs=(bytes(48), bytes([1]) * 48, bytes([2]) * 48, bytes([3]) * 48),
    mrconfigid=bytes(48),
    tcb_status="UpToDate",
)
SNP = Claims(
    tee="sev-snp",
    measurement=bytes.fromhex(H48),
    report_data=bytes(64),
    debug=False,
    host_data=bytes.fromhex(H32),
    vmpl=0,
    tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
    tcb_status="UpToDate",
)
NVIDIA = Claims(
    tee="nvidia",
    measurement=b"",
    report_data=bytes(64),
    debug=False,
    measurements={1: bytes.fromhex(H48), 2: bytes(48)},
    tcb_status="UpToDate",
)


@pytest.mark.parametrize(
    ("claims", "fields"),
    [
        (SGX, {"tee": "sgx", "signer": H32, "product_id": 1, "min_svn": 3}),
        (TDX, {"tee": "tdx", "mrtd": H48, "rtmr1": "01" * 48, "mrconfigid": "00" * 48}),
        (SNP, {"tee": "sev-snp", "measurement": H48, "host_data": H32, "vmpl": 0}),
        (SNP, {"tee": "sev-snp", "measurement": H48, "min_tcb": {"snp": 8, "bootloader": 3}}),
        (NVIDIA, {"tee": "nvidia", "measurements": {1: ["00" * 48, H48]}}),
    ],
)
def test_matching_claims_pass(claims: Claims, fields: dict[str, object]) -> None:
    match_claims(claims, reference(**fields))


@pytest.mark.parametrize(
    ("claims", "fields", "reason"),
    [
        (TDX, {"tee": "tdx", "mrtd": "00" * 48}, "mrtd mismatch"),
        (TDX, {"tee": "tdx", "mrtd": H48, "rtmr2": "00" * 48}, "rtmr2 mismatch"),
        (TDX, {"tee": "tdx", "mrtd": H48, "mrconfigid": "01" * 48}, "mrconfigid mismatch"),
        (SNP, {"tee": "sev-snp", "measurement": "00" * 48}, "measurement mismatch"),
        (SNP, {"tee": "sev-snp", "measurement": H48, "host_data": "00" * 32}, "host data mismatch"),
        (SNP, {"tee": "sev-snp", "measurement": H48, "vmpl": 1}, "vmpl mismatch"),
        (SNP, {"tee": "sev-snp", "measurement": H48, "min_tcb": {"snp": 9}}, "tcb too low"),
        (SNP, {"tee": "sev-snp", "measurement": H48, "min_tcb": {"fmc": 1}}, "tcb too low"),
        (NVIDIA, {"tee": "nvidia", "measurements": {2: H48}}, "measurement mismatch"),
        (NVIDIA, {"tee": "nvidia", "measurements": {3: H48}}, "measurement mismatch"),
        (SGX, {"tee": "tdx", "mrtd": H48}, "tee mismatch"),
    ],
)
def test_mismatches_name_the_field(claims: Claims, fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ClaimsMismatch) as info:
        match_claims(claims, reference(**fields))
    assert info.value.reason == reason


@pytest.mark.parametrize("claims", [SGX, TDX, SNP, NVIDIA], ids=lambda c: c.tee)
def test_debug_evidence_needs_a_debug_package(claims: Claims) -> None:
    fields = {
        "sgx": {"tee": "sgx", "measurement": H32},
        "tdx": {"tee": "tdx", "mrtd": H48},
        "sev-snp": {"tee": "sev-snp", "measurement": H48},
        "nvidia": {"tee": "nvidia", "measurements": {1: H48}},
    }[claims.tee]
    debug = dataclasses.replace(claims, debug=True)
    with pytest.raises(ClaimsMismatch, match="debug mode not allowed"):
        match_claims(debug, reference(**fields))
    match_claims(debug, reference(**fields, debug=True))


@pytest.mark.parametrize("claims", [SGX, TDX], ids=lambda c: c.tee)
def test_tcb_status_must_be_accepted(claims: Claims) -> None:
    fields = (
        {"tee": "sgx", "measurement": H32} if claims.tee == "sgx" else {"tee": "tdx", "mrtd": H48}
    )
    outdated = dataclasses.replace(
        claims, tcb_status="SWHardeningNeeded", advisory_ids=("INTEL-SA-00615",)
    )
    with pytest.raises(ClaimsMismatch) as info:
        match_claims(outdated, reference(**fields))
    assert info.value.reason == "tcb status not accepted"
    assert "SWHardeningNeeded" in info.value.detail
    assert "INTEL-SA-00615" in info.value.detail
    accepting = reference(
        **fields,
        accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"],
        accepted_advisories=["INTEL-SA-00615"],
    )
    verdict = match_claims(outdated, accepting)
    assert verdict.status == "SWHardeningNeeded"
    assert "INTEL-SA-00615" in " ".join(verdict.reasons)
    unverified = dataclasses.replace(claims, tcb_status="Unverified")
    with pytest.raises(ClaimsMismatch, match="Unverified"):
        match_claims(unverified, reference(**fields))


def test_claims_json_uses_the_package_field_names() -> None:
    assert set(TDX.to_json()) >= {"tee", "mrtd", "rtmr0", "rtmr3", "mrconfigid", "report_data"}
    assert set(SGX.to_json()) >= {"measurement", "signer", "product_id", "svn", "tcb_status"}
    assert SNP.to_json()["host_data"] == H32
    assert SNP.to_json()["tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert NVIDIA.to_json()["measurements"] == {"1": H48, "2": "00" * 48}
    assert json.loads(json.dumps(SGX.to_json()))["debug"] is False
