"""Shared pieces of the ``geode`` command: error reporting, addresses, trusted roots."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from cryptography import x509

from geode.attestation import (
    Evidence,
    HostProbe,
    QuoteProvider,
    TrustAnchors,
    detect_kind,
    probe_host,
    select_quote_provider,
)
from geode.client import CoordinatorClient, load_pinned_root
from geode.errors import EvidenceError, GeodeError
from geode.pki import load_certificate
from geode.protocol import ClientIdentity

__all__ = [
    "DEFAULT_CLIENT_ADDR",
    "DEFAULT_MESH_ADDR",
    "CliDeps",
    "GeodeGroup",
    "cli_deps",
    "coordinator_option",
    "duration",
    "insecure_option",
    "manifest_budget_options",
    "open_client",
    "read_evidence",
    "resolve_root",
    "root_option",
    "user_options",
    "warn",
]

DEFAULT_CLIENT_ADDR = "127.0.0.1:4433"
DEFAULT_MESH_ADDR = "127.0.0.1:2001"


@dataclass(frozen=True)
class CliDeps:
    """What the ``geode`` commands trust, probe and fetch through. Production runs the defaults
    (pinned vendor roots, the wall clock, the real TEE interfaces, the network); tests pass their
    own as click's ``obj`` (``CliRunner().invoke(main, args, obj=CliDeps(...))``, or
    ``main(args, obj=...)``), the only way in: no flag or environment variable of a command can
    replace a root of trust or where collateral comes from."""

    trust: TrustAnchors = field(default_factory=TrustAnchors)
    probe: HostProbe = probe_host
    # What ``geode verify --online`` fetches collateral (Intel PCS, AMD KDS) through; ``None``:
    # the network. Tests answer with an ``httpx.MockTransport``.
    http_transport: httpx.BaseTransport | None = None
    # Where ``geode run`` gets a service's evidence: its ``--quote-provider`` in, a provider of
    # this host's TEE (or ``None``: simulation) out. Tests hand in a fake TEE's provider.
    quote_providers: Callable[[str | None], QuoteProvider | None] = select_quote_provider


def cli_deps(ctx: click.Context | None = None) -> CliDeps:
    """The ``CliDeps`` of the running command (the defaults unless a test gave its own)."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_object(CliDeps)
    return obj if obj is not None else CliDeps()


def duration(value: str) -> datetime.timedelta:
    """A duration flag's value: a positive whole number of ms, s, m, h or d."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (value[:-2], "ms") if value.endswith("ms") else (value[:-1], value[-1:])
    if unit not in units or not number.isdigit() or not int(number):
        raise click.BadParameter(
            f"{value!r}: expected a duration such as 500ms, 90s, 30m, 24h or 7d"
        )
    return datetime.timedelta(seconds=int(number) * units[unit])


def warn(message: str) -> None:
    click.echo(click.style(f"warning: {message}", fg="yellow", bold=True), err=True)


class GeodeGroup(click.Group):
    """Turns every ``GeodeError`` (and unreadable files) into one line on stderr, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GeodeError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


coordinator_option = click.option(
    "--coordinator",
    "address",
    envvar="GEODE_COORDINATOR",
    default=DEFAULT_CLIENT_ADDR,
    show_default=True,
    help="Client API address HOST:PORT (env GEODE_COORDINATOR).",
)
root_option = click.option(
    "--root-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="GEODE_ROOT_CA",
    help="Trust this root certificate instead of the one pinned by 'geode verify'.",
)
insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Do not verify the Coordinator's certificate (first contact and debugging only).",
)


def user_options(command: Any) -> Any:
    """``--cert`` and ``--key``: the user's client certificate and key, as the manifest names
    them (env GEODE_USER_CERT, GEODE_USER_KEY). The command receives ``identity``."""
    command = click.option(
        "--key",
        "user_key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="GEODE_USER_KEY",
        required=True,
        help="The user's private key, PEM (env GEODE_USER_KEY).",
    )(command)
    return click.option(
        "--cert",
        "user_cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="GEODE_USER_CERT",
        required=True,
        help="The user's certificate as the manifest names it, PEM (env GEODE_USER_CERT).",
    )(command)


def manifest_budget_options(command: Any) -> Any:
    """``--manifest-time-budget`` and ``--manifest-memory-budget``: what validating a manifest
    may cost (``geode coordinator`` and ``geode manifest check`` share them, so an offline check
    has the Coordinator's limits). The command receives ``manifest_budget``."""

    @functools.wraps(command)
    def with_budget(
        *args: Any, manifest_time_budget: str, manifest_memory_budget: int, **kw: Any
    ) -> Any:
        from geode.coordinator import ManifestBudget  # not imported by every command

        budget = ManifestBudget(
            seconds=duration(manifest_time_budget).total_seconds(),
            memory=manifest_memory_budget << 20,
        )
        return command(*args, manifest_budget=budget, **kw)

    with_budget = click.option(
        "--manifest-memory-budget",
        default=512,  # ManifestBudget's
        show_default=True,
        type=click.IntRange(min=128),
        metavar="MIB",
        help="Address space of the process that validates a manifest or update, in MiB.",
    )(with_budget)
    return click.option(
        "--manifest-time-budget",
        default="10s",  # ManifestBudget's
        show_default=True,
        help="Wall-clock time validating a manifest or update may take (in a worker process); "
        "past it, it is refused with manifest_too_costly.",
    )(with_budget)


def resolve_root(address: str | None, root_ca: Path | None) -> x509.Certificate | None:
    if root_ca is not None:
        return load_certificate(root_ca.read_bytes(), str(root_ca))
    return load_pinned_root(address)


def open_client(
    address: str, root_ca: Path | None, insecure: bool, identity: ClientIdentity | None = None
) -> CoordinatorClient:
    if insecure:
        warn("--insecure: the Coordinator's identity is NOT verified")
        return CoordinatorClient(address, insecure=True, identity=identity)
    return CoordinatorClient(address, root=resolve_root(address, root_ca), identity=identity)


def read_evidence(raw: bytes, kind: str) -> Evidence:
    """Raw evidence bytes, or the ``{"kind", "data"}`` envelope Geode sends evidence in
    (``geode evidence verify`` and ``geode measure evidence`` read files the same way); ``kind``
    is ``auto`` or the kind the evidence must be."""
    if raw.lstrip().startswith(b"{"):
        try:
            envelope = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
            envelope = None
        if isinstance(envelope, dict) and set(envelope) == {"kind", "data"}:
            found = Evidence.from_json(envelope)
            if kind not in ("auto", found.kind):
                raise EvidenceError(f"the envelope holds {found.kind} evidence", field="kind")
            return found
    return Evidence(detect_kind(raw) if kind == "auto" else kind, raw)
