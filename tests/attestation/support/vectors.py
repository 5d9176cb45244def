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
import os
from pathlib import Path

import pytest

__all__ = ["VECTORS", "read_vector", "requires_vectors"]

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
