"""The parts of a pod the webhook reads, checked field by field with their JSON paths.

Everything else of the pod stays opaque JSON: the webhook patches a few fields and copies the
entries it does not interpret (environment variables, volumes, mounts) as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from geode.errors import InjectionRefused

__all__ = ["ContainerView", "JsonObject", "PodView", "json_object", "read_pod"]

JsonObject = dict[str, object]
"""A JSON object passed through unchanged: the webhook does not interpret its content."""


def json_object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InjectionRefused(path, "expected an object")
    return cast(JsonObject, value)


def _objects(value: object, path: str) -> tuple[JsonObject, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InjectionRefused(path, "expected a list")
    return tuple(json_object(item, f"{path}[{i}]") for i, item in enumerate(value))


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InjectionRefused(path, "expected a string")
    return value


def _strings(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InjectionRefused(path, "expected a list of strings")
    return tuple(_string(item, f"{path}[{i}]") for i, item in enumerate(value))


def _string_map(value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    return {key: _string(item, f"{path}.{key}") for key, item in json_object(value, path).items()}


@dataclass(frozen=True)
class ContainerView:
    """One container of the pod: where it is, and what the webhook reads of it."""

    field: str  # "containers" or "initContainers", as in the pod spec
    index: int
    name: str
    image: str | None
    command: tuple[str, ...] | None
    env: tuple[JsonObject, ...]
    volume_mounts: tuple[JsonObject, ...]
    raw: JsonObject

    @property
    def path(self) -> str:
        """The dotted JSON path, for messages."""
        return f"spec.{self.field}[{self.index}]"

    @property
    def pointer(self) -> str:
        """The JSON pointer, for patches."""
        return f"/spec/{self.field}/{self.index}"

    @property
    def mount_paths(self) -> frozenset[str]:
        return frozenset(
            str(mount.get("mountPath", "")).rstrip("/") or "/" for mount in self.volume_mounts
        )


@dataclass(frozen=True)
class PodView:
    """A pod as the webhook reads it. ``namespace`` is the request's, which is authoritative."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    containers: tuple[ContainerView, ...]
    init_containers: tuple[ContainerView, ...]
    volumes: tuple[JsonObject, ...]
    has_annotations: bool
    has_init_containers: bool
    spec: JsonObject

    @property
    def runtime_class(self) -> str | None:
        value = self.spec.get("runtimeClassName")
        return _string(value, "spec.runtimeClassName") if value is not None else None

    @property
    def node_selector(self) -> dict[str, str]:
        return _string_map(self.spec.get("nodeSelector"), "spec.nodeSelector")

    @property
    def tolerations(self) -> tuple[JsonObject, ...]:
        return _objects(self.spec.get("tolerations"), "spec.tolerations")

    @property
    def volume_names(self) -> frozenset[str]:
        return frozenset(str(volume.get("name", "")) for volume in self.volumes)


def _container(field: str, index: int, raw: JsonObject) -> ContainerView:
    path = f"spec.{field}[{index}]"
    command = raw.get("command")
    image = raw.get("image")
    return ContainerView(
        field=field,
        index=index,
        name=_string(raw.get("name"), f"{path}.name"),
        image=_string(image, f"{path}.image") if image is not None else None,
        command=_strings(command, f"{path}.command") if command else None,
        env=_objects(raw.get("env"), f"{path}.env"),
        volume_mounts=_objects(raw.get("volumeMounts"), f"{path}.volumeMounts"),
        raw=raw,
    )


def read_pod(pod: object, namespace: str) -> PodView:
    """Read a pod object (``request.object`` of an AdmissionReview); raises ``InjectionRefused``
    naming the first field that is not what a pod has."""
    obj = json_object(pod, "")
    metadata = json_object(obj.get("metadata", {}), "metadata")
    spec = json_object(obj.get("spec"), "spec")
    name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
    containers = _objects(spec.get("containers"), "spec.containers")
    if not containers:
        raise InjectionRefused("spec.containers", "a pod has at least one container")
    init_containers = _objects(spec.get("initContainers"), "spec.initContainers")
    return PodView(
        namespace=namespace,
        name=_string(name, "metadata.name"),
        labels=_string_map(metadata.get("labels"), "metadata.labels"),
        annotations=_string_map(metadata.get("annotations"), "metadata.annotations"),
        containers=tuple(_container("containers", i, c) for i, c in enumerate(containers)),
        init_containers=tuple(
            _container("initContainers", i, c) for i, c in enumerate(init_containers)
        ),
        volumes=_objects(spec.get("volumes"), "spec.volumes"),
        has_annotations=metadata.get("annotations") is not None,
        has_init_containers=spec.get("initContainers") is not None,
        spec=spec,
    )
