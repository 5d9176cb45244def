"""``geode measure bundle DIR --binding sev-snp|tdx``: the bundle's measurement as the HOST_DATA
or MRCONFIGID to launch the VM with (QEMU's base64 too) and to pin in the manifest package; a
policy entry made of it accepts a VM of the fake platforms launched with it, and only that."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from geode.attestation import (
    EvidenceVerifier,
    ReferenceValues,
    bundle_binding,
    match_claims,
    measure_bundle,
)
from geode.cli import cli
from geode.errors import ClaimsMismatch
from tests.support.hardware import FakeSnp, FakeTdx

MRTD = b"\x33" * 48  # FakeTdx.launch's default
SNP_LAUNCH = b"\x42" * 48  # FakeSnp.launch's default


def measure(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["measure", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("kind", "field", "size"), [("sev-snp", "host_data", 32), ("tdx", "mrconfigid", 48)]
)
def test_the_binding_is_printed_for_the_manifest_and_for_qemu(
    bundle: Path, kind: str, field: str, size: int
) -> None:
    code, out, err = measure("bundle", str(bundle), "--binding", kind)
    assert code == 0, err
    expected = bundle_binding(measure_bundle(bundle), kind)
    assert len(expected) == size
    doc = yaml.safe_load(out)
    assert doc == {field: expected.hex()}
    option = "host-data" if kind == "sev-snp" else "mrconfigid"
    qemu = re.fullmatch(rf"# QEMU: -object \S+-guest,\.\.\.,{option}=(\S+)", out.splitlines()[1])
    assert qemu is not None, out
    assert base64.b64decode(qemu[1], validate=True) == expected
    # The short form takes it too.
    assert measure(str(bundle), "--binding", kind)[1] == out


def test_the_policy_entry_accepts_the_vm_launched_with_the_binding(
    bundle: Path, snp: FakeSnp, tdx: FakeTdx
) -> None:
    measurement = measure_bundle(bundle)
    for kind, platform, launch in (
        ("sev-snp", snp, {"host_data": bundle_binding(measurement, "sev-snp")}),
        ("tdx", tdx, {"mrconfigid": bundle_binding(measurement, "tdx")}),
    ):
        image = SNP_LAUNCH if kind == "sev-snp" else MRTD
        code, out, err = measure(
            "bundle",
            str(bundle),
            "--binding",
            kind,
            "--policy",
            "--launch-measurement",
            image.hex(),
        )
        assert code == 0, err
        entry = yaml.safe_load(out)["accept"][0]
        reference = ReferenceValues(**entry)
        assert reference.debug is False
        verifier = EvidenceVerifier(trust=platform.trust())
        bound = platform.launch(**launch)
        match_claims(verifier.verify(bound.evidence(bytes(64))), reference)
        unbound = platform.launch()
        with pytest.raises(ClaimsMismatch, match=r"host data mismatch|mrconfigid mismatch"):
            match_claims(verifier.verify(unbound.evidence(bytes(64))), reference)


def test_a_policy_without_the_launch_measurement_warns(bundle: Path) -> None:
    code, out, err = measure("bundle", str(bundle), "--binding", "tdx", "--policy")
    assert code == 0
    assert "pins the bundle only, not the VM image" in err
    assert set(yaml.safe_load(out)["accept"][0]) == {"tee", "mrconfigid", "debug"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy"], "--policy and --launch-measurement go with --binding"),
        (["--binding", "tdx", "--launch-measurement", "ab" * 48], "goes with --policy"),
        (["--binding", "sev-snp", "--policy", "--launch-measurement", "ab" * 32], "48 bytes"),
        (["--binding", "sgx"], "'sgx' is not one of"),
    ],
)
def test_misused_options_are_one_line(bundle: Path, args: list[str], message: str) -> None:
    code, _, err = measure("bundle", str(bundle), *args)
    assert code == 2
    assert message in err
