"""The webhook over real HTTPS: uvicorn in a thread, and ``geode inject serve`` as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from geode.cli import cli
from geode.errors import PKIError
from geode.inject import (
    MAX_REVIEW_BYTES,
    InjectorConfig,
    ServiceTees,
    ServingCertificate,
    TeeProfile,
    TeeProfiles,
    webhook_server,
)
from tests.inject.support.admission import (
    ServingFiles,
    patched,
    review,
    validate_pod,
    write_serving_files,
)
from tests.inject.support.manifests import MANIFEST
from tests.support import free_port

CONFIG = InjectorConfig(
    coordinator="geode-mesh.geode.svc:2001", tee_profiles=TeeProfiles({"sev-snp": TeeProfile()})
)
TEES = ServiceTees({"bookstore": "sev-snp", "bookwarehouse": "sev-snp"}, "00" * 32)


class RunningWebhook:
    def __init__(self, files: ServingFiles, reload_interval: float = 30.0) -> None:
        self.files = files
        self.server = webhook_server(
            CONFIG, TEES, files.cert, files.key, ("127.0.0.1", 0), reload_interval=reload_interval
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "the webhook did not start"
            assert time.monotonic() < deadline, "the webhook did not start in time"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.files.ca)
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[RunningWebhook]:
    running = RunningWebhook(write_serving_files(tmp_path / "tls"), reload_interval=0.05)
    yield running
    running.stop()


def post(client: httpx.Client, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = kwargs.pop("headers", {"content-type": "application/json"})
    return client.post("/mutate", content=content, headers=headers, **kwargs)


def test_reviews_over_https(webhook: RunningWebhook) -> None:
    with webhook.client() as client:
        assert client.get("/healthz").text == "ok"

        body = review("bookstore-replicaset-pod")
        response = post(client, body)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "server" not in response.headers
        pod = patched(body, response.json())
        validate_pod(pod)
        assert pod["spec"]["containers"][0]["command"][:4] == [
            "geode",
            "run",
            "--service",
            "bookstore",
        ]

        unlabelled = review("unlabelled-pod")
        assert post(client, unlabelled).json()["response"] == {
            "uid": unlabelled["request"]["uid"],
            "allowed": True,
        }

        refused = post(client, review("warehouse-no-command")).json()["response"]
        assert refused["allowed"] is False
        assert "has no command" in refused["status"]["message"]


def test_http_errors_are_json_without_a_trace(webhook: RunningWebhook) -> None:
    with webhook.client() as client:
        cases = [
            (post(client, b"{"), 400, "invalid_json"),
            (post(client, {"kind": "AdmissionReview"}), 400, "invalid_admission_review"),
            (post(client, b"{}", headers={"content-type": "text/plain"}), 415, None),
            (post(client, b" " * (MAX_REVIEW_BYTES + 1)), 413, "payload_too_large"),
            (client.get("/mutate"), 405, "method_not_allowed"),
            (client.get("/nothing"), 404, "not_found"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, response.text
            body = response.json()
            assert code is None or body["error"] == code
            assert "Traceback" not in response.text


def test_a_rotated_certificate_is_served_without_a_restart(
    webhook: RunningWebhook, tmp_path: Path
) -> None:
    def served_common_name() -> str:
        context = ssl.create_default_context(cafile=webhook.files.ca)
        with (
            socket.create_connection(("127.0.0.1", webhook.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            cert = tls.getpeercert()
        subject = dict(pair[0] for pair in cert["subject"])  # type: ignore[misc,index]
        return str(subject["commonName"])

    assert served_common_name() == "geode-webhook"
    rotated = write_serving_files(tmp_path / "rotated", common_name="geode-webhook-rotated")
    # Trust both issuers while the files change (the caBundle of a CA rotation holds both).
    webhook.files.ca.write_bytes(webhook.files.ca.read_bytes() + rotated.ca.read_bytes())
    os.replace(rotated.key, webhook.files.key)
    os.replace(rotated.cert, webhook.files.cert)
    deadline = time.monotonic() + 5
    while served_common_name() != "geode-webhook-rotated":
        assert time.monotonic() < deadline, "the new certificate was not picked up"
        time.sleep(0.05)


def test_a_broken_rotation_keeps_the_current_certificate(tmp_path: Path) -> None:
    files = write_serving_files(tmp_path)
    certificate = ServingCertificate(files.cert, files.key)
    files.cert.write_text("not a certificate")
    assert certificate.reload_if_changed() is False
    with pytest.raises(PKIError, match="not a PEM certificate and its key"):
        ServingCertificate(files.cert, files.key)


def test_geode_inject_serve_as_a_process(tmp_path: Path) -> None:
    files = write_serving_files(tmp_path / "tls")
    port = free_port()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_bytes(MANIFEST)
    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geode",
                "inject",
                "serve",
                "--cert",
                str(files.cert),
                "--key",
                str(files.key),
                "--listen",
                f"127.0.0.1:{port}",
                "--coordinator",
                "geode-mesh.geode.svc:2001",
                "--simulation-platform-key-secret",
                "geode-platform-key",
                "--manifest",
                str(manifest),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        context = ssl.create_default_context(cafile=files.ca)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as client:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            body = review("bookstore-replicaset-pod")
            body["request"]["object"]["metadata"]["annotations"]["geode.dev/bundle"] = "/srv"
            answer = post(client, body).json()
            assert answer["response"]["warnings"][0].startswith("geode: SIMULATION")
            pod = patched(body, answer)
            assert pod["spec"]["initContainers"][0]["name"] == "geode-platform-key-0"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, log.read_text()
    text = log.read_text()
    assert "SIMULATION" in text
    assert "wrapped app, metrics as service bookstore" in text
    assert "Traceback" not in text


def test_serve_reports_bad_options_in_one_line(tmp_path: Path) -> None:
    files = write_serving_files(tmp_path)
    (tmp_path / "manifest.yaml").write_bytes(MANIFEST)
    runner = CliRunner()
    base = ["inject", "serve", "--cert", str(files.cert), "--key", str(files.key)]
    base += ["--manifest", str(tmp_path / "manifest.yaml")]
    result = runner.invoke(cli, [*base, "--coordinator", "no-port"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: coordinator: 'no-port': expected HOST:PORT"
    result = runner.invoke(cli, [*base, "--coordinator", "a:1", "--listen", "x"])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output
    files.key.write_text("junk")
    result = runner.invoke(
        cli, [*base, "--coordinator", "a:1", "--listen", f"127.0.0.1:{free_port()}"]
    )
    assert result.exit_code == 1
    assert "not a PEM certificate and its key" in result.output
    assert "Traceback" not in result.output


def test_install_key_makes_a_private_copy(tmp_path: Path) -> None:
    source = tmp_path / "secret" / "platform.key"
    source.parent.mkdir()
    source.write_text("-----BEGIN PRIVATE KEY-----\n...\n")
    source.chmod(0o444)  # as Kubernetes mounts it
    target = tmp_path / "tmpfs" / "app.key"
    runner = CliRunner()
    for _ in range(2):  # a restarted pod runs its init containers again
        result = runner.invoke(cli, ["inject", "install-key", str(source), str(target)])
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.key"]
    source.write_text("")
    result = runner.invoke(cli, ["inject", "install-key", str(source), str(target)])
    assert result.exit_code == 1
    assert "the key file is empty" in result.output
