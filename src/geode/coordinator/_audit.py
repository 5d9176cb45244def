"""The audit log: every governance change, hash-chained and signed by the root key.

Each entry is one line of JSON::

    {"seq": n, "time": ISO 8601, "event": "secret.write", "user": "alice" or null,
     "details": {...}, "prev": hex hash of entry n - 1 (64 zeros for the first),
     "signature": base64 ECDSA-P256-SHA256 by the root over audit_signing_payload(hash)}

An entry's hash is ``audit_entry_hash`` of the entry without its signature. The log lives in
``DIR/audit.log`` (with the etcd store, in etcd: ``EtcdAuditLog``; each store names its own as
``Store.audit``) in plaintext: it names
events, users, secret names and manifest hashes, never a secret value. The sealed state keeps
the head (number and hash of the last entry) and the entries written since the file last
confirmed an append, so an entry whose change is on disk reaches the file even across a crash,
and a reader can tell a log cut short from a complete one.

A change's entry is appended after the change is saved: the file never holds an entry for a
change that did not happen.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.coordinator._state import AuditHead
from geode.errors import SealError
from geode.protocol import audit_entry_hash, audit_signing_payload

__all__ = [
    "AUDIT_FILE",
    "AUDIT_PREFIX",
    "AuditDetails",
    "AuditEntry",
    "AuditFile",
    "AuditLog",
    "AuditSink",
    "EtcdAuditLog",
    "MemoryAuditLog",
    "make_audit_entry",
]

log = logging.getLogger("geode.coordinator.audit")

AUDIT_FILE = "audit.log"
AUDIT_PREFIX = "audit/"  # under the etcd store's prefix
AuditDetails = Mapping[str, str | int | list[str]]


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    hash: bytes
    line: str


def make_audit_entry(
    head: AuditHead,
    *,
    event: str,
    user: str | None,
    details: AuditDetails,
    time: datetime.datetime,
    root_key: ec.EllipticCurvePrivateKey,
) -> AuditEntry:
    """The entry after ``head``, signed by the root."""
    body: dict[str, object] = {
        "seq": head.seq + 1,
        "time": time.isoformat(),
        "event": event,
        "user": user,
        "details": dict(details),
        "prev": head.hash.hex(),
    }
    digest = audit_entry_hash(body)
    signature = root_key.sign(audit_signing_payload(digest), ec.ECDSA(hashes.SHA256()))
    body["signature"] = base64.b64encode(signature).decode()
    line = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return AuditEntry(head.seq + 1, digest, line)


def _seq_of(line: str) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if type(seq) is int else None


class AuditSink(Protocol):
    """What the Coordinator's core writes its entries to and serves them from."""

    def read(self) -> list[str]: ...
    def append_missing(self, lines: Sequence[str]) -> None: ...


class AuditLog(AuditSink, Protocol):
    """The audit log that goes with a store (``Store.audit``): also told when a new deployment
    starts on it, since entries found then belong to no saved state."""

    def set_aside(self, now: datetime.datetime) -> str | None:
        """Put entries that belong to no saved state out of the way where they can be; a
        warning saying what became of them, ``None`` when there were none."""
        ...


class MemoryAuditLog:
    """An audit log in memory, for an embedded Coordinator and tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.aside: list[str] = []  # what ``set_aside`` took out of the way

    def read(self) -> list[str]:
        return list(self.lines)

    def append_missing(self, lines: Sequence[str]) -> None:
        last = _last_seq(self.lines)
        self.lines += [line for line in lines if (_seq_of(line) or 0) > last]

    def set_aside(self, now: datetime.datetime) -> str | None:
        if not self.lines:
            return None
        self.aside, self.lines = self.lines, []
        return f"an audit log without a saved state ({len(self.aside)} entries) was set aside"


def _last_seq(lines: Sequence[str]) -> int:
    for line in reversed(lines):
        seq = _seq_of(line)
        if seq is not None:
            return seq
    return 0


class AuditFile:
    """``DIR/audit.log``: JSON lines, appended with fsync, mode 0600."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / AUDIT_FILE

    def read(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SealError(f"cannot read {self.path}: {exc.strerror}") from None
        return [line for line in text.split("\n") if line]

    def append_missing(self, lines: Sequence[str]) -> None:
        """Append the entries of ``lines`` that come after the file's last entry.

        Idempotent, so a retry after a failed or partial append writes each entry once. A line
        cut short by a crash during an append (no final newline) is dropped first: it belongs to
        an entry still waiting in the sealed state.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "r+b") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
                    data = data[: data.rfind(b"\n") + 1]
                existing = [
                    line for line in data.decode("utf-8", errors="replace").split("\n") if line
                ]
                last = _last_seq(existing)
                written = {_seq_of(line): line for line in existing}
                for line in lines:
                    seq = _seq_of(line) or 0
                    if seq <= last and written.get(seq) != line:
                        # Not a retry of ours: someone wrote or changed entries. Appending
                        # after them would bury ours; they stay in the sealed state instead.
                        raise SealError(
                            f"{self.path}: entry {seq} is not the one this Coordinator wrote "
                            "(the log was altered); not appended"
                        )
                missing = [line for line in lines if (_seq_of(line) or 0) > last]
                if missing:
                    f.write("".join(line + "\n" for line in missing).encode())
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            raise SealError(f"cannot append to {self.path}: {exc.strerror}") from None

    def set_aside(self, now: datetime.datetime) -> str | None:
        """Move a log that belongs to no saved state out of the way (a deployment whose state
        is gone), next to where it was."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{AUDIT_FILE}.orphaned-{now.strftime('%Y%m%dT%H%M%SZ')}")
        os.replace(self.path, target)
        return f"an audit log without a saved state was moved to {target}"


class EtcdEntries(Protocol):
    """The keys of the etcd store that ``EtcdAuditLog`` needs (``EtcdStore``)."""

    def under(self, name: str) -> list[tuple[str, bytes]]: ...
    def put_new(self, name: str, value: bytes, lease: str | None = None) -> bytes | None: ...


class EtcdAuditLog:
    """The audit log of Coordinators sharing an etcd store: entry ``n`` is the key
    ``<prefix>/audit/<n, 12 digits>``, put only if absent. Whichever Coordinator flushes an
    entry, every one of them reads the whole log."""

    def __init__(self, store: EtcdEntries) -> None:
        self.store = store

    def read(self) -> list[str]:
        return [
            value.decode("utf-8", errors="replace") for _, value in self.store.under(AUDIT_PREFIX)
        ]

    def append_missing(self, lines: Sequence[str]) -> None:
        """Put each entry of ``lines`` not in etcd yet. Idempotent: an entry already there
        with the same text was a retry (or another Coordinator's flush of the same entry); one
        with other text means the log was altered, and nothing after it is put."""
        for line in lines:
            seq = _seq_of(line)
            if seq is None or seq < 1:
                continue
            found = self.store.put_new(f"{AUDIT_PREFIX}{seq:012d}", line.encode())
            if found is not None and found != line.encode():
                raise SealError(
                    f"audit entry {seq} in etcd is not the one this Coordinator wrote (the log "
                    "was altered); not appended"
                )

    def set_aside(self, now: datetime.datetime) -> str | None:
        """Entries in etcd cannot be moved aside: other Coordinators may read them."""
        if not self.read():
            return None
        return (
            "etcd holds audit entries but no state under this prefix: this deployment's "
            "entries stay in its sealed state until they are removed (use another prefix)"
        )
