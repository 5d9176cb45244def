"""``geode run`` in a confidential VM runs only the bundle the VM was launched for: a real
``geode run`` process, in a guest of a fake SEV-SNP chip or TDX host (``tests.support.
tee_service``), against a real Coordinator in hardware mode on the same platform.

The VM is launched with bundle A's binding (SNP HOST_DATA, TDX MRCONFIGID) and the manifest pins
it, so the Coordinator admits that VM. Given bundle B, ``geode run`` refuses with one line
before anything is activated: without the check, the Coordinator would have admitted the VM (its
evidence is right) and B would have run with A's secrets. Given A, it activates and runs A's
command from the staged copy.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from geode.attestation import bundle_binding, measure_bundle
from geode.client import CoordinatorClient
from geode.pki import certificate_pem
from geode.runtime import write_lock
from tests.e2e.conftest import MakeTestbed
from tests.support import REPO
from tests.support.governance import make_party
from tests.support.tee_coordinator import (
    TeeCoordinatorProcess,
    TeeTestbed,
    coordinator_root,
    hardware_manifest,
)
from tests.support.tee_service import tee_service_argv

pytestmark = pytest.mark.e2e

SNP_SERVICE = b"\x5e" * 48  # the service VM's launch measurement (not the Coordinator's)
TDX_SERVICE = b"\x5e" * 48  # the service TD's MRTD
APP = '#!/bin/sh\nprintf \'%s\' "$API_TOKEN" > "$1"\n'


def make_bundle(path: Path, flavour: str) -> Path:
    path.mkdir(parents=True)
    app = path / "app.sh"
    app.write_text(APP)
    app.chmod(0o755)
    (path / "flavour.txt").write_text(flavour)
    write_lock(path, ["sh"])  # the #! interpreter of app.sh, which runs by its locked path
    return path


class Deployment:
    """A Coordinator on a fake platform whose manifest pins bundle A's binding for ``web``."""

    def __init__(self, bed: TeeTestbed, package: dict[str, object], launch: dict[str, object]):
        self.bed = bed
        self.base = bed.base
        self.a = make_bundle(self.base / "bundle-a", "a")
        self.b = make_bundle(self.base / "bundle-b", "b")
        binding = bundle_binding(measure_bundle(self.a), bed.kind)
        field = "host_data" if bed.kind == "sev-snp" else "mrconfigid"
        # The service VM: launched for bundle A.
        self.guest = bed.guest(**launch, **{field: binding})
        self.coordinator: TeeCoordinatorProcess = bed.start()
        root = coordinator_root(self.coordinator)
        self.root_pem = self.base / "root.pem"
        self.root_pem.write_text(certificate_pem(root))
        party = make_party(self.base / "parties", "ops", 0)
        manifest = hardware_manifest(
            {**package, field: binding.hex()},
            recovery={"keys": {party.name: party.public_pem}, "threshold": 1},
        )
        with CoordinatorClient(self.coordinator.client_addr, root=root) as client:
            client.set_manifest(manifest)
        self.runtime = self.base / "runtime"
        self.runtime.mkdir()

    def run(self, bundle: Path, out: Path) -> subprocess.CompletedProcess[str]:
        argv = tee_service_argv(
            self.guest.tree,
            "--service", "web", "--coordinator", self.coordinator.mesh_addr,
            "--bundle", str(bundle), "--root-ca", str(self.root_pem),
            "--runtime-dir", str(self.runtime), "--", "./app.sh", str(out),
        )  # fmt: skip
        return subprocess.run(
            argv, cwd=REPO, env=self.bed.env, capture_output=True, text=True, timeout=120
        )

    def activations(self) -> dict[str, int]:
        status = self.coordinator.status()
        activations: dict[str, int] = status["activations"]
        return activations


def check_binding(deployment: Deployment, field: str) -> None:
    out = deployment.base / "token"
    refused = deployment.run(deployment.b, out)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, refused.stderr
    assert "the bundle is not the one this VM was launched for" in lines[0]
    assert measure_bundle(deployment.a).hex() in lines[0]  # what the hardware reports
    assert measure_bundle(deployment.b).hex() in lines[0]  # what the bundle measures
    assert "activated" not in refused.stderr
    assert not out.exists()
    assert deployment.activations() == {}
    assert list(deployment.runtime.iterdir()) == []  # the staged copy is gone too

    ran = deployment.run(deployment.a, out)
    assert ran.returncode == 0, ran.stderr
    assert f"the VM's {field} binds this bundle" in ran.stderr
    assert "activated web" in ran.stderr
    assert len(out.read_text()) == 32  # the shared secret reached A's command
    assert deployment.activations() == {"web": 1}


@pytest.fixture(scope="module")
def snp_deployment(make_testbed: MakeTestbed) -> Deployment:
    bed = make_testbed("sev-snp")
    return Deployment(
        bed, {"tee": "sev-snp", "measurement": SNP_SERVICE.hex()}, {"measurement": SNP_SERVICE}
    )


@pytest.fixture(scope="module")
def tdx_deployment(make_testbed: MakeTestbed) -> Deployment:
    bed = make_testbed("tdx")
    return Deployment(bed, {"tee": "tdx", "mrtd": TDX_SERVICE.hex()}, {"mrtd": TDX_SERVICE})


def test_snp_host_data_binds_the_bundle_geode_run_runs(snp_deployment: Deployment) -> None:
    check_binding(snp_deployment, "host_data")


def test_tdx_mrconfigid_binds_the_bundle_geode_run_runs(tdx_deployment: Deployment) -> None:
    check_binding(tdx_deployment, "mrconfigid")


def test_a_vm_launched_without_a_binding_runs_nothing(snp_deployment: Deployment) -> None:
    """A VM whose HOST_DATA is zero: ``geode run`` says it was launched without one."""
    bare = snp_deployment.bed.guest(measurement=SNP_SERVICE)
    out = snp_deployment.base / "bare-token"
    argv = tee_service_argv(
        bare.tree,
        "--service", "web", "--coordinator", snp_deployment.coordinator.mesh_addr,
        "--bundle", str(snp_deployment.a), "--root-ca", str(snp_deployment.root_pem),
        "--runtime-dir", str(snp_deployment.runtime), "--", "./app.sh", str(out),
    )  # fmt: skip
    done = subprocess.run(
        argv, cwd=REPO, env=snp_deployment.bed.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "(the VM was launched without a binding)" in done.stderr
    assert not out.exists()
    assert os.listdir(snp_deployment.runtime) == []
