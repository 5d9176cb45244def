"""Typed models of the manifest: the deployment's contract.

The models check shapes and local constraints only; references between sections are checked in
``_validate``, templates in ``_template``. Unknown fields are rejected everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geode.tee import TEE_KINDS, ReferenceValues

# Which package fields each TEE kind understands (beyond ``tee`` and ``debug``): a view of
# ``geode.tee.TEE_KINDS``, named here because the package's schema description points at it.
PACKAGE_FIELDS: dict[str, frozenset[str]] = {kind: s.fields for kind, s in TEE_KINDS.items()}

SecretType = Literal["symmetric-key", "cert-ecdsa", "cert-ed25519", "cert-rsa", "plain"]
CERTIFICATE_SECRET_TYPES: frozenset[str] = frozenset({"cert-ecdsa", "cert-ed25519", "cert-rsa"})

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Name = Annotated[str, Field(min_length=1, max_length=64)]


def check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use lowercase letters, digits, '.', '_' and '-' "
            "(starting and ending with a letter or digit)"
        )
    return value


def check_dns_name(value: str) -> str:
    name = value.lower().rstrip(".")
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid DNS name {value!r}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Package(ReferenceValues):
    """A measured code identity: the reference values of one TEE kind. Which fields apply to
    which kind, and what they mean, is ``geode.tee.ReferenceValues``'s to say (``PACKAGE_FIELDS``
    lists them per kind)."""

    # The fields, their validation and the kinds are ``geode.tee.ReferenceValues``'s; a package
    # in the contract must also name what pins its code (``TeeSpec.identity``).
    _require_identity: ClassVar[bool] = True


class Service(_Strict):
    """A named role in the deployment, bound to one package."""

    package: Name
    max_activations: Annotated[int, Field(ge=0)] = 0
    dns_names: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    argv: list[str] = Field(default_factory=list)
    tls: list[Name] = Field(default_factory=list)

    @field_validator("dns_names")
    @classmethod
    def _dns_names(cls, values: list[str]) -> list[str]:
        return [check_dns_name(value) for value in values]

    @field_validator("env")
    @classmethod
    def _env_names(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if key.startswith("GEODE_"):
                raise ValueError(
                    f"{key!r}: the GEODE_ prefix is reserved for Geode's own variables"
                )
        return values

    @field_validator("files")
    @classmethod
    def _file_paths(cls, values: dict[str, str]) -> dict[str, str]:
        for path in values:
            if not path or "\0" in path or ".." in path.split("/") or path.endswith("/"):
                raise ValueError(f"invalid file path {path!r}")
        return values


_PRINTABLE = r"^[A-Za-z0-9 '()+,\-./:=?]+$"  # ASN.1 PrintableString, which every X.509 reader takes


class Subject(_Strict):
    common_name: Annotated[str, Field(min_length=1, max_length=64, pattern=_PRINTABLE)]
    organization: Annotated[str, Field(min_length=1, max_length=64, pattern=_PRINTABLE)] | None = (
        None
    )
    organizational_unit: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=_PRINTABLE)] | None
    ) = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None


class SecretSpec(_Strict):
    """How the Coordinator generates (or receives) a secret."""

    type: SecretType
    size: Annotated[int, Field(gt=0)] | None = None
    shared: bool = False
    user_defined: bool = False
    subject: Subject | None = None
    dns_names: list[str] = Field(default_factory=list)
    validity_days: Annotated[int, Field(ge=1, le=3650)] = 365

    @field_validator("dns_names")
    @classmethod
    def _dns_names(cls, values: list[str]) -> list[str]:
        return [check_dns_name(value) for value in values]

    @model_validator(mode="after")
    def _sizes(self) -> SecretSpec:
        allowed: dict[str, tuple[int, ...]] = {
            "cert-ecdsa": (256, 384),
            "cert-rsa": (2048, 3072, 4096),
        }
        if self.type == "symmetric-key":
            if self.size is not None and (self.size % 8 or not 64 <= self.size <= 4096):
                raise ValueError("symmetric-key size must be a multiple of 8 between 64 and 4096")
        elif self.type in allowed:
            if self.size is not None and self.size not in allowed[self.type]:
                sizes = ", ".join(str(s) for s in allowed[self.type])
                raise ValueError(f"{self.type} size must be one of {sizes}")
        elif self.size is not None:
            raise ValueError(f"{self.type} takes no 'size'")
        if (
            self.type == "plain"
            and "user_defined" in self.model_fields_set
            and not self.user_defined
        ):
            raise ValueError("a 'plain' secret is always user-defined")
        if self.type not in CERTIFICATE_SECRET_TYPES and (self.subject or self.dns_names):
            raise ValueError("'subject' and 'dns_names' apply to certificate secrets only")
        return self

    @property
    def is_certificate(self) -> bool:
        return self.type in CERTIFICATE_SECRET_TYPES

    @property
    def is_user_defined(self) -> bool:
        return self.user_defined or self.type == "plain"

    @property
    def per_instance(self) -> bool:
        """Non-shared certificates are issued afresh for every instance."""
        return self.is_certificate and not self.shared and not self.is_user_defined

    @property
    def bits(self) -> int:
        defaults = {"symmetric-key": 256, "cert-ecdsa": 256, "cert-rsa": 2048}
        return self.size or defaults.get(self.type, 0)


class User(_Strict):
    certificate: Annotated[str, Field(min_length=1)]
    roles: list[Name] = Field(default_factory=list)


Resource = Literal["secrets", "packages", "manifest"]
Action = Literal["read", "write", "update"]


class Role(_Strict):
    """A permission: ``actions`` on the named ``resource`` items (a manifest role names none)."""

    resource: Resource
    names: list[Name] = Field(default_factory=list)
    actions: Annotated[list[Action], Field(min_length=1)]


class Recovery(_Strict):
    """Recovery parties (RSA public keys, PEM) and how many of them recover the state."""

    keys: Annotated[dict[Name, str], Field(min_length=1)]
    threshold: Annotated[int, Field(ge=1)] = 1


class Updates(_Strict):
    """How many users with the manifest ``update`` role must acknowledge a manifest update
    (default: all of them)."""

    threshold: Annotated[int, Field(ge=1)] | None = None


class HttpRule(_Strict):
    methods: list[str] = Field(default_factory=list)  # empty: any method
    path: str = ".*"

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            if not re.fullmatch(r"[A-Za-z]{1,16}", value):
                raise ValueError(f"invalid HTTP method {value!r}")
            out.append(value.upper())
        return out

    @field_validator("path")
    @classmethod
    def _path_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid path regex {value!r}: {exc}") from None
        return value


class TcpRule(_Strict):
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)  # empty: any


class PolicyRule(_Strict):
    name: Name
    destination: Name
    sources: Annotated[list[Name], Field(min_length=1)]
    http: list[HttpRule] = Field(default_factory=list)
    tcp: list[TcpRule] = Field(default_factory=list)


class Policies(_Strict):
    mode: Literal["strict", "permissive"] = "strict"
    rules: list[PolicyRule] = Field(default_factory=list)


Port = Annotated[int, Field(ge=1, le=65535)]
APP_PORT_OFFSET = 10000  # the app listens on 127.0.0.1:<port + 10000> unless app_port says
EGRESS_PORT_OFFSET = 20000  # egress listens on 127.0.0.1:<port + 20000> unless local_port says


class IncomingTls(_Strict):
    """Transparent TLS in: mTLS on ``port`` (all interfaces), plaintext to 127.0.0.1:app_port."""

    port: Port
    app_port: Port | None = None
    protocol: Literal["http", "tcp"] = "http"
    # The app reads every request body in full before it reads the next request (uvicorn,
    # gunicorn, Go's net/http do; a bare http.server handler may not): the HTTP ingress may then
    # reuse its connection after a request with a body (see docs/mesh.md, "App connections").
    app_reads_bodies: bool = False

    @property
    def resolved_app_port(self) -> int:
        return self.app_port or self.port + APP_PORT_OFFSET

    @model_validator(mode="after")
    def _app_port_fits(self) -> IncomingTls:
        if self.app_port is None and self.port + APP_PORT_OFFSET > 65535:
            raise ValueError(f"port {self.port} needs an explicit app_port")
        return self


class OutgoingTls(_Strict):
    """Transparent TLS out: plaintext on 127.0.0.1:local_port, mTLS to host:port."""

    host: Annotated[str, Field(min_length=1)]
    port: Port
    local_port: Port | None = None
    service: Name | None = None  # the destination service; default: by DNS name

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_dns_name(value)

    @property
    def resolved_local_port(self) -> int:
        return self.local_port or self.port + EGRESS_PORT_OFFSET

    @model_validator(mode="after")
    def _local_port_fits(self) -> OutgoingTls:
        if self.local_port is None and self.port + EGRESS_PORT_OFFSET > 65535:
            raise ValueError(f"port {self.port} needs an explicit local_port")
        return self


class TlsTag(_Strict):
    incoming: list[IncomingTls] = Field(default_factory=list)
    outgoing: list[OutgoingTls] = Field(default_factory=list)


class Manifest(_Strict):
    """The deployment's contract. Build it with ``geode.manifest.load_manifest``."""

    version: Literal[1]
    trust_domain: Annotated[str, Field(min_length=1)]
    packages: dict[Name, Package] = Field(default_factory=dict)
    services: dict[Name, Service] = Field(default_factory=dict)
    secrets: dict[Name, SecretSpec] = Field(default_factory=dict)
    users: dict[Name, User] = Field(default_factory=dict)
    roles: dict[Name, Role] = Field(default_factory=dict)
    recovery: Recovery | None = None
    updates: Updates = Field(default_factory=Updates)
    policies: Policies = Field(default_factory=Policies)
    tls: dict[Name, TlsTag] = Field(default_factory=dict)

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if value != value.lower() or value.startswith("*."):
            raise ValueError("a trust domain is a lowercase DNS name")
        return check_dns_name(value)

    @field_validator("packages", "services", "secrets", "users", "roles", "tls")
    @classmethod
    def _names(cls, values: dict[str, object]) -> dict[str, object]:
        for key in values:
            check_name(key)
        return values

    def grants(self, user: str, resource: str, action: str, name: str = "") -> bool:
        """Do ``user``'s roles grant ``action`` on ``resource`` (item ``name``)?"""
        person = self.users.get(user)
        if person is None:
            return False
        for role_name in person.roles:
            role = self.roles[role_name]
            if role.resource != resource or action not in role.actions:
                continue
            if resource == "manifest" or name in role.names:
                return True
        return False

    @property
    def manifest_updaters(self) -> list[str]:
        """The users whose roles grant ``update`` on the manifest, sorted."""
        return sorted(u for u in self.users if self.grants(u, "manifest", "update"))

    @property
    def update_threshold(self) -> int:
        """Acknowledgements a manifest update needs (0 when no user may update the manifest)."""
        return self.updates.threshold or len(self.manifest_updaters)
