"""Evidence parsing and verification, bundle measurement, and the TEE interfaces of this host
(quote providers for services; ``probe_host`` for the Coordinator: evidence and sealing keys)."""

from __future__ import annotations

from geode.attestation._binding import (
    BINDING_KINDS,
    bundle_binding,
    check_bundle_binding,
    reported_binding,
)
from geode.attestation._evidence import (
    EVIDENCE_KINDS,
    REPORT_DATA_SIZE,
    TCB_STATUSES,
    TCB_UNVERIFIED,
    Claims,
    Evidence,
    Verdict,
    checks_in_order,
)
from geode.attestation._golden import (
    GOLDEN_KINDS,
    golden_reference_values,
    sigstruct_reference_values,
)
from geode.attestation._host import (
    TEE_CHOICES,
    HostPaths,
    HostProbe,
    HostTee,
    Ioctl,
    Probe,
    SgxSealing,
    attach_snp_certs,
    probe_host,
)
from geode.attestation._intel import verify_sgx_quote, verify_tdx_quote
from geode.attestation._measure import BundleEntry, BundleError, bundle_entries, measure_bundle
from geode.attestation._nvidia import verify_nvidia_report
from geode.attestation._providers import (
    PROVIDER_NAMES,
    QUOTE_PROVIDER_ENV,
    QuoteProvider,
    select_quote_provider,
)
from geode.attestation._reference import ReferenceValues, match_claims, reference_values_of
from geode.attestation._sigstruct import Sigstruct, parse_sigstruct
from geode.attestation._simulated import (
    PLATFORM_KEY_ENV,
    SimulatedPlatform,
    default_platform_key_path,
    load_platform_public_key,
    platform_key_id,
    verify_simulated_quote,
)
from geode.attestation._snp import (
    AMD_KDS,
    SnpEndorsementQuery,
    snp_endorsement_query,
    verify_snp_report,
)
from geode.attestation._trust import TrustAnchors
from geode.attestation._verifier import EvidenceVerifier, KindVerifier, detect_kind

__all__ = [
    "AMD_KDS",
    "BINDING_KINDS",
    "EVIDENCE_KINDS",
    "GOLDEN_KINDS",
    "PLATFORM_KEY_ENV",
    "PROVIDER_NAMES",
    "QUOTE_PROVIDER_ENV",
    "REPORT_DATA_SIZE",
    "TCB_STATUSES",
    "TCB_UNVERIFIED",
    "TEE_CHOICES",
    "BundleEntry",
    "BundleError",
    "Claims",
    "Evidence",
    "EvidenceVerifier",
    "HostPaths",
    "HostProbe",
    "HostTee",
    "Ioctl",
    "KindVerifier",
    "Probe",
    "QuoteProvider",
    "ReferenceValues",
    "SgxSealing",
    "Sigstruct",
    "SimulatedPlatform",
    "SnpEndorsementQuery",
    "TrustAnchors",
    "Verdict",
    "attach_snp_certs",
    "bundle_binding",
    "bundle_entries",
    "check_bundle_binding",
    "checks_in_order",
    "default_platform_key_path",
    "detect_kind",
    "golden_reference_values",
    "load_platform_public_key",
    "match_claims",
    "measure_bundle",
    "parse_sigstruct",
    "platform_key_id",
    "probe_host",
    "reference_values_of",
    "reported_binding",
    "select_quote_provider",
    "sigstruct_reference_values",
    "snp_endorsement_query",
    "verify_nvidia_report",
    "verify_sgx_quote",
    "verify_simulated_quote",
    "verify_snp_report",
    "verify_tdx_quote",
]
