"""Parse, validate and dry-render a manifest.

``load_manifest`` is the only way from bytes to a ``ManifestDocument``: it parses YAML or JSON,
builds the typed models (unknown fields rejected), checks every reference between sections, and
dry-renders every template. Every error is a ``ManifestError`` naming the JSON path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from geode.errors import ManifestError
from geode.manifest._mesh import MeshConfig, mesh_config
from geode.manifest._model import Manifest, Package, SecretSpec
from geode.manifest._template import (
    GEODE_VALUES,
    TemplateBudget,
    is_template,
    placeholder_context,
    referenced_names,
    render_template,
)

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_DEPTH",
    "MAX_MANIFEST_EXPANDED_CHARS",
    "MAX_MANIFEST_NODES",
    "MAX_MANIFEST_TEMPLATES",
    "MAX_MANIFEST_TEMPLATE_TOKENS",
    "MAX_MANIFEST_TEMPLATE_WORK",
    "ManifestDocument",
    "is_package_update",
    "load_manifest",
    "load_package",
    "parse_manifest_data",
]

MAX_MANIFEST_BYTES = 1 << 20
# What parsing and validating a manifest may cost, whatever its bytes say. A real manifest is a
# few levels deep and has hundreds to thousands of nodes and a handful of templates per service.
MAX_MANIFEST_DEPTH = 64  # nested mappings and sequences
# Values (mapping keys included), every alias counted as what it repeats.
MAX_MANIFEST_NODES = 1 << 16
# The document with every YAML alias written out, in characters (plus one per node): aliases
# may shorten a manifest, not make it larger than twice the largest one accepted.
MAX_MANIFEST_EXPANDED_CHARS = 2 * MAX_MANIFEST_BYTES
MAX_MANIFEST_TEMPLATES = 1024  # values with template syntax, each parsed, compiled and rendered
MAX_MANIFEST_TEMPLATE_WORK = 16 << 20  # bytes all templates together may build when dry-rendered
MAX_MANIFEST_TEMPLATE_TOKENS = 1 << 16  # tokens of all templates together

_PYDANTIC_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
    "literal_error": None,
}


@dataclass(frozen=True)
class ManifestDocument:
    """A validated manifest together with the exact bytes it came from."""

    raw: bytes
    manifest: Manifest
    # For each service, the secrets its templates use (what activation hands out), and the
    # certificate secrets whose private key they read (only those keys are handed out).
    service_secrets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    service_private_secrets: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @functools.cached_property
    def mesh(self) -> dict[str, MeshConfig]:
        """Each service's mesh view (rules where it is the destination, its TLS routes)."""
        return {name: mesh_config(self.manifest, name) for name in self.manifest.services}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_error(exc: ValidationError) -> ManifestError:
    error = exc.errors(include_url=False)[0]
    message = _PYDANTIC_MESSAGES.get(error["type"]) or error["msg"]
    if error["type"] == "string_type" and isinstance(error.get("input"), int | float):
        message = "expected a valid string, got a number (quote the value in YAML)"
    message = message.removeprefix("Value error, ")
    # pydantic marks a failing dict key with a "[key]" location part; the key itself precedes it.
    loc = tuple(part for part in error["loc"] if part != "[key]")
    return ManifestError(_path(loc) or "manifest", message)


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int | None) -> None:
        self.key = key
        self.line = line


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key, None)
        out[key] = value
    return out


try:  # libyaml's parser, ten times faster than PyYAML's own, when PyYAML was built with it
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - every wheel of PyYAML we install has libyaml

    class _EventParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _StrictLoader(
    yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver, _EventParser
):
    """PyYAML's safe loader, refusing duplicate keys (other parsers would keep another one), and
    bounded: nesting depth, nodes and the size of the document with its aliases written out are
    counted while it is composed, before anything is built from it (a few kilobytes of aliases
    of aliases would otherwise stand for gigabytes once validated). The events come from
    libyaml's parser; the composing is PyYAML's, where the counting is."""

    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0
        self._chars = 0
        self._anchored: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, chars) it stands for

    def _count(self, nodes: int, chars: int, event: yaml.Event) -> None:
        self._nodes += nodes
        self._chars += chars
        line = f" (line {event.start_mark.line + 1})" if event.start_mark else ""
        if self._nodes > MAX_MANIFEST_NODES:
            raise ManifestError("manifest", f"more than {MAX_MANIFEST_NODES} values{line}")
        if self._chars > MAX_MANIFEST_EXPANDED_CHARS:
            limit = MAX_MANIFEST_EXPANDED_CHARS
            raise ManifestError(
                "manifest", f"larger than {limit} characters with its aliases expanded{line}"
            )

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        assert event is not None  # the composer asks for a node only where one follows
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor or "")
            if target is not None:
                size = self._anchored.get(id(target))
                if size is None:  # the alias is inside the node it names
                    raise ManifestError("manifest", f"recursive alias {event.anchor!r}")
                self._count(*size, event)
            return super().compose_node(parent, index)
        if self._depth >= MAX_MANIFEST_DEPTH:
            line = event.start_mark.line + 1 if event.start_mark else 0
            raise ManifestError(
                "manifest", f"nested deeper than {MAX_MANIFEST_DEPTH} levels (line {line})"
            )
        nodes, chars = self._nodes, self._chars
        scalar = event.value if isinstance(event, yaml.ScalarEvent) else ""
        self._count(1, 1 + len(scalar), event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if getattr(event, "anchor", None) is not None:
            self._anchored[id(node)] = (self._nodes - nodes, self._chars - chars)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<" merges are YAML's own override mechanism, not duplicates
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            if isinstance(key, str | int | float | bool):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# What the shape of a JSON text is made of: a whole string (skipped), a quote that opens no
# whole string (the text is not JSON), and the structure outside strings. Scanned in one pass:
# an unterminated string stops the scan, rather than being tried again from each quote in it.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|"|[\[\]{},:]')


def _check_json_shape(text: str) -> None:
    """Refuse JSON nested deeper than ``MAX_MANIFEST_DEPTH`` or with more than
    ``MAX_MANIFEST_NODES`` values before parsing it: a linear scan of its structure."""
    depth = 0
    values = 1  # keys counted, as YAML counts them
    for token in _JSON_TOKEN.finditer(text):
        mark = token[0]
        if len(mark) > 1:
            continue  # a string
        if mark == '"':
            line = text.count("\n", 0, token.start()) + 1
            raise ManifestError("manifest", f"invalid JSON at line {line}: unterminated string")
        if mark in "[{":
            depth += 1
            if depth > MAX_MANIFEST_DEPTH:
                raise ManifestError("manifest", f"nested deeper than {MAX_MANIFEST_DEPTH} levels")
        elif mark in "]}":
            depth -= 1
        if mark in ",:[{":
            values += 1
            if values > MAX_MANIFEST_NODES:
                raise ManifestError("manifest", f"more than {MAX_MANIFEST_NODES} values")


def parse_manifest_data(raw: bytes) -> Any:
    """YAML or JSON bytes to plain data; JSON is a subset of YAML, but is parsed as JSON first.

    Duplicate keys are refused in both: the manifest's hash covers its bytes, and every reader of
    those bytes must see the same document. Both are bounded before anything is built from them:
    nesting depth, values, and (YAML) the size with aliases expanded.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest", f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError("manifest", f"not UTF-8 (byte {exc.start})") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            _check_json_shape(text)
            try:
                return json.loads(text, object_pairs_hook=_no_duplicates)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    "manifest", f"invalid JSON at line {exc.lineno}: {exc.msg}"
                ) from None
        loader = _StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        where = f" at line {exc.line}" if exc.line else ""
        raise ManifestError("manifest", f"duplicate key {exc.key!r}{where}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ManifestError("manifest", f"invalid YAML{where}: {problem}") from None
    except RecursionError:  # a backstop: the depth is bounded above
        raise ManifestError("manifest", f"nested deeper than {MAX_MANIFEST_DEPTH} levels") from None
    except ManifestError:
        raise
    except (ValueError, OverflowError) as exc:
        # A value its type cannot hold: a date such as 2001-13-45, ``!!float xyz``, an integer
        # of more digits than Python converts.
        raise ManifestError("manifest", f"invalid value: {exc}") from None


def is_package_update(data: object) -> bool:
    """Whether parsed update data is a package update (``{packages: {NAME: change}}``, checked
    against the manifest in force) rather than a whole manifest (validated on its own)."""
    return isinstance(data, dict) and set(data) == {"packages"}


def load_package(raw: bytes) -> Package:
    """A single package (reference values), e.g. the expected Coordinator for ``geode verify``."""
    data = parse_manifest_data(raw)
    if not isinstance(data, dict):
        raise ManifestError("package", "must be a mapping")
    try:
        return Package.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None


def load_manifest(raw: bytes) -> ManifestDocument:
    """Parse and fully validate a manifest."""
    data = parse_manifest_data(raw)
    if not isinstance(data, dict):
        raise ManifestError("manifest", "must be a mapping at the top level")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None
    _check_references(manifest)
    _check_keys(manifest)
    used, private = _check_templates(manifest)
    return ManifestDocument(
        raw=raw, manifest=manifest, service_secrets=used, service_private_secrets=private
    )


def _check_references(m: Manifest) -> None:
    for name, service in m.services.items():
        if service.package not in m.packages:
            raise ManifestError(f"services.{name}.package", f"unknown package {service.package!r}")
        package = m.packages[service.package]
        if package.spec.gpu:
            # A GPU report binds the requester's nonce, not the service's key, and its CC mode
            # is the driver's word: on its own it attests no service.
            raise ManifestError(
                f"services.{name}.package",
                f"{service.package!r} is a GPU ({package.tee}) package: a service needs a CPU "
                "TEE's",
            )
        for i, tag in enumerate(service.tls):
            if tag not in m.tls:
                raise ManifestError(f"services.{name}.tls[{i}]", f"unknown tls tag {tag!r}")
        _check_service_ports(m, name)
    for name, user in m.users.items():
        for i, role_name in enumerate(user.roles):
            if role_name not in m.roles:
                raise ManifestError(f"users.{name}.roles[{i}]", f"unknown role {role_name!r}")
    for name, role in m.roles.items():
        allowed = {"secrets": {"read", "write"}, "packages": {"update"}, "manifest": {"update"}}
        for i, action in enumerate(role.actions):
            if action not in allowed[role.resource]:
                raise ManifestError(
                    f"roles.{name}.actions[{i}]",
                    f"action {action!r} does not apply to {role.resource}",
                )
        targets: Mapping[str, object] = m.secrets if role.resource == "secrets" else m.packages
        if role.resource == "manifest" and role.names:
            raise ManifestError(f"roles.{name}.names", "a manifest role takes no names")
        if role.resource != "manifest" and not role.names:
            raise ManifestError(f"roles.{name}.names", f"name the {role.resource} it applies to")
        for i, target in enumerate(role.names):
            if target not in targets:
                raise ManifestError(
                    f"roles.{name}.names[{i}]", f"unknown {role.resource[:-1]} {target!r}"
                )
            if role.resource == "secrets":
                _check_secret_role(m.secrets[target], f"roles.{name}.names[{i}]", role.actions)
    seen_rules: set[str] = set()
    for i, rule in enumerate(m.policies.rules):
        where = f"policies.rules[{i}]"
        if rule.name in seen_rules:
            raise ManifestError(f"{where}.name", f"duplicate rule name {rule.name!r}")
        seen_rules.add(rule.name)
        if rule.destination not in m.services:
            raise ManifestError(f"{where}.destination", f"unknown service {rule.destination!r}")
        for j, source in enumerate(rule.sources):
            if source not in m.services:
                raise ManifestError(f"{where}.sources[{j}]", f"unknown service {source!r}")
    recovery = m.recovery
    if recovery is not None and recovery.threshold > len(recovery.keys):
        raise ManifestError(
            "recovery.threshold",
            f"threshold {recovery.threshold} exceeds the {len(recovery.keys)} recovery keys",
        )
    threshold = m.updates.threshold
    if threshold is not None and threshold > len(m.manifest_updaters):
        raise ManifestError(
            "updates.threshold",
            f"threshold {threshold} exceeds the {len(m.manifest_updaters)} users "
            "who may update the manifest",
        )


def _check_service_ports(m: Manifest, name: str) -> None:
    """A service's transparent-TLS listeners must not collide."""
    seen: dict[int, str] = {}

    def claim(port: int, what: str, path: str) -> None:
        if port in seen:
            raise ManifestError(path, f"port {port} is already used by {seen[port]}")
        seen[port] = what

    for tag in m.services[name].tls:
        for j, incoming in enumerate(m.tls[tag].incoming):
            path = f"tls.{tag}.incoming[{j}]"
            claim(incoming.port, f"{path}.port", f"{path}.port")
            claim(incoming.resolved_app_port, f"{path}.app_port", f"{path}.app_port")
        for j, outgoing in enumerate(m.tls[tag].outgoing):
            path = f"tls.{tag}.outgoing[{j}]"
            claim(outgoing.resolved_local_port, f"{path}.local_port", f"{path}.local_port")
            if outgoing.service is not None and outgoing.service not in m.services:
                raise ManifestError(f"{path}.service", f"unknown service {outgoing.service!r}")


def _check_secret_role(spec: SecretSpec, path: str, actions: Sequence[str]) -> None:
    if not (spec.shared or spec.is_user_defined):
        raise ManifestError(path, "only shared or user-defined secrets can be granted to users")
    if "write" in actions and not spec.is_user_defined:
        raise ManifestError(path, "only user-defined secrets can be written")


def _check_keys(m: Manifest) -> None:
    holders: dict[bytes, str] = {}
    for name, user in m.users.items():
        path = f"users.{name}.certificate"
        try:
            cert = x509.load_pem_x509_certificate(user.certificate.encode())
        except ValueError:
            raise ManifestError(path, "not a PEM certificate") from None
        # A user is told apart by the certificate alone: two users cannot share one.
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in holders:
            raise ManifestError(path, f"the same certificate as user {holders[der]!r}")
        holders[der] = name
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            raise ManifestError(path, "the certificate does not allow TLS client authentication")
    if m.recovery is None:
        return
    for name, pem in m.recovery.keys.items():
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise ManifestError(f"recovery.keys.{name}", "not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
            raise ManifestError(f"recovery.keys.{name}", "must be an RSA key of 2048 bits or more")


def _check_templates(
    m: Manifest,
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    sizes = {
        name: None if spec.is_certificate else spec.bits // 8 for name, spec in m.secrets.items()
    }
    context = placeholder_context(sizes)
    budget = TemplateBudget(MAX_MANIFEST_TEMPLATE_WORK)
    tokens = TemplateBudget(MAX_MANIFEST_TEMPLATE_TOKENS, "templates have more than {} tokens")
    templated = 0
    used_by: dict[str, frozenset[str]] = {}
    private_by: dict[str, frozenset[str]] = {}
    for name, service in m.services.items():
        templates: list[tuple[str, str, bool]] = [
            (f"services.{name}.env.{key}", value, True) for key, value in service.env.items()
        ]
        templates += [(f"services.{name}.files.{p}", v, False) for p, v in service.files.items()]
        templates += [(f"services.{name}.argv[{i}]", v, True) for i, v in enumerate(service.argv)]
        used: set[str] = set()
        private: set[str] = set()
        for path, source, textual in templates:
            if is_template(source):
                templated += 1
                if templated > MAX_MANIFEST_TEMPLATES:
                    raise ManifestError(path, f"more than {MAX_MANIFEST_TEMPLATES} templates")
            refs = referenced_names(source, path, tokens)
            for secret in sorted(refs.secrets):
                if secret not in m.secrets:
                    raise ManifestError(path, f"unknown secret {secret!r}")
            for value in sorted(refs.geode - GEODE_VALUES):
                raise ManifestError(path, f"unknown value 'geode.{value}'")
            if textual and "service_key" in refs.geode:
                # argv and environment are readable by other processes (/proc); files are 0600.
                raise ManifestError(path, "geode.service_key may only be used in files")
            used |= refs.secrets
            private |= refs.private_secrets & {
                s for s in refs.secrets if m.secrets[s].is_certificate
            }
            rendered = render_template(source, context, path, budget)
            if textual and b"\0" in rendered:
                raise ManifestError(path, "renders a NUL byte; use the hex or base64 filter")
        used_by[name] = frozenset(used)
        private_by[name] = frozenset(private)
    return used_by, private_by
