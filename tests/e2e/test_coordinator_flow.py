"""The set-up and activation flow end to end: real Coordinator process, real CLI, real TLS."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from geode.attestation import measure_bundle
from tests.support import CoordinatorProcess, geode_cli, sample_manifest

pytestmark = pytest.mark.e2e

# The service's command: report what it received, then exit with a distinctive status.
REPORT = r"""
import json, os, stat, sys
files = os.environ["GEODE_SECRETS_DIR"]
out = {
    "env": {k: v for k, v in os.environ.items()
            if k.startswith("GEODE_") or k in ("API_TOKEN", "GREETING")},
    "argv": sys.argv[2:],
    "cwd": os.getcwd(),
    "cert": open(os.environ["GEODE_CERT_FILE"]).read(),
    "ca": open(os.environ["GEODE_CA_FILE"]).read(),
    "root": open(os.environ["GEODE_ROOT_CA_FILE"]).read(),
    "db_key": open(os.path.join(files, "db.key"), "rb").read().hex(),
    "ca_bundle": open(os.path.join(files, "ca-bundle.pem")).read(),
    "modes": {n: oct(stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode))
              for d in (files, os.path.dirname(os.environ["GEODE_KEY_FILE"]))
              for n in os.listdir(d)},
}
open(sys.argv[1], "w").write(json.dumps(out))  # the caller's env does not reach the service
sys.exit(7)
"""


def _verified_setup(coordinator: CoordinatorProcess, manifest: Path, env: dict[str, str]) -> None:
    measurement = geode_cli("measure", "--coordinator-package", env=env, check=True).stdout
    verified = geode_cli(
        "verify",
        "--coordinator",
        coordinator.client_addr,
        "--measurement",
        measurement.strip(),
        env=env,
        check=True,
    )
    assert "deployment statement verified" in verified.stdout
    assert "pinned root" in verified.stdout
    geode_cli(
        "manifest",
        "set",
        str(manifest),
        "--coordinator",
        coordinator.client_addr,
        env=env,
        check=True,
    )


def test_happy_path(
    coordinator: CoordinatorProcess,
    geode_env: dict[str, str],
    manifest_for: Callable[..., str],
    bundle: Path,
    tmp_path: Path,
) -> None:
    (bundle / "report.py").write_text(REPORT)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest_for())
    _verified_setup(coordinator, manifest, geode_env)

    report = tmp_path / "report.json"
    result = geode_cli(
        "run",
        "--service",
        "web",
        "--coordinator",
        coordinator.mesh_addr,
        "--bundle",
        str(bundle),
        "--",
        "python3",
        "report.py",
        str(report),
        env=geode_env,
    )
    assert result.returncode == 7, result.stderr  # the app's exit status comes back out
    assert "SIMULATION" in result.stderr
    got = json.loads(report.read_text())

    spiffe = "spiffe://test.geode.local/service/web"
    assert got["env"]["GEODE_SPIFFE_ID"] == spiffe
    assert got["env"]["GREETING"] == "hello"
    # It ran from a private copy of the bundle, which is gone once the launcher exited.
    copy = Path(got["env"]["GEODE_BUNDLE_DIR"])
    assert got["env"]["GEODE_BUNDLE_LOCK"] == str(copy / "geode.lock")
    assert got["cwd"] == str(copy) != str(bundle)
    assert not copy.exists()
    token = got["env"]["API_TOKEN"]
    assert len(bytes.fromhex(token)) == 16
    assert got["argv"] == [f"--token={token}"]
    assert len(bytes.fromhex(got["db_key"])) == 32

    leaf, mesh_in_chain = x509.load_pem_x509_certificates(got["cert"].encode())
    mesh = x509.load_pem_x509_certificate(got["ca"].encode())
    root = x509.load_pem_x509_certificate(got["root"].encode())
    assert mesh_in_chain == mesh
    sans = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert set(sans.get_values_for_type(x509.DNSName)) == {"web", "localhost"}
    assert leaf.subject.rfc4514_string() == f"CN={got['env']['GEODE_INSTANCE_ID']}"
    leaf.verify_directly_issued_by(mesh)
    mesh.verify_directly_issued_by(root)
    pinned = Path(geode_env["GEODE_CONFIG_DIR"]) / "root.pem"
    assert x509.load_pem_x509_certificate(pinned.read_bytes()) == root
    assert x509.load_pem_x509_certificate(got["ca_bundle"].encode()) == root
    assert set(got["modes"].values()) == {"0o600"}

    # Credentials are gone once the command has exited.
    assert not Path(got["env"]["GEODE_SECRETS_DIR"]).exists()
    assert not Path(got["env"]["GEODE_KEY_FILE"]).exists()

    status = json.loads(
        geode_cli(
            "status", "--json", "--coordinator", coordinator.client_addr, env=geode_env, check=True
        ).stdout
    )
    assert status["state"] == "active"
    assert status["activations"] == {"web": 1}

    verified = geode_cli(
        "manifest", "verify", str(manifest), "--coordinator", coordinator.client_addr, env=geode_env
    )
    assert verified.returncode == 0, verified.stderr
    other = tmp_path / "other.json"
    other.write_text(manifest.read_text() + "\n")
    mismatch = geode_cli(
        "manifest", "verify", str(other), "--coordinator", coordinator.client_addr, env=geode_env
    )
    assert mismatch.returncode == 1
    assert "MISMATCH" in mismatch.stderr

    got_manifest = geode_cli(
        "manifest", "get", "--coordinator", coordinator.client_addr, env=geode_env, check=True
    )
    assert got_manifest.stdout == manifest.read_text()
    root_out = tmp_path / "root-out.pem"
    geode_cli(
        "certificate",
        "root",
        "-o",
        str(root_out),
        "--coordinator",
        coordinator.client_addr,
        env=geode_env,
        check=True,
    )
    assert x509.load_pem_x509_certificate(root_out.read_bytes()) == root


def test_verify_rejects_wrong_measurement_and_pins_nothing(
    coordinator: CoordinatorProcess, geode_env: dict[str, str]
) -> None:
    result = geode_cli(
        "verify",
        "--coordinator",
        coordinator.client_addr,
        "--measurement",
        "00" * 32,
        env=geode_env,
    )
    assert result.returncode == 1
    assert "REJECTED" in result.stderr
    assert "measurement mismatch" in result.stderr
    assert not (Path(geode_env["GEODE_CONFIG_DIR"]) / "root.pem").exists()
    # Without a pinned root, client commands refuse to talk.
    status = geode_cli("status", "--coordinator", coordinator.client_addr, env=geode_env)
    assert status.returncode == 1
    assert "geode verify" in status.stderr


def test_saved_statement_verifies_offline(
    coordinator: CoordinatorProcess, geode_env: dict[str, str], tmp_path: Path
) -> None:
    measurement = geode_cli(
        "measure", "--coordinator-package", env=geode_env, check=True
    ).stdout.strip()
    saved = tmp_path / "statement.json"
    geode_cli(
        "verify",
        "--coordinator",
        coordinator.client_addr,
        "--measurement",
        measurement,
        "--save",
        str(saved),
        env=geode_env,
        check=True,
    )
    offline = geode_cli(
        "verify", "--statement", str(saved), "--measurement", measurement, env=geode_env
    )
    assert offline.returncode == 0, offline.stderr
    assert "freshness is not checked" in offline.stderr
    statement = json.loads(saved.read_text())
    statement["manifest_sha256"] = "11" * 32
    saved.write_text(json.dumps(statement))
    tampered = geode_cli(
        "verify", "--statement", str(saved), "--measurement", measurement, env=geode_env
    )
    assert tampered.returncode == 1
    assert "REJECTED" in tampered.stderr


def test_run_refuses_without_trusted_root(
    coordinator: CoordinatorProcess, geode_env: dict[str, str], bundle: Path
) -> None:
    result = geode_cli(
        "run",
        "--service",
        "web",
        "--coordinator",
        coordinator.mesh_addr,
        "--bundle",
        str(bundle),
        "--",
        "true",
        env=geode_env,
    )
    assert result.returncode == 1
    assert "no trusted root" in result.stderr
    assert "Traceback" not in result.stderr


def test_manifest_check_reports_the_path(
    tmp_path: Path, geode_env: dict[str, str], bundle: Path
) -> None:
    data = json.loads(sample_manifest(measure_bundle(bundle).hex()))
    data["services"]["web"]["env"]["API_TOKEN"] = "{{ secrets.api_tokn | hex }}"
    text = json.dumps(data)
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = geode_cli("manifest", "check", str(bad), env=geode_env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: services.web.env.API_TOKEN: unknown secret 'api_tokn'"]
    good = tmp_path / "good.json"
    good.write_text(sample_manifest(measure_bundle(bundle).hex()))
    ok = geode_cli("manifest", "check", str(good), env=geode_env)
    assert ok.returncode == 0
    assert "valid" in ok.stdout


def test_measure_matches_library(bundle: Path, geode_env: dict[str, str]) -> None:
    out = geode_cli("measure", str(bundle), env=geode_env, check=True).stdout.strip()
    assert out == measure_bundle(bundle).hex()
    (bundle / "app.py").write_text("print('tampered')\n")
    assert geode_cli("measure", str(bundle), env=geode_env, check=True).stdout.strip() != out


def test_key_files_are_private(coordinator: CoordinatorProcess, geode_env: dict[str, str]) -> None:
    for name in ("GEODE_SEALING_KEY", "GEODE_PLATFORM_KEY"):
        mode = stat.S_IMODE(os.stat(geode_env[name]).st_mode)
        assert mode == 0o600, (name, oct(mode))
    # The fresh root is saved only with the first manifest: a state without one is never on disk.
    assert not (coordinator.data_dir / "state.sealed").exists()


def test_verify_with_a_policy_file(
    coordinator: CoordinatorProcess, geode_env: dict[str, str], tmp_path: Path
) -> None:
    measurement = geode_cli(
        "measure", "--coordinator-package", env=geode_env, check=True
    ).stdout.strip()
    policy = tmp_path / "coordinator-policy.yaml"
    policy.write_text(f'tee: simulated\nmeasurement: "{measurement}"\ndebug: false\n')
    ok = geode_cli(
        "verify", "--coordinator", coordinator.client_addr, "--policy", str(policy), env=geode_env
    )
    assert ok.returncode == 0, ok.stderr
    policy.write_text('tee: sgx\nmeasurement: "' + "00" * 32 + '"\n')
    wrong = geode_cli(
        "verify", "--coordinator", coordinator.client_addr, "--policy", str(policy), env=geode_env
    )
    assert wrong.returncode == 1
    assert "tee mismatch" in wrong.stderr
    policy.write_text("tee: simulated\nmeasurment: abc\n")
    bad = geode_cli(
        "verify", "--coordinator", coordinator.client_addr, "--policy", str(policy), env=geode_env
    )
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "measurment" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--insecure", "--coordinator", "127.0.0.1:1"),
        ("verify", "--coordinator", "127.0.0.1:1", "--measurement", "00" * 32),
        ("coordinator", "--data-dir", "/tmp/x", "--client-addr", "nonsense"),
        ("manifest", "check", "/nonexistent.yaml"),
        ("verify", "--measurement", "00" * 32),
    ],
)
def test_cli_errors_are_one_line(args: tuple[str, ...], geode_env: dict[str, str]) -> None:
    result = geode_cli(*args, env=geode_env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Error" in result.stderr
