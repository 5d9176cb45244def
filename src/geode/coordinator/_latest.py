"""Which certificate of an instance may renew it: only the latest one the Coordinator issued.

Without this record any still-valid certificate of an instance renews, so a leaked older key keeps
the identity alive for ever and an instance can fork into two lines of certificates. With it, the
Coordinator remembers per instance (the leaf's CN) the serial number of the last certificate it
issued, at activation and at every renewal, in the sealed state; any other certificate is stale.

The record stays small. An entry goes once no certificate of its instance can be valid any more
(nothing of that instance can renew then), checked whenever the record has doubled since the last
pruning; and a new manifest starts an empty record.

A state sealed before this record existed (version 1) knows nothing of the certificates already
handed out. Those, and only those (issued before ``untracked_before``), are taken on first use:
the first renewal by one of them pins its instance, and every other certificate of that instance
is stale from then on. Such an entry is kept until the mesh CA expires, since an untracked sibling
certificate could live that long and must never be taken on first use again.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from geode.errors import StaleCertificate

__all__ = ["LatestCertificate", "LatestCertificates"]

_PRUNE_MIN = 64


@dataclass(frozen=True)
class LatestCertificate:
    """The last certificate issued to one instance."""

    serial: int
    until: int  # POSIX seconds: after this, no certificate issued to the instance is valid


class LatestCertificates:
    """The latest certificate of every instance that may still hold a valid one."""

    def __init__(
        self,
        entries: Mapping[str, LatestCertificate] | None = None,
        *,
        untracked_before: datetime.datetime | None = None,
    ) -> None:
        self._entries = dict(entries or {})
        self.untracked_before = untracked_before
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, instance_id: str) -> LatestCertificate | None:
        return self._entries.get(instance_id)

    def check(self, instance_id: str, certificate: x509.Certificate) -> bool:
        """Raise ``StaleCertificate`` unless ``certificate`` may renew ``instance_id``; true when
        it is an untracked certificate, taken on first use."""
        entry = self._entries.get(instance_id)
        if entry is not None:
            if entry.serial != certificate.serial_number:
                raise StaleCertificate(f"instance {instance_id} has a newer certificate")
            return False
        untracked = self.untracked_before
        if untracked is None or certificate.not_valid_before_utc >= untracked:
            raise StaleCertificate(f"no certificate of instance {instance_id} is on record")
        return True

    def record(
        self,
        instance_id: str,
        certificate: x509.Certificate,
        now: datetime.datetime,
        *,
        keep_until: datetime.datetime | None = None,
    ) -> Callable[[], None]:
        """Make ``certificate`` the latest of ``instance_id``; returns the undo.

        ``keep_until`` keeps the entry at least that long, whatever the certificate's expiry.
        """
        previous = self._entries.get(instance_id)
        until = max(
            int(certificate.not_valid_after_utc.timestamp()),
            int(keep_until.timestamp()) if keep_until is not None else 0,
            previous.until if previous is not None else 0,
        )
        entry = LatestCertificate(certificate.serial_number, until)
        self._entries[instance_id] = entry
        if len(self._entries) >= self._prune_at:
            self.prune(now)

        def revert() -> None:
            if self._entries.get(instance_id) is not entry:
                return  # replaced since: that change has its own undo
            if previous is None:
                del self._entries[instance_id]
            else:
                self._entries[instance_id] = previous

        return revert

    def prune(self, now: datetime.datetime) -> None:
        """Forget the instances none of whose certificates can be valid at ``now``."""
        horizon = now.timestamp()
        self._entries = {k: e for k, e in self._entries.items() if e.until > horizon}
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._entries))

    def to_json(self) -> dict[str, Any]:
        untracked = self.untracked_before
        return {
            "untracked_before": None if untracked is None else untracked.isoformat(),
            "instances": {k: [format(e.serial, "x"), e.until] for k, e in self._entries.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LatestCertificates:
        """Raises ``KeyError``, ``TypeError`` or ``ValueError`` for a malformed document."""
        untracked = doc["untracked_before"]
        since = None if untracked is None else datetime.datetime.fromisoformat(untracked)
        if since is not None and since.utcoffset() is None:
            raise ValueError("untracked_before without a time zone")
        entries: dict[str, LatestCertificate] = {}
        for instance_id, (serial, until) in doc["instances"].items():
            if not isinstance(serial, str) or type(until) is not int:
                raise TypeError("latest certificate entry")
            entries[str(instance_id)] = LatestCertificate(int(serial, 16), until)
        return cls(entries, untracked_before=since)
