"""The Coordinator's manifest worker keeps one validation at a time even when a caller leaves:
a cancelled check holds its place until its worker ends (else a client that posts a bomb and
hangs up, again and again, would have several workers at once)."""

from __future__ import annotations

import asyncio

import pytest

from geode.coordinator import DEFAULT_MANIFEST_BUDGET, ManifestWorker
from geode.errors import ManifestError
from geode.manifest import MAX_MANIFEST_TEMPLATES
from tests.support.bombs import template_manifest

# Within every bound, and a second or more of work in the worker.
COSTLY = template_manifest(argv=[f"--n={{{{ {i} }}}}" for i in range(MAX_MANIFEST_TEMPLATES - 1)])


def test_a_cancelled_check_keeps_its_place_until_its_worker_ends() -> None:
    async def main() -> None:
        worker = ManifestWorker(DEFAULT_MANIFEST_BUDGET)
        worker.start()
        first = asyncio.create_task(worker.check(COSTLY))
        await asyncio.sleep(0.1)  # the worker is validating
        first.cancel()
        await asyncio.sleep(0.1)
        assert not first.done()  # still waiting for its worker, in its place
        second = asyncio.create_task(worker.check(b"version: 1\n"))
        await asyncio.sleep(0.05)
        assert not second.done()
        await asyncio.wait([first])
        assert first.cancelled()
        with pytest.raises(ManifestError, match="field required"):  # refused once its turn came
            await second

    asyncio.run(main())
