"""The TEE this process runs in, as the Coordinator sees it: evidence and a sealing key.

A service gets evidence from a quote provider (``_providers``); the Coordinator needs more of
its TEE: evidence for its deployment statement, recovery offers and cluster-key handovers, and
a key to seal its state that only the same code on the same platform can derive again.
``probe_host`` finds that TEE through the providers' interfaces and says, for every interface
it looked at, why it is not usable when none is:

=============== ================================= =========== ================================
``--tee``       evidence interface                kind        sealing key (``sealing``)
=============== ================================= =========== ================================
``sgx-gramine`` Gramine's ``/dev/attestation``    ``sgx``     ``/dev/attestation/keys/_sgx_mr*``
                (``attestation_type`` ``dcap``)               (``gramine _sgx_mrenclave``)
``sev-snp``     configfs-tsm (``sev_guest``),     ``sev-snp`` ``SNP_GET_DERIVED_KEY`` through
                else ``/dev/sev-guest``                       ``/dev/sev-guest``; none without it
``tdx``         configfs-tsm (``tdx_guest``)      ``tdx``     none: TDX has no sealing key
=============== ================================= =========== ================================

``auto`` takes the first usable one in that order (Gramine first: inside an enclave the other
paths are the host's). What makes an interface unusable, as ``NoTeeError`` lists it:

- ``gramine``: absent; ``attestation_type`` is not ``dcap``; no ``keys/_sgx_mr*`` file;
- ``configfs-tsm``: absent (no configfs-tsm in the kernel); configfs not mounted; not writable
  (an entry cannot be made); no provider registered; a provider Geode does not know, or the
  other TEE's when one was asked for by name;
- ``sev-guest``: absent; permission denied (it must open read-write);
- ``tdx-guest``: absent; present, but it gives TD reports only: quotes need configfs-tsm
  (Linux 6.7+).

Every sealing key is HKDF-SHA256 over the TEE's own key (``_sealing``). The paths, file
operations and ioctls are injectable (``HostPaths``, ``DeviceFiles``, an ``Ioctl``), which is how
tests drive every TEE against fakes; nothing here reads an environment variable or a flag that
could point it elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from geode.attestation._evidence import Evidence
from geode.attestation._providers import (
    TSM_PROVIDER_KINDS,
    ConfigfsTsmProvider,
    DeviceFiles,
    GramineProvider,
    Ioctl,
    QuoteProvider,
    SevGuestProvider,
    default_ioctl,
)
from geode.attestation._sealing import (
    gramine_seal_key,
    sealing_key,
    snp_derived_key,
)
from geode.attestation._snp_certs import snp_cert_table
from geode.attestation._snp_report import SNP_REPORT_SIZE
from geode.errors import NoTeeError
from geode.tee import TeeKind

__all__ = [
    "TEE_CHOICES",
    "HostPaths",
    "HostProbe",
    "HostTee",
    "Ioctl",
    "Probe",
    "SgxSealing",
    "attach_snp_certs",
    "probe_host",
]

# ``geode coordinator --tee``: a host TEE, ``auto`` (the first usable one) or ``simulated``.
TEE_CHOICES = ("auto", "sev-snp", "tdx", "sgx-gramine", "simulated")
SgxSealing = Literal["mrenclave", "mrsigner"]


@dataclass(frozen=True)
class HostPaths:
    """Where the TEE interfaces live; tests point these into a temporary directory."""

    tsm_root: Path = Path("/sys/kernel/config/tsm/report")
    sev_guest: Path = Path("/dev/sev-guest")
    tdx_guest: Path = Path("/dev/tdx_guest")
    gramine_root: Path = Path("/dev/attestation")


@dataclass(frozen=True)
class Probe:
    """One interface looked at, and why it is (not) usable."""

    interface: str
    path: Path
    usable: bool
    reason: str


class HostTee(Protocol):
    """The TEE the Coordinator runs in."""

    # The kind of evidence it gives: "sev-snp", "tdx" or "sgx".
    kind: TeeKind
    # Which interface, for logs and status: e.g. "sev-snp via /dev/sev-guest".
    name: str
    # How ``sealing_key`` is derived, for status and docs, or "none" (TDX).
    sealing: str

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report data is ``report_data`` (64 bytes), with the certificates a
        verifier needs when the interface gives them (SNP: the certificate table)."""
        ...

    def sealing_key(self) -> bytes | None:
        """32 bytes that only the same code on the same platform derives again; ``None`` when
        the TEE has none (TDX)."""
        ...


class HostProbe(Protocol):
    """What finds the Coordinator's TEE: ``probe_host`` in production; a test's probe answers
    over its fake devices. It is told every start option that shapes the TEE it returns (the
    SGX sealing key), so a test probe sees what the production one would."""

    def __call__(self, choice: str, /, *, sgx_sealing: SgxSealing) -> HostTee:
        """The host TEE ``choice`` (a ``--tee`` value other than ``simulated``) names, or
        ``NoTeeError`` listing every interface probed."""
        ...


def probe_host(
    choice: str = "auto",
    *,
    paths: HostPaths | None = None,
    files: DeviceFiles | None = None,
    ioctl: Ioctl | None = None,
    sgx_sealing: SgxSealing = "mrenclave",
    snp_vmpl: int = 0,
) -> HostTee:
    """The host TEE ``choice`` names (``auto``: the first usable one); ``NoTeeError`` listing
    every interface probed and why it is not usable when there is none.

    ``snp_vmpl`` is the VMPL SEV-SNP reports and derived keys are asked at (a guest under a
    paravisor runs above 0). ``simulated`` is no host TEE: the caller simulates by itself."""
    if choice == "simulated":
        raise ValueError("'simulated' is not a host TEE: simulation needs no probe")
    if choice not in TEE_CHOICES:
        raise ValueError(f"unknown TEE {choice!r} (one of {', '.join(TEE_CHOICES)})")
    if sgx_sealing not in ("mrenclave", "mrsigner"):
        raise ValueError(f"SGX sealing is mrenclave or mrsigner, not {sgx_sealing!r}")
    prober = _Prober(paths or HostPaths(), files or DeviceFiles(), ioctl or default_ioctl)
    wanted = _ORDER if choice == "auto" else (choice,)
    for name in wanted:
        host = prober.find(name, sgx_sealing=sgx_sealing, snp_vmpl=snp_vmpl)
        if host is not None:
            return host
    raise NoTeeError(
        choice,
        tuple((p.interface, str(p.path), p.reason) for p in prober.probes if not p.usable),
    )


def attach_snp_certs(host: HostTee, certs: bytes) -> HostTee:
    """``host`` (SEV-SNP), whose evidence carries ``certs`` as its certificate table whenever
    the interface gives none (``SNP_GET_REPORT`` through ``/dev/sev-guest``, configfs-tsm
    without an ``auxblob``): evidence that a relying party can verify without fetching the VCEK.

    ``certs``: PEM or DER, the VCEK or VLEK and optionally the ASK or ASVK and the ARK
    (``EvidenceError`` otherwise). They are public, and checked like any the evidence carries:
    a VCEK of another chip or TCB fails verification. ``ValueError`` for a host of another
    kind."""
    if host.kind != "sev-snp":
        raise ValueError(f"SEV-SNP certificates given to a {host.kind} TEE")
    return _WithSnpCerts(host, snp_cert_table(certs))


class _WithSnpCerts:
    """A ``HostTee`` adding a certificate table to the reports its interface gives without."""

    def __init__(self, host: HostTee, table: bytes) -> None:
        self.kind: TeeKind = host.kind
        self.name = f"{host.name}, certificates given at start"
        self.sealing = host.sealing
        self._host = host
        self._table = table

    def evidence(self, report_data: bytes) -> Evidence:
        evidence = self._host.evidence(report_data)
        if any(evidence.data[SNP_REPORT_SIZE:]):
            return evidence  # the interface's own certificates
        return Evidence(evidence.kind, evidence.data[:SNP_REPORT_SIZE] + self._table)

    def sealing_key(self) -> bytes | None:
        return self._host.sealing_key()

    def __repr__(self) -> str:
        return f"HostTee({self.name!r}, sealing={self.sealing!r})"


_ORDER = ("sgx-gramine", "sev-snp", "tdx")
_NO_TSM = "absent: the kernel has no configfs-tsm (Linux 6.7+ with the TDX or SEV-SNP guest driver)"


class _HardwareTee:
    """A ``HostTee`` over a quote provider and, where the TEE has one, a sealing key source.

    The sealing key is asked of the TEE on every call and never kept, so it is in no repr, no
    traceback local of this object and no log."""

    def __init__(
        self,
        kind: TeeKind,
        name: str,
        sealing: str,
        provider: QuoteProvider,
        key: Callable[[], bytes] | None,
        probes: Sequence[Probe],
    ) -> None:
        self.kind = kind
        self.name = name
        self.sealing = sealing
        self.probes = tuple(probes)
        self._provider = provider
        self._key = key

    def evidence(self, report_data: bytes) -> Evidence:
        return self._provider(report_data)

    def sealing_key(self) -> bytes | None:
        return None if self._key is None else self._key()

    def __repr__(self) -> str:
        return f"HostTee({self.name!r}, sealing={self.sealing!r})"


class _Prober:
    """Looks at each interface once, remembering what it found and why it is not usable."""

    def __init__(self, paths: HostPaths, files: DeviceFiles, ioctl: Ioctl) -> None:
        self.paths = paths
        self.files = files
        self.ioctl = ioctl
        self.probes: list[Probe] = []
        self._tsm: tuple[Probe, str | None] | None = None
        self._devices: dict[Path, Probe] = {}

    def _note(self, probe: Probe) -> Probe:
        if probe not in self.probes:
            self.probes.append(probe)
        return probe

    def find(self, name: str, *, sgx_sealing: SgxSealing, snp_vmpl: int) -> HostTee | None:
        if name == "sgx-gramine":
            return self._gramine(sgx_sealing)
        if name == "sev-snp":
            return self._snp(snp_vmpl)
        return self._tdx()

    # -- the TEEs ----------------------------------------------------------------------

    def _gramine(self, which: SgxSealing) -> HostTee | None:
        root = self.paths.gramine_root
        key_name = f"_sgx_{which}"
        if not self._note(self._probe_gramine(root, key_name)).usable:
            return None

        def key() -> bytes:
            raw = gramine_seal_key(root, self.files, key_name)
            return sealing_key(raw, "sgx-gramine", key_name)

        provider = GramineProvider(root, self.files)
        sealing = f"gramine {key_name}"
        return _HardwareTee(
            "sgx", "sgx via Gramine /dev/attestation", sealing, provider, key, self.probes
        )

    def _snp(self, vmpl: int) -> HostTee | None:
        via_tsm = self._tsm_gives("sev_guest", "an SEV-SNP guest")
        device = self._note(self._probe_device("sev-guest", self.paths.sev_guest))
        key: Callable[[], bytes] | None = None
        sealing = "none"
        if device.usable:
            ioctl = self.ioctl

            def derived() -> bytes:
                raw = snp_derived_key(self.paths.sev_guest, ioctl, vmpl=vmpl)
                return sealing_key(raw, "sev-snp")

            key, sealing = derived, "sev-snp derived key (VCEK; policy, measurement)"
        provider: QuoteProvider
        if via_tsm:
            provider = ConfigfsTsmProvider(self.paths.tsm_root, self.files, vmpl or None)
            name = "sev-snp via configfs-tsm"
        elif device.usable:
            provider = SevGuestProvider(self.paths.sev_guest, vmpl, self.ioctl)
            name = "sev-snp via /dev/sev-guest"
        else:
            return None
        return _HardwareTee("sev-snp", name, sealing, provider, key, self.probes)

    def _tdx(self) -> HostTee | None:
        if self._tsm_gives("tdx_guest", "a TDX guest"):
            provider = ConfigfsTsmProvider(self.paths.tsm_root, self.files)
            name = "tdx via configfs-tsm"
            return _HardwareTee("tdx", name, "none", provider, None, self.probes)
        path = self.paths.tdx_guest
        if self._exists(path):
            reason = "TD reports only: quotes need configfs-tsm (Linux 6.7+)"
        else:
            reason = "absent (not a TDX guest)"
        self._note(Probe("tdx-guest", path, False, reason))
        return None

    # -- the interfaces ----------------------------------------------------------------

    def _tsm_gives(self, provider: str, what: str) -> bool:
        """Whether configfs-tsm answers as ``provider``; when it answers as another, it is
        noted as not usable for ``what`` the caller wants."""
        tsm, found = self._probe_tsm()
        if found == provider:
            self._note(tsm)
            return True
        if tsm.usable:
            self._note(Probe(tsm.interface, tsm.path, False, f"provider {found}: not {what}"))
        return False

    def _probe_tsm(self) -> tuple[Probe, str | None]:
        if self._tsm is None:
            self._tsm = self._look_at_tsm()
            if not self._tsm[0].usable:
                self._note(self._tsm[0])
        return self._tsm

    def _look_at_tsm(self) -> tuple[Probe, str | None]:
        root = self.paths.tsm_root

        def no(reason: str) -> tuple[Probe, str | None]:
            return Probe("configfs-tsm", root, False, reason), None

        if not self._is_dir(root):
            config = root.parent.parent
            if self._is_dir(config) and not self._has_entries(config):
                return no(f"configfs is not mounted at {config} (mount -t configfs none {config})")
            return no(_NO_TSM)
        # Only an entry says which provider answers: make one, read it, remove it.
        entry = root / f"geode-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.files.mkdir(entry)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return no(f"not writable ({exc.strerror}): configfs must be mounted read-write")
            if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
                return no("no TEE provider registered (no TDX or SEV-SNP guest driver loaded)")
            return no(f"cannot make a report entry: {exc.strerror or exc}")
        try:
            provider = self.files.read(entry / "provider").strip().decode(errors="replace")
        except OSError as exc:
            return no(f"cannot read an entry's provider: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                self.files.rmdir(entry)
        if provider not in TSM_PROVIDER_KINDS:
            known = ", ".join(TSM_PROVIDER_KINDS)
            return no(f"provider {provider!r} is none Geode knows ({known})")
        return Probe("configfs-tsm", root, True, f"provider {provider}"), provider

    def _probe_device(self, interface: str, path: Path) -> Probe:
        if path in self._devices:
            return self._devices[path]
        if not self._exists(path):
            probe = Probe(
                interface, path, False, "absent (not an SEV-SNP guest, or no sev-guest driver)"
            )
        else:
            try:
                self.files.check_open(path)
                probe = Probe(interface, path, True, "present")
            except PermissionError:
                probe = Probe(interface, path, False, "permission denied (needs read-write access)")
            except OSError as exc:
                probe = Probe(interface, path, False, f"cannot open: {exc.strerror or exc}")
        self._devices[path] = probe
        return probe

    def _probe_gramine(self, root: Path, key_name: str) -> Probe:
        kind_path = root / "attestation_type"
        if not self._exists(kind_path):
            return Probe("gramine", root, False, "absent (not inside a Gramine enclave)")
        try:
            kind = self.files.read(kind_path).strip().decode(errors="replace")
        except OSError as exc:
            return Probe("gramine", root, False, f"cannot read attestation_type: {exc.strerror}")
        if kind != "dcap":
            return Probe(
                "gramine",
                root,
                False,
                f"attestation_type is {kind!r}, not 'dcap' "
                '(sgx.remote_attestation = "dcap" in the Gramine manifest)',
            )
        if not self._exists(root / "keys" / key_name):
            return Probe("gramine", root, False, f"no keys/{key_name} (Gramine 1.4+)")
        return Probe("gramine", root, True, "attestation_type dcap")

    @staticmethod
    def _exists(path: Path) -> bool:
        try:
            return path.exists()
        except OSError:
            return False

    @staticmethod
    def _is_dir(path: Path) -> bool:
        try:
            return path.is_dir()
        except OSError:
            return False

    @staticmethod
    def _has_entries(path: Path) -> bool:
        try:
            return any(path.iterdir())
        except OSError:
            return True
