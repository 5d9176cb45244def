"""Manifests that cost far more than their size are refused, quickly, with a ManifestError that
names the field (or "manifest") and the bound: the parse (alias expansion, depth, values), the
templates (values built, tokens, output, their number), and ``geode manifest check`` offline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from geode.errors import ManifestError
from geode.manifest import (
    MAX_MANIFEST_DEPTH,
    MAX_MANIFEST_NODES,
    MAX_MANIFEST_TEMPLATES,
    load_manifest,
    parse_manifest_data,
)
from tests.support import geode_cli
from tests.support.bombs import BOMBS, Bomb, template_manifest

# Generous for a loaded machine: the worst of them takes about 3 s (``test_attack_bombs``).
QUICKLY = 15.0


@pytest.mark.parametrize("bomb", BOMBS, ids=[bomb.name for bomb in BOMBS])
def test_each_bomb_is_refused_quickly_naming_the_bound(bomb: Bomb) -> None:
    started = time.monotonic()
    with pytest.raises(ManifestError) as refused:
        load_manifest(bomb.raw)
    assert time.monotonic() - started < QUICKLY
    assert refused.value.path == bomb.path
    assert bomb.fragment in refused.value.reason


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"a: " + b"[" * 100_000 + b"]" * 100_000,
        b"a:\n" + b"".join(b" " * i + b"- \n" for i in range(1, 1200)),
    ],
    ids=["json", "yaml flow", "yaml block"],
)
def test_deep_documents_are_a_manifest_error_not_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(ManifestError) as refused:
        parse_manifest_data(raw)
    assert refused.value.path == "manifest"
    assert "nest" in refused.value.reason


def test_the_bounds_leave_room_for_real_manifests() -> None:
    # As deep as allowed, as many values as allowed, aliases that shorten, templates at the limit.
    deep: object = "v"
    for _ in range(MAX_MANIFEST_DEPTH - 1):
        deep = {"k": deep}
    assert parse_manifest_data(json.dumps(deep).encode()) == deep
    values = ", ".join(["1"] * (MAX_MANIFEST_NODES // 2))
    assert len(parse_manifest_data(f"a: [{values}]".encode())["a"]) == MAX_MANIFEST_NODES // 2
    aliased = b"a: &a {x: [1, 2, 3]}\nb: *a\nc: {<<: *a, y: 2}\n"
    assert parse_manifest_data(aliased)["c"] == {"x": [1, 2, 3], "y": 2}
    many = [f"--n={{{{ {i} }}}}" for i in range(MAX_MANIFEST_TEMPLATES - 1)]
    load_manifest(template_manifest(argv=many, X="{{ 'x' * 1048576 }}"))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{{ ['x'] * 3 ~ '' }}", "list literal"),
        ("{{ 'x' * 1048576 ~ 'x' * 1048576 ~ 'x' * 1048576 ~ 'x' * 1048576 }}", "builds more"),
        ("{{ ('x' * 1048576 + 'x' * 1048576) + ('x' * 1048576 + 'x') }}", "builds more"),
        ("{{ " + " ~ ".join(["geode.root_ca | pem"] * 1000) + " }}", "tokens"),
        ("{{ none * 2 }}", "takes text and numbers"),
        ("{{ secrets.k * 2 }}", "needs a filter"),
        ("{{ 'a' ~ secrets.k }}", "needs a filter"),
    ],
)
def test_templates_are_bounded_by_what_they_build(source: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as refused:
        load_manifest(template_manifest(X=source))
    assert refused.value.path == "services.web.env.X"
    assert fragment in refused.value.reason


def test_manifest_check_refuses_a_bomb_in_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"a": ' * 50_000 + b"1" + b"}" * 50_000)
    laughs = tmp_path / "laughs.yaml"
    laughs.write_bytes(next(b.raw for b in BOMBS if b.name == "yaml billion laughs"))
    for file in (deep, laughs):
        result = geode_cli("manifest", "check", str(file), env=dict(os.environ))
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: manifest:") or "manifest:" in lines[0], lines


def test_manifest_check_has_the_coordinators_budget(tmp_path: Path) -> None:
    costly = tmp_path / "costly.yaml"
    # Within every in-process bound; a fork and a thousand templates take far more than 50 ms.
    costly.write_bytes(template_manifest(argv=[f"--n={{{{ {i} }}}}" for i in range(1000)]))
    result = geode_cli(
        "manifest", "check", "--manifest-time-budget", "50ms", str(costly), env=dict(os.environ)
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == ["Error: manifest: validating it takes longer than 0.05 s"], lines
    within = geode_cli("manifest", "check", str(costly), env=dict(os.environ))
    assert within.returncode == 0, within.stderr
    assert "valid (" in within.stdout


def test_the_compiled_template_cache_keeps_small_templates_only() -> None:
    from geode.manifest import _template

    cached = _template._compile_cached
    assert cached.cache_info().maxsize is not None
    assert cached.cache_info().maxsize <= 256
    cached.cache_clear()
    before = cached.cache_info().currsize
    load_manifest(template_manifest(X="{{ secrets.k | hex }}" + "y" * 5000))
    assert cached.cache_info().currsize == before  # a large source is compiled, not kept
    load_manifest(template_manifest(X="{{ secrets.k | hex }}-small-one"))
    assert cached.cache_info().currsize == before + 1
