"""The cluster key: how Coordinators sharing one state (the etcd store) all open it, each with
its own sealing key.

The sealed state's data key is wrapped under the sealing key of the Coordinator that wrote it and
under the deployment's *cluster key* (``_seal``), which lives inside the state. Each Coordinator
keeps a copy of the cluster key in its data directory, sealed with its own sealing key
(``ClusterKeyFile``), so it opens the shared state after a restart without anyone's help.

A Coordinator without a copy that opens the state (a new instance, or one whose copy was lost)
obtains the cluster key from a running peer, and only by attestation, in both directions:

1. it asks the peer's mesh API for a nonce, makes a fresh P-256 key and evidence binding that
   key to the nonce (``join_request_binding``), and sends both;
2. the peer verifies the evidence as it verifies a service's, and requires the same TEE and the
   same measurement as its own: the same Coordinator package. It then makes a key of its own,
   encrypts the cluster key to the newcomer's key (ECDH, HKDF-SHA256, AES-256-GCM), and answers
   with its key, the sealed cluster key and evidence binding all of it to the newcomer's key and
   nonce (``join_answer_binding``);
3. the newcomer verifies the peer's evidence the same way (a host cannot hand it a cluster key of
   its own making), decrypts the key, and keeps it only if it opens the shared state.

"As it verifies a service's" holds for the checks, not for the trust anchors: a peer's evidence
is verified against what this Coordinator trusts *for Coordinators* (``coordinator_peer_verifier``),
never against the keys it trusts for services. A simulated platform key vouches for whatever
measurement its holder claims, so a key trusted to sign services' evidence (another host where
services run) would otherwise obtain the cluster key by claiming the Coordinator's measurement,
and with it open the sealed state. Simulated evidence earns the key only when this Coordinator
runs in simulation itself and the evidence is signed by its own platform key (a peer on the
same simulated platform) or by a key given for Coordinators (``--trust-coordinator-platform-key``).

The mesh API's TLS certificate is not checked in this exchange: the newcomer cannot know the
deployment's root before it opens the state. Both ends are authenticated by their evidence, and
the key only ever travels encrypted to the newcomer's key. When no peer hands the key over, the
Coordinator starts in ``recovery`` (the recovery parties' shares open the state).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import ValidationError

from geode._files import replace_private_file
from geode.attestation import (
    Evidence,
    EvidenceVerifier,
    TrustAnchors,
)
from geode.coordinator._holder import CoordinatorSettings, StateHolder
from geode.coordinator._nonces import NonceStore
from geode.coordinator._seal import Sealer
from geode.coordinator._state import CLUSTER_KEY_SIZE
from geode.coordinator._store import SharedStore
from geode.coordinator._tee import CoordinatorTee
from geode.errors import (
    ClaimsMismatch,
    ClientError,
    EvidenceError,
    GeodeError,
    JoinRefused,
    SealError,
)
from geode.protocol import (
    ClusterKeyAnswer,
    ClusterKeyBody,
    EvidenceBody,
    NonceAnswer,
    Routes,
    coordinator_client_context,
    first_error,
    join_answer_binding,
    join_request_binding,
    raise_for_error,
)

__all__ = [
    "CLUSTER_KEY_FILE",
    "CLUSTER_KEY_PATH",
    "CLUSTER_KEY_SIZE",
    "ClusterKeyFile",
    "ClusterKeys",
    "ClusterMember",
    "JoinParty",
    "JoinRequest",
    "coordinator_peer_verifier",
    "hand_over_cluster_key",
    "obtain_cluster_key",
    "read_answer",
]

log = logging.getLogger("geode.coordinator.cluster")
_coordinator_log = logging.getLogger("geode.coordinator")

CLUSTER_KEY_FILE = "cluster.key.sealed"
CLUSTER_KEY_PATH = Routes.cluster_key.path
_COPY_AAD = b"geode cluster key copy v1"
_TRANSPORT_AAD = b"geode cluster key transport v1"
_NONCE_SIZE = 12


def coordinator_peer_verifier(
    tee: CoordinatorTee,
    coordinator_keys: Sequence[Ed25519PublicKey] = (),
    collateral: dict[str, bytes] | None = None,
    trust: TrustAnchors | None = None,
) -> EvidenceVerifier:
    """The verifier of peer Coordinators' evidence: in simulation, simulated evidence signed by
    this Coordinator's own platform key or one of ``coordinator_keys``, the keys explicitly
    trusted for Coordinators; on hardware, hardware evidence under ``trust``. Never the keys
    trusted for services (see the module docstring)."""
    return tee.peer_verifier(coordinator_keys, collateral, trust)


class ClusterKeyFile:
    """``<data dir>/cluster.key.sealed``: this Coordinator's copy of the cluster key, sealed
    (AES-256-GCM) with its own sealing key; mode 0600, replaced atomically."""

    def __init__(self, directory: Path, sealing_key: bytes) -> None:
        self.path = directory / CLUSTER_KEY_FILE
        self._sealing = AESGCM(sealing_key)

    def load(self) -> bytes | None:
        """The cluster key; ``None`` without a copy. ``SealError`` when the copy does not open
        with this sealing key (another host's, or damaged)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SealError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            key = self._sealing.decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _COPY_AAD)
        except (InvalidTag, ValueError):
            raise SealError(
                f"{self.path} does not open with this sealing key (another host's copy, or damaged)"
            ) from None
        if len(key) != CLUSTER_KEY_SIZE:
            raise SealError(f"{self.path} holds no cluster key")
        return key

    def save(self, key: bytes) -> None:
        nonce = os.urandom(_NONCE_SIZE)
        try:
            replace_private_file(self.path, nonce + self._sealing.encrypt(nonce, key, _COPY_AAD))
        except OSError as exc:
            raise SealError(f"cannot write {self.path}: {exc.strerror}") from None


@dataclass(frozen=True)
class JoinParty:
    """What either end of a handover attests with and checks the other against: its TEE
    (evidence, and the identity the other end must show: the same TEE kind and the same
    Coordinator code, ``CoordinatorTee.identity``) and the verifier of peer Coordinators'
    evidence (``coordinator_peer_verifier``: never the services' one)."""

    tee: CoordinatorTee
    verifier: EvidenceVerifier

    def check(self, evidence: Evidence, expected_report_data: bytes, who: str) -> None:
        """``JoinRefused`` unless ``evidence`` verifies, binds ``expected_report_data``, and
        shows this party's own TEE and identity."""
        try:
            claims = self.verifier.verify(evidence)
        except EvidenceError as exc:  # whatever the evidence holds: claims or EvidenceError
            raise JoinRefused(f"{who}'s evidence does not verify: {exc}") from None
        if not hmac.compare_digest(claims.report_data, expected_report_data):
            raise JoinRefused(f"{who}'s evidence is not bound to this exchange")
        try:
            verdict = self.tee.match_peer(claims)
        except ClaimsMismatch as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            raise JoinRefused(
                f"{who} is not the same Coordinator package: {exc.reason}{detail}"
            ) from None
        log.info("%s's evidence matched this Coordinator (%s)", who, verdict.summary())


def _transport_key(
    own: ec.EllipticCurvePrivateKey, other_der: bytes, newcomer_der: bytes, peer_der: bytes,
    nonce: bytes,
) -> AESGCM:  # fmt: skip
    try:
        other = serialization.load_der_public_key(other_der)
        if not isinstance(other, ec.EllipticCurvePublicKey) or other.curve.name != "secp256r1":
            raise ValueError
        shared = own.exchange(ec.ECDH(), other)
    except (ValueError, UnsupportedAlgorithm):
        raise JoinRefused("the exchange key is not a P-256 public key") from None
    info = (
        _TRANSPORT_AAD
        + hashlib.sha256(newcomer_der).digest()
        + hashlib.sha256(peer_der).digest()
        + nonce
    )
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared))


def _public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise JoinRefused(f"{name}: not base64") from None


def hand_over_cluster_key(
    party: JoinParty, cluster_key: bytes, nonce: bytes, newcomer_der: bytes, evidence: Evidence
) -> ClusterKeyAnswer:
    """The peer's side: the answer to a newcomer that attested with ``evidence`` over its key
    and this peer's ``nonce`` (already consumed); ``JoinRefused`` when it does not earn it."""
    party.check(evidence, join_request_binding(newcomer_der, nonce), "the newcomer")
    own = ec.generate_private_key(ec.SECP256R1())
    peer_der = _public_der(own)
    sealing = _transport_key(own, newcomer_der, newcomer_der, peer_der, nonce)
    iv = os.urandom(_NONCE_SIZE)
    sealed = iv + sealing.encrypt(iv, cluster_key, _TRANSPORT_AAD)
    answer = party.tee.evidence(join_answer_binding(peer_der, newcomer_der, nonce, sealed))
    return ClusterKeyAnswer(
        public_key=_b64(peer_der), sealed_key=_b64(sealed), evidence=EvidenceBody.of(answer)
    )


class ClusterKeys:
    """The Coordinator's part in a cluster-key handover: as either end (``join_party``), and as
    the peer that hands the key of the state in force to a newcomer (``hand_over``)."""

    def __init__(
        self,
        held: StateHolder,
        nonces: NonceStore,
        settings: CoordinatorSettings,
        peer_verifier: EvidenceVerifier,
        tee: CoordinatorTee,
    ) -> None:
        self._held = held
        self._nonces = nonces
        self._settings = settings
        self._verifier = peer_verifier  # for Coordinators, not services
        self._tee = tee

    def join_party(self) -> JoinParty:
        """This Coordinator as either end of a cluster-key handover."""
        return JoinParty(self._tee, self._verifier)

    def hand_over(
        self, nonce: bytes, newcomer_key_der: bytes, evidence: Evidence
    ) -> ClusterKeyAnswer:
        """The cluster key, sealed to a peer Coordinator that attested to running this same
        Coordinator package; ``JoinRefused`` otherwise."""
        self._held.require_keys()
        if not self._nonces.consume(nonce):
            raise JoinRefused("nonce expired or reused")
        cluster_key = self._held.cluster_key
        assert cluster_key is not None  # an opened state has one
        answer = hand_over_cluster_key(
            self.join_party(), cluster_key, nonce, newcomer_key_der, evidence
        )
        _coordinator_log.warning(
            "cluster key handed over to a peer Coordinator with the same measurement"
        )
        return answer


class JoinRequest:
    """The newcomer's side of one handover: its fresh key, and evidence binding the key to the
    peer's nonce."""

    def __init__(self, party: JoinParty, nonce: bytes) -> None:
        self.party = party
        self.nonce = nonce
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_der = _public_der(self._key)
        self.evidence = party.tee.evidence(join_request_binding(self.public_der, nonce))

    def body(self) -> ClusterKeyBody:
        """What is posted to the peer's ``cluster-key`` endpoint."""
        return ClusterKeyBody(
            nonce=self.nonce.hex(),
            public_key=_b64(self.public_der),
            evidence=EvidenceBody.of(self.evidence),
        )

    def open(self, answer: ClusterKeyAnswer) -> bytes:
        """The cluster key from the peer's answer, once its evidence shows the same package and
        binds its key, this request and the sealed key; ``JoinRefused`` otherwise."""
        try:
            peer_der = _unb64(answer.public_key, "public_key")
            sealed = _unb64(answer.sealed_key, "sealed_key")
            evidence = answer.evidence.evidence()
        except EvidenceError as exc:
            raise JoinRefused(f"the peer's answer is malformed: {exc}") from None
        binding = join_answer_binding(peer_der, self.public_der, self.nonce, sealed)
        self.party.check(evidence, binding, "the peer")
        opening = _transport_key(self._key, peer_der, self.public_der, peer_der, self.nonce)
        try:
            key = opening.decrypt(sealed[:_NONCE_SIZE], sealed[_NONCE_SIZE:], _TRANSPORT_AAD)
        except (InvalidTag, ValueError):
            raise JoinRefused("the sealed cluster key does not open") from None
        if len(key) != CLUSTER_KEY_SIZE:
            raise JoinRefused("the peer sent no cluster key")
        return key


def _request_from(peer: str, party: JoinParty, timeout: float) -> bytes:
    """Ask one peer (HOST:PORT of its mesh API) for the cluster key: the key, or ``GeodeError``
    (``JoinRefused`` for a refusal either way) saying why not."""
    # Not verified: see the module docstring (both ends are authenticated by evidence).
    context = coordinator_client_context(None, insecure=True)
    with httpx.Client(verify=context, timeout=timeout) as client:
        try:
            issued = NonceAnswer.model_validate(
                _answer(client.post(f"https://{peer}{Routes.nonce.path}"))
            )
            request = JoinRequest(party, bytes.fromhex(issued.nonce))
            body = request.body().model_dump(mode="json")
            answer = read_answer(
                _answer(client.post(f"https://{peer}{CLUSTER_KEY_PATH}", json=body))
            )
        except httpx.HTTPError as exc:
            raise GeodeError(f"unreachable ({type(exc).__name__})") from None
        except (ValidationError, ValueError):
            raise GeodeError("not a Coordinator's answer") from None
    return request.open(answer)


def read_answer(body: object) -> ClusterKeyAnswer:
    """A peer's answer as received; ``JoinRefused`` when it is not shaped like one."""
    try:
        return ClusterKeyAnswer.model_validate(body)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise JoinRefused(f"the peer's answer is malformed: {where}: {message}") from None


def _answer(response: httpx.Response) -> object:
    """The JSON answer of a 200. A refusal is read through the protocol's error table:
    ``JoinRefused`` with the peer's message for ``join_refused``, ``GeodeError`` otherwise."""
    try:
        body: object = response.json()
    except ValueError:
        raise GeodeError(f"HTTP {response.status_code}, not JSON") from None
    if response.status_code == 200:
        return body
    try:
        raise_for_error(response.status_code, body, "no error body")
    except ClientError as exc:
        if exc.code == JoinRefused.code:
            raise JoinRefused(f"refused: {exc}") from None
        raise GeodeError(f"HTTP {response.status_code}: {exc}") from None
    raise GeodeError(f"HTTP {response.status_code}")  # not a refusal, not an answer either


def obtain_cluster_key(
    peers: Sequence[str],
    party: JoinParty,
    opens: Callable[[bytes], bool],
    *,
    timeout: float = 10.0,
) -> tuple[bytes | None, list[str]]:
    """Ask ``peers`` in turn for the cluster key until one hands over a key that ``opens(key)``
    accepts (it opens the shared state). Returns that key (or ``None``) and one line per peer
    that did not give it."""
    failures = []
    for peer in peers:
        try:
            key = _request_from(peer, party, timeout)
        except GeodeError as exc:
            failures.append(f"{peer}: {exc}")
            continue
        if not opens(key):
            failures.append(f"{peer}: its cluster key does not open the shared state")
            continue
        log.info("obtained the cluster key from %s after mutual attestation", peer)
        return key, failures
    return None, failures


class ClusterMember:
    """This Coordinator among the others sharing its store: its listing as ``name`` (the
    HOST:PORT of its mesh API; gone when the store is closed), its copy of the cluster key in
    ``data_dir``, and how it obtains the key from a peer.

    With ``keep_copy`` false (a sealing key that does not survive this process: TDX, SNP
    without ``/dev/sev-guest``) there is no local copy: a copy sealed with a key nobody can
    derive again is of no use, so after a restart the key comes from a peer or recovery."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        store: SharedStore,
        sealing_key: bytes,
        *,
        keep_copy: bool = True,
    ) -> None:
        self.store = store
        self.name = name
        self.copy = ClusterKeyFile(data_dir, sealing_key)
        self._keep_copy = keep_copy
        self._sealing_key = sealing_key
        self.kept: bytes | None = None  # what the local copy holds
        self.offered: bytes | None = None  # a peer's key, adopted with the next state read
        self.started_empty = False  # the store held no state when this Coordinator started

    def local_key(self) -> bytes | None:
        if not self._keep_copy:
            return None
        try:
            self.kept = self.copy.load()
        except SealError as exc:
            log.warning("cluster key copy not used: %s", exc)
            return None
        return self.kept

    def opens(self, blob: bytes, key: bytes | None) -> bool:
        try:
            Sealer.unseal(blob, self._sealing_key, key)
        except SealError:
            return False
        return True

    def join(self, blob: bytes, party: JoinParty) -> bytes | None:
        """The cluster key from a running peer that attests to it; ``None`` if none does."""
        try:
            peers = [name for name in self.store.members() if name != self.name]
        except SealError as exc:
            log.error("the other Coordinators cannot be listed: %s", exc)
            return None
        if not peers:
            log.error("no other Coordinator is listed in etcd to hand over the cluster key")
            return None
        random.shuffle(peers)
        key, failures = obtain_cluster_key(peers, party, lambda k: self.opens(blob, k))
        for failure in failures:
            log.error("cluster key not obtained from %s", failure)
        return key

    def keep(self, key: bytes | None) -> None:
        """Seal ``key`` into the local copy when it is not the one there. A failure is logged,
        not raised: the Coordinator serves on, and needs a peer again only after a restart."""
        if key is None or key == self.kept:
            return
        if not self._keep_copy:
            self.kept = key
            return
        try:
            self.copy.save(key)
        except SealError as exc:
            log.error("cluster key copy not written (retried with the next change): %s", exc)
            return
        self.kept = key
        log.info("cluster key sealed into %s with this host's sealing key", self.copy.path)

    def register(self, tee: str, measurement: str) -> None:
        record = json.dumps({"mesh": self.name, "tee": tee, "measurement": measurement}).encode()
        try:
            self.store.register(self.name, record)
        except SealError as exc:
            log.error("this Coordinator could not list itself in etcd: %s", exc)
