"""A real ``geode coordinator`` process in hardware mode on a fake TEE platform.

Run as::

    python -m tests.support.tee_coordinator --platform DIR --kind sev-snp|tdx|sgx \\
        [--guest TREE] -- <geode coordinator arguments>

it loads the fake platform saved in ``DIR`` (``tests.support.hardware``: the same chip or CPU,
with the same secrets, across restarts), launches a guest on it (``--guest``: the one whose
device tree a test launched, with its identity; the platform's default launch without it) and
runs the real command, ``geode coordinator ...``, with the platform's test roots
and the guest's devices handed in the one way tests may: ``CliDeps`` as click's ``obj``. No flag
or environment variable of the production command is involved.

``TeeCoordinatorProcess`` starts it (a ``tests.support.CoordinatorProcess``: free ports, log,
``status()``, ``stop()``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from geode.attestation import SimulatedPlatform, TrustAnchors
from geode.cli import cli
from geode.cli._common import CliDeps
from geode.client import CoordinatorClient, VerificationPolicy, verify_statement
from geode.errors import StatementError
from geode.pki import certificate_der
from geode.protocol import DeploymentStatement, EvidenceBody, statement_binding
from geode.testing import isolated_env
from tests.support import REPO, CoordinatorProcess
from tests.support.hardware import (
    FakeGuest,
    FakeSgx,
    FakeSnp,
    FakeTdx,
    load_guest,
    load_platform,
)

__all__ = [
    "KINDS",
    "TeeCoordinatorProcess",
    "TeeTestbed",
    "check_replayed_statement_refused",
    "check_simulated_statement_refused",
    "coordinator_root",
    "hardware_manifest",
    "launch_guest",
    "main",
    "policy_file",
    "verify_cli",
]

# ``--kind`` (the platform's evidence kind) -> ``geode coordinator --tee``.
KINDS = {"sev-snp": "sev-snp", "tdx": "tdx", "sgx": "sgx-gramine"}


def launch_guest(platform_dir: Path, kind: str, tree: Path | None) -> FakeGuest:
    """The guest whose device tree is ``tree``, or one launched with the defaults, on the
    platform saved in ``platform_dir`` (which must be of ``kind``)."""
    platform = load_platform(platform_dir)
    if platform.kind != kind:
        raise SystemExit(f"{platform_dir} holds a {platform.kind} platform, not {kind}")
    guest: FakeGuest = platform.launch() if tree is None else load_guest(tree)
    if guest.platform.directory.resolve() != platform_dir.resolve():
        raise SystemExit(f"{tree} is a guest of {guest.platform.directory}, not {platform_dir}")
    return guest


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, coordinator_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.support.tee_coordinator")
    parser.add_argument("--platform", type=Path, required=True)
    parser.add_argument("--kind", choices=sorted(KINDS), required=True)
    parser.add_argument("--guest", type=Path, help="the device tree of a launched guest")
    options = parser.parse_args(ours)
    guest = launch_guest(options.platform, options.kind, options.guest)
    # The probe is told what the production probe is told (``--sgx-sealing``) by the command.
    cli.main(
        ["coordinator", *coordinator_args],
        prog_name="geode",
        obj=CliDeps(trust=guest.trust(), probe=guest.probe),
    )


class TeeCoordinatorProcess(CoordinatorProcess):
    """A Coordinator in hardware mode (``--tee`` of ``kind``) on the fake platform in
    ``platform_dir``, in the guest whose tree is ``guest`` (default: the platform's default
    launch); ``args`` go to ``geode coordinator``."""

    def __init__(
        self,
        platform_dir: Path,
        kind: str,
        data_dir: Path,
        env: Mapping[str, str],
        log: Path,
        *args: str,
        guest: Path | None = None,
    ) -> None:
        super().__init__(data_dir, env, log, *args)
        self.platform_dir = platform_dir
        self.kind = kind
        self.guest = guest

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "tests.support.tee_coordinator",
            "--platform", str(self.platform_dir), "--kind", self.kind,
            *(["--guest", str(self.guest)] if self.guest else []), "--",
            "--tee", KINDS[self.kind], "--data-dir", str(self.data_dir),
            "--client-addr", self.client_addr, "--mesh-addr", self.mesh_addr,
            *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> TeeCoordinatorProcess:
        """Start it and wait until it answers (``spawn``, then ``ready``)."""
        return self.spawn().ready(timeout)

    def spawn(self) -> TeeCoordinatorProcess:
        """Start it (from the repository root, where ``tests`` is a package), not waiting: so
        that several come up at once."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def ready(self, timeout: float = 60.0) -> TeeCoordinatorProcess:
        """Wait until its client API listens; ``RuntimeError`` with its log's end if it exits
        or does not answer."""
        assert self.process is not None, "not spawned"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Coordinator exited early:\n{self.log_tail(200)}")
            if self._listening():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the Coordinator did not come up:\n{self.log_tail()}")

    def _listening(self) -> bool:
        try:  # uvicorn listens once it is serving
            socket.create_connection(("127.0.0.1", self.client_port), timeout=1).close()
        except OSError:
            return False
        return True


class TeeTestbed:
    """One fake platform of ``kind`` in ``base`` and the Coordinators started on it; the
    environment of those processes keeps every Geode file under ``base``."""

    def __init__(self, base: Path, kind: str) -> None:
        self.base = base
        self.kind = kind
        self.platform_dir = base / "platform"
        self.platform = _PLATFORMS[kind].create(self.platform_dir)
        self.env = isolated_env(base)
        self.started: list[TeeCoordinatorProcess] = []

    def start(
        self, data_dir: Path | None = None, *args: str, launch: Mapping[str, Any] | None = None
    ) -> TeeCoordinatorProcess:
        """A Coordinator on this platform, in a guest launched with ``launch`` (the platform's
        ``launch`` parameters; its defaults without), started; stopped by ``stop()``."""
        return self.spawn(data_dir, *args, launch=launch).ready()

    def spawn(
        self, data_dir: Path | None = None, *args: str, launch: Mapping[str, Any] | None = None
    ) -> TeeCoordinatorProcess:
        """``start`` without waiting for it to answer (``ready()`` does)."""
        process = TeeCoordinatorProcess(
            self.platform_dir,
            self.kind,
            data_dir or self.base / "data",
            self.env,
            self.base / f"coordinator-{len(self.started)}.log",
            *args,
            guest=None if launch is None else self.guest(**launch).tree,
        )
        self.started.append(process)
        return process.spawn()

    def guest(self, **launch: Any) -> FakeGuest:
        """A guest of the same platform in this process (a service, a forger)."""
        guest: FakeGuest = self.platform.launch(**launch)
        return guest

    def trust(self) -> TrustAnchors:
        return self.platform.trust()

    def simulation_files(self) -> list[Path]:
        """Simulated platform or sealing key files the Coordinators made (none, on hardware)."""
        return [Path(self.env[name]) for name in _SIMULATION_FILES if Path(self.env[name]).exists()]

    def stop(self) -> None:
        for process in self.started:
            process.stop()


_SIMULATION_FILES = ("GEODE_PLATFORM_KEY", "GEODE_SEALING_KEY")
_PLATFORMS: dict[str, type[FakeSnp] | type[FakeTdx] | type[FakeSgx]] = {
    "sev-snp": FakeSnp,
    "tdx": FakeTdx,
    "sgx": FakeSgx,
}


def coordinator_root(process: CoordinatorProcess) -> x509.Certificate:
    """The root certificate a Coordinator serves (unverified: what the test then checks)."""
    with CoordinatorClient(process.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def policy_file(path: Path, *accept: Mapping[str, object], **options: object) -> Path:
    """A ``geode verify --policy`` file accepting ``accept``."""
    path.write_text(json.dumps({"version": 1, "accept": list(accept), **options}, indent=1))
    return path


# -- what every TEE's end-to-end tests check ------------------------------------------------


def hardware_manifest(package: Mapping[str, object], **extra: object) -> bytes:
    """A manifest whose one service, ``web``, runs ``package`` and receives a shared secret."""
    manifest = {
        "version": 1,
        "trust_domain": "hw.geode.local",
        "packages": {"app": dict(package)},
        "services": {
            "web": {"package": "app", "env": {"API_TOKEN": "{{ secrets.api_token | hex }}"}}
        },
        "secrets": {"api_token": {"type": "symmetric-key", "size": 128, "shared": True}},
        **extra,
    }
    return json.dumps(manifest, indent=1).encode()


def verify_cli(bed: TeeTestbed, process: CoordinatorProcess, *args: str) -> Result:
    """``geode verify --coordinator ... ARGS`` trusting the platform's test roots (``CliDeps``:
    the only way in), with the testbed's environment (where it pins the root)."""
    return CliRunner().invoke(
        cli,
        ["verify", "--coordinator", process.client_addr, *args],
        obj=CliDeps(trust=bed.trust()),
        env=bed.env,
    )


def _statements(process: CoordinatorProcess, *nonces: bytes) -> list[DeploymentStatement]:
    with CoordinatorClient(process.client_addr, insecure=True) as client:
        return [client.attestation(nonce) for nonce in nonces]


def check_replayed_statement_refused(
    bed: TeeTestbed, process: CoordinatorProcess, accept: Mapping[str, object]
) -> None:
    """A statement answers one nonce: the old one is refused for a new nonce, and so is a
    fresh statement carrying the old one's evidence (its report data binds the old nonce)."""
    policy = VerificationPolicy.load(policy_file(bed.base / "replay-policy.json", accept))
    trust = bed.trust()
    old_nonce, new_nonce = os.urandom(32), os.urandom(32)
    old, fresh = _statements(process, old_nonce, new_nonce)
    for statement, nonce in ((old, old_nonce), (fresh, new_nonce)):
        verified = verify_statement(statement, policy=policy, nonce=nonce, trust=trust)
        assert verified.claims.tee == bed.kind
        assert verified.simulation is False
    with pytest.raises(StatementError, match="another nonce"):
        verify_statement(old, policy=policy, nonce=new_nonce, trust=trust)
    replayed = fresh.model_copy(update={"evidence": old.evidence})
    with pytest.raises(StatementError, match="not bound to this root certificate"):
        verify_statement(replayed, policy=policy, nonce=new_nonce, trust=trust)
    # ``geode verify`` of the saved statements, with the nonce the verifier asked for.
    cases = [
        (old, old_nonce, None),
        (old, new_nonce, "another nonce"),
        (replayed, new_nonce, "not bound to this root certificate"),
    ]
    for statement, nonce, refusal in cases:
        saved = bed.base / "replayed.json"
        saved.write_text(json.dumps(statement.to_json()))
        result = CliRunner().invoke(
            cli,
            ["verify", "--statement", str(saved), "--nonce", nonce.hex(),
             "--policy", str(bed.base / "replay-policy.json")],
            obj=CliDeps(trust=trust),
            env=bed.env,
        )  # fmt: skip
        if refusal is None:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 1, result.output
            assert "REJECTED" in result.output
            assert refusal in result.output


def check_simulated_statement_refused(
    bed: TeeTestbed, process: CoordinatorProcess, accept: Mapping[str, object]
) -> None:
    """Evidence a simulated platform key signs, bound to the real statement's root, manifest
    and nonce, cannot pass for the hardware Coordinator: not while the statement says
    hardware, not when it says simulation (the policy accepts the hardware TEE only), not
    even with that platform key trusted."""
    nonce = os.urandom(32)
    (real,) = _statements(process, nonce)
    root = x509.load_pem_x509_certificate(real.root_certificate.encode())
    manifest = bytes.fromhex(real.manifest_sha256) if real.manifest_sha256 else bytes(32)
    binding = statement_binding(certificate_der(root), manifest, nonce)
    key_file = bed.base / "forger" / "platform.key"
    forger = SimulatedPlatform.load_or_create(key_file)
    claimed = bytes.fromhex(str(accept.get("measurement", "00" * 32)))[:32]
    evidence = EvidenceBody.of(forger.quote(claimed, binding))
    as_hardware = real.model_copy(update={"evidence": evidence})
    unflagged = real.model_copy(update={"evidence": evidence, "tee": "simulated"})
    as_simulation = real.model_copy(
        update={"evidence": evidence, "tee": "simulated", "simulation": True}
    )
    policy_path = policy_file(bed.base / "forged-policy.json", accept)
    policy = VerificationPolicy.load(policy_path)
    keys = [forger.public_key]
    trust = bed.trust()
    assert verify_statement(real, policy=policy, nonce=nonce, trust=trust).claims.tee == bed.kind
    with pytest.raises(StatementError, match=f"says tee '{bed.kind}', its evidence is 'simul"):
        verify_statement(as_hardware, policy=policy, platform_keys=keys, nonce=nonce, trust=trust)
    with pytest.raises(StatementError, match="claims hardware, its evidence is simulated"):
        verify_statement(unflagged, policy=policy, platform_keys=keys, nonce=nonce, trust=trust)
    with pytest.raises(StatementError, match="tee mismatch"):
        verify_statement(as_simulation, policy=policy, platform_keys=keys, nonce=nonce, trust=trust)
    for forged in (as_hardware, unflagged, as_simulation):
        saved = bed.base / "forged.json"
        saved.write_text(json.dumps(forged.to_json()))
        refused = CliRunner().invoke(
            cli,
            ["verify", "--statement", str(saved), "--policy", str(policy_path),
             "--platform-key", str(key_file)],
            obj=CliDeps(trust=trust),
            env=bed.env,
        )  # fmt: skip
        assert refused.exit_code == 1, refused.output
        assert "REJECTED" in refused.output


if __name__ == "__main__":
    main()
