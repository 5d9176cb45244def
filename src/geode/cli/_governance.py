"""``geode secret``, ``geode audit`` and ``geode recover``: what users and recovery parties do."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from geode._files import create_private_file
from geode.cli._common import (
    cli_deps,
    coordinator_option,
    open_client,
    resolve_root,
    root_option,
    user_options,
    warn,
)
from geode.cli._verify import load_policy, reference_platform_keys
from geode.client import (
    CoordinatorClient,
    prepare_share_upload,
    verify_audit_log,
)
from geode.errors import StatementError
from geode.pki import fingerprint

__all__ = ["audit", "recover", "secret"]


@click.group()
def secret() -> None:
    """Read and set the secrets your roles grant."""


@secret.command("set")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@coordinator_option
@root_option
@user_options
def set_secret(
    name: str, file: str, address: str, root_ca: Path | None, user_cert: Path, user_key: Path
) -> None:
    """Set the user-defined secret NAME from FILE ('-': standard input).

    plain: any bytes; symmetric-key: exactly its size; certificates: the certificate and its
    private key in PEM. Services get the value on their next activation.
    """
    value = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        client.set_secret(name, value)
    click.echo(f"secret {name} set ({len(value)} bytes); services get it when they next activate")


@secret.command("get")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to a file (0600).",
)
@coordinator_option
@root_option
@user_options
def get_secret(
    name: str,
    output: Path | None,
    address: str,
    root_ca: Path | None,
    user_cert: Path,
    user_key: Path,
) -> None:
    """Print (or save) the secret NAME: its bytes, or a certificate and key in PEM."""
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        value = client.get_secret(name)
    if output is None:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return
    output.unlink(missing_ok=True)
    create_private_file(output, value)
    click.echo(f"wrote secret {name} to {output} ({len(value)} bytes, mode 0600)", err=True)


@click.group()
def audit() -> None:
    """The audit log of every governance change."""


@audit.command("verify")
@click.option("-v", "--verbose", is_flag=True, help="List the entries.")
@coordinator_option
@root_option
@user_options
def verify_audit(
    verbose: bool, address: str, root_ca: Path | None, user_cert: Path, user_key: Path
) -> None:
    """Download the audit log and check it against the pinned root: signatures, hash chain,
    numbering, and the last entry the Coordinator's sealed state names. Names the first broken
    entry."""
    root = resolve_root(address, root_ca)
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        log = client.audit_log()
    assert root is not None  # open_client refuses to run without a root
    report = verify_audit_log(log.entries, log.head, root)
    if verbose:
        for entry in report.entries:
            details = ", ".join(f"{k}={v}" for k, v in sorted(entry.details.items()))
            click.echo(
                f"{entry.seq:>5}  {entry.time}  {entry.event:<28} {entry.user or '-':<12} {details}"
            )
    if not report.ok:
        raise click.ClickException(f"audit log BROKEN at {report.reason}")
    click.echo(
        f"OK: {len(report.entries)} entries; signatures, hash chain and head verify against "
        f"root sha256:{fingerprint(root)}"
    )


def _recovery_key(path: Path) -> rsa.RSAPrivateKey:
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        password = click.prompt(f"password for {path}", hide_input=True)
        key = serialization.load_pem_private_key(data, password=password.encode())
    except ValueError:
        raise click.ClickException(f"{path}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise click.ClickException(f"{path}: a recovery key is an RSA key")
    return key


@click.command()
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Your recovery private key (RSA, PEM).",
)
@click.option(
    "--share",
    "share_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your encrypted share as saved at manifest set (default: the one in the state).",
)
@click.option("--measurement", help="Expected Coordinator measurement (hex, simulation).")
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verification policy (YAML/JSON), as 'geode verify --policy' takes it: the accepted "
    "reference values (any one entry), collateral and certificates.",
)
@click.option(
    "--platform-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Trusted simulated platform key (default: this machine's).",
)
@coordinator_option
def recover(
    key_file: Path,
    share_file: Path | None,
    measurement: str | None,
    policy: Path | None,
    platform_key: tuple[Path, ...],
    address: str,
) -> None:
    """Hand your recovery share to a Coordinator in recovery.

    The Coordinator's evidence is checked first, as 'geode verify' checks a statement
    (--measurement in simulation, else --policy, under the pinned vendor roots); the share goes
    encrypted to the key that evidence vouches for, signed with your recovery key. Once
    enough parties have sent theirs, the Coordinator resumes with its root, manifest and
    secrets.
    """
    accepted = load_policy(measurement, policy)
    keys = reference_platform_keys(platform_key or None)
    trust = cli_deps().trust
    party_key = _recovery_key(key_file)
    # The channel is not trusted (in recovery the Coordinator has no root key to show);
    # the evidence bound to its recovery key and a nonce of this call is what we check.
    with CoordinatorClient(address, insecure=True) as client:
        try:
            offer, recovery_key = client.verified_recovery_offer(
                policy=accepted, platform_keys=keys, trust=trust
            )
        except StatementError as exc:
            raise click.ClickException(f"recovering Coordinator REJECTED: {exc}") from None
        if offer.simulation:
            warn("SIMULATION: the Coordinator's evidence comes from a simulated platform key")
        encrypted = share_file.read_bytes() if share_file is not None else None
        upload = prepare_share_upload(offer, party_key, recovery_key, encrypted_share=encrypted)
        result = client.upload_share(upload.party, upload.sealed_share, upload.signature)
    received = result.received
    if result.state == "recovery":
        click.echo(
            f"share of {upload.party} accepted: {len(received)} of {result.threshold} "
            f"({', '.join(received)})"
        )
        return
    click.echo(
        f"share of {upload.party} accepted: the Coordinator recovered ({', '.join(received)})"
    )
    click.echo(f"  root: sha256:{result.root_fingerprint}  state: {result.state}")
    click.echo("  verify it again ('geode verify') before trusting it")
