"""``geode run``: activate as a service and run its command with the credentials."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import click

from geode.attestation import PROVIDER_NAMES
from geode.cli._common import DEFAULT_MESH_ADDR, cli_deps, insecure_option, resolve_root, warn
from geode.errors import LaunchError
from geode.runtime import BUNDLE_DIR_ENV, BUNDLE_LOCK_ENV, Credentials, activate
from geode.runtime.launcher import (
    CertificateRenewer,
    Companion,
    ProxyRunner,
    check_executables,
    check_hardware_binding,
    choose_evidence_source,
    lay_out,
    remove_plan,
    remove_staged,
    resolve_command,
    run_command,
    stage_bundle,
)

__all__ = ["run"]


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--service",
    required=True,
    envvar="GEODE_SERVICE_NAME",
    help="The manifest service to activate as.",
)
@click.option(
    "--coordinator",
    "address",
    envvar="GEODE_COORDINATOR_MESH",
    default=DEFAULT_MESH_ADDR,
    show_default=True,
    help="Mesh API address HOST:PORT (env GEODE_COORDINATOR_MESH).",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The service's code bundle: copied, measured (in simulation), and the command runs "
    "from the copy.",
)
@click.option(
    "--root-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="GEODE_ROOT_CA",
    help="Deployment root to trust (default: the root pinned by 'geode verify').",
)
@insecure_option
@click.option(
    "--platform-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Simulated platform key (env GEODE_PLATFORM_KEY).",
)
@click.option(
    "--simulate-debug",
    is_flag=True,
    help="Mark the simulated evidence as coming from a debug enclave.",
)
@click.option(
    "--quote-provider",
    type=click.Choice(["auto", *PROVIDER_NAMES]),
    envvar="GEODE_QUOTE_PROVIDER",
    default="auto",
    show_default=True,
    help="Where evidence comes from; auto: the first TEE interface present, else simulation "
    "(env GEODE_QUOTE_PROVIDER).",
)
@click.option(
    "--listen-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the transparent TLS ingress listens on.",
)
@click.option(
    "--runtime-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="GEODE_RUNTIME_DIR",
    help="Where the private credentials directory is made, and where what launchers that died "
    "left is cleaned up (default: /dev/shm if writable, else the temporary directory; "
    "env GEODE_RUNTIME_DIR).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    service: str,
    address: str,
    bundle: Path,
    root_ca: Path | None,
    insecure: bool,
    platform_key: Path | None,
    simulate_debug: bool,
    quote_provider: str,
    listen_host: str,
    runtime_dir: Path | None,
    command: tuple[str, ...],
) -> None:
    """Activate as SERVICE, then run COMMAND (after --) with its credentials."""
    logging.basicConfig(level=logging.INFO, format="geode run: %(levelname)s %(name)s: %(message)s")
    root = None
    if insecure:
        warn("--insecure: the Coordinator's identity is NOT verified")
    else:
        root = resolve_root(None, root_ca)
        if root is None:
            raise LaunchError(
                "no trusted root: run 'geode verify' first, or pass --root-ca (or --insecure)"
            )
    # What runs is a private copy of the bundle, measured after copying; the command must
    # resolve inside it, and the system executables it locks must still hash as locked.
    staged = stage_bundle(bundle, runtime_dir, service=service)
    try:
        source = choose_evidence_source(
            quote_provider,
            measurement=staged.measurement,
            platform_key=platform_key,
            simulate_debug=simulate_debug,
            select=cli_deps().quote_providers,
        )
        # In a confidential VM, the staged bundle must be the one the VM was launched for
        # (SEV-SNP HOST_DATA, TDX MRCONFIGID), before anything is activated.
        bound_by = check_hardware_binding(source, staged.measurement)
        try:
            check_executables(staged.lock)
            argv = resolve_command(staged, command)
        except LaunchError as exc:
            raise LaunchError(f"geode run: {exc}") from None
        if source.simulated:
            warn("SIMULATION: evidence is signed by a simulated platform key")
        else:
            click.echo(f"geode: evidence from {source.name}", err=True)
        if bound_by is not None:
            click.echo(f"geode: the VM's {bound_by} binds this bundle", err=True)
        provider = source.provider
        activation = activate(address, service, provider, root=root, insecure=insecure)
        plan = lay_out(activation, service, argv, base_dir=runtime_dir)
    except BaseException:
        remove_staged(staged)
        raise
    plan = replace(
        plan,
        cwd=staged.directory,
        env={
            **plan.env,
            BUNDLE_LOCK_ENV: str(staged.lock_file),
            BUNDLE_DIR_ENV: str(staged.directory),
        },
    )
    click.echo(
        f"geode: activated {service} as {activation.spiffe_id} (instance {activation.instance_id})",
        err=True,
    )
    try:
        companions: list[Companion] = []
        if activation.mesh is not None and (activation.mesh.ingress or activation.mesh.egress):
            credentials = Credentials.from_env(plan.env)
            companions.append(ProxyRunner(credentials, listen_host=listen_host))
        companions.append(
            CertificateRenewer(
                address,
                activation.certificate_chain,
                activation.private_key,
                provider,
                root=root,
                insecure=insecure,
                cert_file=Path(plan.env["GEODE_CERT_FILE"]),
                key_file=Path(plan.env["GEODE_KEY_FILE"]),
                # A certificate that can no longer be renewed stops the service, as SIGTERM does.
                on_fatal=lambda _reason: os.kill(os.getpid(), signal.SIGTERM),
            )
        )
    except BaseException:
        remove_plan(plan)
        remove_staged(staged)
        raise

    def check_again() -> None:
        # What was hashed before the activation is hashed again right before it runs.
        try:
            check_executables(staged.lock)
        except LaunchError as exc:
            raise LaunchError(f"geode run: {exc}") from None

    try:
        code = run_command(plan, companions=companions, before_start=check_again)
    finally:
        remove_staged(staged)
    raise SystemExit(code)
