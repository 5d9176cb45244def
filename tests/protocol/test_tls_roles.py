"""geode.protocol's TLS roles, in real handshakes between certificates from geode.pki.

Handshakes run over memory BIOs (the path asyncio takes) or a socket pair (plain sockets and
httpx), so that the checks made inside the handshake are the ones exercised.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from geode.errors import ClientError
from geode.pki import (
    COORDINATOR_URI,
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    UserCertificate,
    certificate_der,
    certificate_pem,
    generate_private_key,
    peer_spiffe_id,
    private_key_pem,
)
from geode.protocol import (
    MeshSSLContext,
    check_certificate_and_key,
    coordinator_client_context,
    coordinator_server_context,
    etcd_client_context,
    mesh_client_context,
    mesh_server_context,
    public_client_context,
    public_server_context,
)

DOMAIN = "t.local"
SERVER = SpiffeId.for_service(DOMAIN, "server")
CLIENT = SpiffeId.for_service(DOMAIN, "client")
OTHER = SpiffeId.for_service(DOMAIN, "other")


class Pki:
    """A deployment root, its mesh CA, and leaf files written to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root = CertificateAuthority.create_root()
        self.mesh = self.root.create_intermediate("mesh")
        self.mesh_ca = self.write("mesh-ca.pem", certificate_pem(self.mesh.certificate))

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.directory / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def leaf(
        self,
        name: str,
        *,
        issuer: CertificateAuthority | None = None,
        spiffe_id: SpiffeId | None = None,
        uris: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """The certificate chain file and key file of a new leaf (from the mesh CA unless
        ``issuer`` says otherwise), valid for ``localhost``."""
        issuer = issuer or self.mesh
        key = generate_private_key()
        cert = issuer.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name=name,
                spiffe_id=spiffe_id,
                uris=uris,
                dns_names=["localhost"],
                lifetime=datetime.timedelta(hours=1),
            )
        )
        chain = certificate_pem(cert) + "".join(certificate_pem(c) for c in issuer.chain)
        if issuer is self.mesh:
            chain += certificate_pem(self.mesh.certificate)
        return self.write(f"{name}.pem", chain), self.write(f"{name}.key", private_key_pem(key))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _move(source: ssl.MemoryBIO, target: ssl.MemoryBIO) -> bool:
    data = source.read()
    target.write(data)
    return bool(data)


def handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, hostname: str | None = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of a completed handshake over memory BIOs; the first ``SSLError`` otherwise."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    while not all(done.values()):
        for side, end in (("client", c), ("server", s)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        if not (_move(c_out, s_in) | _move(s_out, c_in)) and not all(done.values()):
            raise AssertionError(f"the handshake stalled: {done}")
    return c, s


def mesh_pair(pki: Pki) -> tuple[ssl.SSLContext, Callable[..., MeshSSLContext]]:
    """A mesh server as SERVER, and a maker of mesh clients as CLIENT."""
    server = mesh_server_context(*pki.leaf("server", spiffe_id=SERVER), pki.mesh_ca)
    client_files = pki.leaf("client", spiffe_id=CLIENT)

    def client(peers: list[SpiffeId] | None) -> MeshSSLContext:
        return mesh_client_context(*client_files, pki.mesh_ca, peers=peers)

    return server, client


def test_the_mesh_client_and_server_know_each_other(pki: Pki) -> None:
    server, client = mesh_pair(pki)
    c, s = handshake(client([SERVER]), server, hostname=None)
    assert peer_spiffe_id(c.getpeercert(True)) == SERVER
    assert peer_spiffe_id(s.getpeercert(True)) == CLIENT


def test_a_mesh_client_refuses_another_identity_in_the_handshake(pki: Pki) -> None:
    server, client = mesh_pair(pki)
    with pytest.raises(ssl.SSLCertVerificationError, match=f"is not one of {OTHER}"):
        handshake(client([OTHER]), server, hostname=None)


def test_a_mesh_client_on_a_socket_sends_no_byte_to_another_identity(pki: Pki) -> None:
    server, client = mesh_pair(pki)
    ours, theirs = socket.socketpair()
    received: list[bytes | Exception] = []

    def serve() -> None:
        try:
            with server.wrap_socket(theirs, server_side=True) as tls:
                received.append(tls.recv(1024))
        except (ssl.SSLError, OSError) as exc:
            received.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError, match="is not one of"):
        client([OTHER]).wrap_socket(ours)
    assert ours.fileno() == -1  # closed by the refusal, before the caller could write
    thread.join(5)
    assert received
    assert received[0] == b"" or isinstance(received[0], Exception)


def test_any_mesh_peer_still_needs_a_chain_to_the_mesh_ca(pki: Pki) -> None:
    _, client = mesh_pair(pki)
    handshake(client(None), mesh_pair(pki)[0], hostname=None)  # any service of the mesh
    stranger = CertificateAuthority.create_root("elsewhere").create_intermediate("mesh")
    impostor = mesh_server_context(
        *pki.leaf("impostor", issuer=stranger, spiffe_id=SERVER), pki.mesh_ca
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client(None), impostor, hostname=None)


def test_the_mesh_server_requires_a_client_certificate(pki: Pki) -> None:
    server, _ = mesh_pair(pki)
    assert server.verify_mode is ssl.CERT_REQUIRED
    anonymous = public_client_context(pki.root.certificate)
    anonymous.check_hostname = False
    anonymous.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    anonymous.load_verify_locations(cafile=pki.mesh_ca)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
        handshake(anonymous, server, hostname=None)


def coordinator_server(pki: Pki, *, users: bool) -> ssl.SSLContext:
    context = coordinator_server_context(users=users)
    cert, key = pki.leaf("coordinator", issuer=pki.root, uris=(COORDINATOR_URI,))
    context.load_cert_chain(cert, key)
    if users:
        context.load_verify_locations(cadata=certificate_pem(pki.root.certificate))
    return context


def test_the_client_api_asks_for_a_user_certificate_but_does_not_require_one(pki: Pki) -> None:
    server = coordinator_server(pki, users=True)
    assert server.verify_mode is ssl.CERT_OPTIONAL
    _, s = handshake(coordinator_client_context(pki.root.certificate), server)
    assert s.getpeercert(True) is None  # a relying party, without a certificate

    alice = UserCertificate.create("alice")  # self-signed: an anchor by itself
    server.load_verify_locations(cadata=alice.certificate_pem)
    identity = (
        pki.write("alice.pem", alice.certificate_pem),
        pki.write("alice.key", alice.key_pem),
    )
    _, s = handshake(coordinator_client_context(pki.root.certificate, identity), server)
    assert s.getpeercert(True) == certificate_der(alice.certificate)

    stranger = UserCertificate.create("mallory")  # no user's: the handshake refuses it
    identity = (
        pki.write("mallory.pem", stranger.certificate_pem),
        pki.write("mallory.key", stranger.key_pem),
    )
    with pytest.raises(ssl.SSLError):
        handshake(coordinator_client_context(pki.root.certificate, identity), server)


def test_the_mesh_api_asks_for_no_certificate(pki: Pki) -> None:
    server = coordinator_server(pki, users=False)
    assert server.verify_mode is ssl.CERT_NONE
    alice = UserCertificate.create("alice")
    identity = (
        pki.write("alice.pem", alice.certificate_pem),
        pki.write("alice.key", alice.key_pem),
    )
    _, s = handshake(coordinator_client_context(pki.root.certificate, identity), server)
    assert s.getpeercert(True) is None


def test_a_coordinator_client_trusts_its_root_only(pki: Pki) -> None:
    server = coordinator_server(pki, users=False)
    other = CertificateAuthority.create_root("another deployment")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(coordinator_client_context(other.certificate), server)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(coordinator_client_context(pki.root.certificate), server, "elsewhere")


def test_not_verifying_the_coordinator_takes_insecure_true(pki: Pki) -> None:
    with pytest.raises(ClientError, match="insecure=True"):
        coordinator_client_context(None)
    server = coordinator_server(pki, users=False)
    c, _ = handshake(coordinator_client_context(None, insecure=True), server, "elsewhere")
    assert c.getpeercert(True) is not None  # handed over, and not checked


def test_a_public_page_asks_for_no_certificate_and_is_checked_like_a_browser(pki: Pki) -> None:
    server = public_server_context(*pki.leaf("page", spiffe_id=SERVER))
    assert server.verify_mode is ssl.CERT_NONE
    client = public_client_context(pki.root.certificate)
    assert client.check_hostname is True
    _, s = handshake(client, server)
    assert s.getpeercert(True) is None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(public_client_context(pki.root.certificate), server, "elsewhere")


def test_etcd_is_verified_against_its_ca_or_the_systems(pki: Pki) -> None:
    system = etcd_client_context(None)
    assert system.verify_mode is ssl.CERT_REQUIRED
    assert system.check_hostname is True
    etcd_ca = CertificateAuthority.create_root("etcd CA")
    ca_file = pki.write("etcd-ca.pem", certificate_pem(etcd_ca.certificate))
    server = public_server_context(*pki.leaf("etcd", issuer=etcd_ca))
    handshake(etcd_client_context(ca_file, pki.leaf("etcd-client")), server)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(etcd_client_context(pki.mesh_ca), server)


def test_a_certificate_beside_another_key_is_refused(pki: Pki) -> None:
    cert, key = pki.leaf("one")
    check_certificate_and_key(cert, key)
    _, other_key = pki.leaf("two")
    with pytest.raises(ssl.SSLError):
        check_certificate_and_key(cert, other_key)


def _every_role(pki: Pki) -> dict[str, ssl.SSLContext]:
    leaf = pki.leaf("leaf", spiffe_id=SERVER)
    return {
        "coordinator server (users)": coordinator_server_context(users=True),
        "coordinator server (mesh)": coordinator_server_context(users=False),
        "coordinator client": coordinator_client_context(pki.root.certificate),
        "coordinator client (insecure)": coordinator_client_context(None, insecure=True),
        "mesh server": mesh_server_context(*leaf, pki.mesh_ca),
        "mesh client": mesh_client_context(*leaf, pki.mesh_ca, peers=[SERVER]),
        "public server": public_server_context(*leaf),
        "public client": public_client_context(pki.root.certificate),
        "etcd client": etcd_client_context(pki.mesh_ca),
    }


def test_every_role_has_the_one_policy(pki: Pki) -> None:
    ciphers = None
    for role, context in _every_role(pki).items():
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2, role
        assert context.options & ssl.OP_NO_COMPRESSION, role
        assert context.options & ssl.OP_NO_RENEGOTIATION, role
        names = [c["name"] for c in context.get_ciphers()]
        assert ciphers is None or names == ciphers, role
        ciphers = names


def test_tls_1_2_offers_aead_suites_only(pki: Pki) -> None:
    """No CBC suite on TLS 1.2: every suite offered is AES-GCM or ChaCha20-Poly1305, with
    forward secrecy."""
    for role, context in _every_role(pki).items():
        suites = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert suites, role
        for suite in suites:
            assert suite["aead"], (role, suite["name"])
            assert suite["kea"] in ("kx-ecdhe", "kx-dhe"), (role, suite["name"])


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_below_tls_1_2_no_handshake(pki: Pki, version: ssl.TLSVersion) -> None:
    def old_client() -> ssl.SSLContext:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.set_ciphers("ALL:@SECLEVEL=0")
        client.minimum_version = client.maximum_version = version
        return client

    leaf = pki.leaf("page")
    lax = public_server_context(*leaf)  # the control: this OpenSSL can still speak it
    lax.minimum_version = version
    lax.set_ciphers("ALL:@SECLEVEL=0")
    try:
        handshake(old_client(), lax)
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL does not speak {version.name} at all")
    with pytest.raises(ssl.SSLError):
        handshake(old_client(), public_server_context(*leaf))
