"""The chart's TEE profiles: the Coordinator's pod for each ``coordinator.tee``, what the
webhook is given per package kind, and the values that cannot work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.inject.support.admission import KUBERNETES_VERSIONS, require
from tests.inject.support.chart import (
    GRAMINE,
    SIMULATION,
    Rendered,
    coordinator_params,
    merged,
    render_error,
)


@pytest.fixture(scope="module")
def validate() -> Any:
    kubernetes_validate = require("kubernetes_validate", "kubernetes-validate")

    def check(obj: dict[str, Any]) -> None:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    return check


def _pod(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.get("StatefulSet")["spec"]["template"]["spec"]
    return pod


def _arg(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_the_default_is_hardware_mode_on_a_node_that_is_a_tee() -> None:
    rendered = Rendered({})
    command = rendered.coordinator()["command"]
    assert _arg(command, "--tee") == "auto"
    for simulated in ("--simulation", "--platform-key", "--sealing-key", "--sgx-sealing"):
        assert simulated not in command
    pod = _pod(rendered)
    assert "runtimeClassName" not in pod
    # Scheduled only where the node itself is a TEE: a whole-node CVM by NFD's or Geode's label.
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = [term["matchExpressions"] for term in required["nodeSelectorTerms"]]
    assert terms == [
        [{"key": "geode.dev/tee", "operator": "In", "values": ["sev-snp", "tdx"]}],
        [
            {
                "key": "feature.node.kubernetes.io/cpu-security.tdx.protected",
                "operator": "In",
                "values": ["true"],
            }
        ],
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tee-tsm"]["hostPath"] == {"path": "/sys/kernel/config", "type": "Directory"}
    # Settings of one's own are added to the profile's, and replace its affinity.
    own = Rendered({"coordinator": {"nodeSelector": {"pool": "cvm"}, "affinity": {"x": {}}}})
    assert _pod(own)["nodeSelector"] == {"pool": "cvm"}
    assert _pod(own)["affinity"] == {"x": {}}


@pytest.mark.parametrize(
    ("tee", "runtime", "label"),
    [
        ("sev-snp", "kata-qemu-snp", "feature.node.kubernetes.io/cpu-security.sev.snp.enabled"),
        ("tdx", "kata-qemu-tdx", "feature.node.kubernetes.io/cpu-security.tdx.enabled"),
    ],
)
def test_a_confidential_vm_coordinator_through_a_runtime_class(
    tee: str, runtime: str, label: str, validate: Any
) -> None:
    rendered = Rendered({"coordinator": {"tee": tee}})
    command = rendered.coordinator()["command"]
    assert _arg(command, "--tee") == tee
    assert coordinator_params(command[2:])["tee"] == tee
    pod = _pod(rendered)
    assert pod["runtimeClassName"] == runtime
    assert pod["nodeSelector"] == {label: "true"}
    assert "affinity" not in pod
    validate(rendered.get("StatefulSet"))
    # A whole-node CVM: no runtime class, the node's own runtime.
    whole = Rendered(
        {"coordinator": {"tee": tee}, "tee": {"profiles": {tee: {"runtimeClassName": ""}}}}
    )
    assert "runtimeClassName" not in _pod(whole)
    override = Rendered({"coordinator": {"tee": tee, "runtimeClassName": "mine"}})
    assert _pod(override)["runtimeClassName"] == "mine"


def test_an_sgx_coordinator_runs_the_gramine_image_with_enclave_resources(validate: Any) -> None:
    rendered = Rendered(GRAMINE)
    container = rendered.coordinator()
    assert container["image"] == "geode-sgx:0.1.0"
    command = container["command"]
    assert command[:3] == ["gramine-sgx", "geode", "coordinator"]
    params = coordinator_params(command[3:])
    assert (params["tee"], params["sgx_sealing"]) == ("sgx-gramine", "mrsigner")
    for part in ("requests", "limits"):
        resources = container["resources"][part]
        assert resources["sgx.intel.com/epc"] == "64Mi"
        assert resources["sgx.intel.com/enclave"] == 1
        assert resources["sgx.intel.com/provision"] == 1
    pod = _pod(rendered)
    assert pod["nodeSelector"] == {"feature.node.kubernetes.io/cpu-security.sgx.enabled": "true"}
    assert "runtimeClassName" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tee-aesmd"]["hostPath"]["path"] == "/var/run/aesmd"
    assert {"name": "tee-aesmd", "mountPath": "/var/run/aesmd"} in container["volumeMounts"]
    validate(rendered.get("StatefulSet"))


def test_simulation_only_when_asked_and_loud() -> None:
    for values in (SIMULATION, merged(SIMULATION, {"coordinator": {"tee": "simulated"}})):
        rendered = Rendered(values)
        command = rendered.coordinator()["command"]
        assert _arg(command, "--tee") == "simulated"
        assert "--simulation" in command
        assert "SIMULATION MODE: NO HARDWARE ISOLATION" in rendered.notes
        assert all(
            o["metadata"]["labels"]["geode.dev/simulation"] == "true" for o in rendered.objects
        )
        assert "affinity" not in _pod(rendered)
        assert "runtimeClassName" not in _pod(rendered)


def test_notes_say_the_container_is_not_measured_on_cvm_profiles() -> None:
    # auto and the Kata profiles measure the node's or Kata's guest image, not the container:
    # the NOTES must not let an operator believe the Coordinator's code is attested.
    warning = "NOT the Coordinator's container"
    for tee in ("auto", "sev-snp", "tdx"):
        notes = Rendered({"coordinator": {"tee": tee}}).notes
        assert warning in notes, tee
        assert "not protected against a cluster administrator" in " ".join(notes.split()), tee
    assert warning not in Rendered(GRAMINE).notes
    assert warning not in Rendered(SIMULATION).notes


def test_notes_say_the_default_user_cannot_reach_configfs_tsm() -> None:
    # The default runs as 10001 with no capabilities: configfs-tsm entries are root's, so the
    # Coordinator exits listing its probes; the NOTES say so and what to grant.
    warning = "only root can create a configfs-tsm"
    assert warning in " ".join(Rendered({}).notes.split())
    as_root = {"coordinator": {"podSecurityContext": {"runAsUser": 0, "runAsNonRoot": False}}}
    assert warning not in " ".join(Rendered(as_root).notes.split())
    assert warning not in " ".join(Rendered(GRAMINE).notes.split())


def test_impossible_tee_values_fail_with_what_to_do() -> None:
    message = render_error({"coordinator": {"tee": "simulated"}})
    assert "coordinator.tee=simulated runs without hardware isolation" in message
    assert "simulation.enabled=true" in message
    message = render_error(merged(SIMULATION, {"coordinator": {"tee": "tdx"}}))
    assert "simulation.enabled=true contradicts coordinator.tee=tdx" in message
    message = render_error({"coordinator": {"tee": "sgx-gramine"}})
    assert "needs the Gramine image of geode" in message
    assert "tee.profiles.sgx-gramine.gramine.image.repository" in message
    assert "'/coordinator/tee': value must be one of" in render_error(
        {"coordinator": {"tee": "sgx"}}
    )
    assert "additional properties 'runtimeClass'" in render_error(
        {"tee": {"profiles": {"tdx": {"runtimeClass": "kata"}}}}
    )


def test_the_webhook_gets_the_profiles_by_package_kind(tmp_path: Path) -> None:
    from geode.inject import TeeProfiles

    values = {"tee": {"profiles": {"sgx-gramine": {"resources": {"sgx.intel.com/epc": "128Mi"}}}}}
    configmap = Rendered(values).get("ConfigMap", "geode-tee-profiles")
    path = tmp_path / "profiles.json"
    path.write_text(configmap["data"]["profiles.json"])
    profiles = TeeProfiles.load(path)
    assert sorted(profiles.by_kind) == ["sev-snp", "sgx", "tdx"]  # the manifest's kinds
    sgx = profiles.by_kind["sgx"]
    assert sgx.resources["sgx.intel.com/epc"] == "128Mi"
    assert sgx.launcher == ["gramine-sgx", "geode"]
    assert profiles.by_kind["tdx"].runtime_class_name == "kata-qemu-tdx"
