"""``geode verify --statement`` on saved hardware statements (SEV-SNP and TDX evidence forged with
the kits), with a policy file: the right values are accepted and say which entry matched and the
TCB verdict; a wrong measurement, guest policy or TCB is refused; a replayed statement is
refused. The kits' roots reach the command only as ``CliDeps(trust=...)``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import TrustAnchors
from geode.cli import cli
from geode.cli._common import CliDeps
from tests.support.hardware_statement import (
    SNP_MEASUREMENT,
    SNP_TCB,
    TDX_MRTD,
    FakeCoordinator,
    SnpKit,
    TdxKit,
)

# The min_tcb sets every component of the reported TCB (SNP_TCB): with AMD's CRL, UpToDate.
SNP = {"tee": "sev-snp", "measurement": SNP_MEASUREMENT.hex(), "min_tcb": SNP_TCB}
# What verify says of an SNP TCB once AMD's CRL was checked and the policy's min_tcb is met
# (AMD publishes no TCB status: the verdict derives it).
NOT_REVOKED = "tcb:          UpToDate"
CHECKED_ALL = "checked:      signature, chain, revocation, tcb, reference"
# The Intel kit's default RTMR0-2 (a policy's tdx entry must pin them).
TDX_RTMRS = {f"rtmr{i}": bytes([0x40 + i]).hex() * 48 for i in range(3)}
TDX = {
    "tee": "tdx",
    "mrtd": TDX_MRTD.hex(),
    **TDX_RTMRS,
    "accepted_tcb_statuses": ["UpToDate"],
}
MIGRATE_MA = 1 << 18


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


def save(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def saved_statement(tmp_path: Path, coordinator: FakeCoordinator, nonce: bytes) -> Path:
    return save(tmp_path, "statement.json", coordinator.statement(nonce).to_json())


def run(args: list[str], trust: TrustAnchors) -> Result:
    return CliRunner().invoke(cli, ["verify", *args], obj=CliDeps(trust=trust))


def policy_file(tmp_path: Path, *entries: dict[str, object], **extra: object) -> Path:
    return save(tmp_path, "policy.json", {"version": 1, "accept": list(entries), **extra})


def test_the_right_values_are_accepted_and_the_tcb_is_unverified_loudly(
    tmp_path: Path, snp: SnpKit
) -> None:
    nonce = os.urandom(32)
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), nonce)
    policy = policy_file(tmp_path, TDX, SNP)
    result = run(
        ["--statement", str(statement), "--policy", str(policy), "--nonce", nonce.hex()],
        snp.trust(),
    )
    assert result.exit_code == 0, result.output
    assert "tee:          sev-snp" in result.output
    assert "matched:      accept[1] (sev-snp)" in result.output
    assert "tcb:          UNVERIFIED" in result.output
    assert "TCB UNVERIFIED" in result.output  # the warning
    assert "checked:      signature, chain, reference" in result.output
    assert "reason:       revocation not checked (no AMD CRL given)" in result.output
    assert "freshness is not checked" not in result.output


def test_with_the_crl_the_chain_is_not_revoked_and_require_collateral_holds(
    tmp_path: Path, snp: SnpKit
) -> None:
    """AMD's CRL proves the chain is not revoked; with the policy's min_tcb met the verdict is
    UpToDate and says what it rests on; the CRL satisfies ``require_collateral``."""
    nonce = os.urandom(32)
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), nonce)
    (tmp_path / "amd.crl").write_bytes(snp.pki.crl())
    policy = policy_file(tmp_path, SNP, collateral={"sev-snp": "amd.crl"}, require_collateral=True)
    result = run(["--statement", str(statement), "--policy", str(policy)], snp.trust())
    assert result.exit_code == 0, result.output
    assert NOT_REVOKED in result.output
    assert CHECKED_ALL in result.output
    assert "min_tcb" in result.output  # the reason
    assert "TCB UNVERIFIED" not in result.output
    assert "freshness is not checked" in result.output


def test_the_crl_on_the_command_line_refuses_a_revoked_ask(tmp_path: Path, snp: SnpKit) -> None:
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), os.urandom(32))
    crl = tmp_path / "revoked.crl"
    crl.write_bytes(snp.pki.crl(revoked=(snp.pki.ask,)))
    result = run(
        [
            "--statement", str(statement),
            "--policy", str(policy_file(tmp_path, SNP)),
            "--collateral", f"sev-snp={crl}",
        ],
        snp.trust(),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "REJECTED" in result.output
    assert "revoked" in result.output


def test_require_collateral_refuses_without_it(tmp_path: Path, snp: SnpKit) -> None:
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), os.urandom(32))
    policy = policy_file(tmp_path, SNP, require_collateral=True)
    result = run(["--statement", str(statement), "--policy", str(policy)], snp.trust())
    assert result.exit_code == 1
    assert "tcb unverified" in result.output


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({**SNP, "measurement": "01" * 48}, "measurement mismatch"),
        ({**SNP, "min_tcb": {"snp": 9}}, "tcb too low"),
        ({**SNP, "host_data": "07" * 32}, "host data mismatch"),
    ],
)
def test_wrong_values_are_refused(
    tmp_path: Path, snp: SnpKit, entry: dict[str, object], fragment: str
) -> None:
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), os.urandom(32))
    result = run(
        ["--statement", str(statement), "--policy", str(policy_file(tmp_path, entry))],
        snp.trust(),
    )
    assert result.exit_code == 1
    assert "deployment statement REJECTED" in result.output
    assert fragment in result.output


def test_a_migratable_guest_is_refused_unless_the_policy_allows_it(
    tmp_path: Path, snp: SnpKit
) -> None:
    coordinator = FakeCoordinator(lambda data: snp.evidence(data, policy=0x30000 | MIGRATE_MA))
    statement = saved_statement(tmp_path, coordinator, os.urandom(32))
    refused = run(
        ["--statement", str(statement), "--policy", str(policy_file(tmp_path, SNP))], snp.trust()
    )
    assert refused.exit_code == 1
    assert "guest policy mismatch" in refused.output
    allowed = policy_file(tmp_path, {**SNP, "migrate_ma": True})
    accepted = run(["--statement", str(statement), "--policy", str(allowed)], snp.trust())
    assert accepted.exit_code == 0, accepted.output


def test_a_replayed_statement_is_refused(tmp_path: Path, snp: SnpKit) -> None:
    coordinator = FakeCoordinator(snp.evidence)
    old, fresh = os.urandom(32), os.urandom(32)
    statement = saved_statement(tmp_path, coordinator, old)
    policy = str(policy_file(tmp_path, SNP))
    replayed = run(
        ["--statement", str(statement), "--policy", policy, "--nonce", fresh.hex()], snp.trust()
    )
    assert replayed.exit_code == 1
    assert "answers another nonce" in replayed.output
    rewritten = json.loads(statement.read_text()) | {"nonce": fresh.hex()}
    path = save(tmp_path, "rewritten.json", rewritten)
    result = run(
        ["--statement", str(path), "--policy", policy, "--nonce", fresh.hex()], snp.trust()
    )
    assert result.exit_code == 1
    assert "not bound to this root certificate, manifest and nonce" in result.output


def test_without_the_kits_roots_the_statement_is_refused(tmp_path: Path, snp: SnpKit) -> None:
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), os.urandom(32))
    policy = str(policy_file(tmp_path, SNP))
    result = CliRunner().invoke(cli, ["verify", "--statement", str(statement), "--policy", policy])
    assert result.exit_code == 1
    assert "REJECTED" in result.output


def test_a_tdx_statement_with_collateral_on_the_command_line(tmp_path: Path) -> None:
    kit = TdxKit()
    statement = saved_statement(tmp_path, FakeCoordinator(kit.evidence), os.urandom(32))
    collateral = tmp_path / "intel.json"
    collateral.write_bytes(kit.collateral())
    args = ["--statement", str(statement), "--policy", str(policy_file(tmp_path, SNP, TDX))]
    unverified = run(args, kit.trust())
    assert unverified.exit_code == 1  # TDX entries accept UpToDate only
    assert "tcb status not accepted (Unverified)" in unverified.output
    result = run([*args, "--collateral", f"tdx={collateral}"], kit.trust())
    assert result.exit_code == 0, result.output
    assert "matched:      accept[1] (tdx)" in result.output
    assert "tcb:          UpToDate" in result.output


def test_a_bad_policy_field_is_one_line(tmp_path: Path, snp: SnpKit) -> None:
    statement = saved_statement(tmp_path, FakeCoordinator(snp.evidence), os.urandom(32))
    policy = policy_file(tmp_path, {**SNP, "measurment": "00"})
    result = run(["--statement", str(statement), "--policy", str(policy)], snp.trust())
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {policy}: accept[0].measurment: unknown field"


def test_online_fetches_what_is_missing_and_says_so(tmp_path: Path, snp: SnpKit) -> None:
    """``--online`` fetches through ``CliDeps.http_transport`` (here: answers from the kit)."""
    spl = "blSPL={bootloader}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={microcode}".format(**SNP_TCB)
    routes = {
        f"https://kdsintf.amd.com/vcek/v1/Milan/{snp.chip.hex()}?{spl}": snp.vcek.public_bytes(
            Encoding.DER
        ),
        "https://kdsintf.amd.com/vcek/v1/Milan/crl": snp.pki.crl(),
    }
    transport = httpx.MockTransport(
        lambda request: (
            httpx.Response(200, content=routes[str(request.url)])
            if str(request.url) in routes
            else httpx.Response(404)
        )
    )

    coordinator = FakeCoordinator(lambda data: snp.evidence(data, with_vcek=False))
    statement = saved_statement(tmp_path, coordinator, os.urandom(32))
    args = ["--statement", str(statement), "--policy", str(policy_file(tmp_path, SNP))]
    offline = run(args, snp.trust())
    assert offline.exit_code == 1
    assert "no VCEK" in offline.output
    result = CliRunner().invoke(
        cli, ["verify", *args, "--online"], obj=CliDeps(trust=snp.trust(), http_transport=transport)
    )
    assert result.exit_code == 0, result.output
    fetched = [line for line in result.output.splitlines() if line.startswith("fetched ")]
    assert len(fetched) == 2
    assert fetched[0].startswith("fetched sev-snp VCEK: https://kdsintf.amd.com/vcek/v1/Milan/")
    assert fetched[1].startswith("fetched sev-snp CRL: https://kdsintf.amd.com/vcek/v1/Milan/crl")
    assert NOT_REVOKED in result.output
    assert CHECKED_ALL in result.output


def test_no_option_of_verify_names_a_root() -> None:
    from geode.cli._verify import verify

    names = {name for param in verify.params for name in param.opts}
    assert not {name for name in names if "root" in name or "trust" in name or name == "ca"}
    envvars = {getattr(param, "envvar", None) for param in verify.params} - {None}
    assert envvars == {"GEODE_COORDINATOR"}
