"""Sandboxed Jinja2 templates for a service's files, environment and arguments.

A template reaches ``secrets.<name>`` and ``geode.root_ca`` / ``geode.mesh_ca`` /
``geode.service_cert`` / ``geode.service_key``. A secret must pass through one of the filters
``pem``, ``hex``, ``raw`` or ``base64``; printing it bare is an error, so that a key is never
written in an accidental format.

The instance's private key is generated inside the instance and never reaches the Coordinator, so
``geode.service_key | pem`` renders as ``SERVICE_KEY_MARKER``, which the launcher replaces with the
key; no other filter applies to it.

Rendering produces bytes. ``raw`` inserts arbitrary bytes: they travel through Jinja2 as text
decoded with ``surrogateescape``, which round-trips every byte sequence exactly.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from geode.errors import ManifestError

__all__ = [
    "SERVICE_KEY_MARKER",
    "CertificateSecret",
    "TemplateContext",
    "placeholder_context",
    "referenced_names",
    "render_template",
]

_SURROGATE = "surrogateescape"
_TEMPLATE_GLOBALS = frozenset({"secrets", "geode"})
GEODE_VALUES = frozenset({"root_ca", "mesh_ca", "service_cert", "service_key"})
SERVICE_KEY_MARKER = "-----GEODE SERVICE KEY PLACEHOLDER-----"


class _ServiceKey:
    """Stands in for the instance's private key, which only the instance holds."""

    def __str__(self) -> str:
        raise jinja2.TemplateError("geode.service_key needs the pem filter")


@dataclass(frozen=True)
class CertificateSecret:
    """A certificate secret as templates see it: ``.cert``, ``.private`` and ``.public``."""

    cert: x509.Certificate
    private: CertificateIssuerPrivateKeyTypes

    @property
    def public(self) -> CertificatePublicKeyTypes:
        return self.cert.public_key()

    def __str__(self) -> str:
        raise jinja2.TemplateError("a certificate secret needs a filter: pem, hex, raw or base64")


class _Bytes:
    """Secret bytes; refuses to be printed without a filter and has no readable attributes."""

    __slots__ = ("secret_bytes",)

    def __init__(self, value: bytes) -> None:
        self.secret_bytes = value

    def __str__(self) -> str:
        raise jinja2.TemplateError("a secret needs a filter: hex, raw or base64")


class _Namespace:
    """``secrets`` and ``geode`` in templates: names only, no methods (a secret may be called
    ``keys`` or ``items``)."""

    __slots__ = ("_geode_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_geode_values", values)

    def __getitem__(self, key: str) -> Any:
        return self._geode_values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._geode_values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __str__(self) -> str:
        raise jinja2.TemplateError("use secrets.<name> or geode.<name> with a filter")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Templates may read names from the namespaces and the parts of a certificate secret,
    nothing else: no attribute or method of any other object is reachable."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, _Namespace):
            return not attr.startswith("_")
        return isinstance(obj, CertificateSecret) and attr in ("cert", "private", "public")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise SecurityError("templates cannot call methods; use a filter: pem, hex, raw, base64")


def _finalize(value: Any) -> Any:
    """Every printed value must be text (or a number): secrets only print through filters."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, _ServiceKey):
        raise jinja2.TemplateError("geode.service_key needs the pem filter")
    raise jinja2.TemplateError("a secret or certificate needs a filter: pem, hex, raw or base64")


@dataclass(frozen=True)
class TemplateContext:
    """Everything a template can reach for one instance."""

    secrets: Mapping[str, bytes | CertificateSecret]
    root_ca: x509.Certificate
    mesh_ca: x509.Certificate
    service_cert: x509.Certificate

    def as_jinja(self) -> dict[str, Any]:
        wrapped = {
            name: value if isinstance(value, CertificateSecret) else _Bytes(value)
            for name, value in self.secrets.items()
        }
        return {
            "secrets": _Namespace(wrapped),
            "geode": _Namespace(
                {
                    "root_ca": self.root_ca,
                    "mesh_ca": self.mesh_ca,
                    "service_cert": self.service_cert,
                    "service_key": _ServiceKey(),
                }
            ),
        }


def _to_der_or_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, _ServiceKey):
        raise jinja2.TemplateError(f"geode.service_key takes the pem filter, not {what}")
    if isinstance(value, _Bytes):
        return value.secret_bytes
    if isinstance(value, bytes):
        return value
    if isinstance(value, CertificateSecret):
        return value.cert.public_bytes(serialization.Encoding.DER)
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.DER)
    if hasattr(value, "private_bytes"):
        return bytes(
            value.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    if hasattr(value, "public_bytes"):
        return bytes(
            value.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    raise jinja2.TemplateError(f"the {what} filter does not apply to {type(value).__name__}")


def _pem(value: Any) -> str:
    if isinstance(value, _ServiceKey):
        return SERVICE_KEY_MARKER
    if isinstance(value, CertificateSecret):
        value = value.cert
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM).decode()
    if hasattr(value, "private_bytes"):
        return bytes(
            value.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ).decode()
    if hasattr(value, "public_bytes"):
        return bytes(
            value.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
    raise jinja2.TemplateError("the pem filter applies to certificates and keys only")


def _hex(value: Any) -> str:
    return _to_der_or_bytes(value, "hex").hex()


def _raw(value: Any) -> str:
    return _to_der_or_bytes(value, "raw").decode("utf-8", _SURROGATE)


def _base64(value: Any) -> str:
    return base64.b64encode(_to_der_or_bytes(value, "base64")).decode()


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters.clear()
    env.filters.update({"pem": _pem, "hex": _hex, "raw": _raw, "base64": _base64})
    env.globals.clear()
    return env


@lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _parse(source: str, path: str) -> nodes.Template:
    try:
        return _environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ManifestError(path, f"template syntax error: {exc.message}") from None


def referenced_names(source: str, path: str) -> tuple[frozenset[str], frozenset[str]]:
    """The secrets and ``geode.*`` values a template uses, found statically.

    Raises ``ManifestError`` for syntax errors and for names outside ``secrets`` and ``geode``.
    """
    tree = _parse(source, path)
    try:
        unknown = meta.find_undeclared_variables(tree) - _TEMPLATE_GLOBALS
    except jinja2.TemplateSyntaxError as exc:  # e.g. an unknown filter, found by compiling
        raise ManifestError(path, f"template error: {exc.message}") from None
    if unknown:
        raise ManifestError(path, f"unknown template variable {sorted(unknown)[0]!r}")
    found: dict[str, set[str]] = {"secrets": set(), "geode": set()}
    accessed: set[int] = set()
    for attr in tree.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name) and attr.node.name in found:
            found[attr.node.name].add(attr.attr)
            accessed.add(id(attr.node))
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name in found:
            if not (isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str)):
                raise ManifestError(path, f"{item.node.name}[...] needs a constant name")
            found[item.node.name].add(item.arg.value)
            accessed.add(id(item.node))
    for name in tree.find_all(nodes.Name):
        if name.name in found and id(name) not in accessed:
            raise ManifestError(path, f"'{name.name}' must be used as {name.name}.<name>")
    return frozenset(found["secrets"]), frozenset(found["geode"])


def render_template(source: str, context: TemplateContext, path: str) -> bytes:
    """Render one template to bytes; every failure is a ``ManifestError`` naming ``path``."""
    try:
        text = _compile(source).render(context.as_jinja())
    except jinja2.TemplateSyntaxError as exc:
        raise ManifestError(path, f"template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise ManifestError(path, f"template error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ManifestError(path, f"template error: {exc.message or exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(path, f"template error: {exc}") from None
    try:
        return text.encode("utf-8", _SURROGATE)
    except UnicodeEncodeError:
        raise ManifestError(path, "template renders a lone surrogate character") from None


@lru_cache(maxsize=1)
def _placeholder_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "geode placeholder")])
    now = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def placeholder_context(secret_sizes: Mapping[str, int | None]) -> TemplateContext:
    """A context of the right shapes for dry-rendering: ``None`` marks a certificate secret."""
    cert, key = _placeholder_certificate()
    secrets: dict[str, bytes | CertificateSecret] = {
        name: CertificateSecret(cert, key) if size is None else bytes(size)
        for name, size in secret_sizes.items()
    }
    return TemplateContext(secrets, cert, cert, cert)
