"""The manifest: parse, validate and render the deployment's contract. Pure; no I/O."""

from __future__ import annotations

from geode.manifest._load import (
    MAX_MANIFEST_BYTES,
    ManifestDocument,
    load_manifest,
    load_package,
    parse_manifest_data,
)
from geode.manifest._mesh import (
    EgressRoute,
    IngressRoute,
    MeshConfig,
    MeshPolicy,
    MeshRule,
    egress_peers,
    mesh_config,
)
from geode.manifest._model import (
    HttpRule,
    IncomingTls,
    Manifest,
    OutgoingTls,
    Package,
    Policies,
    PolicyRule,
    Recovery,
    Role,
    SecretSpec,
    Service,
    TcpRule,
    TlsTag,
    Updates,
    User,
)
from geode.manifest._template import (
    SERVICE_KEY_MARKER,
    CertificateSecret,
    TemplateContext,
    render_template,
)
from geode.tee import SnpTcb

__all__ = [
    "MAX_MANIFEST_BYTES",
    "SERVICE_KEY_MARKER",
    "CertificateSecret",
    "EgressRoute",
    "HttpRule",
    "IncomingTls",
    "IngressRoute",
    "Manifest",
    "ManifestDocument",
    "MeshConfig",
    "MeshPolicy",
    "MeshRule",
    "OutgoingTls",
    "Package",
    "Policies",
    "PolicyRule",
    "Recovery",
    "Role",
    "SecretSpec",
    "Service",
    "SnpTcb",
    "TcpRule",
    "TemplateContext",
    "TlsTag",
    "Updates",
    "User",
    "egress_peers",
    "load_manifest",
    "load_package",
    "mesh_config",
    "parse_manifest_data",
    "render_template",
]
