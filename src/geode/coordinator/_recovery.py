"""Recovery: the data key shared among the manifest's recovery parties, and put back together.

When the manifest names recovery keys, the data key that encrypts the sealed state is split with
threshold sharing (``_shamir``), one share per party, each encrypted to the party's RSA key
(RSA-OAEP) and kept in the sealed header next to a check value. A Coordinator that cannot unwrap
the data key with its sealing key (another host) starts in ``recovery``; it shows each party its
encrypted share and a fresh key of its own, bound to its evidence; a party decrypts its share,
encrypts it to that key, signs the upload with its RSA key, and sends it. At the threshold the
Coordinator combines the shares, opens the state and wraps the data key under its own sealing
key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from geode.coordinator._seal import RecoveryHeader, RecoveryParty
from geode.coordinator._shamir import combine_shares, split_secret
from geode.errors import RecoveryRefused
from geode.manifest import Recovery
from geode.pki import public_key_der
from geode.protocol import (
    RECOVERY_SHARE_LABEL,
    RECOVERY_TRANSPORT_LABEL,
    recovery_upload_payload,
)

__all__ = [
    "RecoverySession",
    "oaep",
    "recovery_matches",
    "share_check",
    "split_data_key",
    "upload_signature_padding",
]

SHARE_SIZE = 1 + 32  # x, then one value per byte of the data key


def oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def upload_signature_padding() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def share_check(party: str, share: bytes) -> bytes:
    """Names the right share of ``party`` without revealing it: the shares are uniformly random
    (or, at threshold 1, the 256-bit data key itself), so their hash gives nothing away."""
    return hashlib.sha256(b"geode recovery check v1\0" + party.encode() + b"\0" + share).digest()


def _rsa_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):  # the manifest's validation guarantees it
        raise ValueError("recovery keys are RSA keys")
    return key


def split_data_key(
    data_key: bytes, recovery: Recovery, *, random: Callable[[int], bytes] = os.urandom
) -> RecoveryHeader:
    """One encrypted share of ``data_key`` per recovery party; ``threshold`` recover it."""
    names = sorted(recovery.keys)
    shares = split_secret(data_key, len(names), recovery.threshold, random=random)
    parties = {}
    for name, (x, values) in zip(names, shares, strict=True):
        share = bytes([x]) + values
        pem = recovery.keys[name]
        parties[name] = RecoveryParty(
            public_key=pem,
            share=_rsa_key(pem).encrypt(share, oaep(RECOVERY_SHARE_LABEL)),
            check=share_check(name, share),
        )
    return RecoveryHeader(recovery.threshold, parties)


def recovery_matches(header: RecoveryHeader | None, recovery: Recovery | None) -> bool:
    """Do the shares in ``header`` serve the manifest's recovery section as it is?"""
    if header is None or recovery is None:
        return header is None and recovery is None
    return header.threshold == recovery.threshold and {
        name: p.public_key for name, p in header.parties.items()
    } == dict(recovery.keys)


class RecoverySession:
    """A Coordinator in recovery, collecting the parties' shares under a key of its own.

    The key lives in memory only, for this process: an upload made to another process (or a
    replayed one) cannot be decrypted here, and its signature names this key.
    """

    def __init__(self, header: RecoveryHeader, *, key_size: int = 3072) -> None:
        self.header = header
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        self.key_der = public_key_der(self._key.public_key())
        self._received: dict[str, bytes] = {}

    @property
    def received(self) -> list[str]:
        return sorted(self._received)

    @property
    def complete(self) -> bool:
        return len(self._received) >= self.header.threshold

    def public_key_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def accept(self, party: str, sealed_share: bytes, signature: bytes) -> None:
        """Check and keep one party's share; raises ``RecoveryRefused`` naming what is wrong."""
        record = self.header.parties.get(party)
        if record is None:
            raise RecoveryRefused(f"{party!r} is not a recovery party of this state", status=403)
        try:
            _rsa_key(record.public_key).verify(
                signature,
                recovery_upload_payload(party, self.key_der, sealed_share),
                upload_signature_padding(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            raise RecoveryRefused(
                f"the upload is not signed with the recovery key of {party!r}", status=403
            ) from None
        try:
            share = self._key.decrypt(sealed_share, oaep(RECOVERY_TRANSPORT_LABEL))
        except ValueError:
            raise RecoveryRefused(
                "the share is not encrypted to this Coordinator's recovery key"
            ) from None
        if len(share) != SHARE_SIZE or not hmac.compare_digest(
            share_check(party, share), record.check
        ):
            raise RecoveryRefused(f"this is not the share of {party!r} for this state")
        self._received[party] = share

    def data_key(self) -> bytes:
        """The data key from the shares received (call once ``complete``)."""
        if not self.complete:
            raise RecoveryRefused("not enough shares yet")
        shares = [(s[0], s[1:]) for s in self._received.values()]
        return combine_shares(shares)
