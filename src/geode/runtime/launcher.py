"""What ``geode run`` is made of, for the CLI (and anyone building another launcher): laying
out an activation's credentials and files, running the service's command with companions
beside it (the transparent TLS proxy, certificate renewal), and cleaning up; and the Gramine
manifest that runs it in an SGX enclave. Apps do not need any of it: they use
``geode.runtime``."""

from __future__ import annotations

from geode.runtime._bundle import check_executables
from geode.runtime._command import resolve_command
from geode.runtime._evidence_source import (
    EvidenceSource,
    check_hardware_binding,
    choose_evidence_source,
)
from geode.runtime._gramine import PythonLayout, gramine_manifest, python_layout
from geode.runtime._launcher import (
    INHERITED_ENV,
    INHERITED_ENV_PREFIXES,
    Companion,
    LaunchPlan,
    lay_out,
    remove_plan,
    run_command,
)
from geode.runtime._leftovers import LauncherRecord, clean_leftovers
from geode.runtime._renewal import CertificateRenewer, renewal_time
from geode.runtime._staging import StagedBundle, remove_staged, stage_bundle
from geode.runtime._transparent import ProxyRunner

__all__ = [
    "INHERITED_ENV",
    "INHERITED_ENV_PREFIXES",
    "CertificateRenewer",
    "Companion",
    "EvidenceSource",
    "LaunchPlan",
    "LauncherRecord",
    "ProxyRunner",
    "PythonLayout",
    "StagedBundle",
    "check_executables",
    "check_hardware_binding",
    "choose_evidence_source",
    "clean_leftovers",
    "gramine_manifest",
    "lay_out",
    "python_layout",
    "remove_plan",
    "remove_staged",
    "renewal_time",
    "resolve_command",
    "run_command",
    "stage_bundle",
]
