"""The operator's switch: the same bookstore with a permissive policy lets the thief steal, so
what stopped it before was the policy, not a broken thief."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bookstore_support import GeodeUp, deployment_copy
from tests.db_support import require_mariadb

pytestmark = pytest.mark.e2e

OFFSET = 700  # apart from test_bookstore's 500 and the relays


def test_a_permissive_policy_lets_the_thief_steal(tmp_path: Path) -> None:
    require_mariadb()
    deployment = deployment_copy(tmp_path / "deployment", port_offset=OFFSET)
    up = GeodeUp(deployment, tmp_path / "run", "--permissive", port_offset=OFFSET)
    try:
        up.wait_until("every service started", lambda: "Ctrl-C stops everything" in up.output())
        up.wait_until("the thief steals", lambda: up.raw("bookthief")["stolen"] > 0)
        assert "PERMISSIVE" in up.output()
    finally:
        code = up.stop()
    assert code == 0, up.output()
    assert up.left_behind() == []
