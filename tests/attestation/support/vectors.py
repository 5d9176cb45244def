"""Real TEE evidence from public projects (``../shared/vectors``, see its SOURCES.txt).

The vectors are read where they are, never copied into the project. The folder is
``$GEODE_VECTORS``, else ``../shared/vectors`` beside the repository, else ``/work/shared/vectors``;
tests that need it skip, with the reason shown, when it is absent -- except in CI
(``CI=true``), which always has it: there they fail. Every file read is checked against the
folder's SHA256SUMS, so a test never runs on a changed vector.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pytest

__all__ = ["VECTORS", "gotdx_collateral", "read_vector", "requires_vectors"]

_REPO = Path(__file__).resolve().parents[3]


def _locate() -> Path | None:
    candidates = [os.environ.get("GEODE_VECTORS"), _REPO.parent / "shared" / "vectors"]
    candidates.append("/work/shared/vectors")
    for candidate in candidates:
        if candidate and (Path(candidate) / "SHA256SUMS").is_file():
            return Path(candidate)
    return None


VECTORS = _locate()
_ABSENT = "test vectors absent (set GEODE_VECTORS to ../shared/vectors)"
_IN_CI = os.environ.get("CI") == "true"
# In CI the tests run without the folder too, and fail in ``read_vector``.
requires_vectors = pytest.mark.skipif(VECTORS is None and not _IN_CI, reason=_ABSENT)


@functools.cache
def _sums() -> dict[str, str]:
    assert VECTORS is not None
    lines = (VECTORS / "SHA256SUMS").read_text().splitlines()
    return {
        name.strip(): digest for digest, name in (line.split(None, 1) for line in lines if line)
    }


@functools.cache
def read_vector(name: str) -> bytes:
    """The bytes of a vector, checked against SHA256SUMS (skips when the folder is absent, fails
    in CI)."""
    if VECTORS is None:
        if _IN_CI:
            pytest.fail(_ABSENT)
        pytest.skip(_ABSENT)
    data = (VECTORS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == _sums()[name], f"{name} differs from SHA256SUMS"
    return data


def gotdx_collateral() -> bytes:
    """go-tdx-guest's PCS responses (the ``{"tcbInfo": ..., "signature": ...}`` form, signed over
    the text as served), with the TCB signing chain of a dcap-qvl collateral file (the same key;
    go-tdx-guest's own chain is not among the vectors)."""
    chains = json.loads(read_vector("sgx_v3_dcapqvl.collateral.json"))
    doc = {
        "tcb_info": read_vector("tdx_v4_gotdx_spr.tcbinfo_response.json").decode(),
        "qe_identity": read_vector("tdx_v4_gotdx_spr.qeidentity_response.json").decode(),
        "tcb_info_issuer_chain": chains["tcb_info_issuer_chain"],
        "qe_identity_issuer_chain": chains["qe_identity_issuer_chain"],
        "root_ca_crl": read_vector("intel_rootca.crl.2023.der").hex(),
        "pck_crl": read_vector("tdx_v4_gotdx_spr.pckcrl.der").hex(),
    }
    return json.dumps(doc).encode()
