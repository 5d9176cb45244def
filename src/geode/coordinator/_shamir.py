"""Threshold secret sharing (Shamir) over GF(2^8): any ``threshold`` of the shares give the secret
back, fewer give no information about it.

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1``; share ``x`` (1..255) holds the polynomials' values at ``x``. Arithmetic is in
GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1, by log and exp tables over the
generator 3. Table lookups are not constant-time; the shares are combined once, on recovery.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = ["Share", "combine_shares", "split_secret"]

Share = tuple[int, bytes]  # (x, the polynomials' values at x)


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        # Multiply by the generator 3 = x + 1: value * 2 (reduced) xor value.
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    for power in range(255, 512):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def split_secret(
    secret: bytes,
    count: int,
    threshold: int,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> list[Share]:
    """``count`` shares of ``secret`` (x = 1..count), any ``threshold`` of which recover it."""
    if not 1 <= threshold <= count <= 255:
        raise ValueError("need 1 <= threshold <= count <= 255")
    if not secret:
        raise ValueError("nothing to share")
    # coefficients[k][i]: the k-th coefficient (k >= 1) of byte i's polynomial.
    coefficients = [random(len(secret)) for _ in range(threshold - 1)]
    shares: list[Share] = []
    for x in range(1, count + 1):
        values = bytearray(len(secret))
        for i, constant in enumerate(secret):
            # Horner's rule from the highest coefficient down to the secret byte.
            acc = 0
            for row in reversed(coefficients):
                acc = _mul(acc, x) ^ row[i]
            values[i] = _mul(acc, x) ^ constant
        shares.append((x, bytes(values)))
    return shares


def combine_shares(shares: Sequence[Share]) -> bytes:
    """The secret from ``threshold`` (or more) distinct shares, by Lagrange interpolation at 0.

    With fewer shares than the threshold the result is a wrong value, not an error: callers
    check the result (the sealed state's authentication tag does).
    """
    if not shares:
        raise ValueError("no shares")
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not all(1 <= x <= 255 for x in xs):
        raise ValueError("shares need distinct x coordinates from 1 to 255")
    size = len(shares[0][1])
    if any(len(values) != size for _, values in shares):
        raise ValueError("shares of different lengths")
    # The Lagrange basis at 0 for each share: prod(x_j / (x_j - x_i)); minus is xor here.
    basis = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if i != j:
                weight = _mul(weight, _div(xj, xj ^ xi))
        basis.append(weight)
    secret = bytearray(size)
    for weight, (_, values) in zip(basis, shares, strict=True):
        for i, value in enumerate(values):
            secret[i] ^= _mul(weight, value)
    return bytes(secret)
