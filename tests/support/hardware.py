"""Whole fake TEE platforms for tests: a chip (or CPU) with its vendor's test PKI and secrets,
saved in a directory so another process (a restarted Coordinator, a service) loads the SAME
platform, and guests launched on it with a device tree that answers like the real interfaces.

=============== ========================== ============================== =====================
platform        ``launch(...)``            interfaces in the guest tree   sealing
=============== ========================== ============================== =====================
``FakeSnp``     measurement, policy,       ``/dev/sev-guest`` (ioctls),   SNP_GET_DERIVED_KEY:
                host_data, vmpl            configfs-tsm ``sev_guest``     HMAC(chip secret, ...)
``FakeTdx``     mrtd, rtmrs, mrconfigid,   configfs-tsm ``tdx_guest``,    none
                td_attributes              ``/dev/tdx_guest``
``FakeSgx``     mrenclave, mrsigner,       Gramine ``/dev/attestation``   ``keys/_sgx_mr*``:
                product_id, svn, debug     (dcap)                         HMAC(CPU secret, ...)
=============== ========================== ============================== =====================

Usage::

    platform = FakeSnp.create(tmp_path / "snp")        # once; FakeSnp.load(dir) elsewhere
    guest = platform.launch(measurement=b"\\x01" * 48)
    host = guest.probe()                                 # geode.attestation.probe_host(...)
    EvidenceVerifier(trust=guest.trust()).verify(guest.evidence(bytes(64)))

A subprocess reloads a guest from its tree alone: ``load_guest(guest.tree)`` (the tree holds
``guest.json``: the platform directory, its kind and the launch parameters). Launching the same
parameters again gives the same tree and the same keys. The vendor PKIs are made once per
process and saved in each platform directory (RSA keys are the slow part of the AMD kit).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, HostPaths, HostTee, Ioctl, TrustAnchors, probe_host
from geode.attestation._providers import (
    ConfigfsTsmProvider,
    DeviceFiles,
    GramineProvider,
    QuoteProvider,
    SevGuestProvider,
)
from geode.attestation._trust import utc_now
from tests.attestation.support import intel
from tests.attestation.support.devices import (
    DEFAULT_TCB,
    FakeGramine,
    FakeSevGuest,
    FakeTsm,
    SgxEnclave,
    SnpFirmware,
    gramine_tree,
    sev_guest_node,
    snp_responder,
    tsm_tree,
)
from tests.attestation.support.snp import AmdPki

__all__ = [
    "FakeGuest",
    "FakePlatform",
    "FakeSgx",
    "FakeSnp",
    "FakeTdx",
    "load_guest",
    "load_platform",
]

PLATFORM_FILE = "platform.json"
GUEST_FILE = "guest.json"


# -- serialisation ------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def _ec_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _rsa_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@functools.cache
def _amd_pki(product: str) -> AmdPki:
    return AmdPki.create(product)


# -- guests -------------------------------------------------------------------------------


@dataclass
class FakeGuest:
    """A guest launched on a fake platform: its device tree and the seams ``probe_host`` takes.

    ``evidence`` (or ``quote_provider()``) is how a test service gets hardware evidence from
    the same platform; ``probe`` is what a Coordinator in it finds."""

    platform: FakePlatform
    launched: Mapping[str, object]
    tree: Path
    paths: HostPaths
    files: DeviceFiles
    ioctl: Ioctl | None = None
    provider: QuoteProvider | None = None

    def probe(self, choice: str = "auto", **options: Any) -> HostTee:
        return probe_host(choice, paths=self.paths, files=self.files, ioctl=self.ioctl, **options)

    def trust(self) -> TrustAnchors:
        return self.platform.trust()

    def quote_provider(self) -> QuoteProvider:
        """The real provider a service would pick, over this guest's fake devices."""
        assert self.provider is not None, "this guest has no evidence interface"
        return self.provider

    def evidence(self, report_data: bytes) -> Evidence:
        return self.quote_provider()(report_data)


class FakePlatform:
    """What every fake platform has: a directory it is saved in, ``launch``, ``trust``."""

    kind: ClassVar[str]
    directory: Path

    launch: Callable[..., FakeGuest]

    def trust(self) -> TrustAnchors:
        raise NotImplementedError

    def _tree(self, launch: Mapping[str, object]) -> Path:
        digest = hashlib.sha256(json.dumps(launch, sort_keys=True).encode()).hexdigest()[:12]
        tree = self.directory / "guests" / f"{self.kind}-{digest}"
        tree.mkdir(parents=True, exist_ok=True)
        record = {"platform": str(self.directory), "kind": self.kind, "launch": launch}
        (tree / GUEST_FILE).write_text(json.dumps(record, indent=1))
        return tree

    def _save(self, record: Mapping[str, object]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / PLATFORM_FILE).write_text(json.dumps({"kind": self.kind, **record}))

    @staticmethod
    def _record(directory: Path, kind: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((directory / PLATFORM_FILE).read_text())
        assert record["kind"] == kind, f"{directory} holds a {record['kind']} platform"
        return record


_BYTE_FIELDS = {"measurement", "host_data", "mrtd", "mrconfigid", "mrenclave", "mrsigner"}


def _launch_args(launch: Mapping[str, Any]) -> dict[str, Any]:
    """Launch parameters back from ``guest.json`` (bytes were saved as hex)."""
    out: dict[str, Any] = {}
    for name, value in launch.items():
        if name == "interfaces":
            out[name] = tuple(value)
        elif name == "rtmrs":
            out[name] = tuple(bytes.fromhex(v) for v in value)
        elif name in _BYTE_FIELDS:
            out[name] = bytes.fromhex(str(value))
        else:
            out[name] = value
    return out


# -- SEV-SNP ------------------------------------------------------------------------------


@dataclass
class FakeSnp(FakePlatform):
    """An SEV-SNP chip: AMD test PKI (ARK, ASK), this chip's VCEK, chip id and secret."""

    kind: ClassVar[str] = "sev-snp"
    directory: Path
    pki: AmdPki
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    chip_id: bytes
    secret: bytes
    tcb: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TCB))

    @classmethod
    def create(cls, directory: Path, *, product: str = "Genoa") -> FakeSnp:
        pki = _amd_pki(product)
        chip_id = secrets.token_bytes(64)
        key, vcek = pki.endorsement(hwid=chip_id, tcb=dict(DEFAULT_TCB))
        platform = cls(directory, pki, key, vcek, chip_id, secrets.token_bytes(32))
        p = pki
        platform._save(
            {
                "product": p.product,
                "ark_key": _key_pem(p.ark_key), "ark": _cert_pem(p.ark),
                "ask_key": _key_pem(p.ask_key), "ask": _cert_pem(p.ask),
                "asvk_key": _key_pem(p.asvk_key), "asvk": _cert_pem(p.asvk),
                "vcek_key": _key_pem(key), "vcek": _cert_pem(vcek),
                "chip_id": chip_id.hex(), "secret": platform.secret.hex(), "tcb": platform.tcb,
            }
        )  # fmt: skip
        return platform

    @classmethod
    def load(cls, directory: Path) -> FakeSnp:
        r = cls._record(directory, cls.kind)
        pki = AmdPki(
            r["product"],
            _rsa_key(r["ark_key"]), _cert(r["ark"]),
            _rsa_key(r["ask_key"]), _cert(r["ask"]),
            _rsa_key(r["asvk_key"]), _cert(r["asvk"]),
        )  # fmt: skip
        return cls(
            directory,
            pki,
            _ec_key(r["vcek_key"]),
            _cert(r["vcek"]),
            bytes.fromhex(r["chip_id"]),
            bytes.fromhex(r["secret"]),
            dict(r["tcb"]),
        )

    def firmware(
        self,
        *,
        measurement: bytes = b"\x42" * 48,
        policy: int = 0x30000,
        host_data: bytes = bytes(32),
        vmpl: int = 0,
    ) -> SnpFirmware:
        return SnpFirmware(
            self.pki,
            self.vcek_key,
            self.vcek,
            secret=self.secret,
            chip_id=self.chip_id,
            tcb=dict(self.tcb),
            measurement=measurement,
            policy=policy,
            host_data=host_data,
            vmpl=vmpl,
        )

    def launch(
        self,
        *,
        measurement: bytes = b"\x42" * 48,
        policy: int = 0x30000,
        host_data: bytes = bytes(32),
        vmpl: int = 0,
        interfaces: tuple[str, ...] = ("sev-guest", "configfs-tsm"),
        ext: str = "ok",
        derived: str = "ok",
    ) -> FakeGuest:
        """A guest; ``interfaces`` picks ``sev-guest`` and/or ``configfs-tsm``; ``ext`` and
        ``derived`` go to ``FakeSevGuest`` (a driver without extended reports or derived keys)."""
        assert len(measurement) == 48
        assert len(host_data) == 32
        launch = {
            "measurement": measurement.hex(), "policy": policy, "host_data": host_data.hex(),
            "vmpl": vmpl, "interfaces": list(interfaces), "ext": ext, "derived": derived,
        }  # fmt: skip
        tree = self._tree(launch)
        firmware = self.firmware(
            measurement=measurement, policy=policy, host_data=host_data, vmpl=vmpl
        )
        paths = _paths(tree)
        files: DeviceFiles = DeviceFiles()
        ioctl: Ioctl | None = None
        provider: QuoteProvider | None = None
        if "configfs-tsm" in interfaces:
            tsm_tree(tree)
            files = FakeTsm("sev_guest", snp_responder(firmware, pad_to=4096))
            provider = ConfigfsTsmProvider(paths.tsm_root, files, privlevel=vmpl or None)
        if "sev-guest" in interfaces:
            sev_guest_node(tree)
            ioctl = FakeSevGuest(firmware, ext=ext, derived=derived)
            provider = SevGuestProvider(paths.sev_guest, vmpl=vmpl, ioctl=ioctl)
        return FakeGuest(self, launch, tree, paths, files, ioctl, provider)

    def vcek_chain(self) -> bytes:
        """VCEK then ASK (DER), for evidence from a host that gives no certificates."""
        return self.vcek.public_bytes(Encoding.DER) + self.pki.ask.public_bytes(Encoding.DER)

    def trust(self) -> TrustAnchors:
        return TrustAnchors(roots={"sev-snp": (self.pki.ark,)})


def _paths(tree: Path) -> HostPaths:
    return HostPaths(
        tsm_root=tree / "sys" / "kernel" / "config" / "tsm" / "report",
        sev_guest=tree / "dev" / "sev-guest",
        tdx_guest=tree / "dev" / "tdx_guest",
        gramine_root=tree / "dev" / "attestation",
    )


# -- Intel (TDX and SGX) ------------------------------------------------------------------


def _save_intel(pki: intel.Pki) -> dict[str, str]:
    return {
        "root_key": _key_pem(pki.root_key), "root": _cert_pem(pki.root),
        "ca_key": _key_pem(pki.ca_key), "ca": _cert_pem(pki.ca),
        "pck_key": _key_pem(pki.pck_key), "pck": _cert_pem(pki.pck),
        "tcb_key": _key_pem(pki.tcb_key), "tcb_signer": _cert_pem(pki.tcb_signer),
    }  # fmt: skip


def _load_intel(r: Mapping[str, str]) -> intel.Pki:
    return intel.Pki(
        _ec_key(r["root_key"]), _cert(r["root"]),
        _ec_key(r["ca_key"]), _cert(r["ca"]),
        _ec_key(r["pck_key"]), _cert(r["pck"]),
        _ec_key(r["tcb_key"]), _cert(r["tcb_signer"]),
    )  # fmt: skip


def fresh_collateral(pki: intel.Pki, *, tdx: bool, now: datetime.datetime | None = None) -> bytes:
    """Intel collateral (TCB info, QE identity, CRLs) issued yesterday, valid for 30 days."""
    now = now or utc_now()
    issued, until = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    window: dict[str, Any] = {"issued": issued, "next_update": until}
    doc = intel.collateral(
        tdx=tdx,
        info=intel.tcb_info(tdx=tdx, **window),
        identity=intel.qe_identity(tdx=tdx, **window),
        root_crl=intel.crl(pki.root, pki.root_key, **window),
        pck_crl=intel.crl(pki.ca, pki.ca_key, **window),
        pki=pki,
    )
    return json.dumps(doc).encode()


@dataclass
class _IntelPlatform(FakePlatform):
    directory: Path
    pki: intel.Pki
    secret: bytes
    _collateral: bytes = b""

    @classmethod
    def create(cls, directory: Path) -> Self:
        platform = cls(directory, intel.pki(), secrets.token_bytes(32))
        platform._save({"pki": _save_intel(platform.pki), "secret": platform.secret.hex()})
        return platform

    @classmethod
    def load(cls, directory: Path) -> Self:
        r = cls._record(directory, cls.kind)
        return cls(directory, _load_intel(r["pki"]), bytes.fromhex(r["secret"]))

    def collateral(self) -> bytes:
        if not self._collateral:
            self._collateral = fresh_collateral(self.pki, tdx=self.kind == "tdx")
        return self._collateral

    def trust(self) -> TrustAnchors:
        return TrustAnchors(
            roots={self.kind: (self.pki.root,)}, collateral={self.kind: self.collateral()}
        )


_TD_ATTRIBUTES_OFFSET = 16 + 48 + 48 + 8  # tee_tcb_svn, mrseam, mrsignerseam, seam_attributes


class FakeTdx(_IntelPlatform):
    """A TDX host: Intel test PKI (root, PCK CA, PCK, TCB signer) and fresh collateral."""

    kind: ClassVar[str] = "tdx"

    def quote(
        self,
        report_data: bytes,
        *,
        mrtd: bytes = b"\x33" * 48,
        rtmrs: tuple[bytes, ...] = (b"\x40" * 48, b"\x41" * 48, b"\x42" * 48, b"\x43" * 48),
        mrconfigid: bytes = bytes(48),
        td_attributes: int = 0x10000000,
    ) -> bytes:
        body = bytearray(
            intel.td_report(mrtd=mrtd, rtmrs=rtmrs, mrconfigid=mrconfigid, report_data=report_data)
        )
        struct.pack_into("<Q", body, _TD_ATTRIBUTES_OFFSET, td_attributes)
        return intel.build_quote(
            intel.QuoteSpec(version=4, tee="tdx", body=bytes(body), pki=self.pki)
        )

    def launch(
        self,
        *,
        mrtd: bytes = b"\x33" * 48,
        rtmrs: tuple[bytes, ...] = (b"\x40" * 48, b"\x41" * 48, b"\x42" * 48, b"\x43" * 48),
        mrconfigid: bytes = bytes(48),
        td_attributes: int = 0x10000000,
        interfaces: tuple[str, ...] = ("configfs-tsm", "tdx-guest"),
    ) -> FakeGuest:
        """A TD; ``interfaces``: ``configfs-tsm`` (quotes) and/or ``tdx-guest`` (the
        ``/dev/tdx_guest`` node, TD reports only)."""
        assert len(mrtd) == 48
        assert len(rtmrs) == 4
        assert len(mrconfigid) == 48
        launch = {
            "mrtd": mrtd.hex(), "rtmrs": [r.hex() for r in rtmrs], "mrconfigid": mrconfigid.hex(),
            "td_attributes": td_attributes, "interfaces": list(interfaces),
        }  # fmt: skip
        tree = self._tree(launch)
        paths = _paths(tree)
        files: DeviceFiles = DeviceFiles()
        provider: QuoteProvider | None = None
        if "tdx-guest" in interfaces:
            paths.tdx_guest.parent.mkdir(parents=True, exist_ok=True)
            paths.tdx_guest.write_bytes(b"")
        if "configfs-tsm" in interfaces:
            tsm_tree(tree)

            def respond(inblob: bytes, _privlevel: int) -> tuple[bytes, bytes]:
                quote = self.quote(
                    inblob, mrtd=mrtd, rtmrs=rtmrs, mrconfigid=mrconfigid,
                    td_attributes=td_attributes,
                )  # fmt: skip
                return quote, b""

            files = FakeTsm("tdx_guest", respond)
            provider = ConfigfsTsmProvider(paths.tsm_root, files)
        return FakeGuest(self, launch, tree, paths, files, None, provider)


class FakeSgx(_IntelPlatform):
    """An SGX host running Gramine: Intel test PKI, fresh collateral, the CPU's seal secret."""

    kind: ClassVar[str] = "sgx"

    def enclave(
        self, *, mrenclave: bytes, mrsigner: bytes, product_id: int, svn: int
    ) -> SgxEnclave:
        return SgxEnclave(self.secret, mrenclave, mrsigner, product_id, svn)

    def launch(
        self,
        *,
        mrenclave: bytes = b"\x11" * 32,
        mrsigner: bytes = b"\x22" * 32,
        product_id: int = 7,
        svn: int = 3,
        debug: bool = False,
        attestation_type: str = "dcap",
    ) -> FakeGuest:
        """An enclave under Gramine with ``/dev/attestation`` (``attestation_type``) and its
        ``keys/``."""
        assert len(mrenclave) == 32
        assert len(mrsigner) == 32
        launch = {
            "mrenclave": mrenclave.hex(), "mrsigner": mrsigner.hex(), "product_id": product_id,
            "svn": svn, "debug": debug, "attestation_type": attestation_type,
        }  # fmt: skip
        tree = self._tree(launch)
        paths = _paths(tree)
        gramine_tree(paths.gramine_root.parent, attestation_type.encode())

        def quote(report_data: bytes) -> bytes:
            body = intel.sgx_report(
                mrenclave=mrenclave, mrsigner=mrsigner, product_id=product_id, svn=svn,
                debug=debug, report_data=report_data,
            )  # fmt: skip
            return intel.build_quote(intel.QuoteSpec(version=3, tee="sgx", body=body, pki=self.pki))

        enclave = self.enclave(
            mrenclave=mrenclave, mrsigner=mrsigner, product_id=product_id, svn=svn
        )
        files = FakeGramine(quote, enclave)
        provider = GramineProvider(paths.gramine_root, files)
        return FakeGuest(self, launch, tree, paths, files, None, provider)


_PLATFORMS: dict[str, Callable[[Path], FakePlatform]] = {
    "sev-snp": FakeSnp.load,
    "tdx": FakeTdx.load,
    "sgx": FakeSgx.load,
}


def load_platform(directory: Path) -> FakePlatform:
    """Whichever fake platform ``directory`` holds."""
    kind = json.loads((directory / PLATFORM_FILE).read_text())["kind"]
    return _PLATFORMS[kind](directory)


def load_guest(tree: Path) -> FakeGuest:
    """The guest whose device tree is ``tree``, in this process (``guest.json`` says how)."""
    record = json.loads((tree / GUEST_FILE).read_text())
    platform = load_platform(Path(record["platform"]))
    return platform.launch(**_launch_args(record["launch"]))
