"""The manifest: parse, validate and render the deployment's contract. Pure; no I/O."""

from __future__ import annotations

from geode.manifest._load import (
    MAX_MANIFEST_BYTES,
    ManifestDocument,
    load_manifest,
    load_package,
    parse_manifest_data,
)
from geode.manifest._model import (
    HttpRule,
    Manifest,
    Package,
    Policies,
    PolicyRule,
    Role,
    SecretSpec,
    Service,
    TcpRule,
    TlsTag,
    User,
)
from geode.manifest._template import (
    SERVICE_KEY_MARKER,
    CertificateSecret,
    TemplateContext,
    render_template,
)

__all__ = [
    "MAX_MANIFEST_BYTES",
    "SERVICE_KEY_MARKER",
    "CertificateSecret",
    "HttpRule",
    "Manifest",
    "ManifestDocument",
    "Package",
    "Policies",
    "PolicyRule",
    "Role",
    "SecretSpec",
    "Service",
    "TcpRule",
    "TemplateContext",
    "TlsTag",
    "User",
    "load_manifest",
    "load_package",
    "parse_manifest_data",
    "render_template",
]
