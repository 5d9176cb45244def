"""Fixtures of the end-to-end tests on fake TEE platforms (``tests.support.tee_coordinator``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.tee_coordinator import TeeTestbed

MakeTestbed = Callable[[str], TeeTestbed]


@pytest.fixture(scope="module")
def make_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeTestbed]:
    """Factory: ``make_testbed(kind)`` creates a fake ``sev-snp``, ``tdx`` or ``sgx`` platform
    for this module; every Coordinator started on it is stopped after the module's tests."""
    beds: list[TeeTestbed] = []

    def make(kind: str) -> TeeTestbed:
        bed = TeeTestbed(tmp_path_factory.mktemp(kind), kind)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.stop()
