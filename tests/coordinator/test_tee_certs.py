"""An SEV-SNP Coordinator on a host whose interface gives no certificates (``SNP_GET_REPORT``
through ``/dev/sev-guest``, configfs-tsm without an ``auxblob``): without ``--tee-certs`` it
does not start, in one line that names the option and where the VCEK is; with the chip's VCEK
every report it gives carries it and a relying party verifies the statement with nothing
else; a wrong VCEK stops the start with the reason. ``--tee-certs`` is for SEV-SNP only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import (
    EvidenceVerifier,
    HostPaths,
    HostTee,
    ReferenceValues,
    SgxSealing,
    attach_snp_certs,
    probe_host,
)
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, parse_cert_table, snp_cert_table
from geode.attestation._snp_report import SNP_REPORT_SIZE
from geode.cli import cli
from geode.cli._common import CliDeps
from geode.client import verify_statement
from geode.coordinator import Coordinator, CoordinatorConfig, State, Store, open_coordinator
from geode.errors import EvidenceError, GeodeError
from geode.pki import certificate_der
from geode.protocol import statement_binding
from tests.attestation.support.devices import FakeTsm, snp_responder, tsm_tree
from tests.support.hardware import FakeGuest, FakeSnp, FakeTdx

MANIFEST: dict[str, Any] = {
    "version": 1,
    "trust_domain": "t.local",
    "packages": {"app": {"tee": "sgx", "measurement": "ab" * 32}},
    "services": {"web": {"package": "app"}},
}


@pytest.fixture(autouse=True)
def _no_simulation_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_PLATFORM_KEY", str(tmp_path / "sim" / "platform.key"))
    monkeypatch.setenv("GEODE_SEALING_KEY", str(tmp_path / "sim" / "sealing.key"))


class _Tsm:
    """configfs-tsm's ``sev_guest`` provider on a host with no certificates: an empty
    ``auxblob`` (a probe-able guest tree of its own, as ``FakeSnp.launch`` builds one)."""

    def __init__(self, platform: FakeSnp, tree: Path) -> None:
        tsm_tree(tree)
        self.paths = HostPaths(
            tsm_root=tree / "sys" / "kernel" / "config" / "tsm" / "report",
            sev_guest=tree / "dev" / "sev-guest",
            tdx_guest=tree / "dev" / "tdx_guest",
            gramine_root=tree / "dev" / "attestation",
        )
        with_table = snp_responder(platform.firmware())

        def respond(inblob: bytes, vmpl: int) -> tuple[bytes, bytes]:
            return with_table(inblob, vmpl)[0], b""

        self.files = FakeTsm("sev_guest", respond)

    def probe(self, choice: str, *, sgx_sealing: SgxSealing = "mrenclave") -> HostTee:
        return probe_host(choice, paths=self.paths, files=self.files, sgx_sealing=sgx_sealing)


def _no_certs(snp: FakeSnp, how: str, tmp_path: Path) -> Any:
    """A guest whose interface gives reports without certificates, by ``how``."""
    if how == "sev-guest":
        return snp.launch(interfaces=("sev-guest",), ext="enotty")
    return _Tsm(snp, tmp_path / "tsm-guest")


def _open(data: Path, guest: Any, trust: Any, **config: Any) -> tuple[Coordinator, Store]:
    return open_coordinator(
        CoordinatorConfig(data_dir=data, **config), probe=guest.probe, trust=trust
    )


def _pem(*certs: Any) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


HOW = ["sev-guest", "configfs-tsm"]


@pytest.mark.parametrize("how", HOW)
def test_without_certificates_the_start_stops_in_one_line_naming_the_option(
    how: str, snp: FakeSnp, tmp_path: Path
) -> None:
    guest = _no_certs(snp, how, tmp_path)
    assert len(guest.probe("auto").evidence(bytes(64)).data) == SNP_REPORT_SIZE
    with pytest.raises(GeodeError) as caught:
        _open(tmp_path / "data", guest, snp.trust())
    message = str(caught.value)
    assert "\n" not in message
    assert "this Coordinator's own evidence" in message
    assert "no VCEK certificate" in message
    assert "--tee-certs FILE" in message
    chip = snp.chip_id.hex()
    assert f"https://kdsintf.amd.com/vcek/v1/Genoa/{chip}?blSPL=" in message
    assert "geode verify --online" in message
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("form", ["pem", "der"])
def test_with_the_vcek_it_starts_and_a_verifier_accepts_its_statement(
    how: str, form: str, snp: FakeSnp, tmp_path: Path
) -> None:
    guest = _no_certs(snp, how, tmp_path)
    certs = tmp_path / "vcek.pem"
    # The VCEK and the test PKI's ASK (Geode ships AMD's own ASKs, not the test one).
    certs.write_bytes(_pem(snp.vcek, snp.pki.ask) if form == "pem" else snp.vcek_chain())
    coordinator, store = _open(tmp_path / "data", guest, snp.trust(), tee_certs=certs)
    try:
        status = coordinator.status()
        assert status.tee == "sev-snp"
        assert status.tee_interface.endswith(", certificates given at start")
        nonce = os.urandom(32)
        statement = coordinator.statement(nonce)
        evidence = statement.evidence.evidence()
        entries = parse_cert_table(evidence.data[SNP_REPORT_SIZE:])
        assert CERT_TABLE_GUIDS["vcek"] in {entry.guid for entry in entries}
        # A relying party needs nothing but the pinned (here: the test) roots.
        claims = EvidenceVerifier(trust=snp.trust()).verify(evidence)
        root = certificate_der(coordinator.root_certificate)
        assert claims.report_data == statement_binding(root, bytes(32), nonce)
        reference = ReferenceValues(tee="sev-snp", measurement=status.measurement)
        verify_statement(statement, reference=reference, nonce=nonce, trust=snp.trust())
        if how == "sev-guest":  # a derived key (configfs-tsm alone has none)
            coordinator.set_manifest(json.dumps(MANIFEST).encode())
            store.save(coordinator.sealed_state())
    finally:
        store.close()
    if how == "sev-guest":  # unsealed as without the option: same chip, same code
        again, store = _open(tmp_path / "data", guest, snp.trust(), tee_certs=certs)
        store.close()
        assert again.state is State.ACTIVE


def test_a_wrong_vcek_stops_the_start_with_the_reason(snp: FakeSnp, tmp_path: Path) -> None:
    other_chip = FakeSnp.create(tmp_path / "other")  # same AMD test PKI, another chip
    guest = _no_certs(snp, "sev-guest", tmp_path)
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(_pem(other_chip.vcek, snp.pki.ask))
    with pytest.raises(GeodeError) as caught:
        _open(tmp_path / "data", guest, snp.trust(), tee_certs=wrong)
    message = str(caught.value)
    assert "this Coordinator's own evidence" in message
    assert "chip" in message.lower()
    assert "--tee-certs FILE" not in message  # it was given: the reason is the VCEK itself
    assert not (tmp_path / "data").exists()


def test_a_file_without_a_vcek_or_unreadable_is_refused(snp: FakeSnp, tmp_path: Path) -> None:
    guest = _no_certs(snp, "sev-guest", tmp_path)
    ask_only = tmp_path / "ask.pem"
    ask_only.write_bytes(_pem(snp.pki.ask))
    with pytest.raises(GeodeError, match=r"--tee-certs .*ask\.pem: .*no VCEK or VLEK"):
        _open(tmp_path / "data", guest, snp.trust(), tee_certs=ask_only)
    with pytest.raises(GeodeError, match=r"--tee-certs .*missing\.pem: No such file"):
        _open(tmp_path / "data", guest, snp.trust(), tee_certs=tmp_path / "missing.pem")
    assert not (tmp_path / "data").exists()


def test_the_interfaces_own_certificates_are_kept(snp: FakeSnp, tmp_path: Path) -> None:
    """A host that gives its certificates keeps them; the given ones are for reports without."""
    other_chip = FakeSnp.create(tmp_path / "other")
    host = attach_snp_certs(snp.launch().probe(), _pem(other_chip.vcek))
    evidence = host.evidence(bytes(64))
    EvidenceVerifier(trust=snp.trust()).verify(evidence)
    assert host.sealing_key() == snp.launch().probe().sealing_key()


def test_the_certificate_table_takes_one_certificate_per_role(snp: FakeSnp) -> None:
    table = snp_cert_table(_pem(snp.vcek, snp.pki.ask, snp.pki.ark))
    guids = [entry.guid for entry in parse_cert_table(table)]
    assert guids == [CERT_TABLE_GUIDS[r] for r in ("vcek", "ask", "ark")]
    with pytest.raises(EvidenceError, match="two VCEK certificates"):
        snp_cert_table(_pem(snp.vcek, snp.vcek))
    _, vlek = snp.pki.endorsement(kind="VLEK", tcb=snp.tcb)
    with pytest.raises(EvidenceError, match="a VCEK and a VLEK"):
        snp_cert_table(_pem(snp.vcek, vlek))
    with pytest.raises(EvidenceError, match="no VCEK or VLEK"):
        snp_cert_table(_pem(snp.pki.ask))
    with pytest.raises(EvidenceError):
        snp_cert_table(b"not a certificate")


def test_it_is_for_sev_snp_only(snp: FakeSnp, tmp_path: Path) -> None:
    certs = tmp_path / "vcek.pem"
    certs.write_bytes(_pem(snp.vcek))
    for config in (
        {"tee": "tdx"},
        {"tee": "sgx-gramine"},
        {"tee": "simulated"},
        {"simulation": True},
    ):
        with pytest.raises(GeodeError, match="--tee-certs is for SEV-SNP"):
            CoordinatorConfig(data_dir=tmp_path / "data", tee_certs=certs, **config).check()
    # --tee auto that finds another TEE.
    tdx = FakeTdx.create(tmp_path / "tdx").launch()
    with pytest.raises(GeodeError, match=r"--tee-certs is for SEV-SNP, and .* runs in tdx"):
        _open(tmp_path / "data", tdx, tdx.trust(), tee_certs=certs)
    with pytest.raises(ValueError, match="SEV-SNP certificates given to a tdx TEE"):
        attach_snp_certs(tdx.probe(), _pem(snp.vcek))
    assert not (tmp_path / "data").exists()


# -- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("--tee", "tdx"), ("--tee", "sgx-gramine"), ("--tee", "simulated"), ("--simulation",)]
)
def test_the_option_is_a_usage_error_off_sev_snp(args: tuple[str, ...], tmp_path: Path) -> None:
    certs = tmp_path / "vcek.pem"
    certs.write_bytes(b"-")
    result = CliRunner().invoke(
        cli, ["coordinator", "--data-dir", str(tmp_path / "data"), "--tee-certs", str(certs), *args]
    )
    assert result.exit_code == 2, result.output
    assert "--tee-certs is for SEV-SNP only" in result.output
    assert not (tmp_path / "data").exists()


def test_the_command_without_it_says_to_give_it(snp: FakeSnp, tmp_path: Path) -> None:
    guest: FakeGuest = snp.launch(interfaces=("sev-guest",), ext="enotty")
    result = CliRunner().invoke(
        cli,
        ["coordinator", "--data-dir", str(tmp_path / "data"), "--tee", "sev-snp"],
        obj=CliDeps(probe=guest.probe, trust=snp.trust()),
    )
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "--tee-certs FILE" in line
    assert "no VCEK certificate" in line
