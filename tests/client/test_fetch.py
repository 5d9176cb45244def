"""geode.client.CollateralFetcher: what ``geode verify --online`` fetches, served by an
``httpx.MockTransport`` from the kits' collateral (Intel PCS v4 for TDX and SGX, AMD KDS for
SEV-SNP); what it fetches is verified like collateral given offline."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, EvidenceVerifier, TrustAnchors
from geode.client import CollateralFetcher, Fetched
from geode.errors import ClientError, EvidenceError
from tests.attestation.support import intel
from tests.attestation.support.snp import AmdPki
from tests.support.hardware_statement import SNP_TCB, SnpKit, TdxKit

INTEL = "https://pcs.test"
ROOT_CRL = "https://certs.test/root.der"
AMD = "https://kds.test"


def pcs_body(member: str, text: object, signature: object) -> str:
    """A PCS response body: the signed JSON text as is, and its signature."""
    return '{"' + member + '":' + str(text) + ',"signature":"' + str(signature) + '"}'


def intel_routes(tdx: bool = True) -> dict[str, httpx.Response]:
    doc = intel.collateral(tdx=tdx)
    kind = "tdx" if tdx else "sgx"
    chain = urllib.parse.quote(str(doc["tcb_info_issuer_chain"]))
    tcb = pcs_body("tcbInfo", doc["tcb_info"], doc["tcb_info_signature"])
    qe = pcs_body("enclaveIdentity", doc["qe_identity"], doc["qe_identity_signature"])
    fmspc = intel.FMSPC.hex()
    return {
        f"{INTEL}/{kind}/certification/v4/tcb?fmspc={fmspc}": httpx.Response(
            200, text=tcb, headers={"TCB-Info-Issuer-Chain": chain}
        ),
        f"{INTEL}/{kind}/certification/v4/qe/identity": httpx.Response(
            200, text=qe, headers={"SGX-Enclave-Identity-Issuer-Chain": chain}
        ),
        f"{INTEL}/sgx/certification/v4/pckcrl?ca=platform&encoding=der": httpx.Response(
            200, content=bytes.fromhex(str(doc["pck_crl"]))
        ),
        ROOT_CRL: httpx.Response(200, content=bytes.fromhex(str(doc["root_ca_crl"]))),
    }


def serve(routes: dict[str, httpx.Response], seen: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.MockTransport(handler)


def fetcher(
    routes: dict[str, httpx.Response], seen: list[str], log: list[Fetched]
) -> CollateralFetcher:
    return CollateralFetcher(
        transport=serve(routes, seen),
        intel_base=INTEL,
        intel_root_crl=ROOT_CRL,
        amd_base=AMD,
        on_fetch=log.append,
    )


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


def snp_routes(kit: SnpKit, crl: bytes | None = None) -> dict[str, httpx.Response]:
    spl = "blSPL={bootloader}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={microcode}".format(**SNP_TCB)
    return {
        f"{AMD}/vcek/v1/Milan/{kit.chip.hex()}?{spl}": httpx.Response(
            200, content=kit.vcek.public_bytes(Encoding.DER)
        ),
        f"{AMD}/vcek/v1/Milan/crl": httpx.Response(200, content=crl or kit.pki.crl()),
    }


def test_tdx_collateral_is_fetched_by_fmspc_and_verifies() -> None:
    kit = TdxKit()
    evidence = kit.evidence(bytes(64))
    seen: list[str] = []
    log: list[Fetched] = []
    with fetcher(intel_routes(), seen, log) as online:
        trust = online.complete(evidence, kit.trust())
    assert [f.what for f in log] == ["TCB info", "QE identity", "PCK CRL (platform)", "root CA CRL"]
    assert all(f.kind == "tdx" and f.size > 0 for f in log)
    claims = EvidenceVerifier(trust=trust).verify(evidence)
    assert claims.tcb_status == "UpToDate"


def test_sgx_collateral_comes_from_the_sgx_endpoints() -> None:
    evidence_data = intel.build_quote(intel.QuoteSpec())
    trust = TrustAnchors().with_roots("sgx", [intel.pki().root]).with_clock(lambda: intel.NOW)
    seen: list[str] = []
    with fetcher(intel_routes(tdx=False), seen, []) as online:
        trust = online.complete(Evidence("sgx", evidence_data), trust)
    assert any("/sgx/certification/v4/tcb?fmspc=" in url for url in seen)
    assert EvidenceVerifier(trust=trust).verify(Evidence("sgx", evidence_data)).tcb_status == (
        "UpToDate"
    )


def test_given_collateral_is_not_fetched_again() -> None:
    kit = TdxKit()
    seen: list[str] = []
    trust = kit.trust().with_collateral("tdx", kit.collateral())
    with fetcher({}, seen, []) as online:
        assert online.complete(kit.evidence(bytes(64)), trust) is trust
    assert seen == []


def test_the_vcek_and_crl_are_fetched_from_kds(snp: SnpKit) -> None:
    evidence = snp.evidence(bytes(64), with_vcek=False)
    with pytest.raises(EvidenceError, match="no VCEK"):
        EvidenceVerifier(trust=snp.trust()).verify(evidence)
    log: list[Fetched] = []
    with fetcher(snp_routes(snp), [], log) as online:
        trust = online.complete(evidence, snp.trust())
    assert [(f.kind, f.what) for f in log] == [("sev-snp", "VCEK"), ("sev-snp", "CRL")]
    assert log[0].url.startswith(f"{AMD}/vcek/v1/Milan/{snp.chip.hex()}?blSPL=3")
    assert "revocation" in EvidenceVerifier(trust=trust).verify(evidence).checked


def test_a_report_that_carries_its_vcek_fetches_the_crl_only(snp: SnpKit) -> None:
    log: list[Fetched] = []
    with fetcher(snp_routes(snp), [], log) as online:
        online.complete(snp.evidence(bytes(64)), snp.trust())
    assert [f.what for f in log] == ["CRL"]


def test_a_fetched_crl_that_revokes_the_chain_refuses_it(snp: SnpKit) -> None:
    evidence = snp.evidence(bytes(64))
    routes = snp_routes(snp, crl=snp.pki.crl(revoked=(snp.vcek,)))
    with fetcher(routes, [], []) as online:
        trust = online.complete(evidence, snp.trust())
    with pytest.raises(EvidenceError, match="revoked"):
        EvidenceVerifier(trust=trust).verify(evidence)


def test_a_fetched_crl_of_another_ark_is_refused(snp: SnpKit) -> None:
    evidence = snp.evidence(bytes(64))
    with fetcher(snp_routes(snp, crl=AmdPki.create().crl()), [], []) as online:
        trust = online.complete(evidence, snp.trust())
    with pytest.raises(EvidenceError, match="signature does not verify"):
        EvidenceVerifier(trust=trust).verify(evidence)


def test_a_missing_document_is_a_client_error(snp: SnpKit) -> None:
    with fetcher({}, [], []) as online, pytest.raises(ClientError, match="answered 404"):
        online.complete(snp.evidence(bytes(64), with_vcek=False), snp.trust())


def test_an_intel_answer_without_its_issuer_chain_is_refused() -> None:
    kit = TdxKit()
    routes = intel_routes()
    url = f"{INTEL}/tdx/certification/v4/tcb?fmspc={intel.FMSPC.hex()}"
    routes[url] = httpx.Response(200, text=routes[url].text)
    with fetcher(routes, [], []) as online, pytest.raises(ClientError, match="issuer chain"):
        online.complete(kit.evidence(bytes(64)), kit.trust())


def test_the_fetcher_adds_no_root() -> None:
    kit = TdxKit()
    with fetcher(intel_routes(), [], []) as online:
        trust = online.complete(kit.evidence(bytes(64)), kit.trust())
    assert trust.roots == kit.trust().roots


def test_the_vcek_is_fetched_where_the_endorsement_query_says(snp: SnpKit) -> None:
    """One KDS base URL (``geode.attestation.AMD_KDS``, which the client re-exports) and one
    VCEK path (``SnpEndorsementQuery.vcek_path``), shared by the fetcher and the Coordinator's
    hint for a host that gives no VCEK."""
    import geode.attestation
    import geode.client
    from geode.attestation import snp_endorsement_query

    assert geode.client.AMD_KDS is geode.attestation.AMD_KDS == "https://kdsintf.amd.com"
    evidence = snp.evidence(bytes(64), with_vcek=False)
    log: list[Fetched] = []
    with fetcher(snp_routes(snp), [], log) as online:
        online.complete(evidence, snp.trust())
    assert log[0].url == f"{AMD}/{snp_endorsement_query(evidence.data).vcek_path}"
