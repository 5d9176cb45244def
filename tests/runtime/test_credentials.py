"""Credentials: from the environment ``geode run`` sets, and reloading renewed files."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from geode.errors import LaunchError
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)
from geode.runtime import Credentials

SERVER = SpiffeId.for_service("t.local", "server")


class Files:
    """A mesh CA and the leaf files of one instance, renewable."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mesh = CertificateAuthority.create_root().create_intermediate("mesh")
        (tmp / "ca.pem").write_text(certificate_pem(self.mesh.certificate))
        self.serial = 0
        self.renew()
        chain, key = self.leaf()  # a client of the mesh, to handshake with
        (tmp / "client.pem").write_text(chain)
        (tmp / "client.key").write_bytes(key)
        self.renew()

    def leaf(self) -> tuple[str, bytes]:
        key = generate_private_key()
        cert = self.mesh.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name="server",
                spiffe_id=SERVER,
                dns_names=["localhost"],
                lifetime=datetime.timedelta(hours=1),
            )
        )
        self.serial = cert.serial_number
        return certificate_pem(cert) + certificate_pem(self.mesh.certificate), private_key_pem(key)

    def renew(self, *, key_too: bool = True) -> None:
        chain, key = self.leaf()
        (self.tmp / "cert.pem").write_text(chain)
        if key_too:
            (self.tmp / "key.pem").write_bytes(key)
        # A renewal within the same clock tick must still be seen.
        later = time.time() + self.serial % 1000 / 1000 + 1
        for name in ("cert.pem", "key.pem"):
            os.utime(self.tmp / name, (later, later))

    def credentials(self) -> Credentials:
        return Credentials.from_env(
            {
                "GEODE_CERT_FILE": str(self.tmp / "cert.pem"),
                "GEODE_KEY_FILE": str(self.tmp / "key.pem"),
                "GEODE_CA_FILE": str(self.tmp / "ca.pem"),
                "GEODE_SPIFFE_ID": str(SERVER),
            }
        )


def served_serial(files: Files, context: ssl.SSLContext) -> int:
    """Handshake with a server on ``context``; the serial of the certificate it presented."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files.tmp / "ca.pem")
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    client.load_cert_chain(files.tmp / "client.pem", files.tmp / "client.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
        thread.join(5)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def test_from_env_names_the_missing_variable() -> None:
    with pytest.raises(LaunchError, match="GEODE_KEY_FILE is not set"):
        Credentials.from_env({"GEODE_CERT_FILE": "/x", "GEODE_CA_FILE": "/y"})


def test_reload_puts_renewed_files_into_live_contexts(files: Files) -> None:
    credentials = files.credentials()
    context = credentials.server_ssl_context()
    first = files.serial
    assert served_serial(files, context) == first
    assert not credentials.reload()  # nothing changed
    files.renew()
    assert credentials.reload()
    assert files.serial != first
    assert served_serial(files, context) == files.serial
    assert not credentials.reload()


def test_a_half_written_renewal_is_not_loaded(files: Files) -> None:
    credentials = files.credentials()
    context = credentials.server_ssl_context()
    before = files.serial
    files.renew(key_too=False)  # the new certificate beside the old key
    assert not credentials.reload()
    assert served_serial(files, context) == before  # the old, consistent pair still serves
    files.renew()  # now a whole new pair
    assert credentials.reload()
    assert served_serial(files, context) == files.serial != before


def test_watch_with_a_loop_loads_on_that_loop(files: Files) -> None:
    credentials = files.credentials()
    credentials.server_ssl_context()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    reloaded_on: list[int] = []
    original = credentials.reload

    def reload() -> bool:
        changed = original()
        if changed:
            reloaded_on.append(threading.get_ident())
        return changed

    credentials.reload = reload  # type: ignore[method-assign]
    stop = credentials.watch(0.02, loop=loop)
    try:
        files.renew()
        deadline = time.monotonic() + 5
        while not reloaded_on and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
    assert reloaded_on == [runner.ident]


def test_watch_stops_when_asked(files: Files) -> None:
    credentials = files.credentials()
    context = credentials.server_ssl_context()
    before = files.serial
    stop = credentials.watch(0.02)
    stop.set()
    time.sleep(0.1)  # the poller has seen the event
    files.renew()
    time.sleep(0.2)  # ten intervals: a running poller would have loaded the new pair
    assert served_serial(files, context) == before
