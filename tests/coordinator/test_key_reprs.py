"""Dataclasses that hold the Coordinator's keys keep them out of ``repr``: a repr ends up in
logs, tracebacks and debugger output."""

from __future__ import annotations

import base64
from pathlib import Path

from geode.attestation import TrustAnchors
from geode.coordinator import CoordinatorConfig
from geode.coordinator._attesting import simulated
from geode.coordinator._state import CoordinatorState, StoredSecret


def _shows(text: str, secret: bytes) -> bool:
    return any(
        form in text
        for form in (repr(secret), secret.hex(), base64.b64encode(secret).decode(), str(secret))
    )


def test_attesting_repr_shows_no_sealing_key(tmp_path: Path) -> None:
    config = CoordinatorConfig(
        data_dir=tmp_path / "data",
        tee="simulated",
        sealing_key=tmp_path / "sealing.key",
        platform_key=tmp_path / "platform.key",
    )
    attesting = simulated(config, TrustAnchors())
    assert len(attesting.sealing_key) >= 16
    assert not _shows(repr(attesting), attesting.sealing_key)


def test_state_and_secret_reprs_show_no_keys() -> None:
    root, mesh, cluster, value, private = (bytes([n]) * 32 for n in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5))
    secret = StoredSecret(value=value, certificate=b"CERT", private_key=private)
    state = CoordinatorState(
        root_key=root,
        root_certificate=b"ROOTCERT",
        mesh_key=mesh,
        mesh_certificate=b"MESHCERT",
        created_at="now",
        secrets={"s": secret},
        cluster_key=cluster,
    )
    text = repr(state)
    assert "ROOTCERT" in text
    for key in (root, mesh, cluster, value, private):
        assert not _shows(text, key)
