"""Activation and renewal verify the Coordinator unless told, in so many words, not to."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import Evidence
from geode.errors import ClientError
from geode.pki import CertificateAuthority, LeafParams
from geode.runtime import activate, renew


def _no_evidence(_: bytes) -> Evidence:
    raise AssertionError("no evidence is made before the Coordinator can be verified")


def test_activation_without_a_root_needs_insecure_true() -> None:
    with pytest.raises(ClientError, match="insecure=True"):
        activate("127.0.0.1:1", "web", _no_evidence, root=None)


def test_renewal_without_a_root_needs_insecure_true() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = CertificateAuthority.create_root().issue(LeafParams(key.public_key(), "i"))
    with pytest.raises(ClientError, match="insecure=True"):
        renew("127.0.0.1:1", cert, key, _no_evidence, root=None)
