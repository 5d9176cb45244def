"""Sealing: the Coordinator's state encrypted under a data key that only the sealing key unwraps.

Sealed blob layout::

    magic  b"GEODESEALED\\0"        12 bytes
    u32    header length (big-endian)
    header JSON: {"version": 1, "wrapped_keys": {"sealing": base64(nonce || AES-GCM(data key))}}
    nonce  12 bytes
    AES-256-GCM(state) with the magic, length and header as associated data

The data key may also be wrapped under the deployment's cluster key (``"cluster"`` next to
``"sealing"``), which every Coordinator sharing the state holds (``_cluster``), so that a
Coordinator whose own sealing key did not write the header opens it too.

Header version 2 (written when the manifest names recovery keys) adds ``"recovery"``: the
threshold, and per party its RSA public key, its share of the data key encrypted to that key
(RSA-OAEP) and a check value of the share (see ``_recovery``). Version 1 headers are still read.

The header is authenticated with the state, so swapping or editing a wrapped key or a recovery
share is detected. In simulation the sealing key is a 32-byte file outside the data directory; on
real hardware it is the TEE's sealing key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from geode._files import create_private_file, is_private, xdg_path
from geode.errors import SealError

__all__ = [
    "SEALING_KEY_ENV",
    "RecoveryHeader",
    "RecoveryParty",
    "Sealer",
    "default_sealing_key_path",
    "load_or_create_sealing_key",
]

SEALING_KEY_ENV = "GEODE_SEALING_KEY"
MAGIC = b"GEODESEALED\0"
_LEN = struct.Struct(">I")
_WRAP_AAD = b"geode data key v1"
_CLUSTER_WRAP_AAD = b"geode data key under the cluster key v1"
KEY_SIZE = 32
NONCE_SIZE = 12


def default_sealing_key_path() -> Path:
    """``$GEODE_SEALING_KEY``, else ``$XDG_DATA_HOME/geode/simulation/sealing.key``."""
    override = os.environ.get(SEALING_KEY_ENV)
    return Path(override) if override else xdg_path("data", "simulation", "sealing.key")


def load_or_create_sealing_key(path: Path) -> bytes:
    """Read the 32-byte sealing key, creating it (mode 0600) when it does not exist."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = os.urandom(KEY_SIZE)
        return key if create_private_file(path, key) else load_or_create_sealing_key(path)
    except OSError as exc:
        raise SealError(f"cannot read the sealing key {path}: {exc.strerror}") from None
    if len(key) != KEY_SIZE:
        raise SealError(f"the sealing key {path} must hold exactly {KEY_SIZE} bytes")
    if not is_private(path):
        raise SealError(f"the sealing key {path} is readable by other users; chmod 600 it")
    return key


@dataclass(frozen=True)
class RecoveryParty:
    """One recovery party as the header records it."""

    public_key: str  # PEM, RSA
    share: bytes  # the party's share of the data key, RSA-OAEP encrypted to public_key
    check: bytes  # identifies the right share without revealing it (``_recovery.share_check``)


@dataclass(frozen=True)
class RecoveryHeader:
    """Who can recover the data key, and how many of them it takes."""

    threshold: int
    parties: Mapping[str, RecoveryParty]

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "parties": {
                name: {
                    "public_key": p.public_key,
                    "share": base64.b64encode(p.share).decode(),
                    "check": p.check.hex(),
                }
                for name, p in sorted(self.parties.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> RecoveryHeader:
        try:
            parties = {
                str(name): RecoveryParty(
                    public_key=str(p["public_key"]),
                    share=base64.b64decode(p["share"], validate=True),
                    check=bytes.fromhex(p["check"]),
                )
                for name, p in data["parties"].items()
            }
            threshold = int(data["threshold"])
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            raise SealError("state file is corrupt: unreadable recovery header") from None
        if not 1 <= threshold <= len(parties):
            raise SealError("state file is corrupt: recovery threshold out of range")
        return cls(threshold, parties)


class Sealer:
    """Seals and unseals state blobs; keeps one data key for the lifetime of the state.

    ``recovery`` (the data key's shares, for the recovery parties) goes into the header, and
    so does the data key wrapped under ``cluster_key`` when there is one.
    """

    def __init__(
        self,
        sealing_key: bytes,
        data_key: bytes | None = None,
        recovery: RecoveryHeader | None = None,
        cluster_key: bytes | None = None,
    ) -> None:
        if len(sealing_key) != KEY_SIZE:
            raise SealError("a sealing key has 32 bytes")
        if cluster_key is not None and len(cluster_key) != KEY_SIZE:
            raise SealError("a cluster key has 32 bytes")
        self._sealing_key = sealing_key
        self.cluster_key = cluster_key
        self._sealing = AESGCM(sealing_key)
        self._data_key = data_key or AESGCM.generate_key(bit_length=256)
        self._data = AESGCM(self._data_key)
        self.recovery = recovery
        self._header = self._build_header()

    @property
    def data_key(self) -> bytes:
        """The key the state is encrypted under (what the recovery shares recover)."""
        return self._data_key

    def with_recovery(self, recovery: RecoveryHeader | None) -> Sealer:
        """A sealer for the same data key whose header carries ``recovery``."""
        return Sealer(self._sealing_key, self._data_key, recovery, self.cluster_key)

    def with_cluster_key(self, cluster_key: bytes | None) -> Sealer:
        """A sealer for the same data key that also wraps it under ``cluster_key``."""
        return Sealer(self._sealing_key, self._data_key, self.recovery, cluster_key)

    def rekeyed(self) -> Sealer:
        """A sealer with a fresh data key (and no recovery shares yet)."""
        return Sealer(self._sealing_key, cluster_key=self.cluster_key)

    def _build_header(self) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        wrapped = nonce + self._sealing.encrypt(nonce, self._data_key, _WRAP_AAD)
        wraps = {"sealing": base64.b64encode(wrapped).decode()}
        if self.cluster_key is not None:
            nonce = os.urandom(NONCE_SIZE)
            sealed = AESGCM(self.cluster_key).encrypt(nonce, self._data_key, _CLUSTER_WRAP_AAD)
            wraps["cluster"] = base64.b64encode(nonce + sealed).decode()
        header: dict[str, Any] = {"version": 1, "wrapped_keys": wraps}
        if self.recovery is not None:
            header["version"] = 2
            header["recovery"] = self.recovery.to_json()
        raw = json.dumps(header, sort_keys=True).encode()
        return MAGIC + _LEN.pack(len(raw)) + raw

    def seal(self, state: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return self._header + nonce + self._data.encrypt(nonce, state, self._header)

    @classmethod
    def unseal(
        cls, blob: bytes, sealing_key: bytes, cluster_key: bytes | None = None
    ) -> tuple[Sealer, bytes]:
        """Open a sealed blob with the sealing key or, failing that, the cluster key; returns a
        sealer that keeps its data key (and the cluster key given), and the state."""
        _, header = _parse_header(blob)
        wraps = header.get("wrapped_keys")
        if not isinstance(wraps, dict) or not isinstance(wraps.get("sealing"), str):
            raise SealError("state file is corrupt: no sealing-key wrap in the header")
        data_key = _unwrap(wraps["sealing"], sealing_key, _WRAP_AAD)
        if data_key is None and cluster_key is not None and isinstance(wraps.get("cluster"), str):
            data_key = _unwrap(wraps["cluster"], cluster_key, _CLUSTER_WRAP_AAD)
        if data_key is None:
            raise SealError(
                "the sealing key does not open this state "
                "(state from another host, or the sealing key changed)"
                + ("; neither does this Coordinator's cluster key" if cluster_key else "")
            )
        sealer, state = cls.unseal_with_data_key(blob, data_key, sealing_key)
        return sealer.with_cluster_key(cluster_key), state

    @classmethod
    def unseal_with_data_key(
        cls, blob: bytes, data_key: bytes, sealing_key: bytes
    ) -> tuple[Sealer, bytes]:
        """Open a sealed blob with its data key (recovered from shares, or unwrapped); returns
        a sealer that wraps that data key under ``sealing_key`` and keeps the recovery shares."""
        header_end, header = _parse_header(blob)
        recovery = _read_recovery_header(header)
        body = blob[header_end:]
        if len(body) < NONCE_SIZE + 16:
            raise SealError("state file is corrupt: truncated")
        try:
            state = AESGCM(data_key).decrypt(
                body[:NONCE_SIZE], body[NONCE_SIZE:], blob[:header_end]
            )
        except (InvalidTag, ValueError):
            raise SealError(
                "state file was modified or is corrupt (authentication failed)"
            ) from None
        return cls(sealing_key, data_key, recovery), state

    @staticmethod
    def recovery_header(blob: bytes) -> RecoveryHeader | None:
        """The recovery header of a blob, unauthenticated until the blob is opened."""
        return _read_recovery_header(_parse_header(blob)[1])


def _unwrap(wrapped_b64: str, key: bytes, aad: bytes) -> bytes | None:
    """A wrapped data key opened with ``key``; ``None`` when ``key`` is not the one."""
    try:
        wrapped = base64.b64decode(wrapped_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("state file is corrupt: wrapped key is not base64") from None
    try:
        return AESGCM(key).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError):
        return None


def _read_recovery_header(header: Mapping[str, Any]) -> RecoveryHeader | None:
    raw = header.get("recovery")
    return None if raw is None else RecoveryHeader.from_json(raw)


def _parse_header(blob: bytes) -> tuple[int, dict[str, Any]]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _LEN.size:
        raise SealError("state file is corrupt: not a Geode sealed state")
    (length,) = _LEN.unpack_from(blob, len(MAGIC))
    end = len(MAGIC) + _LEN.size + length
    if length > 1 << 20 or end > len(blob):
        raise SealError("state file is corrupt: bad header length")
    try:
        header = json.loads(blob[len(MAGIC) + _LEN.size : end])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SealError("state file is corrupt: unreadable header") from None
    if not isinstance(header, dict) or header.get("version") not in (1, 2):
        raise SealError("state file is corrupt: unsupported header")
    if header["version"] == 1 and "recovery" in header:
        raise SealError("state file is corrupt: unsupported header")
    return end, header
