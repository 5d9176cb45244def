"""The CLI's modules share helpers through public names (``geode.cli._common``), never by
reaching for another module's private ones: what two commands share has one visible home."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import geode.cli
from geode.cli._common import read_evidence

CLI = Path(geode.cli.__file__).parent


def test_no_cli_module_imports_a_private_name() -> None:
    private = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geode"):
                private += [
                    f"{path.name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert private == []


def test_evidence_files_are_read_raw_or_in_their_envelope() -> None:
    raw = bytes(range(256)) * 8
    assert read_evidence(raw, "sgx").data == raw
    envelope = b'{"kind": "tdx", "data": "' + base64.b64encode(raw) + b'"}'
    found = read_evidence(envelope, "auto")
    assert (found.kind, found.data) == ("tdx", raw)
