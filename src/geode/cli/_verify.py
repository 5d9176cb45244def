"""``geode verify``: check a Coordinator's deployment statement and pin its root."""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode._files import replace_file
from geode.attestation import default_platform_key_path, load_platform_public_key
from geode.cli._common import warn
from geode.client import CoordinatorClient, pin_root, verify_statement
from geode.errors import GeodeError, ManifestError, StatementError
from geode.manifest import load_package
from geode.protocol import DeploymentStatement
from geode.tee import ReferenceValues

__all__ = ["reference_platform_keys", "verify"]


def reference_platform_keys(paths: tuple[Path, ...] | None) -> list[Ed25519PublicKey]:
    """The simulated platform keys to trust: those given, else this machine's, if any."""
    if paths:
        return [load_platform_public_key(p) for p in paths]
    local = default_platform_key_path()
    return [load_platform_public_key(local)] if local.exists() else []


def _reference(measurement: str | None, policy: Path | None) -> ReferenceValues:
    if (measurement is None) == (policy is None):
        raise click.UsageError("give exactly one of --measurement and --policy")
    if measurement is not None:
        value = measurement.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise click.BadParameter("expected 64 hex digits", param_hint="--measurement")
        return ReferenceValues(tee="simulated", measurement=value)
    assert policy is not None
    try:
        return load_package(policy.read_bytes())
    except ManifestError as exc:
        raise GeodeError(f"{policy}: {exc}") from None


@click.command()
@click.option(
    "--coordinator",
    "address",
    envvar="GEODE_COORDINATOR",
    help="Client API address HOST:PORT to fetch a fresh statement from.",
)
@click.option(
    "--statement",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify a saved statement offline instead.",
)
@click.option("--measurement", help="Expected Coordinator measurement (hex, simulation).")
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Expected Coordinator package (YAML/JSON: tee, measurement or signer, ...).",
)
@click.option(
    "--platform-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Trusted simulated platform key (default: this machine's).",
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the verified statement as JSON.",
)
def verify(
    address: str | None,
    statement: Path | None,
    measurement: str | None,
    policy: Path | None,
    platform_key: tuple[Path, ...],
    save: Path | None,
) -> None:
    """Verify the deployment statement and pin the deployment's root certificate."""
    if (address is None) == (statement is None):
        raise click.UsageError("give exactly one of --coordinator and --statement")
    reference = _reference(measurement, policy)
    keys = reference_platform_keys(platform_key or None)
    try:
        if address is not None:
            # First contact: the channel is not trusted yet; the statement is what we verify.
            with CoordinatorClient(address, insecure=True) as client:
                verified = client.verified_statement(reference=reference, platform_keys=keys)
        else:
            assert statement is not None
            try:
                saved = json.loads(statement.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GeodeError(f"{statement}: not a JSON statement ({exc})") from None
            document = DeploymentStatement.from_json(saved)
            verified = verify_statement(document, reference=reference, platform_keys=keys)
    except StatementError as exc:
        raise click.ClickException(f"deployment statement REJECTED: {exc}") from None
    if verified.simulation:
        warn("SIMULATION: the Coordinator's evidence comes from a simulated platform key")
    if address is None:
        warn("offline verification: the statement's freshness is not checked")
    click.echo("deployment statement verified")
    click.echo(f"  tee:          {verified.claims.tee}")
    click.echo(f"  measurement:  {verified.claims.measurement.hex()}")
    click.echo(f"  state:        {verified.state}")
    click.echo(f"  root:         sha256:{verified.root_fingerprint}")
    manifest_hex = verified.manifest_sha256.hex() if verified.manifest_sha256 else "(not set)"
    click.echo(f"  manifest:     {manifest_hex}")
    if address is not None:
        # The channel must end at the verified root's holder before we pin it.
        with CoordinatorClient(address, root=verified.root) as client:
            client.status()
        path = pin_root(address, verified.root)
        click.echo(f"  pinned root:  {path}")
    if save is not None:
        saved = json.dumps(verified.statement.to_json(), indent=2).encode()
        replace_file(save, saved, mode=0o644)  # a link at SAVE is replaced, not followed
        click.echo(f"  saved:        {save}")
