"""Python API for operators and relying parties: verify a deployment, manage its manifest, its
secrets and updates, check its audit log, and recover it."""

from __future__ import annotations

from geode.client._audit import AuditEntry, AuditReport, verify_audit_log
from geode.client._client import (
    CONFIG_DIR_ENV,
    CoordinatorClient,
    config_dir,
    load_pinned_root,
    pin_root,
    pinned_root_path,
)
from geode.client._fetch import AMD_KDS, INTEL_PCS, INTEL_ROOT_CA_CRL, CollateralFetcher, Fetched
from geode.client._policy import PolicyError, PolicyMatch, VerificationPolicy
from geode.client._recovery import ShareUpload, prepare_share_upload, verify_recovery_offer
from geode.client._statement import VerifiedStatement, statement_manifest, verify_statement

__all__ = [
    "AMD_KDS",
    "CONFIG_DIR_ENV",
    "INTEL_PCS",
    "INTEL_ROOT_CA_CRL",
    "AuditEntry",
    "AuditReport",
    "CollateralFetcher",
    "CoordinatorClient",
    "Fetched",
    "PolicyError",
    "PolicyMatch",
    "ShareUpload",
    "VerificationPolicy",
    "VerifiedStatement",
    "config_dir",
    "load_pinned_root",
    "pin_root",
    "pinned_root_path",
    "prepare_share_upload",
    "statement_manifest",
    "verify_audit_log",
    "verify_recovery_offer",
    "verify_statement",
]
