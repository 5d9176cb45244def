"""Simulated TEE evidence, signed by a simulated platform key (Ed25519).

Simulation gives every workflow and identity guarantee of Geode, but no hardware isolation: whoever
holds the platform key can produce evidence for any measurement. The Coordinator accepts simulated
evidence only when started with simulation enabled, and only for packages whose ``tee`` is
``simulated``.

Layout of a simulated quote (little-endian integers)::

    offset size field
    0      8    magic           b"GEODESIM"
    8      2    version         1
    10     2    flags           bit 0: debug
    12     2    svn
    14     2    product_id
    16     32   measurement     SHA-256 of the bundle (``geode measure``)
    48     32   signer          free-form signer identity (zeros by default)
    80     64   report_data
    144    32   platform_key_id SHA-256 of the raw Ed25519 platform public key
    176    64   signature       Ed25519 over bytes 0..175
    240         (end)
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from geode._files import create_private_file, is_private, xdg_path
from geode.attestation._evidence import REPORT_DATA_SIZE, Claims, Evidence
from geode.errors import EvidenceError

__all__ = [
    "PLATFORM_KEY_ENV",
    "SIMULATED_QUOTE_SIZE",
    "SimulatedPlatform",
    "default_platform_key_path",
    "load_platform_public_key",
    "platform_key_id",
    "verify_simulated_quote",
]

PLATFORM_KEY_ENV = "GEODE_PLATFORM_KEY"
MAGIC = b"GEODESIM"
VERSION = 1
SIGNED_SIZE = 176
SIMULATED_QUOTE_SIZE = 240
_HEADER = struct.Struct("<8sHHHH32s32s64s32s")
FLAG_DEBUG = 0x1


def default_platform_key_path() -> Path:
    """``$GEODE_PLATFORM_KEY``, else ``$XDG_DATA_HOME/geode/simulation/platform.key``."""
    override = os.environ.get(PLATFORM_KEY_ENV)
    return Path(override) if override else xdg_path("data", "simulation", "platform.key")


def load_platform_public_key(path: Path) -> Ed25519PublicKey:
    """A platform's public key from a PEM file holding either half of the Ed25519 key pair."""
    data = path.read_bytes()
    key: object
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise EvidenceError(f"{path}: not a PEM Ed25519 key") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"{path}: a simulated platform key is an Ed25519 key")
    return key


def platform_key_id(public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(
        public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).digest()


@dataclass(frozen=True)
class SimulatedPlatform:
    """A simulated TEE platform: it signs quotes for whatever measurement it is told."""

    key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SimulatedPlatform:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path | None = None) -> SimulatedPlatform:
        """Load the platform key, creating it (mode 0600) if it does not exist yet."""
        path = path or default_platform_key_path()
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        platform = cls.generate()
        pem = platform.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if not create_private_file(path, pem):
            return cls.load(path)  # another process created it first
        return platform

    @classmethod
    def load(cls, path: Path) -> SimulatedPlatform:
        data = path.read_bytes()
        if not is_private(path):
            raise EvidenceError(f"{path}: readable by other users; run 'chmod 600 {path}'")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise EvidenceError(f"{path}: not a simulated platform key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise EvidenceError(f"{path}: a simulated platform key is an Ed25519 key")
        return cls(key)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def quote(
        self,
        measurement: bytes,
        report_data: bytes,
        *,
        debug: bool = False,
        signer: bytes = bytes(32),
        product_id: int = 0,
        svn: int = 0,
    ) -> Evidence:
        if len(measurement) != 32 or len(signer) != 32 or len(report_data) != REPORT_DATA_SIZE:
            raise ValueError("measurement and signer take 32 bytes, report_data 64")
        body = _HEADER.pack(
            MAGIC,
            VERSION,
            FLAG_DEBUG if debug else 0,
            svn,
            product_id,
            measurement,
            signer,
            report_data,
            platform_key_id(self.public_key),
        )
        return Evidence("simulated", body + self.key.sign(body))


def verify_simulated_quote(
    data: bytes, trusted: Mapping[bytes, Ed25519PublicKey] | Iterable[Ed25519PublicKey]
) -> Claims:
    """Parse and verify a simulated quote against the trusted platform keys."""
    keys = (
        dict(trusted) if isinstance(trusted, Mapping) else {platform_key_id(k): k for k in trusted}
    )
    if len(data) < SIMULATED_QUOTE_SIZE:
        raise EvidenceError(
            f"truncated: {len(data)} bytes, expected {SIMULATED_QUOTE_SIZE}",
            field="quote",
            offset=len(data),
        )
    if len(data) > SIMULATED_QUOTE_SIZE:
        raise EvidenceError("trailing bytes after the signature", field="quote", offset=240)
    magic, version, flags, svn, product_id, measurement, signer, report_data, key_id = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise EvidenceError("not a simulated quote", field="magic", offset=0)
    if version != VERSION:
        raise EvidenceError(f"unsupported version {version}", field="version", offset=8)
    if flags & ~FLAG_DEBUG:
        raise EvidenceError(f"unknown flags {flags:#x}", field="flags", offset=10)
    public_key = keys.get(key_id)
    if public_key is None:
        raise EvidenceError(
            "signed by an untrusted simulated platform key", field="platform_key_id", offset=144
        )
    try:
        public_key.verify(data[SIGNED_SIZE:], data[:SIGNED_SIZE])
    except InvalidSignature:
        raise EvidenceError("signature does not verify", field="signature", offset=176) from None
    return Claims(
        tee="simulated",
        measurement=measurement,
        report_data=report_data,
        debug=bool(flags & FLAG_DEBUG),
        signer=signer,
        product_id=product_id,
        svn=svn,
        tcb_status="Simulated",
        checked=frozenset({"signature"}),  # by a platform key: no chain, no collateral
        platform=key_id.hex(),
    )
