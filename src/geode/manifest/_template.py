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
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

from geode.errors import ManifestError
from geode.manifest._sandbox import (
    MAX_RENDERED_BYTES,
    MAX_TEMPLATE_TOKENS,
    MAX_TEMPLATE_WORK,
    NEEDS_FILTER,
    SERVICE_KEY,
    CertificateView,
    Namespace,
    Opaque,
    Sandbox,
    TemplateBudget,
    budgets,
    charge,
    finalize,
)

__all__ = [
    "MAX_RENDERED_BYTES",
    "MAX_TEMPLATE_TOKENS",
    "MAX_TEMPLATE_WORK",
    "SERVICE_KEY_MARKER",
    "CertificateSecret",
    "TemplateBudget",
    "TemplateContext",
    "TemplateRefs",
    "is_template",
    "placeholder_context",
    "referenced_names",
    "render_template",
]

_SURROGATE = "surrogateescape"
_TEMPLATE_GLOBALS = frozenset({"secrets", "geode"})
GEODE_VALUES = frozenset({"root_ca", "mesh_ca", "service_cert", "service_key"})
SERVICE_KEY_MARKER = "-----GEODE SERVICE KEY PLACEHOLDER-----"


@dataclass(frozen=True)
class CertificateSecret:
    """A certificate secret: templates reach ``.cert``, ``.private`` and ``.public``."""

    cert: x509.Certificate
    private: CertificateIssuerPrivateKeyTypes

    @property
    def public(self) -> CertificatePublicKeyTypes:
        return self.cert.public_key()


@dataclass(frozen=True)
class TemplateContext:
    """Everything a template can reach for one instance."""

    secrets: Mapping[str, bytes | CertificateSecret]
    root_ca: x509.Certificate
    mesh_ca: x509.Certificate
    service_cert: x509.Certificate

    @functools.cached_property
    def jinja_globals(self) -> dict[str, Any]:
        wrapped = {
            name: CertificateView(value, NEEDS_FILTER)
            if isinstance(value, CertificateSecret)
            else Opaque(value, "a secret needs a filter: hex, raw or base64")
            for name, value in self.secrets.items()
        }
        geode = {
            "root_ca": Opaque(self.root_ca, NEEDS_FILTER),
            "mesh_ca": Opaque(self.mesh_ca, NEEDS_FILTER),
            "service_cert": Opaque(self.service_cert, NEEDS_FILTER),
            "service_key": Opaque(SERVICE_KEY, "geode.service_key needs the pem filter"),
        }
        namespace_hint = "use secrets.<name> or geode.<name> with a filter"
        return {
            "secrets": Namespace(wrapped, namespace_hint),
            "geode": Namespace(geode, namespace_hint),
        }


def _unwrap(value: Any, what: str) -> Any:
    if isinstance(value, CertificateView):
        return value._inner.cert
    if isinstance(value, Namespace) or not isinstance(value, Opaque):
        raise jinja2.TemplateError(
            f"the {what} filter does not apply to {type(value).__name__}: "
            "filters take secrets and geode.* values"
        )
    return value._inner


def _to_der_or_bytes(value: Any, what: str) -> bytes:
    inner = _unwrap(value, what)
    if inner is SERVICE_KEY:
        raise jinja2.TemplateError(f"geode.service_key takes the pem filter, not {what}")
    if isinstance(inner, bytes):
        return inner
    if isinstance(inner, x509.Certificate):
        return inner.public_bytes(serialization.Encoding.DER)
    if hasattr(inner, "private_bytes"):
        return bytes(
            inner.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return bytes(
        inner.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _pem(value: Any) -> str:
    inner = _unwrap(value, "pem")
    if inner is SERVICE_KEY:
        return SERVICE_KEY_MARKER
    if isinstance(inner, x509.Certificate):
        return inner.public_bytes(serialization.Encoding.PEM).decode()
    if isinstance(inner, bytes):
        raise jinja2.TemplateError("the pem filter applies to certificates and keys only")
    if hasattr(inner, "private_bytes"):
        return bytes(
            inner.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ).decode()
    return bytes(
        inner.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()


def _hex(value: Any) -> str:
    return _to_der_or_bytes(value, "hex").hex()


def _raw(value: Any) -> str:
    return _to_der_or_bytes(value, "raw").decode("utf-8", _SURROGATE)


def _base64(value: Any) -> str:
    return base64.b64encode(_to_der_or_bytes(value, "base64")).decode()


def _counted(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    """A filter whose output counts against the template's budget."""

    @functools.wraps(fn)
    def counted(value: Any) -> str:
        out = fn(value)
        charge(len(out))
        return out

    return counted


@functools.lru_cache(maxsize=1)
def _environment() -> Sandbox:
    env = Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters.clear()
    filters = {"pem": _pem, "hex": _hex, "raw": _raw, "base64": _base64}
    env.filters.update({name: _counted(fn) for name, fn in filters.items()})
    env.globals.clear()
    return env


# Templates are compiled once per source, for the activations that render them again. The
# cache lives as long as the process and its sources come from whoever may send a manifest (an
# updater's refused proposals included): it keeps small templates only, and few of them.
_CACHED_SOURCE_CHARS = 4096


@functools.lru_cache(maxsize=256)
def _compile_cached(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _compile(source: str) -> jinja2.Template:
    if len(source) > _CACHED_SOURCE_CHARS:
        return _environment().from_string(source)
    return _compile_cached(source)


def _parse(source: str, path: str) -> nodes.Template:
    try:
        return _environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ManifestError(path, f"template syntax error: {exc.message}") from None
    except (ValueError, RecursionError, MemoryError, SyntaxError) as exc:
        raise ManifestError(path, f"template syntax error: {type(exc).__name__}") from None


@dataclass(frozen=True)
class TemplateRefs:
    """What a template uses, found statically."""

    secrets: frozenset[str]
    private_secrets: frozenset[str]  # certificate secrets whose private key the template reads
    geode: frozenset[str]


# Templates are expressions and if-blocks: without loops, assignments or macros, every value is
# built by one expression and used once. Without list, tuple or dict literals, every value is
# text or a number, whose size its budget counts (``Sandbox``).
_ALLOWED_STATEMENTS = (nodes.Output, nodes.If)
_REFUSED_EXPRESSIONS = (nodes.List, nodes.Tuple, nodes.Dict)
_TEMPLATE_FAILURES = (
    SyntaxError,  # Python's compiler refusing what Jinja generated (e.g. nesting too deep)
    TypeError,
    ValueError,
    AttributeError,
    LookupError,
    ArithmeticError,
    RecursionError,
)


_NO_REFS = TemplateRefs(frozenset(), frozenset(), frozenset())
_NEWLINES = re.compile(r"\r\n|\r|\n")


def is_template(source: str) -> bool:
    """Can ``source`` hold template syntax? Without a brace it is plain text, which renders as
    itself with Jinja's newline normalisation, without being parsed."""
    return "{" in source


def _count_tokens(source: str, path: str, budget: TemplateBudget | None) -> None:
    """Lex ``source`` (cheap, and stopped as soon as a budget is exceeded) before it is parsed
    and compiled (what costs)."""
    own = TemplateBudget(MAX_TEMPLATE_TOKENS, "template has more than {} tokens")
    budgets = (own,) if budget is None else (own, budget)
    try:
        for _ in _environment().lex(source):
            for each in budgets:
                each.charge(1)
    except SecurityError as exc:
        raise ManifestError(path, str(exc)) from None
    except jinja2.TemplateSyntaxError as exc:
        raise ManifestError(path, f"template syntax error: {exc.message}") from None


def referenced_names(source: str, path: str, tokens: TemplateBudget | None = None) -> TemplateRefs:
    """The secrets and ``geode.*`` values a template uses, found statically.

    Raises ``ManifestError`` for syntax errors, statements other than ``if``, and names outside
    ``secrets`` and ``geode``, and for templates of more than ``MAX_TEMPLATE_TOKENS`` tokens (or
    more than ``tokens``, a budget shared with other templates, has left).
    """
    if not is_template(source):
        return _NO_REFS
    _count_tokens(source, path, tokens)
    tree = _parse(source, path)
    for statement in tree.find_all(nodes.Stmt):
        if not isinstance(statement, _ALLOWED_STATEMENTS):
            kind = type(statement).__name__.lower()
            raise ManifestError(path, f"'{kind}' is not allowed in templates (only if-blocks)")
    for literal in tree.find_all(_REFUSED_EXPRESSIONS):
        kind = type(literal).__name__.lower()
        raise ManifestError(path, f"a {kind} literal is not allowed in templates")
    try:
        unknown = meta.find_undeclared_variables(tree) - _TEMPLATE_GLOBALS
    except jinja2.TemplateSyntaxError as exc:  # e.g. an unknown filter, found by compiling
        raise ManifestError(path, f"template error: {exc.message}") from None
    except _TEMPLATE_FAILURES as exc:
        raise ManifestError(path, f"template error: {type(exc).__name__}") from None
    if unknown:
        raise ManifestError(path, f"unknown template variable {sorted(unknown)[0]!r}")
    found: dict[str, set[str]] = {"secrets": set(), "geode": set()}
    accessed: set[int] = set()
    secret_nodes: dict[int, str] = {}
    accesses = _accesses(tree)
    for node in accesses:
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name in found):
            continue
        name = _constant_name(node)
        if name is None:
            raise ManifestError(path, f"{target.name}[...] needs a constant name")
        found[target.name].add(name)
        accessed.add(id(target))
        if target.name == "secrets":
            secret_nodes[id(node)] = name
    for name_node in tree.find_all(nodes.Name):
        if name_node.name in found and id(name_node) not in accessed:
            raise ManifestError(path, f"'{name_node.name}' must be used as {name_node.name}.<name>")
    private: set[str] = set()
    for node in accesses:
        secret = secret_nodes.get(id(node.node))
        if secret is not None and _constant_name(node) not in ("cert", "public"):
            private.add(secret)  # .private, or anything not provably the public part
    return TemplateRefs(frozenset(found["secrets"]), frozenset(private), frozenset(found["geode"]))


def _accesses(tree: nodes.Template) -> list[nodes.Getattr | nodes.Getitem]:
    return [
        node
        for node in tree.find_all((nodes.Getattr, nodes.Getitem))
        if isinstance(node, nodes.Getattr | nodes.Getitem)
    ]


def _constant_name(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def render_template(
    source: str, context: TemplateContext, path: str, budget: TemplateBudget | None = None
) -> bytes:
    """Render one template to bytes; every failure is a ``ManifestError`` naming ``path``.

    The rendering may build at most ``MAX_TEMPLATE_WORK`` bytes and output ``MAX_RENDERED_BYTES``;
    ``budget`` also counts what it builds (shared with other templates).
    """
    if not is_template(source):
        return _encoded(_NEWLINES.sub("\n", source), path)
    own = TemplateBudget(MAX_TEMPLATE_WORK)
    try:
        chunks, size = [], 0
        with budgets(own, *(() if budget is None else (budget,))):
            for chunk in _compile(source).generate(context.jinja_globals):
                size += len(chunk)
                if size > MAX_RENDERED_BYTES:
                    raise ManifestError(path, f"renders more than {MAX_RENDERED_BYTES} bytes")
                chunks.append(chunk)
        text = "".join(chunks)
    except jinja2.TemplateSyntaxError as exc:
        raise ManifestError(path, f"template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise ManifestError(path, f"template error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ManifestError(path, f"template error: {exc.message or exc}") from None
    except _TEMPLATE_FAILURES as exc:
        # The exception text may quote rendered values, which can be secrets: name its type only.
        raise ManifestError(path, f"template error: {type(exc).__name__}") from None
    return _encoded(text, path)


def _encoded(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8", _SURROGATE)
    except UnicodeEncodeError:
        raise ManifestError(path, "template renders a lone surrogate character") from None


@functools.lru_cache(maxsize=1)
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
