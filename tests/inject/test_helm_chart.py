"""The Helm chart rendered by Helm's own engine, every object validated against Kubernetes' schemas.

No ``helm`` binary is packaged for Linux in the registries this project installs from (Debian has
none; PyPI's binary wheels are for macOS and Windows only). ``helm-python-sdk`` binds Helm's Go
SDK (v4) as a shared library: ``Chart.render`` is the engine ``helm template`` runs, with the
chart's values schema, ``required``, ``fail``, ``lookup`` (empty, as offline) and the Sprig
functions, so no renderer of our own stands in for Helm here.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from geode.cli import cli
from geode.inject import SERVICE_LABEL
from tests.inject.support.admission import KUBERNETES_VERSIONS, require
from tests.inject.support.chart import (
    CHART,
    ETCD,
    GRAMINE,
    NAMESPACE,
    ROOT_PEM,
    SIMULATION,
    TEE,
    Rendered,
    coordinator_params,
    merged,
    parse_command,
    render_error,
)

COMBINATIONS = [
    pytest.param(
        merged(*(part for on, part in zip(flags, (SIMULATION, ETCD, TEE), strict=True) if on)),
        id="-".join(
            name if on else f"no-{name}"
            for on, name in zip(flags, ("simulation", "etcd", "tee"), strict=True)
        ),
    )
    for flags in itertools.product((False, True), repeat=3)
]


@pytest.fixture(scope="module")
def validate() -> Any:
    kubernetes_validate = require("kubernetes_validate", "kubernetes-validate")

    def check(obj: dict[str, Any]) -> None:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    return check


@pytest.mark.parametrize("values", COMBINATIONS)
def test_every_object_is_valid_kubernetes(values: dict[str, Any], validate: Any) -> None:
    rendered = Rendered(merged(values, {"rootCertificate": {"pem": ROOT_PEM}}))
    kinds = sorted({o["kind"] for o in rendered.objects})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    seen = set()
    for obj in rendered.objects:
        validate(obj)
        metadata = obj["metadata"]
        assert len(metadata["name"]) <= 63
        key = (obj["kind"], metadata.get("namespace"), metadata["name"])
        assert key not in seen, key
        seen.add(key)
        if obj["kind"] != "MutatingWebhookConfiguration":
            assert metadata["namespace"] == NAMESPACE
        assert metadata["labels"]["app.kubernetes.io/instance"] == "geode"


@pytest.mark.parametrize("values", COMBINATIONS)
def test_containers_run_as_non_root_on_a_read_only_root(values: dict[str, Any]) -> None:
    rendered = Rendered(values)
    for workload in (rendered.get("StatefulSet"), rendered.get("Deployment")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in (*pod.get("initContainers", ()), *pod["containers"]):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["limits"]["memory"]


def test_the_coordinator_statefulset() -> None:
    rendered = Rendered({})
    statefulset = rendered.get("StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == "geode-headless"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    coordinator = rendered.coordinator()
    assert coordinator["readinessProbe"]["httpGet"] == {
        "path": "/api/v1/status",
        "port": "client",
        "scheme": "HTTPS",
    }
    assert coordinator["livenessProbe"]["tcpSocket"] == {"port": "mesh"}
    assert {p["name"]: p["containerPort"] for p in coordinator["ports"]} == {
        "client": 4433,
        "mesh": 2001,
    }
    # /sys/kernel/config: configfs-tsm, how the default (auto) profile reaches the node's TEE.
    assert {m["mountPath"] for m in coordinator["volumeMounts"]} == {
        "/var/lib/geode",
        "/tmp",
        "/sys/kernel/config",
    }
    for name, port in (("geode-client", 4433), ("geode-mesh", 2001)):
        service = rendered.get("Service", name)
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert rendered.get("Service", "geode-headless")["spec"]["clusterIP"] == "None"
    # Without persistence the data directory is an emptyDir (and a restart loses it).
    volatile = Rendered({"coordinator": {"persistence": {"enabled": False}}})
    assert "volumeClaimTemplates" not in volatile.get("StatefulSet")["spec"]
    volumes = volatile.get("StatefulSet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "emptyDir": {}} in volumes


def test_the_coordinator_command_line_is_one_geode_accepts() -> None:
    for values, tee in ((SIMULATION, "simulated"), ({}, "auto"), (TEE, "auto")):
        command = Rendered(values).coordinator()["command"]
        assert command[:2] == ["geode", "coordinator"]
        params = coordinator_params(command[2:])
        assert params["tee"] == tee
        assert str(params["data_dir"]) == "/var/lib/geode/data"
        assert params["client_addr"] == "0.0.0.0:4433"
        assert params["simulation"] is (values is SIMULATION)
        assert "geode-mesh.geode.svc" in params["san"]


def test_the_webhook_command_line_is_one_geode_accepts(tmp_path: Path) -> None:
    for name in ("tls.crt", "tls.key", "profiles.json"):
        (tmp_path / name).write_text("x")
    rendered = Rendered(SIMULATION)
    command = rendered.webhook()["command"]
    assert command[:3] == ["geode", "inject", "serve"]
    args = [
        str(tmp_path / Path(arg).name) if arg.startswith("/etc/geode/") else arg
        for arg in command[3:]
    ]
    inject = cli.commands["inject"]
    assert isinstance(inject, click.Group)
    params = parse_command(inject.commands["serve"], args)
    assert params["coordinator"] == "geode-mesh.geode.svc:2001"
    assert params["simulation_platform_key_secret"] == "geode-platform-key"
    assert params["root_ca_configmap"] == "geode-root"
    # The addresses the webhook uses are ones the Coordinator's certificate names.
    coordinator = coordinator_params(rendered.coordinator()["command"][2:])
    assert params["coordinator"].rpartition(":")[0] in coordinator["san"]
    assert params["coordinator_client"] == "geode-client.geode.svc:4433"
    assert params["coordinator_client"].rpartition(":")[0] in coordinator["san"]
    assert params["manifest_refresh"] == "30s"
    # The files it reads are the ConfigMaps it mounts.
    mounts = {m["mountPath"]: m["name"] for m in rendered.webhook()["volumeMounts"]}
    volumes = {
        v["name"]: v for v in rendered.get("Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    root = volumes[mounts["/etc/geode/root"]]["configMap"]
    assert (root["name"], root["optional"]) == ("geode-root", True)
    assert command[command.index("--root-ca") + 1] == "/etc/geode/root/root.pem"
    profiles = volumes[mounts["/etc/geode/tee"]]["configMap"]["name"]
    assert "profiles.json" in rendered.get("ConfigMap", profiles)["data"]
    # The key installer of the Coordinator's pod is a command geode has.
    init = rendered.get("StatefulSet")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:3] == ["geode", "inject", "install-key"]
    assert "install-key" in inject.commands


def test_simulation_is_off_by_default_and_loud_when_on() -> None:
    off = Rendered({})
    assert "--simulation" not in off.coordinator()["command"]
    assert "--simulation-platform-key-secret" not in off.webhook()["command"]
    assert not [o for o in off.objects if "geode.dev/simulation" in o["metadata"]["labels"]]
    assert "SIMULATION" not in off.notes
    assert "initContainers" not in off.get("StatefulSet")["spec"]["template"]["spec"]

    on = Rendered(SIMULATION)
    assert "--simulation" in on.coordinator()["command"]
    assert all(o["metadata"]["labels"]["geode.dev/simulation"] == "true" for o in on.objects)
    assert "SIMULATION MODE: NO HARDWARE ISOLATION" in on.notes
    secret = on.get("Secret", "geode-platform-key")
    key = load_pem_private_key(base64.b64decode(secret["data"]["platform.key"]), password=None)
    assert isinstance(key, Ed25519PrivateKey)  # what geode's simulated platform signs with
    pod = on.get("StatefulSet")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][-1] == "/run/geode/simulation/platform.key"
    command = on.coordinator()["command"]
    assert command[command.index("--platform-key") + 1] == "/run/geode/simulation/platform.key"
    # The sealing key is next to the data directory, never inside it.
    assert command[command.index("--sealing-key") + 1] == "/var/lib/geode/simulation/sealing.key"


def test_simulation_copies_the_key_and_root_to_workload_namespaces() -> None:
    rendered = Rendered(
        merged(
            SIMULATION,
            {"workloadNamespaces": ["shop", "books"], "rootCertificate": {"pem": ROOT_PEM}},
        )
    )
    secrets = rendered.all("Secret")
    keys = {
        s["metadata"]["namespace"]: s["data"]["platform.key"]
        for s in secrets
        if "platform.key" in s["data"]
    }
    assert sorted(keys) == ["books", "geode", "shop"]
    assert len(set(keys.values())) == 1  # one platform, the Coordinator's
    roots = {
        c["metadata"]["namespace"]: c["data"]["root.pem"]
        for c in rendered.all("ConfigMap")
        if "root.pem" in c["data"]
    }
    # The release's namespace too: the webhook reads the manifest pinned to this root.
    assert sorted(roots) == ["books", "geode", "shop"]
    assert set(roots.values()) == {ROOT_PEM}
    existing = Rendered(
        merged(SIMULATION, {"simulation": {"platformKey": {"existingSecret": "mine"}}})
    )
    assert not [s for s in existing.all("Secret") if "platform.key" in s["data"]]
    assert existing.webhook()["command"][-1] == "mine"


def test_etcd_settings_are_off_by_default_and_accepted_by_the_coordinator() -> None:
    assert "--store" not in Rendered({}).coordinator()["command"]
    rendered = Rendered(ETCD)
    command = rendered.coordinator()["command"]
    store = command[command.index("--store") + 1]
    assert store == "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379"
    assert command[command.index("--etcd-ca") + 1] == "/etc/geode/etcd/ca.crt"
    assert rendered.get("StatefulSet")["spec"]["replicas"] == 3
    volumes = rendered.get("StatefulSet")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "etcd-tls",
        "secret": {"secretName": "geode-etcd-client", "defaultMode": 0o440},
    } in volumes
    assert "under its own sealing key where its TEE gives one" in rendered.notes
    # Peers reach a replica at its own name under the headless Service.
    advertised = command[command.index("--advertise-addr") + 1]
    assert advertised == "$(GEODE_POD_NAME).geode-headless.geode.svc.cluster.local:2001"
    env = {e["name"]: e for e in rendered.coordinator()["env"]}
    assert env["GEODE_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    params = coordinator_params(command[2:])
    assert params["store"] == store
    assert params["advertise_addr"] == advertised
    assert params["etcd_prefix"] == "/geode"
    assert str(params["etcd_key"]) == "/etc/geode/etcd/tls.key"

    plain = merged(ETCD, {"coordinator": {"store": {"etcd": {"tls": {"enabled": False}}}}})
    assert "--etcd-ca" not in Rendered(plain).coordinator()["command"]


def test_values_that_cannot_work_are_refused_at_render() -> None:
    assert "needs coordinator.store.type=etcd" in render_error({"coordinator": {"replicas": 2}})
    no_endpoints = merged(ETCD, {"coordinator": {"store": {"etcd": {"endpoints": []}}}})
    assert "list the etcd members" in render_error(no_endpoints)
    no_secret = merged(ETCD, {"coordinator": {"store": {"etcd": {"tls": {"secretName": ""}}}}})
    assert "etcd.tls.secretName is required" in render_error(no_secret)
    assert "additional properties 'enable'" in render_error({"simulation": {"enable": True}})
    assert "expected a PEM certificate" in render_error({"rootCertificate": {"pem": "junk"}})
    assert "caBundle" in render_error(
        {"webhook": {"tls": {"mode": "secret", "secretName": "webhook-tls"}}}
    )
    assert "webhook.tls.secretName is required" in render_error(
        {"webhook": {"tls": {"mode": "cert-manager"}}}
    )


def test_tee_resources_are_requested_and_limited() -> None:
    off = Rendered({}).coordinator()["resources"]
    assert not [r for r in (*off["requests"], *off["limits"]) if "/" in r]
    rendered = Rendered(TEE)
    resources = rendered.coordinator()["resources"]
    for part in ("requests", "limits"):
        assert resources[part]["sgx.intel.com/epc"] == "64Mi"
        assert resources[part]["sgx.intel.com/enclave"] == 1
    assert resources["requests"]["cpu"] == "100m"
    pod = rendered.get("StatefulSet")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "kata-cc"
    snp = Rendered({"coordinator": {"teeResources": {"amd.com/sev-snp": 1}}})
    assert snp.coordinator()["resources"]["limits"]["amd.com/sev-snp"] == 1


def test_the_webhook_configuration_reaches_only_labelled_pods() -> None:
    rendered = Rendered({})
    configuration = rendered.get("MutatingWebhookConfiguration")
    (webhook,) = configuration["webhooks"]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["objectSelector"] == {
        "matchExpressions": [{"key": SERVICE_LABEL, "operator": "Exists"}]
    }
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = rendered.get("Service", "geode-webhook")
    assert webhook["clientConfig"]["service"] == {
        "name": "geode-webhook",
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": service["spec"]["ports"][0]["port"],
    }
    container = rendered.webhook()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert rendered.get("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert not Rendered({"webhook": {"replicas": 1}}).all("PodDisruptionBudget")
    disabled = Rendered({"webhook": {"enabled": False}})
    assert not disabled.all("Deployment")
    assert not disabled.all("MutatingWebhookConfiguration")


def test_generated_webhook_tls_is_trusted_through_the_ca_bundle() -> None:
    rendered = Rendered({})
    (webhook,) = rendered.get("MutatingWebhookConfiguration")["webhooks"]
    secret = rendered.get("Secret", "geode-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    public_key = ca.public_key()
    public_key.verify(  # type: ignore[union-attr,call-arg]
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),  # type: ignore[arg-type]
        cert.signature_hash_algorithm,  # type: ignore[arg-type]
    )
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "geode-webhook.geode.svc" in names.get_values_for_type(x509.DNSName)
    deployment = rendered.get("Deployment")["spec"]["template"]["spec"]
    tls = next(v for v in deployment["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "geode-webhook-tls"


def test_webhook_tls_from_a_secret_or_cert_manager() -> None:
    own = Rendered(
        {"webhook": {"tls": {"mode": "secret", "secretName": "my-tls", "caBundle": "Q0E="}}}
    )
    (webhook,) = own.get("MutatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == "Q0E="
    assert not [s for s in own.all("Secret") if s["metadata"]["name"].endswith("webhook-tls")]
    managed = Rendered({"webhook": {"tls": {"mode": "cert-manager", "secretName": "cm-tls"}}})
    configuration = managed.get("MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "geode/geode-webhook"
    }
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    volumes = managed.get("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "tls")["secret"]["secretName"] == "cm-tls"


def test_helm_lint_finds_no_error() -> None:
    helm = require("helm_python", "helm-python-sdk")
    for values in ({}, merged(SIMULATION, ETCD, TEE), GRAMINE, {"coordinator": {"tee": "tdx"}}):
        report = helm.lint(str(CHART), values, strict=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] > 1] == [], report
