"""``geode measure``: the values to expect from a Coordinator or service image, per TEE.

- ``geode measure DIR`` / ``--coordinator-package`` (``bundle``): the simulation-mode measurement;
  ``--binding sev-snp|tdx``: the bundle's measurement as the SEV-SNP ``HOST_DATA`` or TDX
  ``MRCONFIGID`` a confidential VM running it is launched with (``attestation.bundle_binding``),
  the value its manifest package pins as ``host_data`` or ``mrconfigid``;
- ``sev-snp``: the SEV-SNP launch measurement of a direct-boot VM (firmware, kernel, initrd, command
  line, vCPUs), computed by the maintained ``sev-snp-measure`` package (``geode[measure]``);
- ``sgx``: MRENCLAVE, MRSIGNER, ISVPRODID and ISVSVN from the SIGSTRUCT (``.sig``) Gramine's
  signing tool wrote;
- ``evidence``: the values a golden quote or report shows (read, not verified): the way to TDX
  reference values, which no maintained tool computes from an image.

Every hardware mode prints a policy file (``version: 1`` / ``accept:``) with one entry, in the
field names of the manifest's packages, for ``geode verify --policy``.
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click
import yaml

from geode.attestation import (
    BINDING_KINDS,
    GOLDEN_KINDS,
    ReferenceValues,
    bundle_binding,
    golden_reference_values,
    measure_bundle,
    parse_sigstruct,
    sigstruct_reference_values,
)
from geode.cli._common import read_evidence, warn

__all__ = ["SEV_SNP_MEASURE_MISSING", "measure", "policy_entry_yaml"]

SEV_SNP_MEASURE_MISSING = (
    "the sev-snp-measure package is not installed: pip install 'geode[measure]' "
    "(or pip install sev-snp-measure)"
)
# SEV features in the VMSA (set by the host's KVM and QEMU, not by the image): 0x1 is SNPActive
# alone; 0x21 adds DebugSwap, which some host kernels enable.
DEFAULT_GUEST_FEATURES = 0x1
_BUNDLE = "bundle"


class _MeasureGroup(click.Group):
    """``geode measure DIR`` and ``geode measure --coordinator-package`` stay the short forms of
    ``geode measure bundle ...``; anything that is not a subcommand name goes to ``bundle``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = [_BUNDLE, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_MeasureGroup)
def measure() -> None:
    """Expected measurements: of a code bundle (simulation), of an SEV-SNP VM, of an SGX enclave,
    or as shown by golden evidence (TDX)."""


@measure.command(_BUNDLE)
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False
)
@click.option(
    "--coordinator-package",
    is_flag=True,
    help="Measure the installed geode package (the simulated Coordinator's measurement).",
)
@click.option(
    "--binding",
    type=click.Choice(sorted(BINDING_KINDS)),
    help="Print the bundle's measurement as the SEV-SNP HOST_DATA or TDX MRCONFIGID to launch "
    "the VM with and to pin in the manifest package (host_data / mrconfigid).",
)
@click.option(
    "--policy",
    "as_policy",
    is_flag=True,
    help="With --binding: print a policy file entry instead (geode verify --policy).",
)
@click.option(
    "--launch-measurement",
    metavar="HEX",
    help="With --policy: also require this launch measurement (SEV-SNP measurement, 48 bytes; "
    "TDX MRTD, 48 bytes).",
)
def measure_bundle_command(
    directory: Path | None,
    coordinator_package: bool,
    binding: str | None,
    as_policy: bool,
    launch_measurement: str | None,
) -> None:
    """Print the simulation-mode measurement of a code bundle DIRECTORY, or with --binding the
    value that binds it to a confidential VM."""
    if coordinator_package == (directory is not None):
        raise click.UsageError(
            "give a DIRECTORY or --coordinator-package, or one of sev-snp, sgx, evidence "
            "(geode measure --help)"
        )
    if binding is None and (as_policy or launch_measurement is not None):
        raise click.UsageError("--policy and --launch-measurement go with --binding")
    if launch_measurement is not None and not as_policy:
        raise click.UsageError("--launch-measurement goes with --policy")
    if directory is None:
        from geode.coordinator import coordinator_measurement

        measurement = coordinator_measurement()
    else:
        measurement = measure_bundle(directory)
    if binding is None:
        click.echo(measurement.hex())
    elif as_policy:
        _echo_binding_policy(binding, measurement, launch_measurement)
    else:
        _echo_binding(binding, measurement)


# How the VM is launched with the binding: QEMU takes both fields base64-encoded.
_QEMU_BINDING = {
    "sev-snp": "-object sev-snp-guest,...,host-data={}",
    "tdx": "-object tdx-guest,...,mrconfigid={}",
}
# The field of the launch measurement a policy entry names beside the binding.
_LAUNCH_FIELD = {"sev-snp": "measurement", "tdx": "mrtd"}


def _echo_binding(kind: str, measurement: bytes) -> None:
    """``<field>: <hex>`` (the manifest package's line) and, as a YAML comment, QEMU's option."""
    value = bundle_binding(measurement, kind)
    click.echo(f"{BINDING_KINDS[kind]}: {value.hex()}")
    click.echo(f"# QEMU: {_QEMU_BINDING[kind].format(base64.b64encode(value).decode())}")


def _echo_binding_policy(kind: str, measurement: bytes, launch_measurement: str | None) -> None:
    value = bundle_binding(measurement, kind)
    fields: dict[str, str] = {BINDING_KINDS[kind]: value.hex()}
    if launch_measurement is None:
        warn(
            "the entry pins the bundle only, not the VM image: add --launch-measurement "
            f"(the {_LAUNCH_FIELD[kind]})"
        )
    else:
        fields[_LAUNCH_FIELD[kind]] = _hex48(launch_measurement, "--launch-measurement")
    reference = ReferenceValues.model_validate({"tee": kind, "debug": False, **fields})
    _echo_policy(
        reference,
        f"bundle measurement {measurement.hex()} as {kind} {BINDING_KINDS[kind]}",
    )


def policy_entry_yaml(reference: ReferenceValues, comment: str) -> str:
    """A policy file accepting ``reference``: ``version: 1`` and one ``accept`` entry, in the
    manifest's package field names (only the fields set, ``debug`` always)."""
    entry = reference.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    entry["debug"] = reference.debug
    entry = {"tee": entry.pop("tee"), **entry}
    body = yaml.safe_dump({"version": 1, "accept": [entry]}, sort_keys=False)
    lines = "".join(f"# {line}\n" for line in comment.splitlines())
    return lines + body


def _echo_policy(reference: ReferenceValues, comment: str) -> None:
    if reference.debug:
        warn("this image runs with debugging allowed: its memory is readable by the host")
    click.echo(policy_entry_yaml(reference, comment), nl=False)


def _load_sevsnpmeasure() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(guest, vcpu_types, sev_mode)`` of ``sevsnpmeasure``, or a one-line error."""
    try:
        return (
            importlib.import_module("sevsnpmeasure.guest"),
            importlib.import_module("sevsnpmeasure.vcpu_types"),
            importlib.import_module("sevsnpmeasure.sev_mode"),
        )
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("sevsnpmeasure"):
            raise
        raise click.ClickException(SEV_SNP_MEASURE_MISSING) from None


def _hex_int(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a number such as 0x1 or 0x21") from None


def _hex48(value: str, option: str) -> str:
    try:
        if len(bytes.fromhex(value)) == 48:
            return value.lower()
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r}: expected 48 bytes as 96 hex digits", param_hint=option)


def _host_data(value: str) -> str:
    try:
        if len(bytes.fromhex(value)) == 32:
            return value.lower()
    except ValueError:
        pass
    raise click.BadParameter(
        f"{value!r}: expected 32 bytes as 64 hex digits", param_hint="--host-data"
    )


@measure.command("sev-snp")
@click.option(
    "--ovmf",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The OVMF firmware the VM boots (AmdSev build, with kernel hashes).",
)
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The kernel (direct boot: its hash is in the launch measurement).",
)
@click.option(
    "--initrd",
    type=click.Path(exists=True, dir_okay=False),
    help="The initrd holding the Coordinator (measured through its hash).",
)
@click.option("--append", default="", help="The kernel command line, exactly as given to QEMU.")
@click.option("--vcpus", type=click.IntRange(1, 4096), required=True, help="Number of vCPUs.")
@click.option(
    "--vcpu-type",
    required=True,
    metavar="TYPE",
    help="QEMU CPU model of the guest (EPYC-v4, EPYC-Milan, EPYC-Genoa, ...).",
)
@click.option(
    "--guest-features",
    default=hex(DEFAULT_GUEST_FEATURES),
    show_default=True,
    help="SEV features the host sets in the VMSA (0x1 SNPActive; 0x21 adds DebugSwap).",
)
@click.option("--host-data", metavar="HEX", help="Also require this HOST_DATA (32 bytes, hex).")
@click.option("--hex", "hex_only", is_flag=True, help="Print only the measurement in hex.")
def measure_sev_snp(
    ovmf: str,
    kernel: str,
    initrd: str | None,
    append: str,
    vcpus: int,
    vcpu_type: str,
    guest_features: str,
    host_data: str | None,
    hex_only: bool,
) -> None:
    """Print the SEV-SNP launch measurement of a direct-boot VM as a policy entry.

    Computed by the sev-snp-measure package (QEMU, SNP mode); Geode does not re-implement it.
    """
    features = _hex_int(guest_features)
    if host_data is not None:
        host_data = _host_data(host_data)
    guest, vcpu_types, sev_mode = _load_sevsnpmeasure()
    signatures: dict[str, int] = vcpu_types.CPU_SIGS
    if vcpu_type not in signatures:
        known = ", ".join(sorted(signatures))
        raise click.BadParameter(f"{vcpu_type!r}: not one of {known}", param_hint="--vcpu-type")
    calc: Callable[..., bytes] = guest.calc_launch_digest
    try:
        digest = calc(
            sev_mode.SevMode.SEV_SNP,
            vcpus,
            signatures[vcpu_type],
            ovmf,
            kernel,
            initrd or "",
            append,
            features,
        )
    except (RuntimeError, ValueError) as exc:  # the package's own "wrong firmware" errors
        raise click.ClickException(f"sev-snp-measure: {exc}") from None
    reference = ReferenceValues(
        tee="sev-snp", measurement=digest.hex(), host_data=host_data, debug=False
    )
    if hex_only:
        click.echo(digest.hex())
        return
    _echo_policy(
        reference,
        f"SEV-SNP launch measurement {digest.hex()}\n"
        f"(sev-snp-measure; {vcpus} x {vcpu_type}, "
        f"guest features {features:#x})\nkernel {Path(kernel).name}, initrd "
        f"{Path(initrd).name if initrd else '-'}, append {append!r}",
    )


def _by_signer(identity: str) -> bool:
    return identity == "mrsigner"


_identity_option = click.option(
    "--identity",
    type=click.Choice(["mrenclave", "mrsigner"]),
    default="mrenclave",
    show_default=True,
    help="SGX: pin the exact enclave (MRENCLAVE), or the signer, product id and minimum SVN "
    "(MRSIGNER: accepts later versions from the same key).",
)


@measure.command("sgx")
@click.argument("sig", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_identity_option
def measure_sgx(sig: Path, identity: str) -> None:
    """Print the SGX values of the enclave signed with SIG (a Gramine ``.sig`` SIGSTRUCT) as a
    policy entry."""
    parsed = parse_sigstruct(sig.read_bytes())
    reference = sigstruct_reference_values(parsed, by_signer=_by_signer(identity))
    _echo_policy(
        reference,
        f"SGX SIGSTRUCT {sig.name}: mrenclave {parsed.mrenclave.hex()}\n"
        f"mrsigner {parsed.mrsigner.hex()}\n"
        f"isvprodid {parsed.isv_prod_id}, isvsvn {parsed.isv_svn}, "
        f"attributes {parsed.attributes.hex()}",
    )


@measure.command("evidence")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind", type=click.Choice(["auto", *GOLDEN_KINDS]), default="auto", show_default=True
)
@_identity_option
def measure_evidence(file: Path, kind: str, identity: str) -> None:
    """Print the reference values a golden quote or report in FILE shows, as a policy entry.

    FILE holds the raw evidence or its JSON envelope (``{"kind", "data"}``: the ``evidence`` of
    a Coordinator's statement, ``GET /api/v1/attestation``).

    This only READS the evidence: it does not verify its signature, chain or TCB. Take it from a
    machine you trust, or check it first with ``geode evidence verify``.
    """
    found = read_evidence(file.read_bytes(), kind)
    reference = golden_reference_values(found, by_signer=_by_signer(identity))
    warn(f"{file.name}: read, NOT verified; the values are only as good as where it came from")
    _echo_policy(
        reference, f"reference values read from {found.kind} evidence {file.name} (not verified)"
    )
