"""The lock: the system executables a bundle needs, by name, path and SHA-256.

A bundle names the system executables it needs (an interpreter, ``mariadbd``) in ``geode.lock``
at its root, a JSON document that is part of the bundle and so of its measurement::

    {"version": 1,
     "executables": {"python3": {"path": "/usr/bin/python3.11", "sha256": "<64 hex>",
                                 "interpreter": true, "target": "/usr/bin/python3.11"}}}

``path`` is the absolute path as found on ``$PATH`` when the lock is written (``write_lock``,
``geode bundle lock``), and may be a symbolic link: a virtual environment's ``python3`` is one,
and running the file it resolves to would lose the environment's packages. ``target`` is the
file ``path`` resolved to then, and ``sha256`` that file's hash. The file must be a native (ELF)
executable: a script (a pyenv shim, a wrapper) would run an interpreter its ``#!`` line names,
which nothing locks, so it is refused when locked and when checked. Checking
(``check_executables``: before the activation, and again right before the command starts)
resolves ``path`` again, refuses it when it now resolves elsewhere than ``target``, then reads
the header and the hash through one descriptor; a path that no longer resolves to a regular
executable file, or a different hash, refuses the launch. What is locked is the executables'
content only: not a venv's ``pyvenv.cfg``, its ``.pth`` files or site-packages, the standard
library or shared libraries. ``interpreter`` says the executable's first operand is a script,
which must then resolve inside the copy too. ``program`` (default false) says a locked
executable that is not an interpreter may be the command of ``geode run`` itself: without it,
such an executable is there for the bundle's own use (``mariadbd``, started by
``geode db serve``) and ``geode run`` refuses it as the command. The lock is read strictly: an
unknown or missing field, a path that is not absolute, a hash that is not 64 lower-case hex
digits or a ``version`` other than 1 is a ``LaunchError`` naming ``geode.lock`` and the field.

Services that start locked executables themselves (``geode db serve`` starting ``mariadbd``)
find them through ``$GEODE_BUNDLE_LOCK`` (``locked_executable``), which re-checks the hash.
Staging the bundle is ``_staging``; mapping a command onto the staged copy is ``_command``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geode._files import replace_file
from geode.errors import LaunchError

__all__ = [
    "BUNDLE_DIR_ENV",
    "BUNDLE_LOCK_ENV",
    "LOCK_FILE",
    "BundleLock",
    "LockedExecutable",
    "check_executables",
    "locked_executable",
    "read_lock",
    "require_native",
    "write_lock",
]

LOCK_FILE = "geode.lock"
# Set by ``geode run`` for the command: the staged copy's lock file, and the staged copy.
BUNDLE_LOCK_ENV = "GEODE_BUNDLE_LOCK"
BUNDLE_DIR_ENV = "GEODE_BUNDLE_DIR"
_LOCK_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ELF = b"\x7fELF"
_HEADER = 128  # bytes read to tell a script (#!) from a native executable
_DEFAULT_INTERPRETERS = re.compile(r"python[0-9.]*|sh|bash|dash|zsh|ksh|node|perl|ruby")


@dataclass(frozen=True)
class LockedExecutable:
    """A system executable a bundle needs: its absolute path as found on ``$PATH`` (possibly a
    symbolic link), the file that path resolved to when it was locked (``target``), and that
    file's SHA-256."""

    name: str
    path: Path
    sha256: str
    interpreter: bool = False
    target: Path = field(kw_only=True)
    program: bool = field(default=False, kw_only=True)

    def check(self) -> Path:
        """Resolve the path now, and hash the file it resolves to through the descriptor its
        header was read from; ``LaunchError`` unless it still resolves to the locked target, a
        regular executable native (ELF) file with the locked SHA-256. Returns the locked
        (unresolved) path, the one to execute."""
        resolved = os.path.realpath(self.path)
        if resolved != str(self.target):
            raise LaunchError(
                f"{self.name} at {self.path} now resolves to {resolved}, "
                f"not to {self.target} as locked"
            )
        try:
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LaunchError(
                f"{self.name} is locked at {self.path}, which no longer exists"
            ) from None
        except OSError as exc:
            raise LaunchError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not os.access(resolved, os.X_OK):
                raise LaunchError(
                    f"{self.name} is locked at {self.path}, which is no longer an executable file"
                )
            require_native(f"{self.name} at {self.path}", os.pread(fd, _HEADER, 0))
            digest = _sha256_fd(fd, self.path)
        finally:
            os.close(fd)
        if digest != self.sha256:
            raise LaunchError(
                f"{self.name} at {self.path} has changed since it was locked "
                f"(its SHA-256 is not the one in {LOCK_FILE})"
            )
        return self.path


def require_native(shown: str, header: bytes) -> None:
    """``LaunchError`` unless ``header`` (a file's first bytes) is an ELF file's: a script
    (``#!``) runs an interpreter that its first line names and nothing locks."""
    if header.startswith(b"#!"):
        line = header[2:].split(b"\n", 1)[0].decode(errors="replace").strip()[:80]
        raise LaunchError(f"{shown} is a script (#!{line}): lock its interpreter instead")
    if not header.startswith(_ELF):
        raise LaunchError(f"{shown} is not a native (ELF) executable: lock its interpreter instead")


def _sha256_fd(fd: int, shown: Path) -> str:
    digest = hashlib.sha256()
    offset = 0
    try:
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise LaunchError(f"cannot read {shown}: {exc.strerror}") from None
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    """The SHA-256 of the native executable ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return _sha256_fd(fd, path)
    finally:
        os.close(fd)


def _is_bare_name(name: str) -> bool:
    """A name ``$PATH`` is searched for: not empty, no ``/``, not ``.`` or ``..``, and no NUL or
    other control character (it is shown in one-line messages and passed to the system)."""
    return (
        bool(name)
        and "/" not in name
        and name not in (".", "..")
        and not any(ord(char) < 0x20 or ord(char) == 0x7F for char in name)
    )


def _lock_field_error(source: str, field: str, problem: str) -> LaunchError:
    return LaunchError(f"{source}: {field}: {problem}")


@dataclass(frozen=True)
class BundleLock:
    """A bundle's ``geode.lock``: its system executables by name (empty: none needed)."""

    executables: Mapping[str, LockedExecutable]

    def to_json(self) -> dict[str, object]:
        return {
            "version": _LOCK_VERSION,
            "executables": {
                name: {
                    "path": str(entry.path),
                    "sha256": entry.sha256,
                    "interpreter": entry.interpreter,
                    "target": str(entry.target),
                    **({"program": True} if entry.program else {}),
                }
                for name, entry in sorted(self.executables.items())
            },
        }

    @classmethod
    def from_json(cls, value: object, *, source: str) -> BundleLock:
        """``LaunchError`` naming ``source`` and the field for anything malformed."""
        if not isinstance(value, dict):
            raise _lock_field_error(source, "(document)", "not a JSON object")
        unknown = sorted(set(value) - {"version", "executables"})
        if unknown:
            raise _lock_field_error(source, unknown[0], "unknown field")
        version = value.get("version")
        if type(version) is not int or version != _LOCK_VERSION:
            raise _lock_field_error(source, "version", f"must be {_LOCK_VERSION}")
        raw = value.get("executables")
        if not isinstance(raw, dict):
            raise _lock_field_error(source, "executables", "not a JSON object")
        executables: dict[str, LockedExecutable] = {}
        for name, entry in raw.items():
            field = f"executables.{name}"
            if not _is_bare_name(name):
                shown = field if name.isprintable() else f"executables.{name!r}"
                raise _lock_field_error(source, shown, "not a bare executable name")
            if not isinstance(entry, dict):
                raise _lock_field_error(source, field, "not a JSON object")
            unknown = sorted(set(entry) - {"path", "sha256", "interpreter", "target", "program"})
            if unknown:
                raise _lock_field_error(source, f"{field}.{unknown[0]}", "unknown field")
            path = entry.get("path")
            if not isinstance(path, str) or not os.path.isabs(path):
                raise _lock_field_error(source, f"{field}.path", "not an absolute path")
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise _lock_field_error(
                    source, f"{field}.sha256", "not 64 lower-case hexadecimal digits"
                )
            interpreter = entry.get("interpreter", False)
            if not isinstance(interpreter, bool):
                raise _lock_field_error(source, f"{field}.interpreter", "not true or false")
            program = entry.get("program", False)
            if not isinstance(program, bool):
                raise _lock_field_error(source, f"{field}.program", "not true or false")
            target = entry.get("target")
            if not isinstance(target, str) or not os.path.isabs(target):
                raise _lock_field_error(source, f"{field}.target", "not an absolute path")
            executables[name] = LockedExecutable(
                name, Path(path), digest, interpreter, target=Path(target), program=program
            )
        return cls(executables)


def _load_lock(lock_file: Path) -> BundleLock:
    source = str(lock_file)
    try:
        with open(lock_file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LaunchError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _lock_field_error(source, "(document)", f"not JSON ({exc})") from None
    return BundleLock.from_json(value, source=source)


def read_lock(bundle: Path) -> BundleLock:
    """The lock of ``bundle`` (an empty one when it has no ``geode.lock``)."""
    try:
        return _load_lock(bundle / LOCK_FILE)
    except FileNotFoundError:
        return BundleLock({})


def write_lock(
    bundle: Path,
    names: Sequence[str],
    *,
    interpreters: Sequence[str] = (),
    programs: Sequence[str] = (),
    path: str | None = None,
) -> BundleLock:
    """Lock the executables ``names`` (found on ``path``, default ``$PATH``; kept as found, an
    absolute path that may be a symbolic link; the file it resolves to is hashed) into
    ``bundle/geode.lock``, keeping entries already there for other names. ``interpreters``
    marks names whose first operand is a script (default: ``python*``, the shells ``sh``,
    ``bash``, ``dash``, ``zsh``, ``ksh``, and ``node``, ``perl``, ``ruby``); given, it replaces
    that guess (and its names are locked too). ``programs`` marks names ``geode run`` may run as
    the command itself (they are locked too).
    The lock is replaced atomically (``replace_file``: a crash leaves the old lock or the new
    one); ``LaunchError`` if ``geode.lock`` is a symbolic link (its target is never written).
    """
    lock_file = bundle / LOCK_FILE
    if lock_file.is_symlink():
        raise LaunchError(f"{lock_file} is a symbolic link: refused, a lock is written in place")
    existing = dict(read_lock(bundle).executables)
    wanted = list(dict.fromkeys([*names, *interpreters, *programs]))
    for name in wanted:
        if not _is_bare_name(name):
            raise LaunchError(f"{name!r} is not a bare executable name")
        found = shutil.which(name, path=path)
        if found is None:
            raise LaunchError(f"{name} is not found on $PATH")
        found_path = Path(os.path.abspath(found))
        resolved = Path(os.path.realpath(found_path))
        if not resolved.is_file():
            raise LaunchError(f"{name} at {found_path} is not a regular file")
        try:
            with open(resolved, "rb") as f:
                header = f.read(_HEADER)
        except OSError as exc:
            raise LaunchError(f"cannot read {resolved}: {exc.strerror}") from None
        require_native(f"{name} at {found_path}", header)
        if interpreters:
            interpreter = name in interpreters
        else:
            interpreter = _DEFAULT_INTERPRETERS.fullmatch(name) is not None
        existing[name] = LockedExecutable(
            name,
            found_path,
            _sha256_file(resolved),
            interpreter,
            target=resolved,
            program=name in programs,
        )
    lock = BundleLock(existing)
    text = json.dumps(lock.to_json(), indent=2) + "\n"
    try:
        replace_file(lock_file, text.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise LaunchError(f"cannot write {lock_file}: {exc.strerror}") from None
    return lock


def check_executables(lock: BundleLock) -> None:
    """Hash every locked executable again; ``LaunchError`` naming the first that is missing,
    changed, or no longer a regular executable file."""
    for _name, entry in sorted(lock.executables.items()):
        entry.check()


def locked_executable(name: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The checked path of the executable ``name`` in the lock ``$GEODE_BUNDLE_LOCK`` names, or
    ``None`` outside ``geode run`` (no such variable). ``LaunchError`` when the lock does not
    name it or its hash no longer matches."""
    lock_file = environ.get(BUNDLE_LOCK_ENV)
    if not lock_file:
        return None
    try:
        lock = _load_lock(Path(lock_file))
    except FileNotFoundError:
        raise LaunchError(f"${BUNDLE_LOCK_ENV} names {lock_file}, which does not exist") from None
    entry = lock.executables.get(name)
    if entry is None:
        raise LaunchError(
            f"{name} is outside the bundle: lock it with 'geode bundle lock DIR {name}'"
        )
    return entry.check()
