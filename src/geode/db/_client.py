"""The client side: TLS for a service that connects to a Geode database."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

from geode.pki import SpiffeId
from geode.runtime import MeshSSLContext

__all__ = ["client_ssl_context"]


def client_ssl_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    *,
    ca_file: str | os.PathLike[str],
    servers: Iterable[str | SpiffeId] | None,
) -> MeshSSLContext:
    """TLS for a database client: presents the client certificate the database's users are
    bound to (a certificate secret of the manifest), verifies the server against the mesh CA
    in ``ca_file`` (``GEODE_CA_FILE``), and accepts only a server whose SPIFFE id is one of
    ``servers`` (``None``: any service of the mesh). Host names are not checked: the SPIFFE
    id is the identity. Usable with PyMySQL (``ssl=``) and other clients taking a context."""
    context = MeshSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the mesh CA is the anchor
    context.load_verify_locations(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    context.expect_peers(servers)
    return context
