"""The TEE kinds are defined once (``geode.tee``), and everything that depends on a kind follows
the table: the manifest's package fields, the verifiers, the quote providers, the match."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from pydantic import ValidationError

from geode.attestation import (
    EVIDENCE_KINDS,
    PROVIDER_NAMES,
    TCB_STATUSES,
    TCB_UNVERIFIED,
    ReferenceValues,
)
from geode.attestation._providers import (
    PROVIDER_KINDS,
    ConfigfsTsmProvider,
    GramineProvider,
    SevGuestProvider,
)
from geode.attestation._reference import SNP_TCB_COMPONENTS
from geode.attestation._verifier import _KIND_VERIFIERS, kind_verifier
from geode.errors import ManifestError
from geode.manifest import Package, load_manifest
from geode.tee import HARDWARE_KINDS, TEE_KINDS, SnpTcb, TcbStatus, TeeKind

H32 = "ab" * 32
H48 = "cd" * 48

# One valid value for every reference field (the measurement is sized per kind below).
SAMPLES: dict[str, object] = {
    "signer": H32,
    "product_id": 1,
    "min_svn": 1,
    "mrtd": H48,
    "rtmr0": H48,
    "rtmr1": H48,
    "rtmr2": H48,
    "rtmr3": H48,
    "mrconfigid": H48,
    "host_data": H32,
    "min_tcb": {"snp": 1},
    "vmpl": 0,
    "migrate_ma": True,
    "sept_ve_disable": True,
    "measurements": {1: [H48]},
    "accepted_tcb_statuses": ["UpToDate"],
    "accepted_advisories": ["INTEL-SA-00615"],
}
REFERENCE_FIELDS = set(ReferenceValues.model_fields) - {"tee", "debug"}


def sample(kind: TeeKind, field: str) -> object:
    if field == "measurement":
        return "ef" * (TEE_KINDS[kind].measurement_bytes or 32)
    return SAMPLES[field]


def minimal(kind: TeeKind) -> dict[str, object]:
    """The smallest package of ``kind`` the manifest accepts: its first identity field."""
    first = TEE_KINDS[kind].identity[0]
    return {"tee": kind, first: sample(kind, first)}


def test_the_table_names_exactly_the_kinds_of_the_type() -> None:
    assert tuple(TEE_KINDS) == get_args(TeeKind)
    assert all(spec.name == kind for kind, spec in TEE_KINDS.items())
    assert tuple(TEE_KINDS) == EVIDENCE_KINDS
    assert tuple(k for k in TEE_KINDS if k != "simulated") == HARDWARE_KINDS


def test_every_reference_field_belongs_to_a_kind_and_only_known_fields_are_named() -> None:
    named = set().union(*(spec.fields for spec in TEE_KINDS.values()))
    assert named == REFERENCE_FIELDS
    for spec in TEE_KINDS.values():
        assert set(spec.identity) <= spec.fields, spec.name
        assert (spec.measurement_bytes is not None) == ("measurement" in spec.fields), spec.name


def test_the_tcb_vocabularies_agree() -> None:
    assert get_args(TcbStatus) == (*TCB_STATUSES, TCB_UNVERIFIED)
    assert set(SNP_TCB_COMPONENTS) == set(SnpTcb.model_fields)


@pytest.mark.parametrize("kind", HARDWARE_KINDS)
def test_every_hardware_kind_has_a_verifier(kind: TeeKind) -> None:
    assert callable(kind_verifier(kind))


def test_the_verifier_table_names_the_hardware_kinds_only() -> None:
    assert set(_KIND_VERIFIERS) == set(HARDWARE_KINDS)


def test_every_kind_that_attests_a_service_has_a_quote_provider() -> None:
    assert tuple(PROVIDER_KINDS) == PROVIDER_NAMES
    provided = {kind for kinds in PROVIDER_KINDS.values() for kind in kinds}
    assert provided == {kind for kind, spec in TEE_KINDS.items() if not spec.gpu}
    for provider in (GramineProvider, ConfigfsTsmProvider, SevGuestProvider):
        assert provider.name in PROVIDER_KINDS


@pytest.mark.parametrize("kind", TEE_KINDS)
@pytest.mark.parametrize("field", sorted(REFERENCE_FIELDS))
def test_the_manifest_takes_exactly_the_fields_the_table_allows(kind: TeeKind, field: str) -> None:
    fields = {**minimal(kind), field: sample(kind, field)}
    if field == "signer" and "product_id" in TEE_KINDS[kind].fields:
        fields["product_id"] = 1  # a signer pins a product, never a vendor alone
    if field in TEE_KINDS[kind].fields:
        package = Package.model_validate(fields)
        assert field in package.model_fields_set
    else:
        with pytest.raises(ValidationError, match=f"'{field}' does not apply to {kind} packages"):
            Package.model_validate(fields)


@pytest.mark.parametrize("kind", TEE_KINDS)
def test_a_package_must_name_its_identity_but_reference_values_need_not(kind: TeeKind) -> None:
    spec = TEE_KINDS[kind]
    with pytest.raises(ValidationError, match=f"needs a '{spec.identity[0]}'"):
        Package.model_validate({"tee": kind})
    assert ReferenceValues(tee=kind).tee == kind
    for name in spec.identity:
        fields = {"tee": kind, name: sample(kind, name)}
        if name == "signer":
            fields["product_id"] = 1
        Package.model_validate(fields)


@pytest.mark.parametrize("kind", [k for k, s in TEE_KINDS.items() if s.measurement_bytes])
def test_a_measurement_has_the_size_of_its_kind(kind: TeeKind) -> None:
    size = TEE_KINDS[kind].measurement_bytes
    assert size is not None
    other = 48 if size == 32 else 32
    with pytest.raises(ValidationError, match=f"a {kind} measurement is {size} bytes"):
        ReferenceValues(tee=kind, measurement="ab" * other)


@pytest.mark.parametrize("kind", TEE_KINDS)
def test_only_a_kind_that_attests_a_service_may_be_bound_to_one(kind: TeeKind) -> None:
    document = {
        "version": 1,
        "trust_domain": "t.example",
        "packages": {"p": minimal(kind)},
        "services": {"s": {"package": "p"}},
    }
    if TEE_KINDS[kind].gpu:
        with pytest.raises(ManifestError, match=rf"GPU \({kind}\) package") as info:
            load_manifest(json.dumps(document).encode())
        assert info.value.path == "services.s.package"
    else:
        assert load_manifest(json.dumps(document).encode()).manifest.packages["p"].tee == kind


def test_a_manifest_package_is_matched_as_parsed() -> None:
    package = Package.model_validate({"tee": "sev-snp", "measurement": H48, "min_tcb": {"snp": 2}})
    assert isinstance(package, ReferenceValues)
    assert package.spec is TEE_KINDS["sev-snp"]
    assert isinstance(package.min_tcb, SnpTcb)
