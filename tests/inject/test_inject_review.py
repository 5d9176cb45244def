"""The webhook's answers to real AdmissionReview bodies, with the JSONPatch applied to the pod."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from geode.cli._run import run as geode_run
from geode.inject import (
    InjectorConfig,
    PatchOperation,
    ServiceTees,
    TeeProfile,
    TeeProfiles,
    answer_review,
    plan_injection,
    read_pod,
)
from tests.inject.support.admission import patched, pod_of, review, validate_pod, with_pod

MESH = "geode-mesh.geode.svc:2001"
# Hardware: the services run on whole-node SEV-SNP VMs whose profile adds nothing to a pod, so
# these tests see the wrapping alone (tests/inject/test_inject_tee.py has the profiles).
CONFIG = InjectorConfig(coordinator=MESH, tee_profiles=TeeProfiles({"sev-snp": TeeProfile()}))
SIMULATION = InjectorConfig(coordinator=MESH, simulation_platform_key_secret="geode-platform-key")
HARDWARE_TEES = ServiceTees({"bookstore": "sev-snp", "bookwarehouse": "sev-snp"}, "00" * 32)
SIMULATED_TEES = ServiceTees({"bookstore": "simulated", "bookwarehouse": "simulated"}, "11" * 32)
WRAPPER = ["geode", "run", "--service"]


def tees_for(config: InjectorConfig) -> ServiceTees:
    return SIMULATED_TEES if config.simulation else HARDWARE_TEES


def answer(body: dict[str, Any], config: InjectorConfig = CONFIG) -> dict[str, Any]:
    result = answer_review(json.dumps(body).encode(), config, tees_for(config))
    assert result.status == 200, result.body
    assert result.body["apiVersion"] == "admission.k8s.io/v1"
    assert result.body["kind"] == "AdmissionReview"
    response = result.body["response"]
    assert isinstance(response, dict)
    assert response["uid"] == body["request"]["uid"]
    return result.body


def inject(body: dict[str, Any], config: InjectorConfig = CONFIG) -> dict[str, Any]:
    """The pod of ``body`` as the API server stores it after the webhook's patch."""
    return patched(body, answer(body, config))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_a_labelled_pod_has_each_container_wrapped_and_nothing_else_changed() -> None:
    body = review("bookstore-replicaset-pod")
    before = pod_of(body)
    pod = patched(body, answer(body))
    validate_pod(pod)

    app, metrics = pod["spec"]["containers"]
    assert app["command"] == [
        *WRAPPER,
        "bookstore",
        "--coordinator",
        MESH,
        "--root-ca",
        "/geode/root/root.pem",
        "--bundle",
        "/srv/bookstore",
        "--",
        "python",
        "/srv/bookstore/app.py",
    ]
    # Kubernetes appends args to the command: they reach geode run after `--`, unchanged.
    assert app["args"] == ["--port", "14001", "--workers", "2"]
    assert metrics["command"][-2:] == ["--", "/usr/local/bin/metrics-exporter"]
    assert "args" not in metrics

    env = env_of(app)
    assert env["GEODE_SERVICE_NAME"] == "bookstore"  # the pod's own value is replaced, not kept
    assert [e["name"] for e in app["env"]].count("GEODE_SERVICE_NAME") == 1
    assert env["GEODE_COORDINATOR_MESH"] == MESH
    assert env["GEODE_DNS_NAMES"] == (
        "bookstore,bookstore.shop,bookstore.shop.svc,bookstore.shop.svc.cluster.local"
    )
    assert env["POD_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert env["LOG_LEVEL"] == "info"
    assert "GEODE_PLATFORM_KEY" not in env

    for container, original in zip(
        pod["spec"]["containers"], before["spec"]["containers"], strict=True
    ):
        mounts = container["volumeMounts"]
        assert mounts[: len(original["volumeMounts"])] == original["volumeMounts"]
        assert mounts[len(original["volumeMounts"]) :] == [
            {"name": "geode-root", "mountPath": "/geode/root", "readOnly": True},
            {"name": "geode-tmpfs", "mountPath": "/dev/shm"},
        ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["geode-root"]["configMap"]["name"] == "geode-root"
    assert volumes["geode-tmpfs"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert pod["spec"]["volumes"][:2] == before["spec"]["volumes"]

    # Init containers are not wrapped unless named; the annotation marks the pod as injected.
    assert pod["spec"]["initContainers"] == before["spec"]["initContainers"]
    assert pod["metadata"]["annotations"] == {
        **before["metadata"]["annotations"],
        "geode.dev/injected": "bookstore",
    }
    # Everything the patch does not own is as it was.
    for key in set(before["spec"]) - {"containers", "volumes"}:
        assert pod["spec"][key] == before["spec"][key], key
    for theirs, ours in zip(before["spec"]["containers"], pod["spec"]["containers"], strict=True):
        for key in set(theirs) - {"command", "env", "volumeMounts"}:
            assert ours[key] == theirs[key], key


def test_the_wrapper_uses_options_geode_run_has() -> None:
    options = {opt for param in geode_run.params for opt in param.opts}
    for config in (CONFIG, SIMULATION):
        pod = inject(review("bookstore-replicaset-pod"), config)
        wrapper = pod["spec"]["containers"][0]["command"]
        used = {part for part in wrapper[: wrapper.index("--")] if part.startswith("--")}
        assert used <= options
        assert {"--service", "--coordinator", "--root-ca", "--bundle"} <= used
        # In simulation never evidence from a TEE the node may have: the Coordinator expects none.
        assert ("--quote-provider" in used) is (config is SIMULATION)
        if config is SIMULATION:
            assert wrapper[wrapper.index("--quote-provider") + 1] == "simulated"


def test_an_injected_pod_is_left_alone() -> None:
    body = review("bookstore-replicaset-pod")
    once = patched(body, answer(body))
    again = answer(with_pod(body, once))["response"]
    assert again == {"uid": body["request"]["uid"], "allowed": True}


def test_an_unlabelled_pod_is_allowed_without_a_patch() -> None:
    body = review("unlabelled-pod")
    assert answer(body)["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_a_container_without_a_command_is_refused_with_what_to_do() -> None:
    body = review("warehouse-no-command")
    response = answer(body)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert "spec.containers[0].command" in message
    assert "'warehouse' has no command" in message
    assert "geode.dev/command" in message
    assert "patch" not in response


def test_the_command_annotation_gives_the_entrypoint() -> None:
    body = review("warehouse-no-command")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["annotations"]["geode.dev/command"] = '["/usr/bin/bookwarehouse"]'
    result = inject(with_pod(body, pod))
    validate_pod(result)
    container = result["spec"]["containers"][0]
    assert container["command"][-2:] == ["--", "/usr/bin/bookwarehouse"]
    assert container["args"] == ["--listen", "0.0.0.0:14002"]
    # The pod had no volumes, env or mounts: each is added whole.
    assert [v["name"] for v in result["spec"]["volumes"]] == ["geode-root", "geode-tmpfs"]
    assert env_of(container)["GEODE_SERVICE_NAME"] == "bookwarehouse"


def test_the_command_annotation_by_container_name() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    del pod["spec"]["containers"][1]["command"]
    pod["metadata"]["annotations"]["geode.dev/command"] = json.dumps(
        {"metrics": ["/usr/local/bin/exporter", "--tls"]}
    )
    result = inject(with_pod(body, pod))
    assert result["spec"]["containers"][1]["command"][-3:] == [
        "--",
        "/usr/local/bin/exporter",
        "--tls",
    ]
    # A container's own command wins over the annotation.
    assert result["spec"]["containers"][0]["command"][-1] == "/srv/bookstore/app.py"


def test_chosen_containers_include_init_containers() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["annotations"]["geode.dev/containers"] = "migrate, app"
    result = inject(with_pod(body, pod))
    validate_pod(result)
    assert result["spec"]["initContainers"][0]["command"][:2] == ["geode", "run"]
    assert result["spec"]["containers"][0]["command"][:2] == ["geode", "run"]
    assert result["spec"]["containers"][1]["command"] == ["/usr/local/bin/metrics-exporter"]
    assert "GEODE_SERVICE_NAME" not in env_of(result["spec"]["containers"][1])


def test_dns_names_root_and_bundle_from_annotations() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["annotations"].update(
        {
            "geode.dev/dns-names": "books.example.com, bookstore",
            "geode.dev/root-ca": "/opt/geode/root.pem",
            "geode.dev/bundle": "/srv/bookstore",
        }
    )
    result = inject(with_pod(body, pod))
    validate_pod(result)
    app = result["spec"]["containers"][0]
    assert env_of(app)["GEODE_DNS_NAMES"] == "books.example.com,bookstore"
    wrapper = app["command"][: app["command"].index("--")]
    assert wrapper[-4:] == ["--root-ca", "/opt/geode/root.pem", "--bundle", "/srv/bookstore"]
    # The root comes from the image: no ConfigMap volume, no mount of it.
    assert "geode-root" not in {v["name"] for v in result["spec"]["volumes"]}
    assert "/geode/root" not in {m["mountPath"] for m in app["volumeMounts"]}


def test_a_pod_that_mounts_its_own_dev_shm_keeps_it() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    pod["spec"]["volumes"].append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "shm", "mountPath": "/dev/shm"})
    result = inject(with_pod(body, pod))
    validate_pod(result)
    app_mounts = [m["mountPath"] for m in result["spec"]["containers"][0]["volumeMounts"]]
    assert app_mounts.count("/dev/shm") == 1
    assert "/dev/shm" in [m["mountPath"] for m in result["spec"]["containers"][1]["volumeMounts"]]


def test_simulation_gives_each_container_a_private_platform_key_and_says_so() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["annotations"]["geode.dev/bundle"] = "/srv/bookstore"
    sent = with_pod(body, pod)
    response = answer(sent, SIMULATION)
    assert response["response"]["warnings"] == [
        "geode: SIMULATION: bookstore is attested by a simulated TEE: no hardware isolation"
    ]
    result = patched(sent, response)
    validate_pod(result)
    assert result["metadata"]["annotations"]["geode.dev/simulation"] == "true"
    init = result["spec"]["initContainers"]
    # One key installer per wrapped container, before the pod's own init containers.
    assert [c["name"] for c in init] == ["geode-platform-key-0", "geode-platform-key-1", "migrate"]
    app_installer = init[0]
    assert app_installer["image"] == "registry.example/bookstore:1.4.2"
    assert app_installer["command"] == [
        "geode",
        "inject",
        "install-key",
        "/geode/simulation-secret/platform.key",
        "/geode/simulation/app.key",
    ]
    # Same user as the container it serves, so that the copy is the container's own file.
    assert app_installer["securityContext"] == pod["spec"]["containers"][0]["securityContext"]
    assert "securityContext" not in init[1]
    assert env_of(result["spec"]["containers"][0])["GEODE_PLATFORM_KEY"] == (
        "/geode/simulation/app.key"
    )
    assert env_of(result["spec"]["containers"][1])["GEODE_PLATFORM_KEY"] == (
        "/geode/simulation/metrics.key"
    )
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["geode-simulation-secret"]["secret"]["secretName"] == "geode-platform-key"
    assert volumes["geode-simulation"]["emptyDir"]["medium"] == "Memory"


def test_simulation_without_init_containers_adds_the_list() -> None:
    body = review("warehouse-no-command")
    pod = copy.deepcopy(pod_of(body))
    pod["metadata"]["annotations"] = {
        "geode.dev/command": '["/usr/bin/bookwarehouse"]',
        "geode.dev/bundle": "/srv/warehouse",
    }
    result = inject(with_pod(body, pod), SIMULATION)
    validate_pod(result)
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["geode-platform-key-0"]
    assert result["metadata"]["annotations"]["geode.dev/simulation"] == "true"


def test_the_bundle_is_required() -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    del pod["metadata"]["annotations"]["geode.dev/bundle"]
    for config, why in ((SIMULATION, "measures"), (CONFIG, "needs")):
        response = answer(with_pod(body, pod), config)["response"]
        assert response["allowed"] is False
        assert "metadata.annotations.geode.dev/bundle" in response["status"]["message"]
        assert why in response["status"]["message"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p["metadata"]["labels"].update({"geode.dev/service": "Book_Store"}), "service"),
        (
            lambda p: p["metadata"]["annotations"].update({"geode.dev/containers": "nope"}),
            "no container nope",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"geode.dev/command": "not json"}),
            "geode.dev/command: expected JSON",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"geode.dev/command": '["a"]'}),
            "exactly one wrapped container",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"geode.dev/dns-names": "a b"}),
            "'a b' is not a DNS name",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"geode.dev/root-ca": "root.pem"}),
            "geode.dev/root-ca: expected an absolute path",
        ),
        (
            lambda p: p["spec"]["volumes"].append({"name": "geode-root", "emptyDir": {}}),
            "volume 'geode-root' is Geode's",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(
                {"command": ["/usr/bin/geode", "run", "--service", "x", "--", "app"]}
            ),
            "already runs 'geode run'",
        ),
    ],
)
def test_labelled_pods_that_cannot_be_wrapped_are_refused(change: Any, expected: str) -> None:
    body = review("bookstore-replicaset-pod")
    pod = copy.deepcopy(pod_of(body))
    change(pod)
    response = answer(with_pod(body, pod))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert expected in response["status"]["message"]


def test_malformed_reviews_get_a_typed_error() -> None:
    assert answer_review(b"{not json", CONFIG, HARDWARE_TEES).status == 400
    assert answer_review(b"{not json", CONFIG, HARDWARE_TEES).body["error"] == "invalid_json"
    for body, path in [
        ([], ""),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "apiVersion"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "kind"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
            "request.uid",
        ),
    ]:
        result = answer_review(json.dumps(body).encode(), CONFIG, HARDWARE_TEES)
        assert result.status == 400
        assert result.body["error"] == "invalid_admission_review"
        assert result.body.get("path", "") == path


def test_a_review_with_a_uid_but_no_pod_is_denied_not_crashed() -> None:
    body = review("bookstore-replicaset-pod")
    for obj, path in [
        (None, "request.object"),
        ({"metadata": {}, "spec": {"containers": []}}, "request.object.spec.containers"),
        (
            {"spec": {"containers": [{"name": "a", "command": "python app.py"}]}},
            "request.object.spec.containers[0].command",
        ),
        ({"metadata": {"labels": ["x"]}, "spec": {"containers": [{"name": "a"}]}}, "labels"),
    ]:
        response = answer(with_pod(body, obj))["response"]  # type: ignore[arg-type]
        assert response["allowed"] is False
        assert response["status"]["code"] == 400
        assert path in response["status"]["message"]


def test_other_operations_and_kinds_are_allowed_untouched() -> None:
    body = review("bookstore-replicaset-pod")
    update = copy.deepcopy(body)
    update["request"]["operation"] = "UPDATE"
    assert answer(update)["response"] == {"uid": body["request"]["uid"], "allowed": True}
    service = copy.deepcopy(body)
    service["request"]["kind"] = {"group": "", "version": "v1", "kind": "Service"}
    assert answer(service)["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_the_patch_escapes_annotation_keys() -> None:
    pod = read_pod(pod_of(review("bookstore-replicaset-pod")), "shop")
    injection = plan_injection(pod, CONFIG, HARDWARE_TEES)
    assert injection.operations[0] == PatchOperation(
        "/metadata/annotations/geode.dev~1injected", "bookstore"
    )
    decoded = json.loads(injection.patch())
    assert decoded[0] == {
        "op": "add",
        "path": "/metadata/annotations/geode.dev~1injected",
        "value": "bookstore",
    }
    assert base64.b64encode(injection.patch())  # what the answer carries


def test_config_is_checked() -> None:
    from geode.errors import InjectionRefused

    for kwargs in [
        {"coordinator": "no-port"},
        {"coordinator": "host:99999"},
        {"coordinator": MESH, "root_ca_configmap": "Not A Name"},
        {"coordinator": MESH, "tmpfs_size": "lots"},
    ]:
        with pytest.raises(InjectionRefused):
            InjectorConfig(**kwargs)  # type: ignore[arg-type]
