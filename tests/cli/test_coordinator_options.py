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


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (("--tee", "tdx", "--platform-key", "K"), {"tee": "tdx", "platform_key": "K"}),
        (
            ("--sealing-key", "K", "--trust-platform-key", "K"),
            {"sealing_key": "K", "trusted_platform_keys": ["K"]},
        ),
        (("--simulation", "--tee", "sev-snp"), {"simulation": True, "tee": "sev-snp"}),
        (("--tee", "tdx", "--tee-certs", "K"), {"tee": "tdx", "tee_certs": "K"}),
    ],
)
def test_the_command_refuses_what_the_config_refuses_in_its_words(
    args: tuple[str, ...], config: dict[str, object], tmp_path: Path
) -> None:
    """One rule for the option combinations (``CoordinatorConfig.check``): the command's usage
    error (exit 2) is the config's message, before anything starts."""
    from click.testing import CliRunner

    from geode.cli import cli
    from geode.coordinator import CoordinatorConfig
    from geode.errors import GeodeError

    key = tmp_path / "K"
    key.write_bytes(b"a key file")
    named = [str(key) if a == "K" else a for a in args]
    paths = {
        k: ([key] if isinstance(v, list) else key) if v in ("K", ["K"]) else v
        for k, v in config.items()
    }
    with pytest.raises(GeodeError) as refused:
        CoordinatorConfig(data_dir=tmp_path / "data", **paths).check()  # type: ignore[arg-type]
    result = CliRunner().invoke(cli, ["coordinator", "--data-dir", str(tmp_path / "data"), *named])
    assert result.exit_code == 2, result.output
    assert str(refused.value) in " ".join(result.output.split())
    assert not (tmp_path / "data").exists()
