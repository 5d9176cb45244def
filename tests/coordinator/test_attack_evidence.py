"""Attack: mutated hardware evidence sent to the mesh API's activation, unauthenticated. The
Coordinator verifies SGX quotes against the real collateral at the vector's time; whatever the
quote holds, the answer is a typed 403 (``activation_denied``, "evidence verification failed",
the field in the detail), never a 500."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import Coordinator, CoordinatorSettings, GroupCommit
from geode.testing import MemoryStore
from tests.attestation.support.fuzz import mutation, pem_chain_bit_flipped, subject
from tests.attestation.support.mutations import DEEP
from tests.attestation.support.vectors import read_vector, requires_vectors
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.simulated import simulated_tee

pytestmark = requires_vectors

VECTOR = "sgx_v3_dcapqvl"
MUTATIONS = 40


def manifest(mrenclave: str) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "trust_domain": "attack.geode.local",
            "packages": {"app": {"tee": "sgx", "measurement": mrenclave}},
            "services": {"web": {"package": "app"}},
        }
    ).encode()


class Mesh:
    """A Coordinator that verifies SGX quotes with ``collateral`` at the vector's time, and its
    two APIs in-process."""

    def __init__(self, collateral: bytes) -> None:
        platform = SimulatedPlatform.generate()
        at = subject(VECTOR).at
        verifier = EvidenceVerifier(collateral={"sgx": collateral}, clock=lambda: at)
        self.coordinator = Coordinator(
            CoordinatorSettings(), verifier, simulated_tee(platform), os.urandom(32)
        )
        self.coordinator.load(None)
        self.client, self.mesh = in_process_apis(
            self.coordinator, GroupCommit(self.coordinator.sealed_state, MemoryStore())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        self.csr = csr.public_bytes(serialization.Encoding.PEM).decode()

    async def set_manifest(self) -> None:
        claims = subject(VECTOR).verify(EvidenceVerifier())
        document = manifest(claims.measurement.hex())
        answer = await self.client.post("/api/v1/manifest", content=document)
        assert answer.status_code == 201, answer.text

    async def activate(self, quote: bytes) -> httpx.Response:
        nonce = (await self.mesh.post("/api/v1/mesh/nonce")).json()["nonce"]
        body = {
            "service": "web",
            "nonce": nonce,
            "csr": self.csr,
            "evidence": {"kind": "sgx", "data": base64.b64encode(quote).decode()},
        }
        return await self.mesh.post("/api/v1/mesh/activate", json=body)


def assert_denied(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert (body["error"], body["reason"]) == ("activation_denied", "evidence verification failed")
    assert body["detail"].startswith(field), body["detail"]


def test_a_bit_flipped_in_the_quotes_pem_chain_is_a_typed_403() -> None:
    async def scenario() -> None:
        mesh = Mesh(read_vector(f"{VECTOR}.collateral.json"))
        await mesh.set_manifest()
        quote, _ = pem_chain_bit_flipped(VECTOR)
        assert_denied(await mesh.activate(quote), "pck_certification_data")
        # The unmutated quote verifies: it is refused for what it binds, not for its form.
        answer = await mesh.activate(read_vector(f"{VECTOR}.quote.bin"))
        assert answer.json()["reason"] == "evidence not bound to this key and nonce"

    asyncio.run(scenario())


@pytest.mark.parametrize("where", ["document", "tcb_info"])
def test_deeply_nested_collateral_is_a_typed_403(where: str) -> None:
    raw = read_vector(f"{VECTOR}.collateral.json")
    if where == "document":
        nested = b"[" * DEEP + raw + b"]" * DEEP
    else:
        nested = json.dumps({**json.loads(raw), where: "[" * DEEP + "]" * DEEP}).encode()

    async def scenario() -> None:
        mesh = Mesh(nested)
        await mesh.set_manifest()
        field = "collateral" if where == "document" else f"collateral.{where}"
        assert_denied(await mesh.activate(read_vector(f"{VECTOR}.quote.bin")), field)

    asyncio.run(scenario())


def test_mutated_quotes_are_typed_4xx_never_500() -> None:
    base = subject(VECTOR)
    assert base.collateral is not None

    async def scenario() -> None:
        mesh = Mesh(base.collateral or b"")
        await mesh.set_manifest()
        statuses: dict[int, int] = {}
        index = 0
        while sum(statuses.values()) < MUTATIONS:
            what, mutated = mutation(1414, base, index)
            index += 1
            if mutated.data == base.data:
                continue  # a mutation of the collateral or certificates: not sent here
            answer = await mesh.activate(mutated.data)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert 400 <= answer.status_code < 500, f"#{index - 1} {what}: {answer.text}"
            assert answer.json()["error"] == "activation_denied", answer.text

    asyncio.run(scenario())
