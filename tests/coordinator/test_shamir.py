"""Threshold sharing over GF(2^8): any ``threshold`` shares give the secret back, fewer do not."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.coordinator._shamir import combine_shares, split_secret


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=48),
    count=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_any_threshold_of_the_shares_recovers_the_secret(
    secret: bytes, count: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(min_value=1, max_value=count))
    shares = split_secret(secret, count, threshold)
    assert [x for x, _ in shares] == list(range(1, count + 1))
    for subset in itertools.combinations(shares, threshold):
        assert combine_shares(subset) == secret
    for subset in itertools.combinations(shares, count):  # more than needed works too
        assert combine_shares(subset) == secret


def test_fewer_shares_than_the_threshold_say_nothing() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 5, 3)
    for subset in itertools.combinations(shares, 2):
        assert combine_shares(subset) != secret
    # With threshold 2, one share is a uniformly random string, not the secret.
    assert all(values != secret for _, values in split_secret(secret, 3, 2))


def test_the_polynomials_come_from_the_given_randomness() -> None:
    zeros = split_secret(b"\x2a" * 4, 3, 2, random=lambda n: bytes(n))
    assert zeros == [(x, b"\x2a" * 4) for x in (1, 2, 3)]  # constant polynomials
    ones = split_secret(b"\x00", 2, 2, random=lambda n: b"\x01" * n)
    assert ones == [(1, b"\x01"), (2, b"\x02")]  # f(x) = x over GF(2^8)


@pytest.mark.parametrize(
    ("count", "threshold"),
    [(0, 1), (2, 3), (256, 2), (3, 0)],
    ids=["none", "above", "many", "zero"],
)
def test_impossible_splits_are_refused(count: int, threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        split_secret(b"s", count, threshold)


def test_malformed_share_sets_are_refused() -> None:
    a, b = split_secret(b"secret", 2, 2)
    with pytest.raises(ValueError, match="distinct"):
        combine_shares([a, a])
    with pytest.raises(ValueError, match="lengths"):
        combine_shares([a, (b[0], b[1][:-1])])
    with pytest.raises(ValueError, match="no shares"):
        combine_shares([])
