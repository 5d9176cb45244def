"""How a labelled pod becomes an instance: the JSONPatch (RFC 6902) the webhook answers with.

For each container it wraps, the patch makes the command ``geode run --service NAME
--coordinator ADDR --root-ca FILE --bundle DIR -- <command>`` (the container's ``args`` are
left as they are: Kubernetes appends them to the command, so they reach ``geode run`` after
``--``), adds Geode's environment, mounts the deployment's root certificate and a memory-backed
``/dev/shm`` for the credentials, and marks the pod as injected so that it is never wrapped twice.
Fields are replaced whole (``add`` on an existing member replaces it), which makes the patch
independent of what the pod already holds there; entries the webhook does not own are kept.

A pod whose service's package runs in a hardware TEE also gets that TEE's profile: its runtime
class, node selector and tolerations, its device plugin resources and node paths on each wrapped
container, and its launcher in front of ``geode run``. A simulated service gets none of these,
and ``--quote-provider simulated``.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from geode.errors import InjectionRefused
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
    is_dns_label,
    is_dns_name,
)
from geode.inject._packages import PackageTees
from geode.inject._pod import ContainerView, JsonObject, PodView
from geode.inject._profiles import SIMULATED, TeeProfile

__all__ = [
    "DNS_NAMES_ENV",
    "ROOT_MOUNT",
    "Injection",
    "PatchOperation",
    "plan_injection",
]

ROOT_VOLUME = "geode-root"
ROOT_MOUNT = "/geode/root"
TMPFS_VOLUME = "geode-tmpfs"
TMPFS_MOUNT = "/dev/shm"  # noqa: S108 - where `geode run` writes credentials when it can
PLATFORM_SECRET_VOLUME = "geode-simulation-secret"  # noqa: S105 - a volume name
PLATFORM_SECRET_MOUNT = "/geode/simulation-secret"  # noqa: S105 - a path
KEY_VOLUME = "geode-simulation"
KEY_MOUNT = "/geode/simulation"
TEE_VOLUME_PREFIX = "geode-tee-"
DNS_NAMES_ENV = "GEODE_DNS_NAMES"
_OWNED_ENV = ("GEODE_SERVICE_NAME", "GEODE_COORDINATOR_MESH", DNS_NAMES_ENV, "GEODE_PLATFORM_KEY")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class PatchOperation:
    """One JSONPatch ``add`` (the only operation the webhook needs)."""

    path: str
    value: object

    def to_json(self) -> JsonObject:
        return {"op": "add", "path": self.path, "value": self.value}


@dataclass(frozen=True)
class Injection:
    """The webhook's answer for one pod. No operations: the pod is left alone (``skipped`` says
    why). ``warnings`` go back to whoever created the pod (``kubectl`` prints them)."""

    operations: tuple[PatchOperation, ...] = ()
    warnings: tuple[str, ...] = ()
    skipped: str | None = None
    service: str | None = None
    containers: tuple[str, ...] = ()

    def patch(self) -> bytes:
        return json.dumps([op.to_json() for op in self.operations]).encode()


def _selected(pod: PodView) -> tuple[ContainerView, ...]:
    names = pod.annotations.get(CONTAINERS_ANNOTATION)
    if names is None:
        return pod.containers
    path = f"metadata.annotations.{CONTAINERS_ANNOTATION}"
    by_name = {c.name: c for c in (*pod.init_containers, *pod.containers)}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if not wanted:
        raise InjectionRefused(path, "names no container")
    unknown = sorted(set(wanted) - by_name.keys())
    if unknown:
        raise InjectionRefused(path, f"the pod has no container {', '.join(unknown)}")
    return tuple(by_name[name] for name in dict.fromkeys(wanted))


def _commands(pod: PodView, containers: tuple[ContainerView, ...]) -> dict[str, tuple[str, ...]]:
    """Each wrapped container's command: its own, else the annotation's. Kubernetes runs the
    image's entrypoint when a container has no command, and the pod spec does not say what that
    is: the webhook refuses rather than guess."""
    path = f"metadata.annotations.{COMMAND_ANNOTATION}"
    annotated: dict[str, tuple[str, ...]] = {}
    text = pod.annotations.get(COMMAND_ANNOTATION)
    if text is not None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise InjectionRefused(path, "expected JSON") from None
        if isinstance(value, list):
            if len(containers) != 1:
                raise InjectionRefused(
                    path, 'a list needs exactly one wrapped container; use {"NAME": [...]}'
                )
            value = {containers[0].name: value}
        if not isinstance(value, dict):
            raise InjectionRefused(path, 'expected ["CMD", ...] or {"CONTAINER": ["CMD", ...]}')
        for name, command in value.items():
            if (
                not isinstance(command, list)
                or not command
                or not all(isinstance(part, str) for part in command)
            ):
                raise InjectionRefused(f"{path}.{name}", "expected a non-empty list of strings")
            annotated[name] = tuple(command)
    commands: dict[str, tuple[str, ...]] = {}
    for container in containers:
        command = container.command or annotated.get(container.name)
        if command is None:
            raise InjectionRefused(
                f"{container.path}.command",
                f"container {container.name!r} has no command, so it would run its image's "
                "entrypoint, which the pod spec does not show; set the container's command, or "
                f"the annotation {COMMAND_ANNOTATION} to the entrypoint",
            )
        if posixpath.basename(command[0]) == "geode" and command[1:2] == ("run",):
            raise InjectionRefused(
                f"{container.path}.command",
                f"container {container.name!r} already runs 'geode run'",
            )
        commands[container.name] = command
    return commands


def _absolute_path(pod: PodView, annotation: str) -> str | None:
    value = pod.annotations.get(annotation)
    if value is not None and (not value.startswith("/") or "\0" in value):
        raise InjectionRefused(f"metadata.annotations.{annotation}", "expected an absolute path")
    return value


def _dns_names(pod: PodView, service: str, config: InjectorConfig) -> list[str]:
    text = pod.annotations.get(DNS_NAMES_ANNOTATION)
    if text is None:
        # A Service named after the manifest service, in the pod's namespace.
        base = f"{service}.{pod.namespace}"
        return [service, base, f"{base}.svc", f"{base}.svc.{config.cluster_domain}"]
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if not is_dns_name(name):
            raise InjectionRefused(
                f"metadata.annotations.{DNS_NAMES_ANNOTATION}", f"{name!r} is not a DNS name"
            )
    return names


def _check_free(
    pod: PodView, containers: tuple[ContainerView, ...], simulation: bool, profile: TeeProfile
) -> None:
    volumes = {ROOT_VOLUME, TMPFS_VOLUME} | (
        {KEY_VOLUME, PLATFORM_SECRET_VOLUME} if simulation else set()
    )
    volumes |= {TEE_VOLUME_PREFIX + mount.name for mount in profile.host_paths}
    taken = sorted(volumes & pod.volume_names)
    if taken:
        raise InjectionRefused("spec.volumes", f"volume {taken[0]!r} is Geode's; rename it")
    mounts = {ROOT_MOUNT} | ({KEY_MOUNT} if simulation else set())
    mounts |= {mount.mount_path.rstrip("/") or "/" for mount in profile.host_paths}
    for container in containers:
        clash = sorted(mounts & container.mount_paths)
        if clash:
            raise InjectionRefused(
                f"{container.path}.volumeMounts", f"{clash[0]} is where Geode mounts its files"
            )


def _profile(service: str, kind: str, config: InjectorConfig) -> TeeProfile:
    """The profile of the service's TEE; refused where the pod could not attest."""
    path = f"metadata.labels.{SERVICE_LABEL}"
    if kind == SIMULATED and not config.simulation:
        raise InjectionRefused(
            path,
            f"service {service!r} has a simulated package, and the Coordinator runs on hardware: "
            "it accepts no simulated evidence; give the service a package of its TEE",
        )
    profile = config.tee_profiles.for_kind(kind)
    if profile is None:
        raise InjectionRefused(
            path,
            f"service {service!r} runs in {kind} (its package's tee), and the webhook has no "
            f"TEE profile for {kind}: set the chart's tee.profiles",
        )
    return profile


def _pod_operations(pod: PodView, profile: TeeProfile, kind: str) -> list[PatchOperation]:
    """The pod-level fields of the profile: runtime class, node selector, tolerations."""
    operations: list[PatchOperation] = []
    wanted = profile.runtime_class_name
    if wanted:
        own = pod.runtime_class
        if own is not None and own != wanted:
            raise InjectionRefused(
                "spec.runtimeClassName",
                f"the pod asks for {own!r}; its service runs in {kind}, whose profile needs "
                f"{wanted!r}: remove the pod's runtimeClassName",
            )
        operations.append(PatchOperation("/spec/runtimeClassName", wanted))
    if profile.node_selector:
        selector = pod.node_selector
        for key, value in profile.node_selector.items():
            if selector.get(key, value) != value:
                raise InjectionRefused(
                    f"spec.nodeSelector.{key}",
                    f"is {selector[key]!r}; its service runs in {kind}, whose nodes have {value!r}",
                )
        operations.append(
            PatchOperation("/spec/nodeSelector", {**selector, **profile.node_selector})
        )
    if profile.tolerations:
        own_tolerations = list(pod.tolerations)
        added = [t for t in profile.tolerations if t not in own_tolerations]
        operations.append(PatchOperation("/spec/tolerations", [*own_tolerations, *added]))
    return operations


def _resources(container: ContainerView, profile: TeeProfile) -> JsonObject:
    """The container's resources with the profile's extended resources, requested and limited
    alike (Kubernetes demands both equal for extended resources)."""
    resources = dict(_object_or_empty(container.raw.get("resources")))
    for part in ("requests", "limits"):
        resources[part] = {**_object_or_empty(resources.get(part)), **profile.resources}
    return resources


def _object_or_empty(value: object) -> JsonObject:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def plan_injection(pod: PodView, config: InjectorConfig, tees: PackageTees) -> Injection:
    """The patch that turns ``pod`` into an instance of the service its label names; an empty
    one for pods without the label or already injected. ``tees`` says which TEE the service's
    package runs in. Raises ``InjectionRefused`` for a labelled pod that cannot be wrapped
    (including one whose service's TEE is unknown), naming the field and what to do."""
    service = pod.labels.get(SERVICE_LABEL)
    if service is None:
        return Injection(skipped="not labelled " + SERVICE_LABEL)
    if INJECTED_ANNOTATION in pod.annotations:
        return Injection(skipped="already injected", service=service)
    if not is_dns_label(service):
        raise InjectionRefused(
            f"metadata.labels.{SERVICE_LABEL}", f"{service!r} is not a manifest service name"
        )
    kind = tees.tee_of(service)
    profile = _profile(service, kind, config)
    simulated = kind == SIMULATED
    containers = _selected(pod)
    commands = _commands(pod, containers)
    root_in_image = _absolute_path(pod, ROOT_CA_ANNOTATION)
    bundle = _absolute_path(pod, BUNDLE_ANNOTATION)
    if bundle is None:
        # `geode run` takes --bundle in every mode; only simulated evidence measures it.
        why = "in simulation 'geode run' measures" if simulated else "'geode run' needs"
        raise InjectionRefused(
            f"metadata.annotations.{BUNDLE_ANNOTATION}",
            f"{why} the service's code bundle (--bundle): set this annotation to the bundle's "
            "directory in the image",
        )
    for container in containers:
        if simulated and container.image is None:
            raise InjectionRefused(f"{container.path}.image", "a container needs an image")
    _check_free(pod, containers, simulated, profile)
    dns_names = _dns_names(pod, service, config)

    volumes: list[JsonObject] = []
    root_path = root_in_image or f"{ROOT_MOUNT}/root.pem"
    if root_in_image is None:
        volumes.append(
            {
                "name": ROOT_VOLUME,
                "configMap": {
                    "name": config.root_ca_configmap,
                    "items": [{"key": "root.pem", "path": "root.pem"}],
                },
            }
        )
    volumes.append(
        {"name": TMPFS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": config.tmpfs_size}}
    )
    for host in profile.host_paths:
        source: JsonObject = {"path": host.path}
        if host.type:
            source["type"] = host.type
        volumes.append({"name": TEE_VOLUME_PREFIX + host.name, "hostPath": source})
    if simulated:
        volumes += [
            {
                "name": PLATFORM_SECRET_VOLUME,
                "secret": {
                    "secretName": config.simulation_platform_key_secret,
                    "items": [{"key": "platform.key", "path": "platform.key"}],
                    "defaultMode": 0o444,  # the copy below is what is private
                },
            },
            {"name": KEY_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ]

    annotations = {**pod.annotations, INJECTED_ANNOTATION: service}
    warnings: list[str] = []
    if simulated:
        annotations[SIMULATION_ANNOTATION] = "true"
        warnings.append(
            f"geode: SIMULATION: {service} is attested by a simulated TEE: no hardware isolation"
        )
    operations = [
        PatchOperation(
            "/metadata/annotations/" + _escape(INJECTED_ANNOTATION)
            if pod.has_annotations
            else "/metadata/annotations",
            service if pod.has_annotations else annotations,
        )
    ]
    if pod.has_annotations and simulated:
        operations.append(
            PatchOperation("/metadata/annotations/" + _escape(SIMULATION_ANNOTATION), "true")
        )
    operations.append(PatchOperation("/spec/volumes", [*pod.volumes, *volumes]))
    operations += _pod_operations(pod, profile, kind)

    key_installers: list[JsonObject] = []
    for container in containers:
        argv = [*(profile.launcher or [config.launcher]), "run", "--service", service]
        argv += ["--coordinator", config.coordinator]
        argv += ["--root-ca", root_path]
        argv += ["--bundle", bundle]
        if simulated:
            # Never evidence from a TEE the node may have: the Coordinator expects simulation.
            argv += ["--quote-provider", "simulated"]
        argv += ["--", *commands[container.name]]
        env: list[JsonObject] = [
            {"name": "GEODE_SERVICE_NAME", "value": service},
            {"name": "GEODE_COORDINATOR_MESH", "value": config.coordinator},
            {"name": DNS_NAMES_ENV, "value": ",".join(dns_names)},
        ]
        mounts: list[JsonObject] = []
        if root_in_image is None:
            mounts.append({"name": ROOT_VOLUME, "mountPath": ROOT_MOUNT, "readOnly": True})
        if TMPFS_MOUNT not in container.mount_paths:
            # A /dev/shm the pod mounts itself is kept: it is the pod's choice of tmpfs.
            mounts.append({"name": TMPFS_VOLUME, "mountPath": TMPFS_MOUNT})
        for host in profile.host_paths:
            mount: JsonObject = {
                "name": TEE_VOLUME_PREFIX + host.name,
                "mountPath": host.mount_path,
            }
            if host.read_only:
                mount["readOnly"] = True
            mounts.append(mount)
        if simulated:
            key_file = f"{KEY_MOUNT}/{container.name}.key"
            env.append({"name": "GEODE_PLATFORM_KEY", "value": key_file})
            mounts.append({"name": KEY_VOLUME, "mountPath": KEY_MOUNT})
            key_installers.append(_key_installer(len(key_installers), container, key_file, config))
        kept_env = [e for e in container.env if e.get("name") not in _OWNED_ENV]
        operations += [
            PatchOperation(f"{container.pointer}/command", argv),
            PatchOperation(f"{container.pointer}/env", [*kept_env, *env]),
            PatchOperation(
                f"{container.pointer}/volumeMounts", [*container.volume_mounts, *mounts]
            ),
        ]
        if profile.resources:
            operations.append(
                PatchOperation(f"{container.pointer}/resources", _resources(container, profile))
            )
    # Inserted last, in front of the pod's own init containers, so that the indices the
    # operations above use are still the pod's.
    if key_installers and not pod.has_init_containers:
        operations.append(PatchOperation("/spec/initContainers", key_installers))
    else:
        operations += [
            PatchOperation(f"/spec/initContainers/{i}", installer)
            for i, installer in enumerate(key_installers)
        ]
    return Injection(
        operations=tuple(operations),
        warnings=tuple(warnings),
        service=service,
        containers=tuple(c.name for c in containers),
    )


def _key_installer(
    index: int, container: ContainerView, key_file: str, config: InjectorConfig
) -> JsonObject:
    """An init container that copies the simulated platform key, readable by its owner only,
    for ``container``: it runs the same image as the same user. (Kubernetes gives Secret files
    to root, or makes them group-readable under an fsGroup; ``geode run`` takes neither.)"""
    installer: JsonObject = {
        "name": f"geode-platform-key-{index}",
        "image": container.image,
        "command": [
            config.launcher,
            "inject",
            "install-key",
            f"{PLATFORM_SECRET_MOUNT}/platform.key",
            key_file,
        ],
        "volumeMounts": [
            {"name": PLATFORM_SECRET_VOLUME, "mountPath": PLATFORM_SECRET_MOUNT, "readOnly": True},
            {"name": KEY_VOLUME, "mountPath": KEY_MOUNT},
        ],
    }
    for name in ("imagePullPolicy", "securityContext", "resources"):
        if name in container.raw:
            installer[name] = container.raw[name]
    return installer
