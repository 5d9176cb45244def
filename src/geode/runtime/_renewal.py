"""Certificate renewal for a running instance: a fresh key and leaf at half the leaf's lifetime.

Each file is replaced atomically, the key first, then the certificate: a reader that opens both
in that brief gap finds a mismatched pair and must retry (``Credentials.reload`` checks the pair
and tries again on its next poll); the transparent proxies reload the same way, and an app that
reads the files itself reads them again when it next opens a connection.

A failed renewal is retried until the certificate expires. A refusal that will not change (the
Coordinator no longer recognises the certificate, e.g. after the mesh CA was rotated) or an
expired certificate is fatal: ``on_fatal`` is called, and ``geode run`` then stops the command,
so that a supervisor can start (and activate) it afresh.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geode._files import replace_private_file
from geode.errors import ActivationDenied
from geode.pki import certificate_pem, private_key_pem, utc_now
from geode.runtime._activation import EvidenceProvider, renew

__all__ = ["CertificateRenewer", "renewal_time"]

log = logging.getLogger("geode.runtime")


def renewal_time(cert: x509.Certificate, received: datetime.datetime) -> datetime.datetime:
    """When to renew: halfway from when the certificate arrived to when it expires. (Not from
    ``not_valid_before``: certificates are backdated against clock skew.)"""
    return received + (cert.not_valid_after_utc - received) / 2


class CertificateRenewer:
    """Renews one instance's certificate in a daemon thread until stopped."""

    def __init__(
        self,
        address: str,
        chain: list[x509.Certificate],
        key: ec.EllipticCurvePrivateKey,
        provider: EvidenceProvider,
        *,
        root: x509.Certificate | None,
        insecure: bool = False,
        cert_file: Path,
        key_file: Path,
        clock: Callable[[], datetime.datetime] = utc_now,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.chain = chain
        self.key = key
        self.provider = provider
        self.root = root
        self.insecure = insecure
        self.cert_file = cert_file
        self.key_file = key_file
        self.clock = clock
        self.on_fatal = on_fatal
        self.received = clock()
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="geode-renewal", daemon=True)

    def start(self) -> CertificateRenewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def renew_now(self) -> None:
        key, chain = renew(
            self.address,
            self.chain[0],
            self.key,
            self.provider,
            root=self.root,
            insecure=self.insecure,
        )
        replace_private_file(self.key_file, private_key_pem(key))
        replace_private_file(self.cert_file, "".join(certificate_pem(c) for c in chain).encode())
        self.key, self.chain, self.received = key, chain, self.clock()
        self.renewals += 1
        log.info(
            "renewed the certificate; valid until %s", chain[0].not_valid_after_utc.isoformat()
        )

    def _run(self) -> None:
        while True:
            now = self.clock()
            wait = (renewal_time(self.chain[0], self.received) - now).total_seconds()
            if self._stop.wait(max(wait, 0.0)):
                return
            try:
                self.renew_now()
            except ActivationDenied as exc:
                self._fatal(f"the Coordinator refuses to renew the certificate: {exc}")
                return
            except Exception as exc:  # the network, the disk: worth another try
                left = (self.chain[0].not_valid_after_utc - self.clock()).total_seconds()
                if left <= 0:
                    self._fatal(f"the certificate expired; the last renewal failed: {exc}")
                    return
                retry = min(30.0, max(1.0, left / 10))
                log.error("certificate renewal failed (%s); retrying in %.0f s", exc, retry)
                if self._stop.wait(retry):
                    return

    def _fatal(self, reason: str) -> None:
        log.error("%s; stopping", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)
