"""``geode coordinator``'s options (``--store`` and its companions, ``--collateral``): bad values
are one clear line, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import geode_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--store", "http://127.0.0.1:2379"), "expected etcd://HOST:PORT"),
        (("--store", "etcd://127.0.0.1:99999"), "a port from 1 to 65535"),
        (("--etcd-ca", "ca.pem"), "need --store etcd://"),
        (("--store", "etcd://127.0.0.1:2379", "--etcd-cert", "c.pem"), "both --etcd-cert and"),
        (("--advertise-addr", "10.0.0.1:2001"), "need --store etcd://"),
        (("--store", "etcd://127.0.0.1:2379", "--advertise-addr", "x"), "expected HOST:PORT"),
        (("--store", "etcd://127.0.0.1:2379", "--etcd-poll", "00s"), "expected a duration"),
    ],
)
def test_bad_store_options(
    args: tuple[str, ...], message: str, tmp_path: Path, geode_env: dict[str, str]
) -> None:
    result = geode_cli(
        "coordinator", "--simulation", "--data-dir", str(tmp_path / "data"), *args, env=geode_env
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["simulated=x.json", "sgx", "quantum=x.json", "sgx=/nope.json"])
def test_a_bad_collateral_option_is_one_line(value: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "geode", "coordinator", "--simulation",
         "--data-dir", str(tmp_path / "data"), "--collateral", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--collateral" in done.stderr
    assert "Traceback" not in done.stderr
