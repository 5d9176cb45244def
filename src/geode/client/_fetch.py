"""Fetching the collateral hardware evidence needs (``geode verify --online``).

- SGX and TDX: Intel's PCS (API v4) for the platform's FMSPC -- the TCB info and the QE
  identity, each with its issuer chain (a response header), the PCK CRL of the CA that issued
  the quote's PCK -- and Intel's root CA CRL. They are assembled into the collateral document
  ``geode.attestation`` reads (PCS response bodies as served, so signatures cover them as is).
- SEV-SNP: AMD's KDS -- the VCEK for the report's chip id and reported TCB when the evidence
  does not carry it, and the product's CRL (VCEK or VLEK). A VLEK cannot be fetched: KDS hands
  it out to the cloud provider only.

Nothing fetched is trusted for being fetched: it is verified like any collateral given offline
(signatures chaining to the pinned roots, or to the caller's ``TrustAnchors`` in tests), and a
fetcher never adds a root. The base URLs and the HTTP transport are constructor arguments, so
tests serve the kits' collateral through ``httpx.MockTransport`` and a mirror can stand in for
Intel or AMD.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from geode.attestation import (
    AMD_KDS,
    Evidence,
    EvidenceVerifier,
    TrustAnchors,
    snp_endorsement_query,
)
from geode.errors import ClientError

__all__ = ["AMD_KDS", "INTEL_PCS", "INTEL_ROOT_CA_CRL", "CollateralFetcher", "Fetched"]

INTEL_PCS = "https://api.trustedservices.intel.com"
INTEL_ROOT_CA_CRL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
# A document larger than this is not collateral (Intel's TCB info is ~20 KB, a CRL a few KB).
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    """One document fetched: for which kind, what it is, from where, how large."""

    kind: str
    what: str
    url: str
    size: int


class CollateralFetcher:
    """Completes ``TrustAnchors`` with what a piece of evidence needs and they lack.

    ``transport``: the httpx transport (``None``: the network); ``intel_base``,
    ``intel_root_crl``, ``amd_base``: where to fetch from; ``on_fetch`` is told of every
    document fetched (``geode verify`` prints one line each).
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        intel_base: str = INTEL_PCS,
        intel_root_crl: str = INTEL_ROOT_CA_CRL,
        amd_base: str = AMD_KDS,
        timeout: float = 15.0,
        on_fetch: Callable[[Fetched], None] = lambda fetched: None,
    ) -> None:
        self._client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)
        self._intel = intel_base.rstrip("/")
        self._intel_root_crl = intel_root_crl
        self._amd = amd_base.rstrip("/")
        self._on_fetch = on_fetch

    def __enter__(self) -> CollateralFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def complete(self, evidence: Evidence, trust: TrustAnchors) -> TrustAnchors:
        """``trust`` with the collateral (and certificates) ``evidence`` needs that it lacks;
        ``ClientError`` when a document cannot be fetched, ``EvidenceError`` when the evidence
        cannot even say what it needs."""
        if evidence.kind in ("sgx", "tdx"):
            if evidence.kind not in trust.collateral:
                trust = trust.with_collateral(
                    evidence.kind, self._intel_collateral(evidence, trust)
                )
        elif evidence.kind == "sev-snp":
            trust = self._snp(evidence, trust)
        return trust

    # -- Intel ------------------------------------------------------------------------------

    def _intel_collateral(self, evidence: Evidence, trust: TrustAnchors) -> bytes:
        # The quote's PCK chain names the platform: verify without collateral to read it.
        claims = EvidenceVerifier(trust=trust).verify(evidence)
        fmspc, ca = claims.details["fmspc"], claims.details["pck_ca"]
        kind = evidence.kind
        tcb = self._get(
            kind, "TCB info", f"{self._intel}/{kind}/certification/v4/tcb", {"fmspc": fmspc}
        )
        identity = self._get(
            kind, "QE identity", f"{self._intel}/{kind}/certification/v4/qe/identity", {}
        )
        pck_crl = self._get(
            kind,
            f"PCK CRL ({ca})",
            f"{self._intel}/sgx/certification/v4/pckcrl",
            {"ca": ca, "encoding": "der"},
        )
        root_crl = self._get(kind, "root CA CRL", self._intel_root_crl, {})
        document = {
            "tcb_info": tcb.text,
            "tcb_info_issuer_chain": _chain_header(
                tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"
            ),
            "qe_identity": identity.text,
            "qe_identity_issuer_chain": _chain_header(
                identity, "SGX-Enclave-Identity-Issuer-Chain"
            ),
            "pck_crl": _crl_hex(pck_crl),
            "root_ca_crl": _crl_hex(root_crl),
        }
        return json.dumps(document).encode()

    # -- AMD --------------------------------------------------------------------------------

    def _snp(self, evidence: Evidence, trust: TrustAnchors) -> TrustAnchors:
        query = snp_endorsement_query(evidence.data)
        if "sev-snp" not in trust.certs and not query.carried:
            if query.signing_key != "VCEK":
                raise ClientError(
                    f"the report is signed by a {query.signing_key}, which AMD hands out to the "
                    "cloud provider only: give it with --certs sev-snp=FILE"
                )
            vcek = self._get("sev-snp", "VCEK", f"{self._amd}/{query.vcek_path}")
            trust = trust.with_certs("sev-snp", vcek.content)
        if "sev-snp" not in trust.collateral:
            path = "vcek" if query.signing_key == "VCEK" else "vlek"
            crl = self._get("sev-snp", "CRL", f"{self._amd}/{path}/v1/{query.product}/crl", {})
            trust = trust.with_collateral("sev-snp", crl.content)
        return trust

    # -- HTTP -------------------------------------------------------------------------------

    def _get(
        self, kind: str, what: str, url: str, params: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            response = self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot fetch the {kind} {what} from {url}: {exc}") from None
        if response.status_code != 200:
            raise ClientError(
                f"cannot fetch the {kind} {what}: {response.url} answered {response.status_code}",
                status=response.status_code,
            )
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise ClientError(f"the {kind} {what} from {response.url} is larger than 4 MiB")
        self._on_fetch(Fetched(kind, what, str(response.url), len(response.content)))
        return response


def _chain_header(response: httpx.Response, *names: str) -> str:
    for name in names:
        value = response.headers.get(name)
        if value:
            return urllib.parse.unquote(value)
    raise ClientError(f"{response.url} answered without its issuer chain ({names[0]} header)")


def _crl_hex(response: httpx.Response) -> str:
    body = response.content
    return body.decode() if body.lstrip().startswith(b"-----BEGIN") else body.hex()
