"""Activation nonces: authenticated by the Coordinator, single-use, expiring.

A nonce is ``random (16) || expiry in ms (8, big-endian) || HMAC-SHA256(key, first 24)[:8]``, so
the Coordinator keeps no state for nonces it hands out: a flood of nonce requests costs nothing and
can evict nobody's nonce. Only *spent* nonces are remembered, until they expire, which makes each
one single-use.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import struct
from collections import OrderedDict

from geode.pki import Clock

__all__ = ["NONCE_SIZE", "NonceStore"]

NONCE_SIZE = 32
_EXPIRY = struct.Struct(">Q")


def _millis(when: datetime.datetime) -> int:
    return int(when.timestamp() * 1000)


class NonceStore:
    def __init__(self, ttl: datetime.timedelta, clock: Clock, key: bytes | None = None) -> None:
        self._ttl = ttl
        self._clock = clock
        self._key = key or os.urandom(32)
        self._spent: OrderedDict[bytes, int] = OrderedDict()

    def use_key(self, key: bytes) -> None:
        """Authenticate with ``key`` from now on (Coordinators sharing a store share it, so a
        nonce from one is good at another). Nonces issued under the old key no longer pass."""
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:8]

    def issue(self) -> tuple[bytes, datetime.datetime]:
        expiry = self._clock() + self._ttl
        body = os.urandom(16) + _EXPIRY.pack(_millis(expiry))
        return body + self._mac(body), expiry

    def consume(self, nonce: bytes) -> bool:
        """True once for a nonce this store issued that has not expired."""
        if len(nonce) != NONCE_SIZE or not hmac.compare_digest(nonce[24:], self._mac(nonce[:24])):
            return False
        now = _millis(self._clock())
        (expiry,) = _EXPIRY.unpack_from(nonce, 16)
        self._forget_expired(now)
        if expiry <= now or nonce in self._spent:
            return False
        self._spent[nonce] = expiry
        return True

    def _forget_expired(self, now: int) -> None:
        # Every nonce gets the same lifetime, so the spent set is (nearly) in expiry order.
        while self._spent:
            oldest, expiry = next(iter(self._spent.items()))
            if expiry > now:
                break
            del self._spent[oldest]

    @property
    def spent(self) -> int:
        return len(self._spent)
