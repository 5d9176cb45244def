"""``geode bundle gramine-manifest``: the Gramine manifest of a Python service whose trusted
files are its bundle. Checked for structure here (parsed with tomllib); Gramine is not installed,
so nothing is rendered, signed or run under it."""

from __future__ import annotations

import hashlib
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from geode.attestation import bundle_entries
from geode.cli import cli
from geode.runtime import write_lock

PYTHON = Path(sys.executable)


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A bundle with a script, a package with data, and its interpreter locked."""
    bundle = tmp_path / "svc"
    (bundle / "lib" / "__pycache__").mkdir(parents=True)
    (bundle / "main.py").write_text("import lib\nprint(lib.GREETING)\n")
    (bundle / "lib" / "__init__.py").write_text("GREETING = 'hello'\n")
    (bundle / "lib" / "data.bin").write_bytes(bytes(range(256)))
    (bundle / "lib" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"changes as it runs")
    # The interpreter, found where this test's Python is (a venv's python3 may be a link).
    write_lock(bundle, ["python3"], path=str(PYTHON.parent))
    return bundle


@pytest.fixture
def root_ca(tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


def manifest(bundle: Path, root_ca: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    args = ["bundle", "gramine-manifest", str(bundle), "--service", "web",
            "--root-ca", str(root_ca), "--python", str(PYTHON), *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        return result.exit_code, {}, result.stderr
    return 0, tomllib.loads(result.stdout), result.stdout


def test_the_trusted_files_are_the_bundle_with_their_hashes(service: Path, root_ca: Path) -> None:
    code, doc, text = manifest(service, root_ca, "--entrypoint", "main.py")
    assert code == 0, text
    pinned = {
        entry["uri"]: entry["sha256"]
        for entry in doc["sgx"]["trusted_files"]
        if isinstance(entry, dict)
    }
    expected = {
        f"file:{path.resolve()}": hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(service.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert pinned == expected
    assert f"file:{(service / 'geode.lock').resolve()}" in pinned  # the lock is the bundle's too
    assert len(pinned) == 4
    # Nothing else of the bundle is trusted by directory (which the signer would hash afresh).
    strings = [entry for entry in doc["sgx"]["trusted_files"] if isinstance(entry, str)]
    assert not [uri for uri in strings if uri.startswith(f"file:{service.resolve()}")]


def test_debug_is_off_and_nothing_is_merely_allowed(service: Path, root_ca: Path) -> None:
    _, doc, text = manifest(service, root_ca, "--entrypoint", "main.py")
    assert doc["sgx"]["debug"] is False
    assert "allowed_files" not in doc["sgx"]
    assert doc["sgx"]["remote_attestation"] == "dcap"
    assert "insecure__" not in text  # neither the host's arguments nor its environment
    assert set(doc["loader"]["env"]) == {
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "HOME",
    }


def test_the_enclave_runs_the_entrypoint_under_geode_run(service: Path, root_ca: Path) -> None:
    _, doc, _ = manifest(service, root_ca, "--entrypoint", "./main.py", "--coordinator", "c:2001")
    argv = doc["loader"]["argv"]
    assert argv[:5] == ["python3", "-s", "-m", "geode", "run"]
    split = argv.index("--")
    options = dict(zip(argv[5:split:2], argv[6:split:2], strict=True))
    assert options == {
        "--service": "web",
        "--coordinator": "c:2001",
        "--bundle": str(service.resolve()),
        "--root-ca": str(root_ca.resolve()),
        "--quote-provider": "gramine",
        "--runtime-dir": "/geode-runtime",
    }
    assert argv[split + 1 :] == ["python3", "main.py"]  # the locked interpreter, the script
    entry = (service / argv[-1]).resolve()
    assert entry.is_relative_to(service.resolve())
    assert doc["libos"]["entrypoint"] == os.path.realpath(PYTHON)
    trusted = doc["sgx"]["trusted_files"]
    assert f"file:{os.path.realpath(PYTHON)}" in trusted
    assert f"file:{root_ca.resolve()}" in trusted
    # The Geode runtime is trusted as a directory, and on the enclave's module path.
    geode_root = Path(__import__("geode").__file__).resolve().parent.parent
    assert f"file:{geode_root}/" in trusted or any(
        isinstance(t, str) and t.endswith("/") and geode_root.is_relative_to(t[5:-1])
        for t in trusted
    )
    assert str(geode_root) in doc["loader"]["env"]["PYTHONPATH"].split(":")


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [("../outside.py", "not a file inside the bundle"), ("missing.py", "not a file inside")],
)
def test_an_entrypoint_outside_the_bundle_is_refused(
    service: Path, root_ca: Path, entrypoint: str, message: str
) -> None:
    (service.parent / "outside.py").write_text("print('not in the bundle')\n")
    code, _, err = manifest(service, root_ca, "--entrypoint", entrypoint)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_an_unlocked_interpreter_and_a_link_are_refused(service: Path, root_ca: Path) -> None:
    (service / "geode.lock").unlink()
    code, _, err = manifest(service, root_ca, "--entrypoint", "main.py")
    assert code == 1
    assert "does not lock the interpreter" in err
    write_lock(service, ["python3"], path=str(PYTHON.parent))
    (service / "link.py").symlink_to(service / "main.py")
    code, _, err = manifest(service, root_ca, "--entrypoint", "main.py")
    assert code == 1
    assert "link.py: not a regular file" in err


def test_the_output_option_writes_a_file(service: Path, root_ca: Path, tmp_path: Path) -> None:
    out = tmp_path / "web.manifest.template"
    code, _, text = manifest(service, root_ca, "--entrypoint", "main.py", "--output", str(out))
    assert code == 0, text
    doc = tomllib.loads(out.read_text())
    assert doc["sgx"]["debug"] is False


@pytest.mark.parametrize("directory", [False, True])
def test_a_link_is_refused_saying_it_is_one(
    service: Path, root_ca: Path, tmp_path: Path, directory: bool
) -> None:
    # Staging and the measurement keep a link inside the bundle; a trusted file cannot be one.
    if directory:
        (service / "shared").symlink_to("lib", target_is_directory=True)
    else:
        (service / "shared").symlink_to("main.py")
    code, _, err = manifest(service, root_ca, "--entrypoint", "main.py")
    assert code == 1
    assert "shared: not a regular file (a symbolic link)" in err


def test_the_trusted_files_are_the_files_of_the_one_bundle_walk(
    service: Path, root_ca: Path
) -> None:
    (service / "lib" / "stale.pyc").write_bytes(b"old")
    (service / "lib" / "nested" / "__pycache__").mkdir(parents=True)
    (service / "lib" / "nested" / "__pycache__" / "notes.txt").write_text("skipped")
    code, doc, text = manifest(service, root_ca, "--entrypoint", "main.py")
    assert code == 0, text
    root = service.resolve()
    listed = [
        entry["uri"].removeprefix(f"file:{root}/")
        for entry in doc["sgx"]["trusted_files"]
        if isinstance(entry, dict)
    ]
    walked = [e.rel for e in bundle_entries(service) if e.kind == "file"]
    assert (
        sorted(listed)
        == sorted(walked)
        == ["geode.lock", "lib/__init__.py", "lib/data.bin", "main.py"]
    )
