"""Manifest bombs against a real Coordinator: before a manifest is set (unauthenticated, by
design) and on the update route (as a user without the update role). Each is refused with a
typed 4xx, quickly, while both APIs keep answering: nothing is parsed on the event loop, and an
update's body is not even read for a caller who may update nothing."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from geode.attestation import measure_bundle
from tests.support import CoordinatorProcess
from tests.support.bombs import BOMBS, MIB, template_manifest
from tests.support.governance import User, governance_manifest, make_user

JSON = {"content-type": "application/json"}
# The ones that cost the most CPU (before their bounds: minutes), or ended in a 500.
SENT = ("json deep objects", "many templates", "yaml aliased templates", "yaml many values")


@contextmanager
def _responsiveness(proc: CoordinatorProcess) -> Iterator[list[float]]:
    """Meanwhile, GET status on the client API and ask for a nonce on the mesh API, again and
    again: the slowest answer's seconds end up in the list."""
    slowest = [0.0]
    stop = threading.Event()

    def poll() -> None:
        with (
            httpx.Client(verify=False, timeout=30) as client,
            httpx.Client(verify=False, timeout=30) as mesh,
        ):
            while not stop.is_set():
                for call in (
                    lambda: client.get(f"https://{proc.client_addr}/api/v1/status"),
                    lambda: mesh.post(f"https://{proc.mesh_addr}/api/v1/mesh/nonce", json={}),
                ):
                    started = time.monotonic()
                    answer = call()
                    assert answer.status_code < 500, answer.text
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield slowest
    finally:
        stop.set()
        thread.join()


def _as(user: User) -> ssl.SSLContext:
    """TLS as ``user`` (the Coordinator's certificate is not what these tests are about)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(*user.identity)
    return context


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_bombs_set_as_the_manifest_are_refused_while_both_apis_answer(
    coordinator: CoordinatorProcess,
) -> None:
    url = f"https://{coordinator.client_addr}/api/v1/manifest"
    with _responsiveness(coordinator) as slowest:
        for bomb in (b for b in BOMBS if b.name in SENT):
            answer, seconds = _timed(
                lambda raw=bomb.raw: httpx.post(url, content=raw, verify=False, timeout=60)
            )
            assert answer.status_code == 400, (bomb.name, answer.text)
            assert answer.json()["error"] == "manifest_invalid"
            assert answer.json()["path"] == bomb.path
            assert bomb.fragment in answer.json()["message"]
            assert seconds < 15, (bomb.name, seconds)
    assert slowest[0] < 1.0
    assert coordinator.status()["state"] == "awaiting-manifest"


def test_a_manifest_past_the_workers_budget_is_manifest_too_costly(
    start_coordinator: Callable[..., CoordinatorProcess],
) -> None:
    # 50 ms: a fork and a thousand templates take several times that on any machine.
    proc = start_coordinator(None, "--manifest-time-budget", "50ms")
    # Within every in-process bound, but more work than the budget allows.
    costly = template_manifest(argv=[f"--n={{{{ {i} }}}}" for i in range(1000)])
    url = f"https://{proc.client_addr}/api/v1/manifest"
    answer, seconds = _timed(lambda: httpx.post(url, content=costly, verify=False, timeout=60))
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": "manifest_too_costly",
        "message": "manifest: validating it takes longer than 0.05 s",
        "path": "manifest",
    }
    assert seconds < 10
    # The API document says so, for both routes that take a manifest.
    document = httpx.get(f"https://{proc.client_addr}/api/v1/openapi.json", verify=False).json()
    for path in ("/api/v1/manifest", "/api/v1/update"):
        assert "422" in document["paths"][path]["post"]["responses"], path
    codes = document["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"]
    assert "manifest_too_costly" in codes


def test_a_user_who_may_not_update_is_refused_before_the_body_is_read(
    coordinator: CoordinatorProcess, bundle: Path, tmp_path: Path
) -> None:
    reader, updater = make_user(tmp_path, "reader"), make_user(tmp_path, "updater")
    roles = {
        "notes": {"resource": "secrets", "names": ["note"], "actions": ["read"]},
        "admin": {"resource": "manifest", "actions": ["update"]},
    }
    manifest = governance_manifest(
        measure_bundle(bundle).hex(),
        {reader: ["notes"], updater: ["admin"]},
        roles,
        secrets={"note": {"type": "plain"}},
    )
    base = f"https://{coordinator.client_addr}/api/v1"
    assert httpx.post(f"{base}/manifest", content=manifest, verify=False).status_code == 201
    # A megabyte of YAML that takes seconds to parse: every value a node of its own.
    body = b"a: [" + b"0," * (MIB // 2 - 4) + b"0]\n"
    assert len(body) <= MIB
    with (
        _responsiveness(coordinator) as slowest,
        httpx.Client(verify=_as(reader), timeout=60) as client,
    ):
        for _ in range(3):
            answer, seconds = _timed(lambda: client.post(f"{base}/update", content=body))
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "permission_denied"
            assert seconds < 2
    assert slowest[0] < 1.0
    # The one who may update is answered too: the bounds refuse the same body, typed.
    with httpx.Client(verify=_as(updater), timeout=60) as client:
        answer = client.post(f"{base}/update", content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["path"] == "manifest"
