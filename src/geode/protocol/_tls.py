"""TLS for a client of the Coordinator (operators, relying parties, instances activating).

Only the deployment's root certificate is trusted, and the peer must be the Coordinator itself
(``check_coordinator_peer``). Not verifying the Coordinator at all is possible only by saying
so: ``insecure=True`` (first contact, when the root is not known yet, and debugging).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from cryptography import x509

from geode.errors import ClientError
from geode.pki import COORDINATOR_URI, certificate_pem, uri_sans

__all__ = ["ClientIdentity", "check_coordinator_peer", "coordinator_client_context"]

ClientIdentity = tuple[Path, Path]  # a user's certificate and private key, PEM files


def coordinator_client_context(
    root: x509.Certificate | None,
    identity: ClientIdentity | None = None,
    *,
    insecure: bool = False,
) -> ssl.SSLContext:
    """TLS to a Coordinator: only ``root`` is trusted. ``insecure=True`` (and no root) verifies
    nothing; a missing root without it is a ``ClientError``. ``identity`` is the user's
    certificate and key, sent when the Coordinator asks."""
    if insecure and root is not None:
        raise ValueError("give a root to verify against, or insecure=True, not both")
    if root is None and not insecure:
        raise ClientError("no trusted root for the Coordinator (pass insecure=True to not verify)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=certificate_pem(root))
    if identity is not None:
        cert_file, key_file = identity
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                f"cannot use the client certificate {cert_file} with key {key_file}: {exc}"
            ) from None
    return context


def check_coordinator_peer(response: httpx.Response) -> None:
    """Refuse a TLS peer that chains to the root but is not the Coordinator itself.

    The root also issues certificates that services and secret holders own; only the
    Coordinator's carries ``COORDINATOR_URI``.
    """
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    # The low-level _ssl socket httpcore hands out takes the flag positionally only.
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    if not der or COORDINATOR_URI not in uri_sans(x509.load_der_x509_certificate(der)):
        raise ClientError(
            "the server's certificate chains to the deployment root but is not the "
            "Coordinator's: refusing to talk to it"
        )
