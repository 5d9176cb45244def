"""``geode evidence verify``: claims and verdict on stdout, the reason and exit 1 on failure."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from geode.cli import cli
from tests.attestation.support import intel
from tests.attestation.support.fuzz import pem_chain_bit_flipped
from tests.attestation.support.vectors import VECTORS, read_vector, requires_vectors
from tests.support import geode_cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["evidence", "verify", *args])
    return result.exit_code, result.stdout, result.stderr


@requires_vectors
def test_an_sgx_quote_with_collateral_prints_its_claims_and_status() -> None:
    assert VECTORS is not None
    quote = VECTORS / "sgx_v3_dcapqvl.quote.bin"
    collateral = VECTORS / "sgx_v3_dcapqvl.collateral.json"
    read_vector(quote.name)
    code, out, _ = run(str(quote), "--collateral", str(collateral), "--at", "2025-07-01")
    assert code == 0
    assert out.splitlines()[0] == (
        "verified sgx evidence; TCB status ConfigurationAndSWHardeningNeeded"
    )
    assert "advisory_ids:" in out
    assert "INTEL-SA-00289, INTEL-SA-00615" in out


@requires_vectors
def test_json_claims_use_the_package_field_names() -> None:
    assert VECTORS is not None
    read_vector("tdx_v4_dcapqvl.quote.bin")
    code, out, _ = run(
        str(VECTORS / "tdx_v4_dcapqvl.quote.bin"),
        "--kind",
        "tdx",
        "--collateral",
        str(VECTORS / "tdx_v4_dcapqvl.collateral.json"),
        "--at",
        "2025-07-01T12:00:00+00:00",
        "--json",
    )
    assert code == 0
    document = json.loads(out)
    assert document["verdict"] == "verified"
    claims = document["claims"]
    assert claims["tee"] == "tdx"
    assert claims["tcb_status"] == "UpToDate"
    assert {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "debug"} <= set(claims)
    assert claims["mrtd"] == claims["mrtd"].lower()
    assert len(bytes.fromhex(claims["report_data"])) == 64


@requires_vectors
def test_expired_collateral_exits_1_with_the_reason(tmp_path: Path) -> None:
    assert VECTORS is not None
    read_vector("tdx_v4_dcapqvl.quote.bin")
    code, out, err = run(
        str(VECTORS / "tdx_v4_dcapqvl.quote.bin"),
        "--collateral",
        str(VECTORS / "tdx_v4_dcapqvl.collateral.json"),
        "--at",
        "2025-08-01",
        "--json",
    )
    assert code == 1
    assert json.loads(out)["verdict"] == "refused"
    assert json.loads(out)["field"].startswith("collateral.")
    assert "not valid at 2025-08-01T00:00:00" in err


@requires_vectors
def test_an_envelope_is_read_and_its_kind_checked(tmp_path: Path) -> None:
    data = read_vector("sgx_v3_occlum.quote.bin")
    envelope = tmp_path / "evidence.json"
    envelope.write_text(json.dumps({"kind": "sgx", "data": base64.b64encode(data).decode()}))
    code, out, _ = run(str(envelope), "--at", "2025-07-01")
    assert code == 0
    assert "TCB status Unverified (no collateral: TCB status not checked)" in out
    assert "debug:" in out
    code, _, err = run(str(envelope), "--kind", "tdx")
    assert code == 1
    assert "the envelope holds sgx evidence" in err


def test_a_quote_under_another_root_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "quote.bin"
    path.write_bytes(intel.build_quote(intel.QuoteSpec()))
    code, out, err = run(str(path), "--at", "2025-07-01", "--json")
    assert code == 1
    refusal = json.loads(out)
    assert set(refusal) == {"verdict", "reason", "field", "offset"}
    assert (refusal["verdict"], refusal["field"]) == ("refused", "pck_certification_data")
    assert "does not end at a trusted root" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not evidence at all", "not evidence of any known kind"), (b"", "not evidence")],
)
def test_unknown_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(content)
    code, _, err = run(str(path))
    assert code == 1
    assert message in err


def test_a_bad_time_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    code, _, err = run(str(path), "--at", "yesterday")
    assert code == 2
    assert "expected an ISO 8601 time" in err


@requires_vectors
def test_the_real_command_prints_one_line_on_failure(tmp_path: Path) -> None:
    data = bytearray(read_vector("sgx_v3_dcapqvl.quote.bin"))
    data[60] ^= 1  # in the report body
    path = tmp_path / "quote.bin"
    path.write_bytes(bytes(data))
    result = geode_cli("evidence", "verify", str(path), env=dict(os.environ))
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: signature (offset 436): signature does not verify"
    assert "Traceback" not in result.stderr


@requires_vectors
def test_a_bit_flipped_in_the_quotes_pem_chain_prints_one_line(tmp_path: Path) -> None:
    data, offset = pem_chain_bit_flipped("sgx_v3_dcapqvl")
    path = tmp_path / "quote.bin"
    path.write_bytes(data)
    result = geode_cli("evidence", "verify", str(path), "--at", "2025-07-01", env=dict(os.environ))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: pck_certification_data (offset {offset}): "
        "not PEM certificates (10 is not a valid X509 version)"
    )
    assert "Traceback" not in result.stderr


@requires_vectors
@pytest.mark.parametrize("member", ["document", "tcb_info"])
def test_deeply_nested_collateral_is_one_line_naming_it(tmp_path: Path, member: str) -> None:
    raw = read_vector("sgx_v3_dcapqvl.collateral.json")
    if member == "document":
        nested = b"[" * 100_000 + raw + b"]" * 100_000
    else:
        nested = json.dumps({**json.loads(raw), member: "[" * 100_000 + "]" * 100_000}).encode()
    path = tmp_path / "collateral.json"
    path.write_bytes(nested)
    assert VECTORS is not None
    quote = str(VECTORS / "sgx_v3_dcapqvl.quote.bin")
    args = ["evidence", "verify", quote, "--at", "2025-07-01", "--collateral", str(path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.exception
    field = "collateral" if member == "document" else f"collateral.{member}"
    assert result.stderr.splitlines() == [
        f"Error: {field}: JSON nested {100_001 if member == 'document' else 100_000} deep, "
        "more than 32"
    ]


def test_a_deeply_nested_file_is_not_taken_for_an_envelope(tmp_path: Path) -> None:
    path = tmp_path / "evidence.json"
    path.write_bytes(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    code, _, err = run(str(path))
    assert code == 1
    assert err.splitlines() == ["Error: kind (offset 0): not evidence of any known kind"]


def test_hardware_evidence_verifies_under_the_deps_trust_only(tmp_path: Path) -> None:
    """The roots come from ``CliDeps`` (a test's, here the SNP kit's), never from a flag: the
    same report is refused under the pinned AMD roots."""
    from geode.attestation import TrustAnchors
    from geode.cli._common import CliDeps
    from tests.support.hardware_statement import SnpKit

    snp = SnpKit()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(snp.evidence(bytes(64)).to_json()))
    ok = CliRunner().invoke(cli, ["evidence", "verify", str(path)], obj=CliDeps(trust=snp.trust()))
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("verified sev-snp evidence; TCB status Unverified")
    pinned = CliRunner().invoke(cli, ["evidence", "verify", str(path)], obj=CliDeps(TrustAnchors()))
    assert pinned.exit_code == 1
    assert "Traceback" not in pinned.output


def test_checked_and_the_verdict_of_a_package_are_printed(tmp_path: Path) -> None:
    """What was checked is on the first lines; with ``--package`` the verdict (an SNP report
    with AMD's CRL and a min_tcb met: UpToDate) and, as JSON, ``checked`` and ``match``."""
    from geode.cli._common import CliDeps
    from tests.support.hardware_statement import SNP_MEASUREMENT, SNP_TCB, SnpKit

    snp = SnpKit()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(snp.evidence(bytes(64)).to_json()))
    crl = tmp_path / "amd.crl"
    crl.write_bytes(snp.pki.crl())
    package = tmp_path / "package.json"
    package.write_text(
        json.dumps({"tee": "sev-snp", "measurement": SNP_MEASUREMENT.hex(), "min_tcb": SNP_TCB})
    )
    args = ["evidence", "verify", str(path), "--collateral", str(crl), "--package", str(package)]
    result = CliRunner().invoke(cli, args, obj=CliDeps(trust=snp.trust()))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("verified sev-snp evidence; TCB status Unverified")
    assert lines[1] == "checked: signature, chain, revocation"
    assert lines[2] == "package matched; verdict UpToDate"
    assert lines[3] == "  checked: signature, chain, revocation, tcb, reference"
    as_json = CliRunner().invoke(cli, [*args, "--json"], obj=CliDeps(trust=snp.trust()))
    document = json.loads(as_json.stdout)
    assert document["checked"] == ["signature", "chain", "revocation"]
    assert document["claims"]["checked"] == ["signature", "chain", "revocation"]
    assert document["match"]["status"] == "UpToDate"
    assert document["match"]["checked"] == ["signature", "chain", "revocation", "tcb", "reference"]
    package.write_text(
        json.dumps({"tee": "sev-snp", "measurement": SNP_MEASUREMENT.hex(), "min_tcb": {"snp": 99}})
    )
    refused = CliRunner().invoke(cli, args, obj=CliDeps(trust=snp.trust()))
    assert refused.exit_code == 1
    assert "tcb too low (snp 8 < 99)" in refused.output


@pytest.mark.skipif(
    importlib.util.find_spec("signxml") is None and os.environ.get("CI") != "true",
    reason="signxml (geode[nvidia]) is not installed",
)
def test_nvidia_collateral_makes_the_status_up_to_date(tmp_path: Path) -> None:
    """``--collateral`` takes the NVIDIA document (RIMs and OCSP responses); without it the
    report is Unverified, with half of it refused."""
    from geode.attestation import TrustAnchors
    from geode.attestation._nvidia import CcMode, build_nvidia_evidence
    from geode.cli._common import CliDeps
    from tests.attestation.support.nvidia import GpuPki, forge_spdm, tlv
    from tests.attestation.support.nvidia_rim import RimPki, collateral, ocsp_response, rim_xml

    gpu, rims = GpuPki.create(), RimPki.create()
    blocks = {1: os.urandom(48), 2: os.urandom(48)}
    opaque = tlv(3, b"570.1\0") + tlv(6, bytes([0, 0x9F, 0, 0x96, 1])) + tlv(20, gpu.fwid)
    report = forge_spdm(gpu.leaf_key, nonce=bytes(32), measurements=blocks, opaque=opaque)
    evidence = tmp_path / "gpu.bin"
    evidence.write_bytes(build_nvidia_evidence(report, gpu.chain_der(), CcMode.ON))
    document = {
        "driver_rim": rim_xml(rims, version="570.1", golden={1: [blocks[2]]}),
        "vbios_rim": rim_xml(rims, version="96.00.9F.00.01", golden={0: [blocks[1]]}),
        "ocsp": [ocsp_response(gpu.ica, gpu.root, gpu.root_key)]
        + [ocsp_response(c, i, k) for c, i, k in rims.links()],
    }
    whole, half = tmp_path / "whole.json", tmp_path / "half.json"
    whole.write_bytes(collateral(**document))
    half.write_bytes(collateral(driver_rim=document["driver_rim"], ocsp=document["ocsp"]))
    deps = CliDeps(trust=TrustAnchors().with_roots("nvidia", [gpu.root, rims.root]))

    def run_with(*args: str) -> tuple[int, str]:
        argv = ["evidence", "verify", str(evidence), "--at", "2026-06-01", *args]
        result = CliRunner().invoke(cli, argv, obj=deps)
        return result.exit_code, result.output

    code, out = run_with("--collateral", str(whole))
    assert code == 0, out
    assert out.startswith("verified nvidia evidence; TCB status UpToDate\n")
    code, out = run_with()
    assert code == 0, out
    assert out.startswith("verified nvidia evidence; TCB status Unverified (no collateral")
    code, out = run_with("--collateral", str(half))
    assert code == 1
    assert "collateral: NVIDIA collateral lacks vbios_rim" in out
