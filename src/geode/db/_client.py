"""The client side: TLS for a service that connects to a Geode database."""

from __future__ import annotations

import os
from collections.abc import Iterable

from geode.pki import SpiffeId
from geode.protocol import MeshSSLContext, mesh_client_context

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
    return mesh_client_context(cert_file, key_file, ca_file, peers=servers)
