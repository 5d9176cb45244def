"""Schemathesis over both of the Coordinator's APIs, as an outsider, a manifest user and an
activated service would attack them: requests generated from the OpenAPI document the
Coordinator serves, sent to a real Coordinator over real TLS, each answer checked against that
document. No answer may be a 5xx, and every answer must be one the document lists for its route,
with the content type and schema it gives there (a request outside the schema must be refused
with a 4xx).

Each identity attacks a Coordinator of its own, so that what one phase changes (a secret set, a
package updated) cannot change what another sees. The user and service phases start with the
manifest set, so a generated manifest can never be the one set. Generation is derandomized and
bounded per operation: CI runs the same requests every time. Each phase prints how many
requests it sent (``-s`` shows them; they are also recorded as the test's properties).
"""

from __future__ import annotations

import base64
import collections
import itertools
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from geode.attestation import EVIDENCE_KINDS, SimulatedPlatform, measure_bundle
from geode.pki import certificate_pem, private_key_pem, public_key_der
from geode.protocol import ERROR_CODES, Api, Routes, key_binding, renewal_payload
from geode.runtime import Activation, activate, simulated_evidence_provider
from geode.testing import isolated_env
from tests.support import CoordinatorProcess
from tests.support.governance import User, governance_manifest, make_user

# Per operation, generation mode and identity: CI's bound. GEODE_SCHEMATHESIS_EXAMPLES asks for
# a deeper run. An operation that takes nothing is called once.
EXAMPLES = int(os.environ.get("GEODE_SCHEMATHESIS_EXAMPLES", "15"))
# A phase takes 10-50 s in CI: the default timeout (120 s) is for hangs, not for a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.attack, pytest.mark.timeout(max(300, EXAMPLES * 20))]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# The coverage phase also sends every method a path does not take: a 405 naming the others.
COVERAGE_CHECKS = [*CHECKS, unsupported_method, allow_header_conformance]
# Path parameters that are no path segment, besides generated ones: each routes nowhere (404).
PATH_EDGES = ["a/b", "a/", "..", ""]
# A request outside the schema is refused with a 4xx, whichever the route documents
# (``status_code_conformance`` checks it is one of those).
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["4xx"]}}}
)
TIMEOUT = 30.0

SECRETS = {
    "note": {"type": "plain"},
    "ukey": {"type": "symmetric-key", "size": 256, "user_defined": True},
    "api_token": {"type": "symmetric-key", "size": 128, "shared": True},
    "tls": {"type": "cert-ecdsa", "shared": True},
}
SERVICES = {
    "web": {
        "package": "app",
        "env": {"NOTE": "{{ secrets.note | hex }}", "TOKEN": "{{ secrets.api_token | hex }}"},
        "files": {"tls.pem": "{{ secrets.tls.cert | pem }}"},
    },
    "worker": {"package": "app", "env": {"KEY": "{{ secrets.ukey | hex }}"}},
}
ROLES = {
    "secrets-r": {"resource": "secrets", "names": sorted(SECRETS), "actions": ["read"]},
    "secrets-w": {"resource": "secrets", "names": ["note", "ukey"], "actions": ["write"]},
    "packager": {"resource": "packages", "names": ["app"], "actions": ["update"]},
    "admin": {"resource": "manifest", "actions": ["update"]},
}


@dataclass(frozen=True)
class Identity:
    """Who calls: the certificate and key a client presents (``None``: no certificate)."""

    name: str
    cert: tuple[str, str] | None = None


@dataclass
class Tally:
    """What a phase sent and what came back; every failed check, with schemathesis's report."""

    phase: str
    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"schemathesis {self.phase}: {self.requests} requests, {server_errors} 5xx, "
            f"{len(self.failures)} failed checks ({by_status})"
        )


@dataclass
class Target:
    """One Coordinator under attack, and the document it serves (as the attacker reads it)."""

    coordinator: CoordinatorProcess
    root: Path

    def schema(self, api: Api) -> Any:
        address = self.address(api)
        loaded = schemathesis.openapi.from_url(
            f"https://{address}/api/v1/openapi.json", verify=str(self.root), config=CONFIG
        )
        # One document describes both APIs; each API serves its own routes.
        return loaded.include(operation_id=[spec.operation_id for spec in Routes.of(api)])

    def address(self, api: Api) -> str:
        c = self.coordinator
        return c.client_addr if api == "client" else c.mesh_addr

    def http(self, identity: Identity) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.root)
        if identity.cert is not None:
            context.load_cert_chain(*identity.cert)
        return httpx.Client(verify=context, timeout=TIMEOUT)


def _send(
    target: Target, api: Api, identity: Identity, tally: Tally, case: Case, checks: Any = CHECKS
) -> None:
    tally.requests += 1
    # The checks that send a request again (a control request) send it as this one was.
    transport = {"verify": str(target.root), "cert": identity.cert, "timeout": TIMEOUT}
    try:
        response = case.call(base_url=f"https://{target.address(api)}", **transport)
    except Exception as exc:  # the Coordinator must answer every request
        tally.failures.append(f"{case.method} {case.path}: no answer: {exc!r}")
        return
    tally.statuses[response.status_code] += 1
    try:
        case.validate_response(response, checks=checks, transport_kwargs=transport)
    except (AssertionError, FailureGroup) as exc:
        tally.failures.append(f"{identity.name} {case.method} {case.path}: {exc}")


def _run(strategy: st.SearchStrategy[Any], examples: int, test: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        test(value)

    run()


def _takes_input(operation: Any) -> bool:
    """Whether a request can be outside the schema: a body or a query (a path parameter is any
    string)."""
    return operation.body or any(True for _ in operation.query)


def fuzz(
    target: Target,
    api: Api,
    identity: Identity,
    tally: Tally,
    *,
    examples: int = EXAMPLES,
    path_parameters: dict[str, list[str]] | None = None,
    patch: Callable[[Case], None] | None = None,
) -> None:
    """Every operation of ``api``, positive and negative, as ``identity``. ``path_parameters``:
    values to try besides generated ones (known secret names). ``patch(case)``: a hook that
    fills a positive case with real values (a fresh nonce, a real CSR) before it is sent."""
    for result in target.schema(api).get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if _takes_input(operation):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategies = [operation.as_strategy(generation_mode=mode)]
            for parameter in operation.path_parameters:
                values = [*(path_parameters or {}).get(parameter.name, []), *PATH_EDGES]
                strategies += [
                    operation.as_strategy(
                        generation_mode=mode, path_parameters={parameter.name: value}
                    )
                    for value in values
                ]
            strategy = st.one_of(strategies)

            def test(case: Case, mode: GenerationMode = mode) -> None:
                if patch is not None and mode.is_positive:
                    patch(case)
                _send(target, api, identity, tally, case)

            _run(strategy, examples, test)


def cover(target: Target, api: Api, identity: Identity, tally: Tally) -> None:
    """Schemathesis's coverage phase, deterministic: the boundary values of every field, each
    required part left out, each wrong type, and every method a path does not take."""
    schema = target.schema(api)
    for result in schema.get_all_operations():
        operation = result.ok()
        for case in schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation),
        ):
            _send(target, api, identity, tally, case, COVERAGE_CHECKS)


def report(tally: Tally, record_property: Callable[[str, object], None]) -> None:
    print(tally.summary())
    record_property(f"{tally.phase}_requests", tally.requests)
    record_property(f"{tally.phase}_5xx", sum(n for s, n in tally.statuses.items() if s >= 500))
    assert not tally.failures, "\n\n".join(
        [tally.summary(), *tally.failures[:10], f"... {len(tally.failures)} failures in all"]
    )


def _bundle(base: Path) -> Path:
    bundle = base / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "app.py").write_text("print('attacked')\n")
    return bundle


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str, bytes | None], Target]]:
    """Factory: a fresh Coordinator for a phase, with ``manifest`` set if given."""
    started: list[CoordinatorProcess] = []

    def start_one(phase: str, manifest: bytes | None) -> Target:
        base = tmp_path / phase
        coordinator = CoordinatorProcess(base / "data", isolated_env(base), base / "c.log")
        started.append(coordinator)
        coordinator.start()
        first = httpx.get(f"https://{coordinator.client_addr}/api/v1/certificates", verify=False)
        root = base / "root.pem"
        root.write_text(first.json()["root"])
        if manifest is not None:
            answer = httpx.post(
                f"https://{coordinator.client_addr}/api/v1/manifest",
                content=manifest,
                headers={"content-type": "application/json"},
                verify=ssl.create_default_context(cafile=root),
            )
            assert answer.status_code == 201, answer.text
        return Target(coordinator, root)

    yield start_one
    for coordinator in started:
        coordinator.stop()
    for coordinator in started:  # a 500 logs its traceback
        assert "unexpected error" not in coordinator.log(), coordinator.log_tail(80)


def _users(base: Path) -> dict[User, list[str]]:
    return {
        make_user(base, "operator"): sorted(ROLES),
        make_user(base, "guest"): [],
    }


def _manifest(base: Path, users: dict[User, list[str]]) -> bytes:
    measurement = measure_bundle(_bundle(base)).hex()
    return governance_manifest(
        measurement, users, ROLES, secrets=SECRETS, services=SERVICES, update_threshold=1
    )


# -- as no user ----------------------------------------------------------------------------------


def test_as_no_user(
    start: Callable[[str, bytes | None], Target], record_property: Callable[[str, object], None]
) -> None:
    """An outsider, before the manifest is set: everything both APIs take without a certificate
    (the manifest itself included)."""
    target = start("nouser", None)
    tally = Tally("no-user")
    for api in ("client", "mesh"):
        cover(target, api, Identity("no user"), tally)
        fuzz(target, api, Identity("no user"), tally)
    report(tally, record_property)
    assert target.coordinator.alive()


def test_every_user_route_refuses_no_user_typed(
    start: Callable[[str, bytes | None], Target], tmp_path: Path
) -> None:
    """Every client-API route that needs a user refuses a caller without a certificate and one
    whose certificate is no user's (an activated service's, which chains to the deployment's
    root), 401 with a code the document lists; each route documents that 401 and its security
    requirement."""
    users = _users(tmp_path / "users")
    target = start("probe", _manifest(tmp_path, users))
    with target.http(Identity("no user")) as http:
        document = http.get(f"https://{target.coordinator.client_addr}/api/v1/openapi.json").json()
    codes = set(document["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"])
    assert codes <= set(ERROR_CODES)
    stranger = _service(target, tmp_path / "stranger").identity
    user_routes = [spec for spec in Routes.of("client") if spec.user]
    assert user_routes
    for spec in user_routes:
        operation = document["paths"][spec.path][spec.method.lower()]
        assert "401" in operation["responses"], spec.operation_id
        assert operation["security"] == [{"clientCertificate": []}], spec.operation_id
        refusals = ((Identity("no user"), "authentication_required"), (stranger, "unknown_user"))
        for identity, code in refusals:
            with target.http(identity) as http:
                body: dict[str, Any] = {}
                if spec.body is not None:
                    body = {"json": {}} if spec.body != "manifest" else {"content": b"{}"}
                answer = http.request(
                    spec.method,
                    f"https://{target.coordinator.client_addr}{spec.url(name='note')}",
                    **body,
                )
            assert answer.status_code == 401, (spec.operation_id, identity.name, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"] == code, (spec.operation_id, answer.text)
            assert code in codes


# -- as a user -----------------------------------------------------------------------------------


def _package_updates() -> st.SearchStrategy[dict[str, Any]]:
    """Package updates shaped as the route reads them, with generated names and values."""
    change = st.fixed_dictionaries(
        {},
        optional={
            "min_svn": st.one_of(st.integers(-2, 70000), st.text(max_size=4), st.none()),
            "measurement": st.one_of(
                st.text(alphabet="0123456789abcdefABCDEF", max_size=70), st.integers()
            ),
        },
    )
    names = st.one_of(st.just("app"), st.text(max_size=10))
    return st.fixed_dictionaries({"packages": st.dictionaries(names, change, max_size=2)})


def test_as_a_user(
    start: Callable[[str, bytes | None], Target],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Users of the manifest, one with every role and one with none, on the client API: the
    secret routes with the manifest's secret names as well as generated ones (every other value
    set in base64, so that it meets the secret's own checks), and package updates shaped as the
    update route reads them."""
    users = _users(tmp_path / "users")
    target = start("user", _manifest(tmp_path, users))
    tally = Tally("user")
    (update,) = [
        operation
        for result in target.schema("client").get_all_operations()
        if (operation := result.ok()).path == Routes.update.path and operation.method == "post"
    ]
    encode = itertools.cycle([True, False])

    def patch(case: Case) -> None:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("value"), str) and next(encode):
            body["value"] = _base64(body["value"], 65536)

    for user in users:
        identity = Identity(user.name, (str(user.cert), str(user.key)))
        names = {"name": sorted(SECRETS)}
        fuzz(target, "client", identity, tally, path_parameters=names, patch=patch)
        updates = _package_updates().flatmap(
            lambda body: update.as_strategy(body=body, media_type="application/json")
        )
        _run(updates, EXAMPLES, lambda case, i=identity: _send(target, "client", i, tally, case))
    report(tally, record_property)


# -- as a service --------------------------------------------------------------------------------


def _base64(generated: str, limit: int) -> str:
    """Generated text as the bytes of a base64 field, within the field's length limit."""
    raw = generated.encode("utf-8", "surrogatepass")[: limit * 3 // 4]
    return base64.b64encode(raw).decode()


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Service:
    """An activated instance of 'web': what it presents, and what it proves with."""

    identity: Identity
    activation: Activation
    platform: SimulatedPlatform
    measurement: bytes

    def evidence(self, key: ec.EllipticCurvePrivateKey, nonce: bytes) -> dict[str, str]:
        """Evidence that verifies, bound to ``key`` and ``nonce`` (as ``geode run`` sends)."""
        binding = key_binding(public_key_der(key.public_key()), nonce)
        return self.platform.quote(self.measurement, binding).to_json()

    def proof(self, key: ec.EllipticCurvePrivateKey, nonce: bytes) -> str:
        """The current key's signature over the renewal of ``nonce`` to ``key``."""
        payload = renewal_payload(nonce, public_key_der(key.public_key()))
        signature = self.activation.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


def _service(target: Target, base: Path) -> Service:
    """Activate 'web' with simulated evidence; its certificate chain and key as files."""
    env = target.coordinator.env
    platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
    measurement = measure_bundle(_bundle(base))
    root = x509.load_pem_x509_certificate(target.root.read_bytes())
    activation = activate(
        target.coordinator.mesh_addr,
        "web",
        simulated_evidence_provider(platform, measurement),
        root=root,
    )
    cert, key = base / "web.crt", base / "web.key"
    cert.write_text("".join(certificate_pem(c) for c in activation.certificate_chain))
    key.write_bytes(private_key_pem(activation.private_key))
    return Service(
        Identity("service web", (str(cert), str(key))), activation, platform, measurement
    )


def test_as_a_service(
    start: Callable[[str, bytes | None], Target],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """An activated service on the mesh API (its certificate offered to TLS; the mesh API asks
    for none): activations, renewals and cluster-key requests that carry a fresh nonce, a real
    CSR, the service's name and its own certificate, so that the generated evidence, proofs and
    keys reach the checks behind them. Every sixth carries evidence that verifies (and, for a
    renewal, a proof by the current key), so that generated values meet the hand-out itself."""
    users = _users(tmp_path / "users")
    target = start("service", _manifest(tmp_path, users))
    service = _service(target, tmp_path / "web")
    certificate = certificate_pem(service.activation.certificate)
    tally = Tally("service")
    kinds = itertools.cycle([*EVIDENCE_KINDS, "verifies"])

    with target.http(service.identity) as http:

        def nonce() -> bytes:
            tally.requests += 1
            answer = http.post(f"https://{target.coordinator.mesh_addr}/api/v1/mesh/nonce")
            tally.statuses[answer.status_code] += 1
            return bytes.fromhex(answer.json()["nonce"])

        def patch(case: Case) -> None:
            body = case.body
            if not isinstance(body, dict):
                return
            fresh, key = nonce(), ec.generate_private_key(ec.SECP256R1())
            body["nonce"] = fresh.hex()
            if "csr" in body:
                body["csr"] = _csr(key)
            if "service" in body:
                body["service"] = "web"
            if "certificate" in body:
                body["certificate"] = certificate
            for name in ("proof", "public_key"):
                if isinstance(body.get(name), str):
                    body[name] = _base64(body[name], 512)
            evidence = body.get("evidence")
            if not isinstance(evidence, dict) or not isinstance(evidence.get("data"), str):
                return
            kind = next(kinds)
            if kind != "verifies":  # a kind the Coordinator verifies, and generated bytes
                body["evidence"] = {"kind": kind, "data": _base64(evidence["data"], 65536)}
                return
            body["evidence"] = service.evidence(key, fresh)
            if "proof" in body:
                body["proof"] = service.proof(key, fresh)

        fuzz(target, "mesh", service.identity, tally, patch=patch)
    report(tally, record_property)
