"""The ``geode`` command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

import geode
from geode._files import replace_file
from geode.attestation import TEE_CHOICES, SgxSealing
from geode.cli._bundle import bundle
from geode.cli._common import (
    DEFAULT_CLIENT_ADDR,
    DEFAULT_MESH_ADDR,
    GeodeGroup,
    cli_deps,
    coordinator_option,
    duration,
    insecure_option,
    manifest_budget_options,
    open_client,
    root_option,
)
from geode.cli._db import db
from geode.cli._evidence import evidence
from geode.cli._governance import audit, recover, secret
from geode.cli._inject import inject
from geode.cli._manifest import manifest
from geode.cli._measure import measure
from geode.cli._run import run
from geode.cli._up import up
from geode.cli._verify import verify
from geode.errors import GeodeError

if TYPE_CHECKING:
    from geode.coordinator import ManifestBudget

__all__ = ["cli", "main"]


@click.group(cls=GeodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(geode.__version__, prog_name="geode")
def cli() -> None:
    """Geode: a confidential-computing control plane for microservices."""


def _address(value: str) -> tuple[str, int]:
    from geode.coordinator import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _collateral(values: tuple[str, ...]) -> dict[str, Path]:
    from geode.tee import HARDWARE_KINDS

    collateral: dict[str, Path] = {}
    for value in values:
        kind, _, file = value.partition("=")
        if kind not in HARDWARE_KINDS or not file:
            kinds = ", ".join(HARDWARE_KINDS)
            raise click.BadParameter(f"{value!r}: expected KIND=FILE with KIND one of {kinds}")
        if not Path(file).is_file():
            raise click.BadParameter(f"{value!r}: no such file")
        collateral[kind] = Path(file)
    return collateral


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory of the sealed state (unless --store) and the audit log (created if missing).",
)
@click.option(
    "--store",
    metavar="etcd://HOST:PORT[,HOST:PORT...]",
    help="Keep the sealed state in etcd v3 (several endpoints: fail-over) instead of the data "
    "directory, which then holds only the audit log.",
)
@click.option("--etcd-prefix", default="/geode", show_default=True, help="Key prefix in etcd.")
@click.option(
    "--etcd-poll",
    default="1s",
    show_default=True,
    help="How often to check etcd for a state another Coordinator saved.",
)
@click.option(
    "--advertise-addr",
    metavar="HOST:PORT",
    help="Where the other Coordinators on the etcd store reach this one's mesh API "
    "[default: --mesh-addr].",
)
@click.option(
    "--etcd-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificate of the etcd servers (TLS).",
)
@click.option(
    "--etcd-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Client certificate for etcd (with --etcd-key).",
)
@click.option(
    "--etcd-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key of the etcd client certificate.",
)
@click.option("--client-addr", default=DEFAULT_CLIENT_ADDR, show_default=True)
@click.option("--mesh-addr", default=DEFAULT_MESH_ADDR, show_default=True)
@click.option(
    "--tee",
    type=click.Choice(TEE_CHOICES),
    default="auto",
    show_default=True,
    help="The TEE to run in: the first usable one of this host (auto), one named, or a "
    "simulated platform (no hardware isolation). Without a usable TEE: exit 1, listing every "
    "interface probed.",
)
@click.option("--simulation", is_flag=True, help="The same as --tee simulated.")
@click.option(
    "--sgx-sealing",
    type=click.Choice(["mrenclave", "mrsigner"]),
    default="mrenclave",
    show_default=True,
    help="SGX (Gramine): seal with the enclave's key, or with its signer's so that code "
    "updated by the same signer (same product id) opens the state.",
)
@click.option(
    "--tee-certs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SEV-SNP whose interface gives no certificates (SNP_GET_REPORT, configfs-tsm without "
    "auxblob): the VCEK or VLEK (PEM or DER, optionally with its ASK or ASVK) that every "
    "report of this Coordinator then carries. Checked like any: a wrong one stops the start.",
)
@click.option(
    "--sealing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Simulation only: sealing key file (env GEODE_SEALING_KEY; created if missing).",
)
@click.option(
    "--platform-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Simulation only: simulated platform key (env GEODE_PLATFORM_KEY; created if missing).",
)
@click.option(
    "--trust-platform-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Simulation only: also accept services' simulated evidence signed by this platform "
    "key (repeatable). Never enough for a Coordinator to obtain the cluster key.",
)
@click.option(
    "--trust-coordinator-platform-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Simulation only: also accept peer Coordinators' simulated evidence signed by this "
    "platform key (repeatable): it earns them the cluster key. Only this Coordinator's own "
    "platform key is trusted for Coordinators without it.",
)
@click.option(
    "--collateral",
    multiple=True,
    metavar="KIND=FILE",
    callback=lambda _ctx, _param, values: _collateral(values),
    help="Verification collateral for a kind of hardware evidence (sgx, tdx: Intel's TCB "
    "info, QE identity and CRLs as JSON; sev-snp: AMD's CRL, DER or PEM); without it, such "
    "evidence is Unverified.",
)
@click.option("--san", multiple=True, help="Extra DNS name or IP for the server certificate.")
@click.option("--leaf-ttl", default="24h", show_default=True, help="Lifetime of leaf certificates.")
@click.option(
    "--nonce-ttl", default="60s", show_default=True, help="Lifetime of activation nonces."
)
@click.option(
    "--client-max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections open at once on the client API, TLS handshakes included; more are "
    "closed at once (lowered to fit the open-file limit).",
)
@click.option(
    "--mesh-max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="The same for the mesh API: a budget of its own, so that activations and renewals "
    "go on while the client API is full.",
)
@click.option(
    "--head-timeout",
    default="10s",
    show_default=True,
    help="Time from accepting a connection (TLS handshake included) or from a request's "
    "first byte to the end of its head; later: 408, closed.",
)
@click.option(
    "--max-head-bytes",
    default=64 * 1024,
    show_default=True,
    type=click.IntRange(min=1024),
    help="Size of a request head (request line and headers); larger: 431, closed.",
)
@click.option(
    "--idle-timeout",
    default="30s",
    show_default=True,
    help="A kept-alive connection on which no request starts for this long is closed.",
)
@click.option(
    "--request-timeout",
    default="30s",
    show_default=True,
    help="Time from the end of a request's head to the end of its exchange (its body "
    "received, its response sent); later: 408 (or, once the response has started, "
    "aborted).",
)
@manifest_budget_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def coordinator(
    data_dir: Path,
    store: str | None,
    etcd_prefix: str,
    etcd_poll: str,
    advertise_addr: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    client_addr: str,
    mesh_addr: str,
    tee: str,
    simulation: bool,
    sgx_sealing: SgxSealing,
    tee_certs: Path | None,
    sealing_key: Path | None,
    platform_key: Path | None,
    trust_platform_key: tuple[Path, ...],
    trust_coordinator_platform_key: tuple[Path, ...],
    collateral: dict[str, Path],
    san: tuple[str, ...],
    leaf_ttl: str,
    nonce_ttl: str,
    client_max_connections: int,
    mesh_max_connections: int,
    head_timeout: str,
    max_head_bytes: int,
    idle_timeout: str,
    request_timeout: str,
    manifest_budget: ManifestBudget,
    log_level: str,
) -> None:
    """Run the Coordinator, in the host's TEE (or a simulated one: --tee simulated)."""
    from geode.coordinator import (
        ConnectionLimits,
        CoordinatorConfig,
        EtcdSettings,
        parse_etcd_url,
        serve,
    )

    etcd = None
    if store is not None:
        try:
            etcd = EtcdSettings(
                endpoints=parse_etcd_url(store),
                prefix=etcd_prefix,
                ca=etcd_ca,
                cert=etcd_cert,
                key=etcd_key,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--store") from None
    elif etcd_ca or etcd_cert or etcd_key or advertise_addr:
        raise click.UsageError(
            "--etcd-ca, --etcd-cert, --etcd-key and --advertise-addr need --store etcd://..."
        )
    config = CoordinatorConfig(
        data_dir=data_dir,
        etcd=etcd,
        client_addr=_address(client_addr),
        mesh_addr=_address(mesh_addr),
        advertise_addr=_address(advertise_addr) if advertise_addr else None,
        etcd_poll=duration(etcd_poll),
        tee=tee,
        simulation=simulation,
        sgx_sealing=sgx_sealing,
        tee_certs=tee_certs,
        sealing_key=sealing_key,
        platform_key=platform_key,
        trusted_platform_keys=trust_platform_key,
        coordinator_platform_keys=trust_coordinator_platform_key,
        collateral=collateral,
        san=san,
        leaf_lifetime=duration(leaf_ttl),
        nonce_ttl=duration(nonce_ttl),
        limits=ConnectionLimits(
            client_max_connections=client_max_connections,
            mesh_max_connections=mesh_max_connections,
            head_timeout=duration(head_timeout).total_seconds(),
            max_head_bytes=max_head_bytes,
            idle_timeout=duration(idle_timeout).total_seconds(),
            request_timeout=duration(request_timeout).total_seconds(),
        ),
        manifest_budget=manifest_budget,
        log_level=log_level,
    )
    try:
        config.check()  # the option combinations: one rule for the CLI and the API
    except GeodeError as exc:
        raise click.UsageError(str(exc)) from None
    if config.simulated:
        config = dataclasses.replace(config, tee="simulated", simulation=True)
    deps = cli_deps()
    raise SystemExit(serve(config, probe=deps.probe, trust=deps.trust))


@cli.command()
@coordinator_option
@root_option
@insecure_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(address: str, root_ca: Path | None, insecure: bool, as_json: bool) -> None:
    """Show the Coordinator's state."""
    with open_client(address, root_ca, insecure) as client:
        info = client.status()
    if as_json:
        click.echo(json.dumps(info.to_json(), indent=2))
        return
    click.echo(f"state:        {info.state}")
    if info.simulation:
        click.echo(click.style("simulation:   YES (no hardware isolation)", fg="yellow"))
    click.echo(f"tee:          {info.tee} ({info.tee_interface})")
    click.echo(f"sealing:      {info.sealing}")
    click.echo(f"measurement:  {info.measurement}")
    if info.reason:
        click.echo(f"reason:       {info.reason}")
    if info.root_fingerprint:
        click.echo(f"root:         sha256:{info.root_fingerprint}")
    click.echo(f"manifest:     {info.manifest_sha256 or '(not set)'}")
    for service, count in sorted((info.activations or {}).items()):
        click.echo(f"activations:  {service} = {count}")


@cli.command()
@click.argument("which", type=click.Choice(["root", "chain"]))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@coordinator_option
@root_option
@insecure_option
def certificate(
    which: str, output: Path, address: str, root_ca: Path | None, insecure: bool
) -> None:
    """Save the root certificate, or the mesh CA chain (mesh CA + root), to a file."""
    with open_client(address, root_ca, insecure) as client:
        certs = client.certificates()
    pem = certs.root if which == "root" else certs.chain
    replace_file(output, pem.encode(), mode=0o644)  # a link at OUTPUT is replaced, not followed
    click.echo(f"wrote {which} certificate to {output}")


cli.add_command(manifest)
cli.add_command(verify)
cli.add_command(evidence)
cli.add_command(run)
cli.add_command(db)
cli.add_command(secret)
cli.add_command(audit)
cli.add_command(recover)
cli.add_command(up)
cli.add_command(inject)
cli.add_command(measure)
cli.add_command(bundle)


def main() -> None:
    cli(prog_name="geode")
