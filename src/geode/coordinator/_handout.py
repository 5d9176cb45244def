"""What an activation hands out: the leaf certificate and the service's rendered configuration."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from geode.attestation import Evidence
from geode.coordinator._secrets import generate_secret, is_set, template_value
from geode.coordinator._state import StoredSecret
from geode.errors import ActivationDenied, ManifestError
from geode.manifest import (
    CertificateSecret,
    ManifestDocument,
    MeshConfig,
    TemplateContext,
    render_template,
)
from geode.pki import CertificateAuthority, Clock, certificate_pem
from geode.protocol import ActivationAnswer, SecretMaterial

__all__ = [
    "ActivationRequest",
    "ActivationResult",
    "RenewalRequest",
    "render_activation",
]


@dataclass(frozen=True)
class ActivationRequest:
    service: str
    nonce: bytes
    csr: str
    evidence: Evidence


@dataclass(frozen=True)
class RenewalRequest:
    nonce: bytes
    csr: str
    evidence: Evidence
    certificate: str  # the instance's current leaf, PEM
    proof: bytes  # ECDSA-SHA256 by the current key over renewal_payload(nonce, new key DER)


@dataclass(frozen=True)
class ActivationResult:
    instance_id: str
    spiffe_id: str
    certificate: x509.Certificate
    mesh_ca_pem: str
    root_ca_pem: str
    secrets: dict[str, StoredSecret]
    files: dict[str, bytes]
    env: dict[str, bytes]
    argv: list[bytes]
    mesh: MeshConfig

    def answer(self) -> ActivationAnswer:
        def b64(value: bytes) -> str:
            return base64.b64encode(value).decode()

        return ActivationAnswer(
            instance_id=self.instance_id,
            spiffe_id=self.spiffe_id,
            certificate_chain=[certificate_pem(self.certificate), self.mesh_ca_pem],
            mesh_ca=self.mesh_ca_pem,
            root_ca=self.root_ca_pem,
            secrets={
                name: SecretMaterial.model_validate(s.to_json()) for name, s in self.secrets.items()
            },
            files={path: b64(v) for path, v in self.files.items()},
            env={key: b64(v) for key, v in self.env.items()},
            argv=[b64(v) for v in self.argv],
            mesh=self.mesh,
        )


def render_activation(
    document: ManifestDocument,
    service_name: str,
    *,
    instance_id: str,
    spiffe_id: str,
    leaf: x509.Certificate,
    root: CertificateAuthority,
    mesh: CertificateAuthority,
    ca_pems: tuple[str, str],
    stored: Mapping[str, StoredSecret],
    values: Mapping[str, bytes | CertificateSecret],
    clock: Clock,
) -> ActivationResult:
    """Render a service's files, env and argv for one instance.

    The instance gets exactly the secrets its templates use, and a certificate secret's private
    key only when a template reads it. Non-shared certificates are issued here, per instance.
    A rendering failure names the template's path only: its message could quote secret values.
    A user-defined secret that no user has set yet is handed out as what the manifest promises
    until then: a ``plain`` secret is empty; any other type has no value of its type yet, so the
    activation is refused (``secret not set``) rather than hand out an empty key or certificate.
    """
    manifest = document.manifest
    service = manifest.services[service_name]
    private = document.service_private_secrets.get(service_name, frozenset())
    context_values: dict[str, bytes | CertificateSecret] = {}
    handed: dict[str, StoredSecret] = {}
    for name in sorted(document.service_secrets.get(service_name, frozenset())):
        spec = manifest.secrets[name]
        if spec.per_instance:
            secret = generate_secret(name, spec, root, clock=clock)
            context_values[name] = template_value(secret)
        else:
            secret = stored[name]
            if spec.is_user_defined and spec.type != "plain" and not is_set(secret):
                raise ActivationDenied("secret not set", name)
            context_values[name] = values[name]
        if secret.certificate and name not in private:
            secret = StoredSecret(certificate=secret.certificate)
        handed[name] = secret
    context = TemplateContext(
        secrets=context_values,
        root_ca=root.certificate,
        mesh_ca=mesh.certificate,
        service_cert=leaf,
    )
    prefix = f"services.{service_name}"
    try:
        files = {
            path: render_template(src, context, f"{prefix}.files.{path}")
            for path, src in service.files.items()
        }
        env = {
            key: render_template(src, context, f"{prefix}.env.{key}")
            for key, src in service.env.items()
        }
        argv = [
            render_template(src, context, f"{prefix}.argv[{i}]")
            for i, src in enumerate(service.argv)
        ]
    except ManifestError as exc:
        raise ActivationDenied("template rendering failed", exc.path) from None
    for where, value in [*env.items(), *((f"argv[{i}]", v) for i, v in enumerate(argv))]:
        if b"\0" in value:
            raise ActivationDenied("template rendering failed", f"{where} contains a NUL byte")
    return ActivationResult(
        instance_id=instance_id,
        spiffe_id=spiffe_id,
        certificate=leaf,
        mesh_ca_pem=ca_pems[1],
        root_ca_pem=ca_pems[0],
        secrets=handed,
        files=files,
        env=env,
        argv=argv,
        mesh=document.mesh[service_name],
    )
