"""The Kubernetes admission webhook: pods labelled ``geode.dev/service: NAME`` become instances.

``answer_review`` turns an AdmissionReview into its answer (a JSONPatch that wraps each container
in ``geode run`` and gives the pod what its service's TEE needs: ``TeeProfiles``, with the TEE
from the manifest through a ``ManifestSource``), ``plan_injection`` is the same for a pod already
read, ``webhook_server``
serves it over HTTPS, and ``install_key`` makes the private copy of the simulated platform key
that injected pods need in simulation. See docs/kubernetes.md.
"""

from __future__ import annotations

from geode.inject._config import (
    BUNDLE_ANNOTATION,
    COMMAND_ANNOTATION,
    CONTAINERS_ANNOTATION,
    DNS_NAMES_ANNOTATION,
    INJECTED_ANNOTATION,
    ROOT_CA_ANNOTATION,
    SERVICE_LABEL,
    SIMULATION_ANNOTATION,
    InjectorConfig,
)
from geode.inject._keys import install_key
from geode.inject._packages import (
    CoordinatorManifest,
    ManifestFile,
    ManifestSource,
    ManifestUnavailable,
    PackageTees,
    ServiceTees,
)
from geode.inject._patch import DNS_NAMES_ENV, ROOT_MOUNT, Injection, PatchOperation, plan_injection
from geode.inject._pod import ContainerView, PodView, read_pod
from geode.inject._profiles import HostPathMount, TeeProfile, TeeProfiles
from geode.inject._review import ADMISSION_API_VERSION, AdmissionAnswer, answer_review
from geode.inject._server import MAX_REVIEW_BYTES, ServingCertificate, create_app, webhook_server

__all__ = [
    "ADMISSION_API_VERSION",
    "BUNDLE_ANNOTATION",
    "COMMAND_ANNOTATION",
    "CONTAINERS_ANNOTATION",
    "DNS_NAMES_ANNOTATION",
    "DNS_NAMES_ENV",
    "INJECTED_ANNOTATION",
    "MAX_REVIEW_BYTES",
    "ROOT_CA_ANNOTATION",
    "ROOT_MOUNT",
    "SERVICE_LABEL",
    "SIMULATION_ANNOTATION",
    "AdmissionAnswer",
    "ContainerView",
    "CoordinatorManifest",
    "HostPathMount",
    "Injection",
    "InjectorConfig",
    "ManifestFile",
    "ManifestSource",
    "ManifestUnavailable",
    "PackageTees",
    "PatchOperation",
    "PodView",
    "ServiceTees",
    "ServingCertificate",
    "TeeProfile",
    "TeeProfiles",
    "answer_review",
    "create_app",
    "install_key",
    "plan_injection",
    "read_pod",
    "webhook_server",
]
