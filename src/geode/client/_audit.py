"""Checking a Coordinator's audit log: every entry signed by the root, each naming the hash of
the one before, numbered without gaps, and the last one the head the Coordinator's sealed state
records (so a log cut short is told from a complete one)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.protocol import AuditLogHead, audit_entry_hash, audit_signing_payload

__all__ = ["AuditEntry", "AuditReport", "verify_audit_log"]

_FIELDS = {"seq", "time", "event", "user", "details", "prev", "signature"}


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    event: str
    user: str | None
    details: Mapping[str, object]


@dataclass(frozen=True)
class AuditReport:
    """The entries that verify, in order, and the first broken one (``None``: all verify)."""

    entries: list[AuditEntry] = field(default_factory=list)
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


class _Broken(Exception):
    pass


def _entry(
    line: str, expected_seq: int, prev: bytes, key: ec.EllipticCurvePublicKey
) -> tuple[AuditEntry, bytes]:
    try:
        body = json.loads(line)
    except ValueError:
        raise _Broken("not JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise _Broken("not an audit entry")
    seq = body["seq"]
    if type(seq) is not int:
        raise _Broken("not an audit entry")
    if seq != expected_seq:
        if seq > expected_seq:
            raise _Broken(f"missing (the log goes on with entry {seq})")
        raise _Broken(f"out of order (numbered {seq})")
    signature = body.pop("signature")
    digest = audit_entry_hash(body)
    if body["prev"] != prev.hex():
        raise _Broken(f"does not follow entry {expected_seq - 1} (the hash chain is broken)")
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            audit_signing_payload(digest),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise _Broken("its signature does not verify with the root key (edited)") from None
    details = body["details"] if isinstance(body["details"], dict) else {}
    user = body["user"] if isinstance(body["user"], str) else None
    return AuditEntry(seq, str(body["time"]), str(body["event"]), user, details), digest


def verify_audit_log(
    lines: Sequence[str], head: AuditLogHead, root: x509.Certificate
) -> AuditReport:
    """Check ``lines`` (the log, oldest first) against ``head`` (the last entry the
    Coordinator's sealed state names) and the deployment's ``root``."""
    key = root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return AuditReport(broken_at=1, reason="the root key is not an ECDSA key")
    entries: list[AuditEntry] = []
    prev = bytes(32)
    for index, line in enumerate(lines, start=1):
        try:
            entry, prev = _entry(line, index, prev, key)
        except _Broken as exc:
            return AuditReport(entries, index, f"entry {index}: {exc}")
        entries.append(entry)
    head_seq, head_hash = head.seq, head.hash
    if head_seq != len(lines):
        if head_seq > len(lines):
            return AuditReport(
                entries,
                len(lines) + 1,
                f"entry {len(lines) + 1}: missing (the log ends at {len(lines)}, the "
                f"Coordinator's last entry is {head_seq})",
            )
        return AuditReport(
            entries, len(lines), f"the Coordinator's last entry is {head_seq}, not {len(lines)}"
        )
    if lines and head_hash != prev.hex():
        return AuditReport(
            entries, len(lines), f"entry {len(lines)}: not the last entry the Coordinator made"
        )
    return AuditReport(entries)
