"""``geode db serve`` under ``geode run`` starts the ``mariadbd`` the bundle's lock names, checked
again; outside ``geode run`` it finds MariaDB's programs as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from geode.db._mariadb import MariaDB
from geode.errors import LaunchError
from geode.runtime import BUNDLE_LOCK_ENV, LOCK_FILE, write_lock

NAMES = ("mariadbd", "mariadb-install-db", "mariadb")


def _native(path: Path, text: str) -> None:
    """A native (ELF) executable of its own content: only those can be locked."""
    path.write_bytes(Path("/bin/true").read_bytes() + text.encode())
    path.chmod(0o755)


def _programs(directory: Path, text: str) -> Path:
    directory.mkdir()
    for name in NAMES:
        _native(directory / name, text)
    return directory


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """System programs (``bin_dir``), the locked server's directory, and a bundle."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return _programs(tmp_path / "system", "system"), _programs(tmp_path / "locked", "l"), bundle


def test_outside_geode_run_the_programs_are_found_as_before(
    dirs: tuple[Path, Path, Path],
) -> None:
    system, _locked, _bundle = dirs
    found = MariaDB.locate(system, environ={})
    assert found == MariaDB(system / "mariadbd", system / "mariadb-install-db", system / "mariadb")


def test_under_geode_run_the_locked_server_is_started(dirs: tuple[Path, Path, Path]) -> None:
    system, locked, bundle = dirs
    write_lock(bundle, ["mariadbd"], path=str(locked))
    environ = {BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)}
    found = MariaDB.locate(system, environ=environ)
    assert found.server == locked / "mariadbd"
    assert found.install_db == system / "mariadb-install-db"  # not locked: found as before

    _native(locked / "mariadbd", "changed")
    with pytest.raises(LaunchError, match=r"mariadbd at .* has changed since it was locked"):
        MariaDB.locate(system, environ=environ)


def test_under_geode_run_a_lock_without_the_server_is_refused(
    dirs: tuple[Path, Path, Path],
) -> None:
    system, locked, bundle = dirs
    write_lock(bundle, ["mariadb"], path=str(locked))
    environ = {BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)}
    with pytest.raises(LaunchError) as refused:
        MariaDB.locate(system, environ=environ)
    assert str(refused.value) == (
        "mariadbd is outside the bundle: lock it with 'geode bundle lock DIR mariadbd'"
    )
