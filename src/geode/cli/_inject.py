"""``geode inject``: the Kubernetes admission webhook, and its helper for injected pods."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from geode.cli._common import GeodeGroup, duration, warn

__all__ = ["inject"]


def _address(value: str) -> tuple[str, int]:
    from geode.coordinator import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=GeodeGroup)
def inject() -> None:
    """The Kubernetes admission webhook that turns labelled pods into instances."""


@inject.command()
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Serving certificate, PEM (re-read when the file changes).",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Its private key, PEM.",
)
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--coordinator",
    envvar="GEODE_COORDINATOR_MESH",
    required=True,
    help="The Coordinator's mesh API as pods reach it, HOST:PORT (env GEODE_COORDINATOR_MESH).",
)
@click.option(
    "--coordinator-client",
    metavar="HOST:PORT",
    help="The Coordinator's client API, where the webhook reads the manifest to learn each "
    "service's TEE (with --root-ca).",
)
@click.option(
    "--root-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The deployment's root certificate (PEM) that --coordinator-client is pinned to; read "
    "at each fetch, so it may appear after the webhook started.",
)
@click.option(
    "--manifest",
    "manifest_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead of --coordinator-client: the manifest in force, from a file you keep current.",
)
@click.option(
    "--manifest-refresh",
    default="30s",
    show_default=True,
    help="How long a manifest read is used before it is read again.",
)
@click.option(
    "--tee-profiles",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON: what a pod needs per TEE kind (the chart's tee.profiles). Without it, pods of "
    "hardware services are refused.",
)
@click.option(
    "--root-ca-configmap",
    default="geode-root",
    show_default=True,
    help="ConfigMap, in each pod's namespace, whose root.pem is the deployment's root.",
)
@click.option(
    "--launcher",
    default="geode",
    show_default=True,
    help="The geode command inside the pods' images.",
)
@click.option("--cluster-domain", default="cluster.local", show_default=True)
@click.option(
    "--tmpfs-size",
    default="64Mi",
    show_default=True,
    help="Size limit of the memory-backed /dev/shm given to wrapped containers.",
)
@click.option(
    "--simulation-platform-key-secret",
    metavar="NAME",
    help="SIMULATION: give pods the simulated platform key of this Secret (no isolation).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    cert: Path,
    key: Path,
    listen: str,
    coordinator: str,
    coordinator_client: str | None,
    root_ca: Path | None,
    manifest_file: Path | None,
    manifest_refresh: str,
    tee_profiles: Path | None,
    root_ca_configmap: str,
    launcher: str,
    cluster_domain: str,
    tmpfs_size: str,
    simulation_platform_key_secret: str | None,
    log_level: str,
) -> None:
    """Serve POST /mutate (AdmissionReview v1) over HTTPS.

    Each labelled pod gets what its service's TEE needs; the TEE is the manifest's (its
    service's package), read from the Coordinator (--coordinator-client, --root-ca) or a file
    (--manifest). A pod whose service's TEE is unknown is refused."""
    from geode.inject import (
        CoordinatorManifest,
        InjectorConfig,
        ManifestFile,
        ManifestSource,
        TeeProfiles,
        webhook_server,
    )

    logging.basicConfig(
        level=log_level.upper(), format="geode inject: %(levelname)s %(name)s: %(message)s"
    )
    address = _address(listen)
    config = InjectorConfig(
        coordinator=coordinator,
        root_ca_configmap=root_ca_configmap,
        launcher=launcher,
        cluster_domain=cluster_domain,
        tmpfs_size=tmpfs_size,
        simulation_platform_key_secret=simulation_platform_key_secret,
        tee_profiles=TeeProfiles.load(tee_profiles) if tee_profiles else TeeProfiles(),
    )
    refresh = duration(manifest_refresh).total_seconds()
    source: ManifestSource
    if manifest_file is not None:
        if coordinator_client is not None or root_ca is not None:
            raise click.UsageError("--manifest replaces --coordinator-client and --root-ca")
        source = ManifestFile(manifest_file, refresh)
        where = str(manifest_file)
    elif coordinator_client is not None and root_ca is not None:
        _address(coordinator_client)
        source = CoordinatorManifest(coordinator_client, root_ca, refresh)
        where = f"the Coordinator's client API {coordinator_client}"
    else:
        raise click.UsageError(
            "the webhook learns each service's TEE from the manifest: pass --coordinator-client "
            "and --root-ca, or --manifest"
        )
    if config.simulation:
        warn("SIMULATION: injected pods get a simulated platform key: no hardware isolation")
    server = webhook_server(config, source, cert, key, address)
    click.echo(
        f"geode inject: serving https://{address[0]}:{address[1]}/mutate, "
        f"Coordinator mesh API {coordinator}, manifest from {where}",
        err=True,
    )
    server.run()


@inject.command("install-key")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
def install_key_command(source: Path, target: Path) -> None:
    """Copy the key file SOURCE to TARGET, readable by this user only (for Secret files)."""
    from geode.inject import install_key

    install_key(source, target)
