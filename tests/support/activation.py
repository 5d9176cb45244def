"""A made-up ``Activation`` for the launcher's unit tests: real keys and a real mesh CA chain,
no Coordinator."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from geode.pki import CertificateAuthority, LeafParams
from geode.runtime import Activation


def fake_activation(
    files: Mapping[str, bytes] | None = None,
    env: Mapping[str, bytes] | None = None,
    argv: Sequence[bytes] = (),
) -> Activation:
    """An activation of ``spiffe://t/service/web`` with ``files``, ``env`` and ``argv``."""
    root = CertificateAuthority.create_root()
    mesh = root.create_intermediate("mesh")
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = mesh.issue(LeafParams(key.public_key(), "id", lifetime=datetime.timedelta(hours=1)))
    return Activation(
        instance_id="0123456789",
        spiffe_id="spiffe://t/service/web",
        private_key=key,
        certificate_chain=[leaf, mesh.certificate],
        mesh_ca=mesh.certificate,
        root_ca=root.certificate,
        files=dict(files or {}),
        env=dict(env or {}),
        argv=list(argv),
        secrets={},
    )
