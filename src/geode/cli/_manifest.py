"""``geode manifest``: check offline, set, get, verify; updates and their log."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geode._files import create_private_file, replace_file
from geode.cli._common import (
    coordinator_option,
    insecure_option,
    manifest_budget_options,
    open_client,
    resolve_root,
    root_option,
    user_options,
)
from geode.manifest import is_package_update, load_manifest, parse_manifest_data
from geode.protocol import ManifestSetResult, UpdateApplied, UpdatePending

if TYPE_CHECKING:
    from geode.coordinator import ManifestBudget

__all__ = ["manifest"]

_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group()
def manifest() -> None:
    """Check, set, read and verify the deployment's manifest."""


@manifest.command()
@_file
@manifest_budget_options
def check(file: Path, manifest_budget: ManifestBudget) -> None:
    """Validate FILE offline (schema, references, templates), within the budgets the
    Coordinator gives a manifest someone sends it."""
    from geode.coordinator import check_in_worker, stop_workers

    raw = file.read_bytes()
    try:
        check_in_worker(raw, manifest_budget)  # a bomb costs the worker, not this process
    finally:
        stop_workers()
    document = load_manifest(raw)
    m = document.manifest
    click.echo(
        f"{file}: valid ({len(m.packages)} packages, {len(m.services)} services, "
        f"{len(m.secrets)} secrets); sha256 {document.sha256.hex()}"
    )


def _save_shares(
    result: ManifestSetResult | UpdateApplied | UpdatePending, directory: Path | None
) -> None:
    shares = None if isinstance(result, UpdatePending) else result.recovery_shares
    if shares is None:
        return
    click.echo(f"recovery shares for: {', '.join(sorted(shares))} (kept in the sealed state)")
    if directory is None:
        return
    for name, share in sorted(shares.items()):
        path = directory / f"{name}.share"
        path.unlink(missing_ok=True)
        create_private_file(path, base64.b64decode(share))
        click.echo(f"  wrote {path} (encrypted to {name}'s recovery key)")


_shares_option = click.option(
    "--save-shares",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each recovery party's encrypted share to DIR/<party>.share.",
)


@manifest.command("set")
@_file
@_shares_option
@coordinator_option
@root_option
@insecure_option
def set_(
    file: Path, save_shares: Path | None, address: str, root_ca: Path | None, insecure: bool
) -> None:
    """Set the manifest from FILE (validated locally first)."""
    raw = file.read_bytes()
    load_manifest(raw)
    with open_client(address, root_ca, insecure) as client:
        result = client.set_manifest(raw)
    click.echo(f"manifest set: sha256 {result.sha256}")
    _save_shares(result, save_shares)


@manifest.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@coordinator_option
@root_option
@insecure_option
def get(output: Path | None, address: str, root_ca: Path | None, insecure: bool) -> None:
    """Print (or save) the manifest in force."""
    with open_client(address, root_ca, insecure) as client:
        info = client.get_manifest()
    raw = info.manifest.encode()
    if output is None:
        click.echo(raw.decode(), nl=False)
    else:
        replace_file(output, raw, mode=0o644)  # a link at OUTPUT is replaced, not followed
        click.echo(f"wrote manifest to {output} (sha256 {info.sha256})", err=True)


@manifest.command("verify")
@_file
@coordinator_option
@root_option
def verify_(file: Path, address: str, root_ca: Path | None) -> None:
    """Does the deployment run exactly the manifest in FILE?

    Fetches a fresh deployment statement over TLS pinned to the root that 'geode verify'
    checked, requires the statement to carry that root and to answer this call's nonce, checks
    the root's signature over the manifest hash, and compares that hash with FILE's.
    """
    digest = hashlib.sha256(file.read_bytes()).digest()
    root = resolve_root(address, root_ca)
    with open_client(address, root_ca, False) as client:
        assert root is not None  # open_client refuses to run without a root
        stated = client.deployed_manifest(root)
    if stated is None:
        raise click.ClickException("the deployment has no manifest yet")
    if stated != digest:
        raise click.ClickException(
            f"MISMATCH: the deployment runs manifest {stated.hex()}, {file} is {digest.hex()}"
        )
    click.echo(f"OK: the deployment runs exactly {file} (sha256 {digest.hex()})")


@manifest.command("log")
@coordinator_option
@root_option
@user_options
def log_(address: str, root_ca: Path | None, user_cert: Path, user_key: Path) -> None:
    """List every manifest set and update."""
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        updates = client.manifest_log()
    for u in updates:
        what = u.kind + (f" ({', '.join(u.packages)})" if u.packages else "")
        users = ", ".join(u.users) or "-"
        click.echo(f"{u.seq:>4}  {u.time}  {what:<24} {u.sha256}  by {users}")


@manifest.group()
def update() -> None:
    """Update the manifest: packages at once, the whole manifest with acknowledgements."""


@update.command()
@_file
@_shares_option
@coordinator_option
@root_option
@user_options
def apply(
    file: Path,
    save_shares: Path | None,
    address: str,
    root_ca: Path | None,
    user_cert: Path,
    user_key: Path,
) -> None:
    """Apply FILE: a package update ({packages: {NAME: {min_svn: N} or {measurement: HEX}}})
    applies at once; a whole manifest waits for the acknowledgements it needs."""
    raw = file.read_bytes()
    data = parse_manifest_data(raw)
    if not is_package_update(data):
        load_manifest(raw)  # a whole manifest: validated here first
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        result = client.update(raw)
    _report(result)
    _save_shares(result, save_shares)


def _report(result: UpdateApplied | UpdatePending) -> None:
    if isinstance(result, UpdateApplied):
        click.echo(f"update applied: manifest sha256 {result.sha256}; the mesh CA rotated")
        click.echo(
            "  instances activated before must activate again to reach the new ones "
            "(activation counts carry over: they count against max_activations)"
        )
        return
    acks = result.acknowledgements
    click.echo(
        f"manifest update {result.sha256} pending: {len(acks)} of {result.threshold} "
        f"acknowledgements ({', '.join(acks)})"
    )


def _digest(value: str) -> str:
    """A manifest's SHA-256: given as 64 hex digits, or computed from a file."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value!r}: neither a sha256 nor a file")
    return hashlib.sha256(path.read_bytes()).hexdigest()


_digest_argument = click.argument("manifest_ref", metavar="SHA256|FILE")


@update.command()
@_digest_argument
@_shares_option
@coordinator_option
@root_option
@user_options
def acknowledge(
    manifest_ref: str,
    save_shares: Path | None,
    address: str,
    root_ca: Path | None,
    user_cert: Path,
    user_key: Path,
) -> None:
    """Acknowledge the pending manifest update, named by its sha256 or by the FILE you
    reviewed; the acknowledgement that reaches the threshold applies it."""
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        result = client.acknowledge_update(_digest(manifest_ref))
    _report(result)
    _save_shares(result, save_shares)


@update.command()
@_digest_argument
@coordinator_option
@root_option
@user_options
def cancel(
    manifest_ref: str, address: str, root_ca: Path | None, user_cert: Path, user_key: Path
) -> None:
    """Discard the pending manifest update."""
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        result = client.cancel_update(_digest(manifest_ref))
    click.echo(f"manifest update {result.cancelled} cancelled")


@update.command("get")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@coordinator_option
@root_option
@user_options
def get_pending(
    output: Path | None, address: str, root_ca: Path | None, user_cert: Path, user_key: Path
) -> None:
    """Show the pending manifest update (and save the proposed manifest with -o)."""
    with open_client(address, root_ca, False, (user_cert, user_key)) as client:
        pending = client.pending_update()
    if pending is None:
        click.echo("no manifest update is pending")
        return
    raw = pending.manifest.encode()
    acks = pending.acknowledgements
    click.echo(f"pending:          {pending.sha256}")
    click.echo(f"proposed by:      {pending.proposer} at {pending.proposed_at}")
    click.echo(
        f"acknowledgements: {len(acks)} of {pending.threshold} ({', '.join(acks)}); "
        f"may acknowledge: {', '.join(pending.updaters)}"
    )
    if pending.stale:
        click.echo("stale:            the manifest changed since; it can only be cancelled")
    if output is not None:
        replace_file(output, raw, mode=0o644)  # a link at OUTPUT is replaced, not followed
        click.echo(f"wrote the proposed manifest to {output}")
