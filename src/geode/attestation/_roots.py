"""Vendor root certificates shipped with Geode, each pinned by the SHA-256 of its DER."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from geode.errors import EvidenceError

__all__ = ["INTEL_SGX_ROOT_SHA256", "certificate_sha256", "load_pinned_root"]

INTEL_SGX_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def certificate_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@functools.cache
def load_pinned_root(filename: str, sha256: str) -> x509.Certificate:
    """``roots/<filename>`` (PEM), refused unless its DER hashes to ``sha256``: the pin lives in
    code, so a replaced file cannot move trust."""
    pem = resources.files("geode.attestation").joinpath("roots", filename).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if certificate_sha256(cert) != sha256:
        raise EvidenceError(f"the shipped root {filename} does not match its pinned fingerprint")
    return cert
