"""What the admission webhook injects, and the pod labels and annotations it reads."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from geode.errors import InjectionRefused
from geode.inject._profiles import TeeProfiles

__all__ = [
    "BUNDLE_ANNOTATION",
    "COMMAND_ANNOTATION",
    "CONTAINERS_ANNOTATION",
    "DNS_NAMES_ANNOTATION",
    "INJECTED_ANNOTATION",
    "ROOT_CA_ANNOTATION",
    "SERVICE_LABEL",
    "SIMULATION_ANNOTATION",
    "InjectorConfig",
]

SERVICE_LABEL = "geode.dev/service"
"""The label that makes a pod an instance of the manifest service it names."""
INJECTED_ANNOTATION = "geode.dev/injected"
"""Set by the webhook on every pod it changed (value: the service); such a pod is left alone."""
SIMULATION_ANNOTATION = "geode.dev/simulation"
"""Set to ``"true"`` on pods injected for a Coordinator in simulation mode."""
COMMAND_ANNOTATION = "geode.dev/command"
"""JSON: the command of containers without ``command`` (the image's entrypoint)."""
CONTAINERS_ANNOTATION = "geode.dev/containers"
"""Comma-separated names of the containers to wrap (default: every regular container)."""
DNS_NAMES_ANNOTATION = "geode.dev/dns-names"
"""Comma-separated DNS names the instance is reached under (default: from its Service)."""
ROOT_CA_ANNOTATION = "geode.dev/root-ca"
"""Absolute path of the deployment's root certificate inside the image, instead of the ConfigMap."""
BUNDLE_ANNOTATION = "geode.dev/bundle"
"""Absolute path of the service's code bundle inside the image (``geode run --bundle``)."""

_LABEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # DNS-1123 label
_DNS_NAME = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|k|M|G)?$")


def is_dns_label(value: str) -> bool:
    return bool(_LABEL_NAME.fullmatch(value))


def is_dns_name(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS_NAME.fullmatch(value))


@dataclass(frozen=True)
class InjectorConfig:
    """How pods are turned into instances; validated on construction.

    ``coordinator`` is the mesh API as pods reach it (``HOST:PORT``). ``root_ca_configmap`` names
    the ConfigMap, in each pod's namespace, whose ``root.pem`` is the deployment's root. The
    ``launcher`` is the ``geode`` command inside the pods' images. In simulation
    (``simulation_platform_key_secret`` set), pods also get the simulated platform key from that
    Secret: whoever holds it can forge evidence, so simulation isolates nothing.
    ``tee_profiles`` say what a pod needs in each TEE kind its service's package may name.
    """

    coordinator: str
    root_ca_configmap: str = "geode-root"
    launcher: str = "geode"
    cluster_domain: str = "cluster.local"
    tmpfs_size: str = "64Mi"
    simulation_platform_key_secret: str | None = None
    tee_profiles: TeeProfiles = dataclasses.field(default_factory=TeeProfiles)

    def __post_init__(self) -> None:
        if (
            not _ADDRESS.fullmatch(self.coordinator)
            or not 0 < int(self.coordinator.rpartition(":")[2]) < 65536
        ):
            raise InjectionRefused("coordinator", f"{self.coordinator!r}: expected HOST:PORT")
        for field, value in (
            ("root_ca_configmap", self.root_ca_configmap),
            ("simulation_platform_key_secret", self.simulation_platform_key_secret),
        ):
            if value is not None and not is_dns_name(value):
                raise InjectionRefused(field, f"{value!r} is not a Kubernetes object name")
        if not self.launcher or "\0" in self.launcher:
            raise InjectionRefused("launcher", "expected a command name or path")
        if not is_dns_name(self.cluster_domain):
            raise InjectionRefused("cluster_domain", f"{self.cluster_domain!r} is not a DNS name")
        if not _QUANTITY.fullmatch(self.tmpfs_size):
            raise InjectionRefused("tmpfs_size", f"{self.tmpfs_size!r}: expected a size like 64Mi")

    @property
    def simulation(self) -> bool:
        return self.simulation_platform_key_secret is not None
