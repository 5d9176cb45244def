"""What the command line of ``geode db serve`` may name: under ``geode run`` it is the caller's,
not the measured bundle's, so extra options are tuning only and files are the bundle's or the
manifest's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from geode.db import DatabaseConfig
from geode.db._config import (
    TUNING_OPTIONS,
    RuntimeFiles,
    check_extra_options,
    common_options,
    confidential_options,
)
from geode.errors import DatabaseError


@pytest.mark.parametrize(
    "option",
    [
        "plugin_dir=/tmp/evil",
        "plugin-load=evil.so",
        "plugin_load_add=evil",
        "plugin_maturity=unknown",
        "init_connect=GRANT ALL ON *.* TO x",
        "init_file=/tmp/evil.sql",
        "init_slave=DROP DATABASE shop",
        "init_replica=DROP DATABASE shop",
        "lc_messages_dir=/tmp/evil",
        "character_sets_dir=/tmp/evil",
        "loose-tmpdir=/tmp/evil",
        "innodb_data_home_dir=/tmp/evil",
        "log_error=/tmp/log",
        "secure_file_priv=",
        "local_infile=ON",
        "enable-local-infile",
        "skip_grant_tables",
        "skip-ssl",
        "ssl=OFF",
        "require_secure_transport=OFF",
        "event_scheduler=ON",
        "skip_networking",
    ],
)
def test_options_that_load_code_files_or_sql_are_refused(option: str) -> None:
    name, _, value = option.partition("=")
    with pytest.raises(DatabaseError) as info:
        check_extra_options([(name, value)])
    message = str(info.value)
    assert repr(name) in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["plugin_dir", "init_connect", "lc_messages_dir", "init_file"])
def test_code_and_file_options_say_why(name: str) -> None:
    with pytest.raises(DatabaseError, match="from outside the measured bundle: refused"):
        check_extra_options([(name, "x")])


def test_every_option_geode_sets_is_managed(tmp_path: Path) -> None:
    """Whatever Geode writes into the option file cannot be set again, with or without a
    prefix."""
    files = RuntimeFiles(tmp_path)
    names = {
        name
        for host in ("127.0.0.1", None)
        for name, _value in [
            *common_options(tmp_path, files, host, 3306),
            *confidential_options(files, tmp_path / "c.pem", tmp_path / "k.pem"),
        ]
    }
    for name in names:
        for spelt in (name, f"loose-{name.replace('_', '-')}"):
            with pytest.raises(DatabaseError, match="managed by Geode"):
                check_extra_options([(spelt, "1")])


def test_tuning_options_pass_with_prefixes() -> None:
    check_extra_options([(name, "1") for name in sorted(TUNING_OPTIONS)])
    check_extra_options([("loose-innodb-buffer-pool-size", "1G"), ("skip-performance-schema", "")])
    with pytest.raises(DatabaseError, match="'unheard_of' is not one of the tuning options"):
        check_extra_options([("unheard_of", "1")])


def test_every_tuning_option_is_one_mariadbd_knows() -> None:
    mariadbd = shutil.which("mariadbd", path=os.pathsep.join([os.environ["PATH"], "/usr/sbin"]))
    if mariadbd is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mariadbd is not installed: .ci/run must install mariadb-server")
        pytest.skip("MariaDB is not installed")
    help_text = subprocess.run(
        [mariadbd, "--no-defaults", "--verbose", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout
    # The table of variables and their values follows a line of dashes.
    table = help_text.rsplit("\n-----", 1)[1].splitlines()[1:]
    known = {line.split()[0].replace("-", "_") for line in table if line.strip()}
    assert len(known) > 300
    assert known >= TUNING_OPTIONS, sorted(TUNING_OPTIONS - known)


@pytest.fixture
def activation(tmp_path: Path) -> dict[str, str]:
    """A ``geode run`` environment: the manifest's files with the key, and a staged bundle."""
    secrets, bundle = tmp_path / "secrets", tmp_path / "bundle"
    secrets.mkdir()
    bundle.mkdir()
    (secrets / "db.key").write_text("ab" * 32)
    return {
        "GEODE_CERT_FILE": str(tmp_path / "cert.pem"),
        "GEODE_KEY_FILE": str(tmp_path / "key.pem"),
        "GEODE_CA_FILE": str(tmp_path / "ca.pem"),
        "GEODE_SPIFFE_ID": "spiffe://t.local/service/db",
        "GEODE_SECRETS_DIR": str(secrets),
        "GEODE_BUNDLE_DIR": str(bundle),
    }


def _config(env: dict[str, str], **arguments: str) -> DatabaseConfig:
    return DatabaseConfig.from_activation(
        Path(env["GEODE_SECRETS_DIR"], "data"), environ=env, **arguments
    )


def test_under_geode_run_the_files_are_the_bundles_or_the_manifests(
    activation: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets, bundle = Path(activation["GEODE_SECRETS_DIR"]), Path(activation["GEODE_BUNDLE_DIR"])
    (bundle / "init.sql").write_text("CREATE DATABASE bundled;\n")
    (bundle / "sql").mkdir()
    (bundle / "sql" / "more.sql").write_text("CREATE DATABASE more;\n")
    (bundle / "keys").mkdir()
    (bundle / "keys" / "db.key").write_text("cd" * 32)
    monkeypatch.chdir(tmp_path)  # not the bundle: the bundle is found by $GEODE_BUNDLE_DIR
    assert _config(activation).init_sql == "CREATE DATABASE bundled;\n"
    assert _config(activation, init_sql_file="sql/more.sql").init_sql == "CREATE DATABASE more;\n"
    assert _config(activation, init_sql_file=str(bundle / "init.sql")).init_sql is not None
    (secrets / "init.sql").write_text("CREATE DATABASE manifest;\n")
    assert _config(activation, init_sql_file="init.sql").init_sql == "CREATE DATABASE manifest;\n"
    assert _config(activation).key == b"\xab" * 32


def test_under_geode_run_the_key_is_a_file_of_the_manifest_only(
    activation: dict[str, str],
) -> None:
    """The bundle is measured, not secret: a 64-hex file in it is not a key."""
    bundle = Path(activation["GEODE_BUNDLE_DIR"])
    (bundle / "keys").mkdir()
    (bundle / "keys" / "db.key").write_text("cd" * 32)
    with pytest.raises(DatabaseError) as refused:
        _config(activation, key_file=str(bundle / "keys" / "db.key"))
    assert str(refused.value) == (
        f"--key-file {bundle}/keys/db.key: under geode run it must be a file of the manifest "
        "($GEODE_SECRETS_DIR): the bundle is measured, not secret"
    )
    assert _config(activation, key_file="db.key").key == b"\xab" * 32


def test_under_geode_run_a_key_from_a_variable_is_refused(activation: dict[str, str]) -> None:
    """The caller's environment reaches the service: its variables are not the manifest's."""
    activation["CALLER_KEY"] = "00" * 32
    with pytest.raises(DatabaseError) as refused:
        _config(activation, key_env="CALLER_KEY")
    assert str(refused.value) == (
        "--key-env CALLER_KEY: under geode run the database key must be a file of the "
        "manifest: use --key-file"
    )
    del activation["GEODE_BUNDLE_DIR"]
    assert _config(activation, key_env="CALLER_KEY").key == bytes(32)


@pytest.mark.parametrize("argument", ["init_sql_file", "key_file"])
@pytest.mark.parametrize("where", ["absolute", "dotdot", "link", "linked_dir"])
def test_under_geode_run_a_file_from_elsewhere_is_refused(
    activation: dict[str, str], tmp_path: Path, argument: str, where: str
) -> None:
    bundle = Path(activation["GEODE_BUNDLE_DIR"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    evil = outside / "evil"
    evil.write_text("ab" * 32 if argument == "key_file" else "GRANT ALL ON *.* TO 'x'@'%';\n")
    (bundle / "evil").symlink_to(evil)
    (bundle / "dir").symlink_to(outside, target_is_directory=True)
    name = {
        "absolute": str(evil),
        "dotdot": "../elsewhere/evil",  # relative: in the manifest's files, then up and out
        "link": str(bundle / "evil"),
        "linked_dir": str(bundle / "dir" / "evil"),
    }[where]
    option = "--init-sql" if argument == "init_sql_file" else "--key-file"
    with pytest.raises(DatabaseError, match=f"^{option} .*: under geode run it must be a file of"):
        _config(activation, **{argument: name})


def test_a_bundle_link_to_elsewhere_is_not_taken_as_the_default_init_sql(
    activation: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "evil.sql").write_text("GRANT ALL ON *.* TO 'x'@'%';\n")
    (Path(activation["GEODE_BUNDLE_DIR"]) / "init.sql").symlink_to(tmp_path / "evil.sql")
    with pytest.raises(DatabaseError, match=r"^--init-sql "):
        _config(activation)


def test_under_geode_run_mariadb_programs_from_elsewhere_are_refused(
    activation: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(DatabaseError, match=r"^--mariadb-bin .*: under geode run the MariaDB"):
        DatabaseConfig.from_activation(tmp_path / "data", environ=activation, mariadb_bin=tmp_path)


def test_outside_geode_run_any_file_is_read_as_before(
    activation: dict[str, str], tmp_path: Path
) -> None:
    del activation["GEODE_BUNDLE_DIR"]
    (tmp_path / "elsewhere.sql").write_text("CREATE DATABASE anywhere;\n")
    (tmp_path / "elsewhere.key").write_text("ef" * 32)
    config = DatabaseConfig.from_activation(
        tmp_path / "data",
        environ=activation,
        init_sql_file=str(tmp_path / "elsewhere.sql"),
        key_file=str(tmp_path / "elsewhere.key"),
        mariadb_bin=tmp_path,
    )
    assert config.init_sql == "CREATE DATABASE anywhere;\n"
    assert config.key == b"\xef" * 32
