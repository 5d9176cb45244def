"""``geode verify``: check a Coordinator's deployment statement and pin its root.

What the statement is checked against: ``--measurement`` (a simulated Coordinator) or
``--policy FILE`` (``geode.client.VerificationPolicy``: one or more accepted reference values,
collateral, certificates). Hardware evidence chains to the pinned vendor roots -- the
``TrustAnchors`` of ``cli_deps()``, which only the Python API can replace (tests): no flag or
environment variable of this command adds a root. ``--collateral`` and ``--certs`` add
documents; ``--online`` fetches what is still missing (Intel PCS, AMD KDS) and says what it
fetched. Without collateral the TCB verdict is ``Unverified``, printed loudly, and the statement
is accepted unless the policy says ``require_collateral``. For SEV-SNP, AMD's CRL proves only
that the chain is not revoked (AMD publishes no TCB status): that is what is printed, the TCB
level is the policy's ``min_tcb``, and the CRL satisfies ``require_collateral``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode._files import replace_file
from geode.attestation import (
    TCB_UNVERIFIED,
    TrustAnchors,
    Verdict,
    checks_in_order,
    default_platform_key_path,
    load_platform_public_key,
)
from geode.cli._common import cli_deps, warn
from geode.client import (
    CollateralFetcher,
    CoordinatorClient,
    Fetched,
    VerificationPolicy,
    VerifiedStatement,
    pin_root,
    verify_statement,
)
from geode.errors import EvidenceError, GeodeError, StatementError
from geode.protocol import DeploymentStatement
from geode.tee import HARDWARE_KINDS, ReferenceValues

__all__ = ["load_policy", "reference_platform_keys", "verify"]


def reference_platform_keys(paths: tuple[Path, ...] | None) -> list[Ed25519PublicKey]:
    """The simulated platform keys to trust: those given, else this machine's, if any."""
    if paths:
        return [load_platform_public_key(p) for p in paths]
    local = default_platform_key_path()
    return [load_platform_public_key(local)] if local.exists() else []


def load_policy(measurement: str | None, policy: Path | None) -> VerificationPolicy:
    """What ``--measurement`` (a simulated Coordinator) or ``--policy FILE`` says to accept
    (exactly one of them): ``geode verify`` checks a statement against it, ``geode recover``
    a recovery offer."""
    if (measurement is None) == (policy is None):
        raise click.UsageError("give exactly one of --measurement and --policy")
    if measurement is not None:
        value = measurement.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise click.BadParameter("expected 64 hex digits", param_hint="--measurement")
        return VerificationPolicy.of(ReferenceValues(tee="simulated", measurement=value))
    assert policy is not None
    return VerificationPolicy.load(policy)  # PolicyError: one line naming the field


def _documents(values: tuple[str, ...], option: str) -> dict[str, bytes]:
    """``KIND=FILE`` values read: what ``--collateral`` and ``--certs`` add."""
    out: dict[str, bytes] = {}
    for value in values:
        kind, _, file = value.partition("=")
        if kind not in HARDWARE_KINDS or not file:
            kinds = ", ".join(HARDWARE_KINDS)
            raise click.BadParameter(
                f"{value!r}: expected KIND=FILE with KIND one of {kinds}", param_hint=option
            )
        path = Path(file)
        if not path.is_file():
            raise click.BadParameter(f"{value!r}: no such file", param_hint=option)
        out[kind] = path.read_bytes()
    return out


def _nonce(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        nonce = bytes.fromhex(value)
    except ValueError:
        nonce = b""
    if not 16 <= len(nonce) <= 64:
        raise click.BadParameter("expected 16 to 64 bytes in hex", param_hint="--nonce")
    return nonce


def _print_fetched(fetched: Fetched) -> None:
    click.echo(f"fetched {fetched.kind} {fetched.what}: {fetched.url} ({fetched.size} bytes)")


def _check(
    statement: DeploymentStatement,
    policy: VerificationPolicy,
    *,
    keys: list[Ed25519PublicKey],
    nonce: bytes | None,
    trust: TrustAnchors,
    online: bool,
    transport: httpx.BaseTransport | None,
) -> VerifiedStatement:
    if online:
        try:
            evidence = statement.evidence.evidence()
        except EvidenceError as exc:
            raise StatementError(f"coordinator evidence: {exc}") from None
        with CollateralFetcher(transport=transport, on_fetch=_print_fetched) as fetcher:
            try:
                trust = fetcher.complete(evidence, trust)
            except EvidenceError as exc:
                raise StatementError(f"coordinator evidence: {exc}") from None
    return verify_statement(statement, policy=policy, platform_keys=keys, nonce=nonce, trust=trust)


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
    help="Verification policy (YAML/JSON): 'version: 1' with the accepted reference values "
    "under 'accept' (tee, measurement, ...), optional collateral and certs; or one package.",
)
@click.option(
    "--collateral",
    multiple=True,
    metavar="KIND=FILE",
    help="Collateral for a kind of hardware evidence (sgx, tdx: Intel's TCB info, QE identity "
    "and CRLs as JSON; sev-snp: AMD's CRL, DER or PEM). Overrides the policy's.",
)
@click.option(
    "--certs",
    multiple=True,
    metavar="KIND=FILE",
    help="Certificates the evidence lacks (sev-snp: the VCEK or VLEK; sgx, tdx: the PCK chain).",
)
@click.option(
    "--online",
    is_flag=True,
    help="Fetch the collateral and certificates still missing from Intel's PCS or AMD's KDS.",
)
@click.option(
    "--nonce",
    "nonce_hex",
    help="With --statement: the nonce (hex) the saved statement must answer (its freshness).",
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
    collateral: tuple[str, ...],
    certs: tuple[str, ...],
    online: bool,
    nonce_hex: str | None,
    platform_key: tuple[Path, ...],
    save: Path | None,
) -> None:
    """Verify the deployment statement and pin the deployment's root certificate."""
    if (address is None) == (statement is None):
        raise click.UsageError("give exactly one of --coordinator and --statement")
    if address is not None and nonce_hex is not None:
        raise click.UsageError("--nonce is for --statement: a fresh statement has a fresh nonce")
    accepted = load_policy(measurement, policy).with_documents(
        collateral=_documents(collateral, "--collateral"), certs=_documents(certs, "--certs")
    )
    deps = cli_deps()
    trust = accepted.anchors(deps.trust)
    keys = reference_platform_keys(platform_key or None)
    try:
        nonce = _nonce(nonce_hex)
        if address is not None:
            # First contact: the channel is not trusted yet; the statement is what we verify.
            nonce = os.urandom(32)
            with CoordinatorClient(address, insecure=True) as client:
                document = client.attestation(nonce)
        else:
            assert statement is not None
            try:
                saved = json.loads(statement.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GeodeError(f"{statement}: not a JSON statement ({exc})") from None
            document = DeploymentStatement.from_json(saved)
        verified = _check(
            document,
            accepted,
            keys=keys,
            nonce=nonce,
            trust=trust,
            online=online,
            transport=deps.http_transport,
        )
    except StatementError as exc:
        raise click.ClickException(f"deployment statement REJECTED: {exc}") from None
    _report(verified, accepted, fresh=nonce is not None)
    if address is not None:
        # The channel must end at the verified root's holder before we pin it.
        with CoordinatorClient(address, root=verified.root) as client:
            client.status()
        path = pin_root(address, verified.root)
        click.echo(f"  pinned root:  {path}")
    if save is not None:
        text = json.dumps(verified.statement.to_json(), indent=2).encode()
        replace_file(save, text, mode=0o644)  # a link at SAVE is replaced, not followed
        click.echo(f"  saved:        {save}")


def _tcb_line(verdict: Verdict, *, simulation: bool) -> str:
    """The verdict's status, never more than was checked (``Unverified`` said loudly)."""
    if verdict.status == TCB_UNVERIFIED and not simulation:
        return "UNVERIFIED"
    return verdict.status


def _report(verified: VerifiedStatement, policy: VerificationPolicy, *, fresh: bool) -> None:
    claims = verified.claims
    if verified.simulation:
        warn("SIMULATION: the Coordinator's evidence comes from a simulated platform key")
    if not fresh:
        warn("offline verification: the statement's freshness is not checked (give --nonce)")
    unverified = claims.tcb_status == TCB_UNVERIFIED and not verified.simulation
    if unverified and "revocation" not in claims.checked:
        warn(
            f"TCB UNVERIFIED: no {claims.tee} collateral was checked, so the platform's TCB "
            "level and revocations are NOT known (give --collateral, or --online)"
        )
    match = verified.matched
    entry = f"accept[{match.index}]" if len(policy.accept) > 1 else "the reference values"
    click.echo("deployment statement verified")
    click.echo(f"  tee:          {claims.tee}")
    click.echo(f"  matched:      {entry} ({match.reference.tee})")
    click.echo(f"  tcb:          {_tcb_line(match.verdict, simulation=verified.simulation)}")
    click.echo(f"  checked:      {', '.join(checks_in_order(match.verdict.checked))}")
    for reason in match.verdict.reasons:
        click.echo(f"  reason:       {reason}")
    click.echo(f"  measurement:  {claims.measurement.hex()}")
    click.echo(f"  state:        {verified.state}")
    click.echo(f"  root:         sha256:{verified.root_fingerprint}")
    manifest_hex = verified.manifest_sha256.hex() if verified.manifest_sha256 else "(not set)"
    click.echo(f"  manifest:     {manifest_hex}")
