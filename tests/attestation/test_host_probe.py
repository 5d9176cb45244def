"""``probe_host``: which TEE this host offers a Coordinator, through which interface, and, when
none is usable, every interface looked at with the reason (fake device trees; the real probe of
this machine at the end)."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from geode.attestation import EvidenceVerifier, HostPaths, probe_host
from geode.attestation._providers import DeviceFiles
from geode.errors import NoTeeError
from tests.attestation.support.devices import FakeTsm, gramine_tree, sev_guest_node, tsm_tree
from tests.support.hardware import FakeSgx, FakeSnp, FakeTdx

REPORT_DATA = bytes(range(64))
EVERY_INTERFACE = ("gramine", "configfs-tsm", "sev-guest", "tdx-guest")
DERIVED = "sev-snp derived key (VCEK; policy, measurement)"


def paths(base: Path) -> HostPaths:
    return HostPaths(
        tsm_root=base / "sys" / "kernel" / "config" / "tsm" / "report",
        sev_guest=base / "dev" / "sev-guest",
        tdx_guest=base / "dev" / "tdx_guest",
        gramine_root=base / "dev" / "attestation",
    )


def reasons(caught: pytest.ExceptionInfo[NoTeeError]) -> dict[str, str]:
    return {name: reason for name, _path, reason in caught.value.probes}


def test_an_empty_host_lists_every_interface_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(NoTeeError) as caught:
        probe_host(paths=paths(tmp_path))
    assert tuple(name for name, _, _ in caught.value.probes) == EVERY_INTERFACE
    found = reasons(caught)
    assert found["gramine"] == "absent (not inside a Gramine enclave)"
    assert found["configfs-tsm"].startswith("absent: the kernel has no configfs-tsm (Linux 6.7+")
    assert found["sev-guest"].startswith("absent")
    assert found["tdx-guest"].startswith("absent")
    message = str(caught.value)
    assert message.startswith("no usable TEE (auto) on this machine: gramine (")
    assert message.endswith(
        "start with --tee simulated (or --simulation) to run without hardware isolation"
    )
    assert str(tmp_path / "dev" / "sev-guest") in message


def test_configfs_not_mounted_is_said(tmp_path: Path) -> None:
    (tmp_path / "sys" / "kernel" / "config").mkdir(parents=True)
    with pytest.raises(NoTeeError) as caught:
        probe_host("tdx", paths=paths(tmp_path))
    config = tmp_path / "sys" / "kernel" / "config"
    assert reasons(caught)["configfs-tsm"] == (
        f"configfs is not mounted at {config} (mount -t configfs none {config})"
    )


@pytest.mark.parametrize(
    ("interfaces", "name", "sealing"),
    [
        (("configfs-tsm",), "sev-snp via configfs-tsm", "none"),
        (("sev-guest",), "sev-snp via /dev/sev-guest", DERIVED),
        (("sev-guest", "configfs-tsm"), "sev-snp via configfs-tsm", DERIVED),
    ],
)  # fmt: skip
def test_snp_through_each_interface(
    snp: FakeSnp, interfaces: tuple[str, ...], name: str, sealing: str
) -> None:
    guest = snp.launch(measurement=b"\x0a" * 48, interfaces=interfaces)
    for choice in ("auto", "sev-snp"):
        host = guest.probe(choice)
        assert (host.kind, host.name, host.sealing) == ("sev-snp", name, sealing)
        claims = EvidenceVerifier(trust=guest.trust()).verify(host.evidence(REPORT_DATA))
        assert (claims.measurement, claims.report_data) == (b"\x0a" * 48, REPORT_DATA)
        assert (host.sealing_key() is None) == (sealing == "none")


def test_tdx_through_configfs_tsm(tdx: FakeTdx) -> None:
    guest = tdx.launch(mrtd=b"\x0b" * 48)
    for choice in ("auto", "tdx"):
        host = guest.probe(choice)
        assert (host.kind, host.name, host.sealing) == ("tdx", "tdx via configfs-tsm", "none")
        assert host.sealing_key() is None
        claims = EvidenceVerifier(trust=guest.trust()).verify(host.evidence(REPORT_DATA))
        assert (claims.measurement, claims.report_data) == (b"\x0b" * 48, REPORT_DATA)


def test_sgx_through_gramine(sgx: FakeSgx) -> None:
    guest = sgx.launch(mrenclave=b"\x0c" * 32)
    for choice in ("auto", "sgx-gramine"):
        host = guest.probe(choice)
        assert (host.kind, host.name) == ("sgx", "sgx via Gramine /dev/attestation")
        assert host.sealing == "gramine _sgx_mrenclave"
        claims = EvidenceVerifier(trust=guest.trust()).verify(host.evidence(REPORT_DATA))
        assert (claims.measurement, claims.report_data) == (b"\x0c" * 32, REPORT_DATA)
    assert guest.probe(sgx_sealing="mrsigner").sealing == "gramine _sgx_mrsigner"


def test_auto_prefers_gramine_then_snp(snp: FakeSnp) -> None:
    guest = snp.launch(interfaces=("sev-guest",))
    gramine_tree(guest.tree / "dev")  # inside an enclave the other devices are the host's
    try:
        assert guest.probe().kind == "sgx"
        assert guest.probe("sev-snp").kind == "sev-snp"
    finally:
        for path in sorted((guest.tree / "dev" / "attestation").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (guest.tree / "dev" / "attestation").rmdir()
    assert guest.probe().kind == "sev-snp"


def test_tdx_guest_device_alone_gives_reports_only(tdx: FakeTdx) -> None:
    guest = tdx.launch(interfaces=("tdx-guest",))
    with pytest.raises(NoTeeError) as caught:
        guest.probe("tdx")
    assert [name for name, _, _ in caught.value.probes] == ["configfs-tsm", "tdx-guest"]
    assert reasons(caught)["tdx-guest"] == "TD reports only: quotes need configfs-tsm (Linux 6.7+)"
    with pytest.raises(NoTeeError, match=r"tdx-guest .*: TD reports only"):
        guest.probe()


def test_gramine_without_dcap_is_not_usable(sgx: FakeSgx) -> None:
    guest = sgx.launch(attestation_type="epid")
    with pytest.raises(NoTeeError) as caught:
        guest.probe("sgx-gramine")
    assert [name for name, _, _ in caught.value.probes] == ["gramine"]
    assert reasons(caught)["gramine"].startswith("attestation_type is 'epid', not 'dcap'")


def test_gramine_without_its_keys_is_not_usable(tmp_path: Path) -> None:
    gramine_tree(tmp_path / "dev", keys=False)
    with pytest.raises(NoTeeError) as caught:
        probe_host("sgx-gramine", paths=paths(tmp_path))
    assert reasons(caught)["gramine"] == "no keys/_sgx_mrenclave (Gramine 1.4+)"


def test_an_explicit_choice_lists_only_what_it_probed(snp: FakeSnp, tdx: FakeTdx) -> None:
    guest = snp.launch(interfaces=("configfs-tsm",))
    with pytest.raises(NoTeeError) as caught:
        guest.probe("sgx-gramine")
    assert [name for name, _, _ in caught.value.probes] == ["gramine"]
    assert str(caught.value).startswith("no usable TEE (sgx-gramine) on this machine: gramine (")
    with pytest.raises(NoTeeError) as caught:
        guest.probe("tdx")
    assert reasons(caught) == {
        "configfs-tsm": "provider sev_guest: not a TDX guest",
        "tdx-guest": "absent (not a TDX guest)",
    }
    with pytest.raises(NoTeeError) as caught:
        tdx.launch(interfaces=("configfs-tsm",)).probe("sev-snp")
    assert reasons(caught)["configfs-tsm"] == "provider tdx_guest: not an SEV-SNP guest"
    assert list(reasons(caught)) == ["configfs-tsm", "sev-guest"]


class Denied(DeviceFiles):
    """A host where this process may not open the device nor write configfs."""

    def check_open(self, path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def mkdir(self, path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))


def test_permission_denied_is_said(tmp_path: Path) -> None:
    sev_guest_node(tmp_path)
    tsm_tree(tmp_path)
    with pytest.raises(NoTeeError) as caught:
        probe_host("sev-snp", paths=paths(tmp_path), files=Denied())
    assert reasons(caught) == {
        "configfs-tsm": "not writable (Permission denied): configfs must be mounted read-write",
        "sev-guest": "permission denied (needs read-write access)",
    }


def test_a_configfs_provider_geode_does_not_know(tmp_path: Path) -> None:
    tsm_tree(tmp_path)
    kernel = FakeTsm("arm_cca_guest", lambda inblob, _: (inblob, b""))
    with pytest.raises(NoTeeError) as caught:
        probe_host(paths=paths(tmp_path), files=kernel)
    assert reasons(caught)["configfs-tsm"] == (
        "provider 'arm_cca_guest' is none Geode knows (tdx_guest, sev_guest)"
    )
    assert list(paths(tmp_path).tsm_root.iterdir()) == []  # the probe's entry is gone


def test_simulated_and_unknown_choices_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'simulated' is not a host TEE"):
        probe_host("simulated", paths=paths(tmp_path))
    with pytest.raises(ValueError, match="unknown TEE 'sev'"):
        probe_host("sev", paths=paths(tmp_path))
    with pytest.raises(ValueError, match="mrenclave or mrsigner"):
        probe_host(paths=paths(tmp_path), sgx_sealing="mrtd")  # type: ignore[arg-type]


def test_this_machine_without_a_tee_says_so_at_once() -> None:
    defaults = HostPaths()
    if any(p.exists() for p in (defaults.sev_guest, defaults.tdx_guest, defaults.gramine_root)) or (
        defaults.tsm_root.exists()
    ):
        pytest.skip("this machine offers a TEE interface")
    started = time.monotonic()
    with pytest.raises(NoTeeError) as caught:
        probe_host()
    assert time.monotonic() - started < 1
    assert tuple(name for name, _, _ in caught.value.probes) == EVERY_INTERFACE
