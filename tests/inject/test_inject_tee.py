"""What the webhook gives a pod for its service's TEE, from the manifest and the profiles."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from geode.client import CoordinatorClient
from geode.errors import GeodeError, InjectionRefused
from geode.inject import (
    CoordinatorManifest,
    InjectorConfig,
    ManifestFile,
    ManifestUnavailable,
    PackageTees,
    ServiceTees,
    TeeProfiles,
    answer_review,
    plan_injection,
    read_pod,
)
from geode.pki import CertificateAuthority, certificate_pem, load_certificate
from tests.inject.support.admission import patched, pod_of, review, validate_pod, with_pod
from tests.inject.support.manifests import MANIFEST, TEES

MESH = "geode-mesh.geode.svc:2001"


def chart_profiles(tmp_path: Path) -> TeeProfiles:
    """The profiles as the chart renders them for the webhook (its default values)."""
    from tests.inject.support.chart import Rendered

    configmap = Rendered({}).get("ConfigMap", "geode-tee-profiles")
    path = tmp_path / "profiles.json"
    path.write_text(configmap["data"]["profiles.json"])
    return TeeProfiles.load(path)


@pytest.fixture
def config(tmp_path: Path) -> InjectorConfig:
    return InjectorConfig(coordinator=MESH, tee_profiles=chart_profiles(tmp_path))


def pod_for(service: str) -> dict[str, Any]:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["labels"]["geode.dev/service"] = service
    return with_pod(body, pod)


def respond(body: dict[str, Any], config: InjectorConfig, tees: PackageTees = TEES) -> Any:
    result = answer_review(json.dumps(body).encode(), config, tees)
    assert result.status == 200, result.body
    return result.body["response"]


def inject(service: str, config: InjectorConfig) -> dict[str, Any]:
    body = pod_for(service)
    pod = patched(body, {"response": respond(body, config)})
    validate_pod(pod)
    return pod


def refusal(body: dict[str, Any], config: InjectorConfig, tees: PackageTees = TEES) -> str:
    response = respond(body, config, tees)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "patch" not in response
    message: str = response["status"]["message"]
    return message


def test_an_sgx_service_gets_enclave_memory_devices_and_gramine(config: InjectorConfig) -> None:
    pod = inject("ledger", config)
    spec = pod["spec"]
    assert "runtimeClassName" not in spec
    assert spec["nodeSelector"] == {"feature.node.kubernetes.io/cpu-security.sgx.enabled": "true"}
    sgx = {"sgx.intel.com/epc": "64Mi", "sgx.intel.com/enclave": 1, "sgx.intel.com/provision": 1}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["geode-tee-aesmd"]["hostPath"] == {"path": "/var/run/aesmd", "type": "Directory"}
    for container in spec["containers"]:
        resources = container["resources"]
        for part in ("requests", "limits"):
            assert {k: resources[part][k] for k in sgx} == sgx
        # geode run starts inside the enclave, from the image's Gramine manifest.
        assert container["command"][:5] == ["gramine-sgx", "geode", "run", "--service", "ledger"]
        wrapper = container["command"][: container["command"].index("--")]
        assert "--quote-provider" not in wrapper
        assert {"name": "geode-tee-aesmd", "mountPath": "/var/run/aesmd"} in container[
            "volumeMounts"
        ]
    # The container's own requests are kept beside the enclave's.
    before = pod_of(pod_for("ledger"))["spec"]["containers"][0].get("resources", {})
    for part, values in before.items():
        for name, value in values.items():
            assert spec["containers"][0]["resources"][part][name] == value
    assert "geode.dev/simulation" not in pod["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("service", "runtime", "label"),
    [
        ("vault", "kata-qemu-snp", "feature.node.kubernetes.io/cpu-security.sev.snp.enabled"),
        ("search", "kata-qemu-tdx", "feature.node.kubernetes.io/cpu-security.tdx.enabled"),
    ],
)
def test_a_confidential_vm_service_gets_the_runtime_class(
    config: InjectorConfig, service: str, runtime: str, label: str
) -> None:
    pod = inject(service, config)
    assert pod["spec"]["runtimeClassName"] == runtime
    assert pod["spec"]["nodeSelector"] == {label: "true"}
    for container in pod["spec"]["containers"]:
        assert not [r for r in container.get("resources", {}).get("limits", {}) if "/" in r]
        assert container["command"][:3] == ["geode", "run", "--service"]
        assert "--quote-provider" not in container["command"][: container["command"].index("--")]


def test_a_simulated_service_gets_no_tee_and_the_simulated_provider(tmp_path: Path) -> None:
    simulation = InjectorConfig(
        coordinator=MESH,
        simulation_platform_key_secret="geode-platform-key",
        tee_profiles=chart_profiles(tmp_path),
    )
    body = pod_for("bookstore")
    response = respond(body, simulation)
    assert response["warnings"][0].startswith("geode: SIMULATION: bookstore")
    pod = patched(body, {"response": response})
    validate_pod(pod)
    before = pod_of(body)["spec"]
    for key in ("runtimeClassName", "nodeSelector", "tolerations"):
        assert pod["spec"].get(key) == before.get(key), key
    assert not [v for v in pod["spec"]["volumes"] if v["name"].startswith("geode-tee-")]
    for container, original in zip(pod["spec"]["containers"], before["containers"], strict=True):
        assert container.get("resources") == original.get("resources")
        wrapper = container["command"][: container["command"].index("--")]
        assert wrapper[wrapper.index("--quote-provider") + 1] == "simulated"


def test_a_service_whose_tee_is_unknown_is_refused(config: InjectorConfig) -> None:
    message = refusal(pod_for("nobody"), config)
    assert "geode.dev/service" in message
    assert "has no service 'nobody'" in message
    unavailable = ManifestUnavailable("cannot reach the Coordinator at geode-client:4433")
    message = refusal(pod_for("ledger"), config, unavailable)
    assert "the TEE of service 'ledger' is unknown" in message
    assert "cannot reach the Coordinator" in message
    assert "rather than run without its isolation" in message
    # Unlabelled pods are not the webhook's, whatever it knows of the manifest.
    unlabelled = review("unlabelled-pod")
    assert respond(unlabelled, config, unavailable) == {
        "uid": unlabelled["request"]["uid"],
        "allowed": True,
    }


def test_a_tee_without_a_profile_or_a_simulated_service_on_hardware_is_refused() -> None:
    bare = InjectorConfig(coordinator=MESH)
    assert "no TEE profile for sgx" in refusal(pod_for("ledger"), bare)
    # A hardware Coordinator accepts no simulated evidence: the pod could never activate.
    assert "accepts no simulated evidence" in refusal(pod_for("bookstore"), bare)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda spec: spec.update({"runtimeClassName": "runc"}),
            "spec.runtimeClassName: the pod asks for 'runc'",
        ),
        (
            lambda spec: spec.update(
                {"nodeSelector": {"feature.node.kubernetes.io/cpu-security.sev.snp.enabled": "no"}}
            ),
            "whose nodes have 'true'",
        ),
    ],
)
def test_a_pod_that_contradicts_its_profile_is_refused(
    config: InjectorConfig, change: Any, expected: str
) -> None:
    body = pod_for("vault")
    change(body["request"]["object"]["spec"])
    assert expected in refusal(body, config)


def test_a_pod_keeps_its_own_node_selector_and_tolerations(config: InjectorConfig) -> None:
    body = pod_for("search")
    spec = body["request"]["object"]["spec"]
    spec["nodeSelector"] = {
        "zone": "a",
        "feature.node.kubernetes.io/cpu-security.tdx.enabled": "true",
    }
    spec["runtimeClassName"] = "kata-qemu-tdx"
    pod = patched(body, {"response": respond(body, config)})
    validate_pod(pod)
    assert pod["spec"]["nodeSelector"] == spec["nodeSelector"]
    assert pod["spec"]["runtimeClassName"] == "kata-qemu-tdx"


def test_service_tees_come_from_the_manifest() -> None:
    assert TEES.kinds == {
        "bookstore": "simulated",
        "bookwarehouse": "simulated",
        "ledger": "sgx",
        "vault": "sev-snp",
        "search": "tdx",
    }
    pod = read_pod(pod_of(pod_for("vault")), "shop")
    with pytest.raises(InjectionRefused, match="no TEE profile for sev-snp"):
        plan_injection(pod, InjectorConfig(coordinator=MESH), TEES)


def test_the_manifest_is_read_again_and_the_last_good_one_kept(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "manifest.yaml"
    source = ManifestFile(path, refresh=30, clock=lambda: now[0])
    unknown = source.current()
    assert isinstance(unknown, ManifestUnavailable)
    assert "manifest.yaml" in unknown.reason
    path.write_bytes(MANIFEST)
    assert source.tee_of("ledger") == "sgx"  # no copy yet: read at once
    changed = MANIFEST.replace(b"ledger: {package: enclave}", b"ledger: {package: vm}")
    path.write_bytes(changed)
    assert source.tee_of("ledger") == "sgx"  # within refresh: the copy
    now[0] = 31
    assert source.tee_of("ledger") == "sev-snp"
    path.write_bytes(b"version: 1\nnot: a manifest\n")
    now[0] = 62
    current = source.current()  # a bad read keeps the last good manifest
    assert isinstance(current, ServiceTees)
    assert current.tee_of("ledger") == "sev-snp"


def test_the_profiles_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"sgx": {"resources": {"sgx.intel.com/epc": "64Mi"}, "oops": 1}}))
    with pytest.raises(GeodeError, match=r"sgx\.oops"):
        TeeProfiles.load(path)
    path.write_text("[]")
    with pytest.raises(GeodeError, match="expected an object"):
        TeeProfiles.load(path)


def test_the_webhook_reads_the_manifest_from_the_coordinator_pinned_to_its_root(
    coordinator: Any, manifest_for: Any, tmp_path: Path
) -> None:
    root_file = tmp_path / "root" / "root.pem"
    source = CoordinatorManifest(coordinator.client_addr, root_file, refresh=0)
    # Before the chart has the root: refused, saying what to set.
    assert "rootCertificate.pem" in refusal(
        pod_for("web"), InjectorConfig(coordinator=MESH), source
    )
    with CoordinatorClient(coordinator.client_addr, insecure=True) as first_contact:
        pem = first_contact.attestation(os.urandom(32)).root_certificate
    root_file.parent.mkdir()
    # Pinned to another root: the Coordinator's certificate is refused, so is the pod.
    other = tmp_path / "other.pem"
    other.write_text(certificate_pem(CertificateAuthority.create_root().certificate))
    assert isinstance(
        CoordinatorManifest(coordinator.client_addr, other).current(), ManifestUnavailable
    )
    root_file.write_text(pem)
    unavailable = source.current()
    assert isinstance(unavailable, ManifestUnavailable)  # no manifest set yet
    with CoordinatorClient(coordinator.client_addr, root=load_certificate(pem.encode())) as client:
        client.set_manifest(manifest_for().encode())
    assert source.tee_of("web") == "simulated"
    assert source.tee_of("worker") == "simulated"
