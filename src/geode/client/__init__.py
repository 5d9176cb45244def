"""Python API for operators and relying parties: verify a deployment, manage its manifest."""

from __future__ import annotations

from geode.client._client import (
    CONFIG_DIR_ENV,
    CoordinatorClient,
    check_coordinator_peer,
    client_ssl_context,
    config_dir,
    load_pinned_root,
    pin_root,
    pinned_root_path,
)
from geode.client._statement import VerifiedStatement, statement_manifest, verify_statement

__all__ = [
    "CONFIG_DIR_ENV",
    "CoordinatorClient",
    "VerifiedStatement",
    "check_coordinator_peer",
    "client_ssl_context",
    "config_dir",
    "load_pinned_root",
    "pin_root",
    "pinned_root_path",
    "statement_manifest",
    "verify_statement",
]
