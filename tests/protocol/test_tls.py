"""geode.protocol: TLS to the Coordinator verifies unless told, in so many words, not to."""

from __future__ import annotations

import ssl

import pytest

from geode.errors import ClientError
from geode.pki import CertificateAuthority
from geode.protocol import coordinator_client_context


def test_a_root_is_the_only_trust() -> None:
    root = CertificateAuthority.create_root()
    context = coordinator_client_context(root.certificate)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert len(context.get_ca_certs()) == 1
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_no_root_is_an_error_not_no_verification() -> None:
    with pytest.raises(ClientError, match="insecure=True"):
        coordinator_client_context(None)


def test_insecure_is_said_explicitly() -> None:
    context = coordinator_client_context(None, insecure=True)
    assert context.verify_mode is ssl.CERT_NONE
    assert context.check_hostname is False


def test_a_root_and_insecure_together_are_refused() -> None:
    root = CertificateAuthority.create_root()
    with pytest.raises(ValueError, match="not both"):
        coordinator_client_context(root.certificate, insecure=True)
