"""``geode db serve`` under ``geode run`` starts the ``mariadbd`` the bundle's lock names, checked
again; outside ``geode run`` it finds MariaDB's programs as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geode.db import _mariadb
from geode.db._mariadb import MariaDB
from geode.errors import DatabaseError, LaunchError
from geode.runtime import BUNDLE_LOCK_ENV, LOCK_FILE, write_lock
from tests.support import native_executable

NAMES = ("mariadbd", "mariadb-install-db", "mariadb")


def _programs(directory: Path, text: str) -> Path:
    directory.mkdir()
    for name in NAMES:
        native_executable(directory / name, text)
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
    found = MariaDB.locate(environ=environ)
    assert found.server == locked / "mariadbd"

    native_executable(locked / "mariadbd", "changed")
    with pytest.raises(LaunchError, match=r"mariadbd at .* has changed since it was locked"):
        MariaDB.locate(environ=environ)
    with pytest.raises(DatabaseError, match=r"^--mariadb-bin .*: under geode run the MariaDB"):
        MariaDB.locate(system, environ=environ)


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A system directory (``TRUSTED_DIRS``) with the unlocked programs, owned (as far as the
    check knows) by root: the user running the test."""
    directory = _programs(tmp_path / "usr-bin", "trusted")
    monkeypatch.setattr(_mariadb, "TRUSTED_DIRS", (str(directory),))
    monkeypatch.setattr(_mariadb, "_ROOT_UID", os.getuid())
    return directory


def test_under_geode_run_unlocked_programs_come_from_the_system_not_the_callers_path(
    dirs: tuple[Path, Path, Path], trusted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, locked, bundle = dirs  # system: a directory on the caller's PATH
    monkeypatch.setenv("PATH", f"{system}{os.pathsep}{os.environ.get('PATH', '')}")
    write_lock(bundle, ["mariadbd"], path=str(locked))
    found = MariaDB.locate(environ={BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)})
    assert found.server == locked / "mariadbd"
    assert (found.install_db, found.client) == (trusted / "mariadb-install-db", trusted / "mariadb")
    # Outside geode run the caller's PATH comes first, as before.
    assert MariaDB.locate(environ={}).install_db == system / "mariadb-install-db"


@pytest.mark.parametrize(
    ("where", "weakness"),
    [("directory", "owner"), *((w, b) for w in ("file", "directory") for b in ("group", "others"))],
)
def test_under_geode_run_a_program_others_could_change_is_refused(
    dirs: tuple[Path, Path, Path],
    trusted: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    weakness: str,
) -> None:
    _system, locked, bundle = dirs
    write_lock(bundle, ["mariadbd", "mariadb"], path=str(locked))
    weak = trusted / "mariadb-install-db" if where == "file" else trusted
    if weakness == "owner":
        monkeypatch.setattr(_mariadb, "_ROOT_UID", os.getuid() + 1)  # the directory comes first
        reason = "is not owned by root"
    else:
        weak.chmod(weak.stat().st_mode | (0o020 if weakness == "group" else 0o002))
        reason = "is writable by group or others"
    with pytest.raises(DatabaseError) as refused:
        MariaDB.locate(environ={BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)})
    assert str(refused.value) == (
        f"mariadb-install-db at {trusted}/mariadb-install-db: {weak} {reason}: under geode run "
        "only a root-owned system copy is run"
    )


@pytest.mark.skipif(
    not Path("/usr/bin/mariadb-install-db").is_file() and os.environ.get("CI") != "true",
    reason="MariaDB is not installed",
)
def test_under_geode_run_the_distributions_install_script_is_found(
    dirs: tuple[Path, Path, Path],
) -> None:
    _system, locked, bundle = dirs
    write_lock(bundle, ["mariadbd"], path=str(locked))
    found = MariaDB.locate(environ={BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)})
    assert found.install_db == Path("/usr/bin/mariadb-install-db")


def test_under_geode_run_a_lock_without_the_server_is_refused(
    dirs: tuple[Path, Path, Path],
) -> None:
    _system, locked, bundle = dirs
    write_lock(bundle, ["mariadb"], path=str(locked))
    environ = {BUNDLE_LOCK_ENV: str(bundle / LOCK_FILE)}
    with pytest.raises(LaunchError) as refused:
        MariaDB.locate(environ=environ)
    assert str(refused.value) == (
        "mariadbd is outside the bundle: lock it with 'geode bundle lock DIR mariadbd'"
    )


def test_the_install_script_does_not_run_programs_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mariadb-install-db runs ``./extra/my_print_defaults`` when the working directory (the
    staged bundle, under geode run) has one: it runs in the option file's directory instead."""
    script = tmp_path / "mariadb-install-db"
    script.write_text('#!/bin/sh\npwd > "$(dirname "$0")/ran-in"\n')
    script.chmod(0o755)
    private = tmp_path / "runtime"
    private.mkdir()
    (private / "my.cnf").write_text("[mariadbd]\n")
    monkeypatch.chdir(tmp_path)
    MariaDB(Path("/bin/false"), script, Path("/bin/false")).install(
        private / "my.cnf", "root", {"PATH": os.defpath}
    )
    assert (tmp_path / "ran-in").read_text().strip() == str(private)
