"""``geode run`` takes its quote provider from --quote-provider or GEODE_QUOTE_PROVIDER; a named
provider that is not present stops it with one line before anything is contacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def geode_run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    command = ["run", "--service", "s", "--bundle", str(bundle), "--coordinator", "127.0.0.1:9"]
    return subprocess.run(
        [sys.executable, "-m", "geode", *command, "--insecure", *args, "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GEODE_CONFIG_DIR": str(tmp_path / "config"), **(env or {})},
    )


@pytest.mark.skipif(Path("/dev/sev-guest").exists(), reason="this machine has /dev/sev-guest")
def test_an_absent_named_provider_is_one_line(tmp_path: Path) -> None:
    done = geode_run(tmp_path, "--quote-provider", "sev-guest")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "quote provider 'sev-guest' is not available here" in done.stderr


@pytest.mark.skipif(Path("/dev/attestation").exists(), reason="this machine has Gramine")
def test_the_environment_names_the_provider(tmp_path: Path) -> None:
    done = geode_run(tmp_path, env={"GEODE_QUOTE_PROVIDER": "gramine"})
    assert done.returncode == 1
    assert "quote provider 'gramine' is not available here" in done.stderr


def test_an_unknown_provider_is_refused_by_the_option(tmp_path: Path) -> None:
    done = geode_run(tmp_path, "--quote-provider", "tpm")
    assert done.returncode == 2
    assert "'tpm' is not one of" in done.stderr
