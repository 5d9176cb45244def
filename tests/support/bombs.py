"""Manifest bombs: documents of at most 1 MiB (what the Coordinator reads) that would cost far
more than their size to parse, validate or dry-render, each with a fragment of the refusal it
must get. Shared by the manifest tests, the memory-limited corpus test and the Coordinator's
attack tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["BOMBS", "Bomb", "template_manifest"]

MIB = 1 << 20
MEASUREMENT = "ab" * 32


@dataclass(frozen=True)
class Bomb:
    name: str
    raw: bytes
    fragment: str  # in the ManifestError's message
    path: str = "manifest"  # the ManifestError's path

    def __post_init__(self) -> None:
        assert len(self.raw) <= MIB, (self.name, len(self.raw))


def template_manifest(**values: str | list[str]) -> bytes:
    """A valid manifest but for the templates of service 'web': ``env`` (a dict of NAME to
    template) given as NAME=template keyword arguments, ``argv`` as a list."""
    argv = values.pop("argv", [])
    manifest = {
        "version": 1,
        "trust_domain": "bombs.geode.local",
        "packages": {"app": {"tee": "simulated", "measurement": MEASUREMENT}},
        "services": {"web": {"package": "app", "env": values, "argv": argv}},
        "secrets": {
            "k": {"type": "symmetric-key", "size": 256},
            "tls": {"type": "cert-ecdsa", "subject": {"common_name": "web"}},
        },
    }
    return json.dumps(manifest).encode()


def _laughs(levels: int, width: int) -> bytes:
    """The billion laughs: each level an anchored list of ``width`` aliases of the one below."""
    lines = ["version: 1", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return ("\n".join(lines) + "\n").encode()


def _alias_strings() -> bytes:
    # One 512 KiB string, aliased a thousand times: 512 MiB once every alias is written out.
    big = "x" * (512 << 10)
    refs = ", ".join(["*s"] * 1000)
    return f"s: &s {big}\nrefs: [{refs}]\n".encode()


def _merge_bomb() -> bytes:
    # Merge keys ("<<") copy a mapping's pairs: mappings merged into mappings merged into ...
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(64)) + "}"]
    for i in range(1, 8):
        merged = ", ".join([f"*m{i - 1}"] * 8)
        lines.append(f"m{i}: &m{i} {{<<: [{merged}], n{i}: v}}")
    return ("\n".join(lines) + "\n").encode()


def _aliased_templates() -> bytes:
    # One costly template written once and aliased thousands of times: a few KB that render
    # gigabytes, one megabyte per alias.
    refs = ", ".join(["*t"] * 5000)
    return (
        f"version: 1\ntrust_domain: bombs.geode.local\n"
        f"packages: {{app: {{tee: simulated, measurement: '{MEASUREMENT}'}}}}\n"
        f"services:\n  web:\n    package: app\n"
        f"    argv: [&t \"{{{{ 'x' * 1048576 }}}}\", {refs}]\n"
    ).encode()


def _concat_chain(term: str, budget: int) -> str:
    """``{{ term ~ term ~ ... }}`` as long as fits in ``budget`` characters."""
    count = budget // (len(term) + 3)
    return "{{ " + " ~ ".join([term] * count) + " }}"


_BIG = "'x' * 1048576"
_ENV = "services.web.env.X"

BOMBS: tuple[Bomb, ...] = (
    # -- the parse -------------------------------------------------------------------------
    Bomb("yaml billion laughs", _laughs(9, 9), "values"),
    Bomb("yaml laughs, wide", _laughs(4, 400), "values"),
    Bomb("yaml aliased big string", _alias_strings(), "aliases expanded"),
    Bomb("yaml merge keys", _merge_bomb(), "values"),
    Bomb(
        "yaml aliased templates", _aliased_templates(), "builds more than", "services.web.argv[16]"
    ),
    Bomb("yaml recursive alias", b"a: &a [1, *a]\n", "recursive alias"),
    Bomb("yaml deep flow", b"a: " + b"[" * 200_000 + b"]" * 200_000 + b"\n", "nesting depth"),
    Bomb(
        "yaml deep block",
        "".join(f"{' ' * i}k:\n" for i in range(1200)).encode() + b" " * 1200 + b"v\n",
        "nested deeper",
    ),
    Bomb("yaml many values", b"a: [" + b"0," * 400_000 + b"0]\n", "values"),
    Bomb("json deep", b'{"a": ' + b"[" * 400_000 + b"]" * 400_000 + b"}", "nested deeper"),
    Bomb("json deep objects", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
    Bomb("json many values", b'{"a": [' + b"0," * 500_000 + b"0]}", "values"),
    # -- the templates ---------------------------------------------------------------------
    Bomb(
        "list repeated, then joined",
        template_manifest(X="{{ ['x' * 1048576] * 1048576 ~ '' }}"),
        "list literal",
        _ENV,
    ),
    Bomb(
        "nested lists printed",
        template_manifest(X="{{ '' ~ [[[['x' * 1048576] * 1024] * 1024] * 1024] }}"),
        "list literal",
        _ENV,
    ),
    Bomb("tuple repeated", template_manifest(X="{{ ('x',) * 1048576 }}"), "tuple literal", _ENV),
    Bomb("dict printed", template_manifest(X="{{ '' ~ {'a': 'x' * 9} }}"), "dict literal", _ENV),
    Bomb(
        "text joined with ~",
        template_manifest(X=_concat_chain(_BIG, 2000)),
        "builds more than",
        _ENV,
    ),
    Bomb(
        "text added with +",
        template_manifest(X="{{ (" + " + ".join([_BIG] * 100) + ") == '' }}"),
        "builds more than",
        _ENV,
    ),
    Bomb(
        "text compared",
        template_manifest(X="{{ " + " and ".join([f"{_BIG} == {_BIG}"] * 50) + " }}"),
        "builds more than",
        _ENV,
    ),
    Bomb(
        "filters joined",
        template_manifest(X=_concat_chain("secrets.tls.private | pem", 900_000)),
        "tokens",
        _ENV,
    ),
    Bomb(
        "numbers joined",
        template_manifest(X=_concat_chain("(9 ** 64) ** 64", 900_000)),
        "tokens",
        _ENV,
    ),
    Bomb(
        "output of many expressions",
        template_manifest(X="{{ " + _BIG + " }}" * 40),
        "renders more than",
        _ENV,
    ),
    Bomb(
        "big values in many templates",
        template_manifest(**{f"X{i}": "{{ " + _BIG + " }}" for i in range(40)}),
        "builds more than",
        "services.web.env.X16",
    ),
    Bomb(
        "many templates",
        template_manifest(argv=[f"{{{{ {i} }}}}" for i in range(60_000)]),
        "templates",
        "services.web.argv[1024]",
    ),
    Bomb(
        "long template expression",
        template_manifest(X="{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}"),
        "tokens",
        _ENV,
    ),
    Bomb(
        "deep template expression",
        template_manifest(X="{{ " + "(" * 1300 + "1" + ")" * 1300 + " }}"),
        "template syntax error",
        _ENV,
    ),
    Bomb(
        "nested if-blocks",
        template_manifest(X="{% if 1 %}" * 150 + "{% endif %}" * 150),
        "IndentationError",
        _ENV,
    ),
    Bomb(
        "long template blocks",
        template_manifest(X="{% if 1 %}" * 20_000 + "{% endif %}" * 20_000),
        "tokens",
        _ENV,
    ),
    Bomb(
        "deep template blocks",
        template_manifest(X="{% if 1 %}" * 250 + "{% endif %}" * 250),
        "template syntax error",
        _ENV,
    ),
    # A quote and escaped quotes to the end: a scan that tries each quote again is quadratic.
    Bomb("json unterminated escapes", b'{"' + b'\\"' * (MIB // 2 - 1), "unterminated string"),
    # Values their type cannot hold: the YAML and JSON parsers raise ValueError on them.
    Bomb("yaml impossible date", b"version: 1\nwhen: 2001-13-45\n", "invalid value"),
    Bomb("yaml float tag", b"version: 1\nx: !!float xyz\n", "invalid value"),
    Bomb("yaml huge integer", b"version: 1\nx: " + b"9" * 5000 + b"\n", "invalid value"),
    Bomb("json huge integer", b'{"version": ' + b"9" * 5000 + b"}", "invalid value"),
)
