"""The renewal loop: when to renew, what to retry, what stops the service."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geode.errors import ActivationDenied, ClientError, StaleCertificate
from geode.pki import CertificateAuthority, LeafParams
from geode.protocol import RenewalAnswer, Routes
from geode.runtime import _activation, _renewal
from geode.runtime.launcher import CertificateRenewer, renewal_time


def _leaf(lifetime: datetime.timedelta) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    mesh = CertificateAuthority.create_root().create_intermediate("mesh")
    key = ec.generate_private_key(ec.SECP256R1())
    return mesh.issue(LeafParams(key.public_key(), "i", lifetime=lifetime)), key


def test_renewal_time_is_halfway_from_arrival_not_from_the_backdated_start() -> None:
    cert, _ = _leaf(datetime.timedelta(hours=2))
    received = cert.not_valid_after_utc - datetime.timedelta(hours=2)
    assert renewal_time(cert, received) == received + datetime.timedelta(hours=1)


def _renewer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcomes: list[Any]) -> Any:
    cert, key = _leaf(datetime.timedelta(seconds=2))
    calls: list[int] = []

    def fake_renew(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        outcome = outcomes.pop(0) if outcomes else outcomes_default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    fresh, fresh_key = _leaf(datetime.timedelta(seconds=60))
    outcomes_default = (fresh_key, [fresh])
    monkeypatch.setattr(_renewal, "renew", fake_renew)
    fatal: list[str] = []
    done = threading.Event()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        done.set()

    renewer = CertificateRenewer(
        "127.0.0.1:1",
        [cert],
        key,
        lambda _: None,  # type: ignore[arg-type,return-value]
        root=None,
        cert_file=tmp_path / "cert.pem",
        key_file=tmp_path / "key.pem",
        on_fatal=on_fatal,
    )
    return renewer, calls, fatal, done


def test_a_refusal_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renewer, calls, fatal, done = _renewer(
        tmp_path,
        monkeypatch,
        [ActivationDenied("renewal refused", "certificate not from the current mesh CA")],
    )
    renewer.start()
    assert done.wait(10)
    renewer.stop()
    assert calls == [1]
    assert "refuses to renew" in fatal[0]


def test_a_transient_failure_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renewer, calls, fatal, _ = _renewer(tmp_path, monkeypatch, [OSError("network down")])
    renewer.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
    while renewer.renewals == 0 and datetime.datetime.now() < deadline:
        threading.Event().wait(0.05)
    renewer.stop()
    assert renewer.renewals == 1
    assert len(calls) == 2
    assert fatal == []
    assert (tmp_path / "cert.pem").exists()
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, {"error": "stale_certificate", "message": "m", "detail": "not the latest"}, "stale"),
        (403, {"error": "activation_denied", "reason": "renewal refused"}, "denied"),
        (503, {"error": "state_unavailable", "message": "try later"}, "client"),
    ],
)
def test_the_coordinators_refusals_are_told_from_passing_failures(
    status: int, body: dict[str, str], expected: str
) -> None:
    """A stale certificate or a denial ends the renewals at once (ActivationDenied); anything
    else is a ClientError, which the renewal loop retries."""
    http = httpx.Client(
        base_url="https://coordinator.invalid",
        transport=httpx.MockTransport(lambda _request: httpx.Response(status, json=body)),
    )
    with pytest.raises((ClientError, ActivationDenied)) as raised:
        _activation._post(http, Routes.renew.path, False, RenewalAnswer)
    error = raised.value
    assert isinstance(error, StaleCertificate) == (expected == "stale")
    assert isinstance(error, ActivationDenied) == (expected in ("stale", "denied"))
    assert isinstance(error, ClientError) == (expected == "client")
    if expected == "stale":
        assert "not the latest" in str(error)
