"""The database master key: how it arrives from the Coordinator, and the key check that tells,
before anything touches a data directory, whether it was written with this key."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from geode._files import create_private_file
from geode.errors import DatabaseError, WrongDatabaseKey

__all__ = ["KEY_CHECK_FILE", "KEY_SIZE", "KeyCheck", "parse_key", "read_key_file"]

KEY_SIZE = 32  # bytes: AES-256
KEY_CHECK_FILE = "geode-db.json"
_FORMAT = "geode-db/1"
_LABEL = b"geode db key check\x00"


def parse_key(data: bytes, source: str) -> bytes:
    """A 256-bit key from ``data``: 32 raw bytes, or 64 hex digits (whitespace around allowed).

    ``source`` names where the key came from in the error, which never quotes the data."""
    if len(data) == KEY_SIZE:
        return bytes(data)
    text = data.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise DatabaseError(
        f"{source}: expected a 256-bit key (32 raw bytes or 64 hex digits), got {len(data)} bytes"
    )


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 256-bit key in ``path`` (raw or hex, as a manifest's ``raw`` or ``hex`` filter
    writes it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatabaseError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    return parse_key(data, str(path))


@dataclass(frozen=True)
class KeyCheck:
    """An HMAC of a fixed label under the key: recognises the key, reveals nothing about it."""

    salt: bytes
    tag: bytes = field(repr=False)

    @classmethod
    def create(cls, key: bytes, salt: bytes | None = None) -> KeyCheck:
        salt = os.urandom(16) if salt is None else salt
        return cls(salt, cls._tag(key, salt))

    @staticmethod
    def _tag(key: bytes, salt: bytes) -> bytes:
        return hmac.new(key, _LABEL + salt, hashlib.sha256).digest()

    def matches(self, key: bytes) -> bool:
        return hmac.compare_digest(self._tag(key, self.salt), self.tag)

    def write(self, directory: Path) -> None:
        """Write the check into ``directory`` (mode 0600); it must not exist yet."""
        document = {"format": _FORMAT, "salt": self.salt.hex(), "key_check": self.tag.hex()}
        path = directory / KEY_CHECK_FILE
        if not create_private_file(path, json.dumps(document).encode() + b"\n"):
            raise DatabaseError(f"{path} already exists")

    @classmethod
    def read(cls, directory: Path) -> KeyCheck | None:
        """The check in ``directory``, or ``None`` when there is none."""
        path = directory / KEY_CHECK_FILE
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"cannot read {path}: {exc}") from None
        try:
            if document["format"] != _FORMAT:
                raise DatabaseError(f"{path}: unknown format {document['format']!r}")
            return cls(bytes.fromhex(document["salt"]), bytes.fromhex(document["key_check"]))
        except (KeyError, TypeError, ValueError):
            raise DatabaseError(f"{path}: not a Geode key check") from None

    def verify(self, key: bytes, directory: Path) -> None:
        """Raise ``WrongDatabaseKey`` unless ``key`` is the one ``directory`` was written with."""
        if not self.matches(key):
            raise WrongDatabaseKey(
                f"the data directory {directory} was written with another key "
                "(the key check does not match); nothing was changed"
            )
