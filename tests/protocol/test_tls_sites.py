"""Every ``SSLContext`` in ``src/`` is made by ``geode.protocol._tls``: a context made anywhere
else would escape the common policy (and could quietly verify nothing)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "geode"
THE_MODULE = SRC / "protocol" / "_tls.py"

# A context made by hand, or one httpx makes for us with verification off.
CONSTRUCTION = re.compile(r"\bSSLContext\(|\bcreate_default_context\(|\bverify\s*=\s*False\b")


def test_contexts_are_made_in_the_one_module_only() -> None:
    found = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path != THE_MODULE
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if CONSTRUCTION.search(line)
    ]
    assert found == [], "make TLS contexts with geode.protocol's role functions:\n" + "\n".join(
        found
    )


def test_the_pattern_finds_what_it_is_for() -> None:
    for line in (
        "context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)",
        "ctx = ssl.create_default_context(cafile=ca)",
        "httpx.Client(verify=False)",
    ):
        assert CONSTRUCTION.search(line), line
