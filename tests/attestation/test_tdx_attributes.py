"""TDX TD attributes against reference values: the debug bit (0) is refused unless allowed;
SEPT_VE_DISABLE (bit 28) is required, or required clear, when the reference values say so."""

from __future__ import annotations

import pytest

from geode.attestation import Claims, ReferenceValues, match_claims, verify_tdx_quote
from geode.errors import ClaimsMismatch
from tests.attestation.support import intel as kit
from tests.attestation.support.intel import QuoteSpec, build_quote

DEBUG = 1 << 0
SEPT_VE_DISABLE = 1 << 28
MRTD = b"\x33" * 48


def claims(attributes: int) -> Claims:
    body = kit.td_report(td_attributes=attributes)
    quote = build_quote(QuoteSpec(version=4, tee="tdx", body=body))
    return verify_tdx_quote(quote, at=kit.NOW, roots=[kit.pki().root])


def ref(**fields: object) -> ReferenceValues:
    return ReferenceValues(
        tee="tdx",
        mrtd=MRTD.hex(),
        accepted_tcb_statuses=["Unverified"],
        **fields,  # type: ignore[arg-type]
    )


def test_td_attributes_are_a_claim() -> None:
    got = claims(SEPT_VE_DISABLE)
    assert int.from_bytes(got.td_attributes, "little") == SEPT_VE_DISABLE
    assert got.to_json()["td_attributes"] == SEPT_VE_DISABLE.to_bytes(8, "little").hex()


def test_debug_td_is_refused_by_default_and_accepted_when_allowed() -> None:
    debug = claims(SEPT_VE_DISABLE | DEBUG)
    with pytest.raises(ClaimsMismatch, match="debug"):
        match_claims(debug, ref())
    match_claims(debug, ref(debug=True))


def test_sept_ve_disable_required() -> None:
    with pytest.raises(ClaimsMismatch, match="td attributes mismatch") as caught:
        match_claims(claims(0), ref(sept_ve_disable=True))
    assert "SEPT_VE_DISABLE must be set" in str(caught.value)
    match_claims(claims(SEPT_VE_DISABLE), ref(sept_ve_disable=True))


def test_sept_ve_disable_required_clear() -> None:
    with pytest.raises(ClaimsMismatch, match="must be clear"):
        match_claims(claims(SEPT_VE_DISABLE), ref(sept_ve_disable=False))
    match_claims(claims(0), ref(sept_ve_disable=False))


def test_sept_ve_disable_not_checked_when_left_out() -> None:
    match_claims(claims(0), ref())
    match_claims(claims(SEPT_VE_DISABLE), ref())


def test_sept_ve_disable_is_a_tdx_field_only() -> None:
    with pytest.raises(ValueError, match="sept_ve_disable"):
        ReferenceValues(tee="sgx", measurement="11" * 32, sept_ve_disable=True)
