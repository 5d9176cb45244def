"""``geode manifest``: check offline, set, get, verify."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click

from geode.cli._common import (
    coordinator_option,
    insecure_option,
    open_client,
    resolve_root,
    root_option,
)
from geode.client import statement_manifest
from geode.manifest import load_manifest

__all__ = ["manifest"]

_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group()
def manifest() -> None:
    """Check, set, read and verify the deployment's manifest."""


@manifest.command()
@_file
def check(file: Path) -> None:
    """Validate FILE offline (schema, references, templates)."""
    document = load_manifest(file.read_bytes())
    m = document.manifest
    click.echo(
        f"{file}: valid ({len(m.packages)} packages, {len(m.services)} services, "
        f"{len(m.secrets)} secrets); sha256 {document.sha256.hex()}"
    )


@manifest.command("set")
@_file
@coordinator_option
@root_option
@insecure_option
def set_(file: Path, address: str, root_ca: Path | None, insecure: bool) -> None:
    """Set the manifest from FILE (validated locally first)."""
    raw = file.read_bytes()
    load_manifest(raw)
    with open_client(address, root_ca, insecure) as client:
        result = client.set_manifest(raw)
    click.echo(f"manifest set: sha256 {result['sha256']}")


@manifest.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@coordinator_option
@root_option
@insecure_option
def get(output: Path | None, address: str, root_ca: Path | None, insecure: bool) -> None:
    """Print (or save) the manifest in force."""
    with open_client(address, root_ca, insecure) as client:
        info = client.get_manifest()
    raw = info["manifest"].encode()
    if hashlib.sha256(raw).hexdigest() != info["sha256"]:
        raise click.ClickException("the manifest does not match its stated sha256")
    if output is None:
        click.echo(raw.decode(), nl=False)
    else:
        output.write_bytes(raw)
        click.echo(f"wrote manifest to {output} (sha256 {info['sha256']})", err=True)


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
        nonce = os.urandom(32)
        statement = client.attestation(nonce)
    assert root is not None  # open_client refuses to run without a root
    stated = statement_manifest(statement, root=root, nonce=nonce)
    if stated is None:
        raise click.ClickException("the deployment has no manifest yet")
    if stated != digest:
        raise click.ClickException(
            f"MISMATCH: the deployment runs manifest {stated.hex()}, {file} is {digest.hex()}"
        )
    click.echo(f"OK: the deployment runs exactly {file} (sha256 {digest.hex()})")
