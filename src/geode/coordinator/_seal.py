"""Sealing: the Coordinator's state encrypted under a data key that only the sealing key unwraps.

Sealed blob layout::

    magic  b"GEODESEALED\\0"        12 bytes
    u32    header length (big-endian)
    header JSON: {"version": 1, "wrapped_keys": {"sealing": base64(nonce || AES-GCM(data key))}}
    nonce  12 bytes
    AES-256-GCM(state) with the magic, length and header as associated data

The header is authenticated with the state, so swapping or editing a wrapped key is detected. In
simulation the sealing key is a 32-byte file outside the data directory; on real hardware it is
the TEE's sealing key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from geode._files import create_private_file, is_private, xdg_path
from geode.errors import SealError

__all__ = [
    "SEALING_KEY_ENV",
    "Sealer",
    "default_sealing_key_path",
    "load_or_create_sealing_key",
]

SEALING_KEY_ENV = "GEODE_SEALING_KEY"
MAGIC = b"GEODESEALED\0"
_LEN = struct.Struct(">I")
_WRAP_AAD = b"geode data key v1"
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


class Sealer:
    """Seals and unseals state blobs; keeps one data key for the lifetime of the state."""

    def __init__(self, sealing_key: bytes, data_key: bytes | None = None) -> None:
        if len(sealing_key) != KEY_SIZE:
            raise SealError("a sealing key has 32 bytes")
        self._sealing = AESGCM(sealing_key)
        self._data_key = data_key or AESGCM.generate_key(bit_length=256)
        self._data = AESGCM(self._data_key)
        self._header = self._build_header()

    def _build_header(self) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        wrapped = nonce + self._sealing.encrypt(nonce, self._data_key, _WRAP_AAD)
        header = {"version": 1, "wrapped_keys": {"sealing": base64.b64encode(wrapped).decode()}}
        raw = json.dumps(header, sort_keys=True).encode()
        return MAGIC + _LEN.pack(len(raw)) + raw

    def seal(self, state: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return self._header + nonce + self._data.encrypt(nonce, state, self._header)

    @classmethod
    def unseal(cls, blob: bytes, sealing_key: bytes) -> tuple[Sealer, bytes]:
        """Open a sealed blob; returns a sealer that keeps its data key, and the state."""
        header_end, header = _parse_header(blob)
        wraps = header.get("wrapped_keys")
        wrapped_b64 = wraps.get("sealing") if isinstance(wraps, dict) else None
        if not isinstance(wrapped_b64, str):
            raise SealError("state file is corrupt: no sealing-key wrap in the header")
        try:
            wrapped = base64.b64decode(wrapped_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SealError("state file is corrupt: wrapped key is not base64") from None
        try:
            data_key = AESGCM(sealing_key).decrypt(
                wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], _WRAP_AAD
            )
        except (InvalidTag, ValueError):
            raise SealError(
                "the sealing key does not open this state "
                "(state from another host, or the sealing key changed)"
            ) from None
        body = blob[header_end:]
        if len(body) < NONCE_SIZE + 16:
            raise SealError("state file is corrupt: truncated")
        try:
            state = AESGCM(data_key).decrypt(
                body[:NONCE_SIZE], body[NONCE_SIZE:], blob[:header_end]
            )
        except InvalidTag:
            raise SealError(
                "state file was modified or is corrupt (authentication failed)"
            ) from None
        return cls(sealing_key, data_key), state


def _parse_header(blob: bytes) -> tuple[int, dict[str, dict[str, object]]]:
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
    if not isinstance(header, dict) or header.get("version") != 1:
        raise SealError("state file is corrupt: unsupported header")
    return end, header
