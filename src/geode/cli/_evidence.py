"""``geode evidence verify``: verify TEE evidence offline and print its claims, what was checked
(``Claims.checked``) and, with ``--package``, the verdict of matching them
(``attestation.Verdict``)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import click

from geode.attestation import Claims, EvidenceVerifier, Verdict, checks_in_order, match_claims
from geode.cli._common import cli_deps, read_evidence
from geode.cli._verify import reference_platform_keys
from geode.errors import ClaimsMismatch, EvidenceError, ManifestError
from geode.manifest import Package, load_package
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
@click.option(
    "--package",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A package (YAML or JSON) to match the claims against: prints the verdict.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and claims as JSON.")
def verify_evidence(
    file: Path,
    kind: str,
    certs: Path | None,
    collateral: Path | None,
    at: str | None,
    package: Path | None,
    as_json: bool,
) -> None:
    """Verify the evidence in FILE and print its claims; exit 1 with the reason if it fails."""
    when = _instant(at)
    reference = _package(package) if package is not None else None
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
    verdict = _match(claims, reference, as_json=as_json) if reference is not None else None
    if as_json:
        out: dict[str, object] = {
            "verdict": "verified",
            "status": claims.tcb_status,
            "checked": checks_in_order(claims.checked),
            "claims": claims.to_json(),
        }
        if verdict is not None:
            out["match"] = verdict.to_json()
        click.echo(json.dumps(out, indent=2))
        return
    status = claims.tcb_status
    note = ""
    if status == "Unverified":
        note = (
            " (chain not revoked (AMD CRL); AMD publishes no TCB status: the TCB level is "
            "held against a package's min_tcb, give --package)"
            if "revocation" in claims.checked
            else " (no collateral: TCB status not checked)"
        )
    click.echo(f"verified {found.kind} evidence; TCB status {status}{note}")
    click.echo(f"checked: {', '.join(checks_in_order(claims.checked))}")
    if verdict is not None:
        click.echo(f"package matched; verdict {verdict.status}")
        click.echo(f"  checked: {', '.join(checks_in_order(verdict.checked))}")
        for reason in verdict.reasons:
            click.echo(f"  reason:  {reason}")
    _print_claims(claims)


def _package(path: Path) -> Package:
    try:
        return load_package(path.read_bytes())
    except ManifestError as exc:
        raise click.BadParameter(str(exc), param_hint="--package") from None


def _match(claims: Claims, package: Package, *, as_json: bool) -> Verdict:
    """The verdict of matching ``claims`` against ``package``; a mismatch is refused as an
    ``EvidenceError`` is (exit 1, the reason; as JSON with ``--json``)."""
    try:
        return match_claims(claims, package)
    except ClaimsMismatch as exc:
        if as_json:
            refusal = {"verdict": "refused", "reason": exc.reason, "detail": exc.detail}
            click.echo(json.dumps({**refusal, "claims": claims.to_json()}, indent=2))
        raise
