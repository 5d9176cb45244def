"""Evidence parsing and verification, bundle measurement, and the TEE interfaces of this host
(quote providers for services; ``probe_host`` for the Coordinator: evidence and sealing keys)."""

from __future__ import annotations

from geode.attestation._evidence import (
    EVIDENCE_KINDS,
    REPORT_DATA_SIZE,
    TCB_STATUSES,
    TCB_UNVERIFIED,
    Claims,
    Evidence,
)
from geode.attestation._host import (
    TEE_CHOICES,
    HostPaths,
    HostTee,
    Ioctl,
    Probe,
    SgxSealing,
    probe_host,
)
from geode.attestation._intel import verify_sgx_quote, verify_tdx_quote
from geode.attestation._measure import BundleError, measure_bundle
from geode.attestation._nvidia import verify_nvidia_report
from geode.attestation._providers import (
    PROVIDER_NAMES,
    QUOTE_PROVIDER_ENV,
    QuoteProvider,
    select_quote_provider,
)
from geode.attestation._reference import ReferenceValues, match_claims
from geode.attestation._simulated import (
    PLATFORM_KEY_ENV,
    SimulatedPlatform,
    default_platform_key_path,
    load_platform_public_key,
    platform_key_id,
    verify_simulated_quote,
)
from geode.attestation._snp import SnpEndorsementQuery, snp_endorsement_query, verify_snp_report
from geode.attestation._trust import TrustAnchors
from geode.attestation._verifier import EvidenceVerifier, KindVerifier, detect_kind

__all__ = [
    "EVIDENCE_KINDS",
    "PLATFORM_KEY_ENV",
    "PROVIDER_NAMES",
    "QUOTE_PROVIDER_ENV",
    "REPORT_DATA_SIZE",
    "TCB_STATUSES",
    "TCB_UNVERIFIED",
    "TEE_CHOICES",
    "BundleError",
    "Claims",
    "Evidence",
    "EvidenceVerifier",
    "HostPaths",
    "HostTee",
    "Ioctl",
    "KindVerifier",
    "Probe",
    "QuoteProvider",
    "ReferenceValues",
    "SgxSealing",
    "SimulatedPlatform",
    "SnpEndorsementQuery",
    "TrustAnchors",
    "default_platform_key_path",
    "detect_kind",
    "load_platform_public_key",
    "match_claims",
    "measure_bundle",
    "platform_key_id",
    "probe_host",
    "select_quote_provider",
    "snp_endorsement_query",
    "verify_nvidia_report",
    "verify_sgx_quote",
    "verify_simulated_quote",
    "verify_snp_report",
    "verify_tdx_quote",
]
