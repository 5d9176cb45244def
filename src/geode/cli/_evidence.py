"""``geode evidence verify``: verify TEE evidence offline and print its claims."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import click

from geode.attestation import Claims, EvidenceVerifier
from geode.cli._common import cli_deps, read_evidence
from geode.cli._verify import reference_platform_keys
from geode.errors import EvidenceError
from geode.tee import HARDWARE_KINDS

__all__ = ["evidence"]

KINDS = ("auto", *HARDWARE_KINDS)


@click.group()
def evidence() -> None:
    """TEE evidence: SGX and TDX quotes, SEV-SNP reports, NVIDIA GPU reports."""


def _instant(value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected an ISO 8601 time such as 2025-07-01T12:00:00Z", param_hint="--at"
        ) from None
    return when.replace(tzinfo=datetime.UTC) if when.tzinfo is None else when


def _print_claims(claims: Claims) -> None:
    values = claims.to_json()
    details = values.pop("details", {})
    if isinstance(details, dict):
        values.update(details)
    width = max(len(k) for k in values) + 2
    for key, value in values.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        click.echo(f"{key + ':':<{width}}{value}")


@evidence.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(KINDS), default="auto", show_default=True)
@click.option(
    "--certs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Certificates the evidence does not carry (PEM or DER): a VCEK/VLEK, a GPU chain.",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Collateral for the TCB status (sgx, tdx: Intel's TCB info, QE identity and CRLs as "
    "JSON; sev-snp: AMD's CRL, DER or PEM; nvidia: JSON with the driver and VBIOS RIMs and "
    "OCSP responses, see docs/attestation.md).",
)
@click.option("--at", "at", help="Check validity at this time (ISO 8601; default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and claims as JSON.")
def verify_evidence(
    file: Path,
    kind: str,
    certs: Path | None,
    collateral: Path | None,
    at: str | None,
    as_json: bool,
) -> None:
    """Verify the evidence in FILE and print its claims; exit 1 with the reason if it fails."""
    when = _instant(at)
    try:
        found = read_evidence(file.read_bytes(), kind)
        verifier = EvidenceVerifier(
            simulation=found.kind == "simulated",
            platform_keys=reference_platform_keys(None) if found.kind == "simulated" else (),
            trust=cli_deps().trust,  # the pinned vendor roots, unless a test gave its own
        )
        claims = verifier.verify(
            found,
            certs=certs.read_bytes() if certs else None,
            collateral=collateral.read_bytes() if collateral else None,
            at=when,
        )
    except EvidenceError as exc:
        if as_json:
            refusal = {"verdict": "refused", "reason": str(exc), "field": exc.field}
            click.echo(json.dumps({**refusal, "offset": exc.offset}, indent=2))
        raise
    if as_json:
        click.echo(json.dumps({"verdict": "verified", "claims": claims.to_json()}, indent=2))
        return
    status = claims.tcb_status
    note = ""
    if status == "Unverified":
        note = (
            " (chain not revoked (AMD CRL); AMD publishes no TCB status: the TCB level is "
            "checked against min_tcb only)"
            if claims.revocation_checked
            else " (no collateral: TCB status not checked)"
        )
    click.echo(f"verified {found.kind} evidence; TCB status {status}{note}")
    _print_claims(claims)
