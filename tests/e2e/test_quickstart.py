"""The quick start (``make quickstart``) runs and does what it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.e2e


def test_quickstart_demo() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "deployment statement verified" in out
    assert "hello: I am spiffe://quickstart.geode.local/service/hello" in out
    assert "$ geode bundle lock" in out
    assert "evil.py is outside the bundle" in out  # refused before it activates
    assert "hello: I am" not in out.split("A command outside the bundle is refused")[1]
    assert "activation denied: measurement mismatch" in out
    assert "quickstart: all steps behaved as expected" in out
