"""The hardware deployment recipes (deploy/hardware): the Gramine manifest template renders to
a manifest that fixes the Coordinator's arguments and opens nothing insecure; the confidential VM
script is valid bash and installs only what the lock pins by hash."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest

HARDWARE = Path(__file__).resolve().parents[2] / "deploy" / "hardware"
TEMPLATE = HARDWARE / "gramine" / "geode-coordinator.manifest.template"
LOCK = HARDWARE / "requirements.lock"
CVM = HARDWARE / "cvm" / "build.sh"


class _Gramine:
    """What gramine-manifest offers a template under ``gramine``."""

    @staticmethod
    def runtimedir() -> str:
        return "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"


class _Python:
    stdlib = "/usr/lib/python3.11"
    distlib = "/usr/lib/python3/dist-packages"


def render(sealing: str = "mrenclave", **overrides: object) -> dict[str, Any]:
    variables: dict[str, object] = {
        "gramine": _Gramine(),
        "python": _Python(),
        "entrypoint": "/usr/bin/python3.11",
        "arch_libdir": "/lib/x86_64-linux-gnu",
        "log_level": "error",
        "geode_prefix": "/srv/geode/build/geode",
        "data_dir": "/var/lib/geode",
        "isvprodid": 1,
        "isvsvn": 3,
        "sgx_sealing": sealing,
        **overrides,
    }
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text())
    return tomllib.loads(text.render(**variables))


def _keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in table.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _keys(value, f"{prefix}{key}.")
    return out


def test_the_gramine_manifest_fixes_argv_and_opens_nothing_insecure() -> None:
    manifest = render()
    keys = _keys(manifest)
    assert not [k for k in keys if "insecure__" in k]
    assert "loader.argv_src_file" not in keys  # argv from a host file
    assert "loader.env_src_file" not in keys
    argv = manifest["loader"]["argv"]
    assert argv[1:6] == ["-s", "-m", "geode", "coordinator", "--tee"]
    assert argv[argv.index("--tee") + 1] == "sgx-gramine"
    assert argv[argv.index("--sgx-sealing") + 1] == "mrenclave"
    assert not {"--simulation", "--platform-key", "--sealing-key", "--trust-platform-key"} & set(
        argv
    )
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False
    assert (sgx["isvprodid"], sgx["isvsvn"]) == (1, 3)
    assert "file:/srv/geode/build/geode/" in sgx["trusted_files"]
    assert "file:/usr/bin/python3.11" in sgx["trusted_files"]
    # Only the data directory is writable from the host's side, and it is not trusted code.
    assert sgx["allowed_files"] == ["file:/var/lib/geode/"]
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    assert mounts["/opt/geode"]["uri"] == "file:/srv/geode/build/geode"
    assert manifest["loader"]["env"]["PYTHONPATH"] == "/opt/geode"


def test_the_gramine_manifest_takes_the_sealing_choice() -> None:
    argv = render("mrsigner")["loader"]["argv"]
    assert argv[argv.index("--sgx-sealing") + 1] == "mrsigner"


def test_the_gramine_template_names_no_undefined_variable() -> None:
    with pytest.raises(jinja2.UndefinedError):
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
            TEMPLATE.read_text()
        ).render()
    render()  # every variable the Makefile passes is enough


def test_the_makefile_passes_every_template_variable() -> None:
    makefile = (HARDWARE / "gramine" / "Makefile").read_text()
    used = set(re.findall(r"\{\{ (\w+) \}\}", TEMPLATE.read_text())) - {"gramine", "python"}
    passed = set(re.findall(r"-D(\w+)=", makefile))
    assert used == passed
    assert "gramine-sgx-sign" in makefile
    assert "geode measure sgx" in makefile


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", [CVM, HARDWARE / "lock.sh"], ids=lambda p: p.name)
def test_the_scripts_are_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_cvm_recipe_installs_by_hash_and_measures_with_geode_measure() -> None:
    text = CVM.read_text()
    assert "--require-hashes" in text
    assert "requirements.lock" in text
    assert "--no-index" in text  # inside the image: only the wheels checked above
    assert "geode measure sev-snp" in text
    assert "SOURCE_DATE_EPOCH" in text
    assert "coordinator_args=(coordinator --tee auto" in text  # baked into the measured init
    assert "-I -B -m geode ${coordinator_args[*]}" in text


def test_the_lock_pins_every_requirement_to_a_sha256() -> None:
    entries = re.split(r"\n(?=[a-z])", LOCK.read_text().split("\n\n")[-1].strip())
    requirements = [e for e in entries if not e.startswith("#")]
    assert len(requirements) > 10
    names = set()
    for entry in requirements:
        match = re.fullmatch(
            r"([a-z0-9._-]+)==[\w.]+ \\\n    --hash=sha256:[0-9a-f]{64}", entry.strip()
        )
        assert match, entry
        names.add(match.group(1))
    assert {"cryptography", "pydantic", "uvicorn", "click"} <= names
    assert "geode" not in names  # built from the tree by the recipes
