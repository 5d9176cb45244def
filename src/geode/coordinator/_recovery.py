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

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from geode.coordinator._holder import CoordinatorSettings, Pending, State, StateHolder
from geode.coordinator._seal import RecoveryHeader, RecoveryParty, Sealer
from geode.coordinator._shamir import combine_shares, split_secret
from geode.coordinator._state import CoordinatorState
from geode.coordinator._tee import CoordinatorTee
from geode.errors import ManifestError, RecoveryRefused, SealError
from geode.manifest import Recovery as RecoverySection
from geode.pki import fingerprint, public_key_der
from geode.protocol import (
    RECOVERY_SHARE_LABEL,
    RECOVERY_TRANSPORT_LABEL,
    EvidenceBody,
    RecoveryOffer,
    RecoveryProgress,
    RecoveryStatus,
    recovery_binding,
    recovery_upload_payload,
)
from geode.protocol import RecoveryParty as OfferedShare

__all__ = [
    "Recovery",
    "RecoverySession",
    "oaep",
    "recovery_matches",
    "require_recovery",
    "sealer_for",
    "share_check",
    "split_data_key",
    "upload_signature_padding",
]

log = logging.getLogger("geode.coordinator")

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
    data_key: bytes, recovery: RecoverySection, *, random: Callable[[int], bytes] = os.urandom
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


def recovery_matches(header: RecoveryHeader | None, recovery: RecoverySection | None) -> bool:
    """Do the shares in ``header`` serve the manifest's recovery section as it is?"""
    if header is None or recovery is None:
        return header is None and recovery is None
    return header.threshold == recovery.threshold and {
        name: p.public_key for name, p in header.parties.items()
    } == dict(recovery.keys)


def require_recovery(settings: CoordinatorSettings, recovery: RecoverySection | None) -> None:
    """``ManifestError`` for a manifest without recovery keys on a Coordinator whose sealing key
    dies with its process: the state it seals could never be opened again after a restart
    without a peer, and with a single Coordinator there is none."""
    if recovery is None and not settings.durable_sealing:
        raise ManifestError(
            "recovery",
            "required here: this Coordinator's TEE gives it no sealing key that survives a "
            "restart (TDX, or SEV-SNP without /dev/sev-guest), so only recovery keys (or a "
            "running peer Coordinator) can open its state again",
        )


def sealer_for(sealer: Sealer, recovery: RecoverySection | None) -> Sealer:
    """``sealer`` when its recovery shares fit ``recovery``; else one with a fresh data key
    shared anew, so parties no longer named cannot recover what is sealed from now on."""
    if recovery_matches(sealer.recovery, recovery):
        return sealer
    fresh = sealer.rekeyed()
    if recovery is None:
        return fresh
    return fresh.with_recovery(split_data_key(fresh.data_key, recovery))


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


class Recovery:
    """The Coordinator in recovery: the sealed state it could not open, the offer each party
    needs, and the shares that open the state at the threshold."""

    def __init__(
        self,
        held: StateHolder,
        tee: CoordinatorTee,
    ) -> None:
        self._held = held
        self._tee = tee
        # The blob that could not be opened, its recovery header, and the session that
        # collects the parties' shares (created on first use: it generates a key).
        self._blob: bytes | None = None
        self._header: RecoveryHeader | None = None
        self._session: RecoverySession | None = None

    def enter(self, blob: bytes) -> None:
        """``blob`` could not be opened: wait for the shares that open it."""
        self._blob = blob
        try:
            self._header = Sealer.recovery_header(blob)
        except SealError:
            self._header = None

    def progress(self) -> RecoveryStatus | None:
        """For the status: the threshold, the parties and whose shares arrived."""
        if self._header is None:
            return None
        return RecoveryStatus(
            threshold=self._header.threshold,
            parties=sorted(self._header.parties),
            received=self._session.received if self._session else [],
        )

    def _require(self) -> RecoverySession:
        if self._held.state is not State.RECOVERY or self._blob is None:
            raise RecoveryRefused("the Coordinator is not in recovery", status=409)
        if self._header is None:
            raise RecoveryRefused(
                "this state names no recovery keys: only its sealing key opens it", status=409
            )
        if self._session is None:
            self._session = RecoverySession(self._header)
        return self._session

    def prepare(self) -> None:
        """Create the recovery session (an RSA key: slow, so callers run it in a thread)."""
        self._require()

    def offer(self, nonce: bytes) -> RecoveryOffer:
        """What a party needs to recover: its encrypted share, and this Coordinator's key for
        shares with evidence binding it to the party's nonce."""
        session = self._require()
        evidence = self._tee.evidence(recovery_binding(session.key_der, nonce))
        return RecoveryOffer(
            threshold=session.header.threshold,
            parties={
                name: OfferedShare(
                    share=base64.b64encode(p.share).decode(), public_key=p.public_key
                )
                for name, p in sorted(session.header.parties.items())
            },
            received=session.received,
            recovery_key=session.public_key_pem(),
            nonce=nonce.hex(),
            simulation=self._tee.simulated,
            tee=self._tee.tee,
            evidence=EvidenceBody.of(evidence),
        )

    def recover(
        self, party: str, sealed_share: bytes, signature: bytes
    ) -> Pending[RecoveryProgress]:
        """Accept one party's share; at the threshold, open the state with the recovered data
        key and adopt it (to be saved, under this Coordinator's sealing key). Below the
        threshold nothing is to be saved."""
        held = self._held
        session = self._require()
        reason = held.recovery_reason
        session.accept(party, sealed_share, signature)
        log.warning(
            "recovery share of %s accepted (%d of %d)",
            party,
            len(session.received),
            session.header.threshold,
        )
        progress = RecoveryProgress(
            state=held.state.value, threshold=session.header.threshold, received=session.received
        )
        if not session.complete:
            return Pending(progress, needs_write=False)
        assert self._blob is not None

        def revert() -> None:
            held.enter_recovery(reason)

        try:
            sealer, raw = Sealer.unseal_with_data_key(
                self._blob, session.data_key(), held.sealing_key
            )
            data = CoordinatorState.from_bytes(raw, now=held.clock())
            held.open(sealer, data)
            # The parties came from the blob's header, which only the state itself vouches
            # for: a state whoever holds its data key built (naming its own party) must not
            # be adopted. Its manifest, now opened and authenticated, must name these parties.
            document = held.document
            if document is None or not recovery_matches(session.header, document.manifest.recovery):
                raise SealError("its recovery parties are not the ones its manifest names")
        except SealError as exc:
            revert()
            raise RecoveryRefused(f"the shares do not open this state: {exc}", status=409) from None
        held.record(data, "coordinator.recovered", party, {"parties": session.received})
        log.warning("recovered with the shares of %s", ", ".join(session.received))
        recovered = progress.model_copy(
            update={
                "state": held.state.value,
                "root_fingerprint": fingerprint(held.root_certificate),
            }
        )
        return Pending(recovered, revert, saved=self.saved)

    def saved(self) -> None:
        """The recovered state is on disk: drop the unopened blob and the shares received."""
        self._blob = None
        self._header = None
        self._session = None
