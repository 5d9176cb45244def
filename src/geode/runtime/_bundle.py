"""What ``geode run`` runs is what it measured: the bundle is staged, measured, and the command
resolved inside the staged copy.

Staging
-------
``stage_bundle`` copies the bundle into a private directory (0700) of the runtime directory,
never following a symbolic link out of it, and measures the copy (``measure_bundle``); the
activation uses that measurement and the command runs from the copy (its working directory), so
changing the original after the launch changes nothing that runs. The copy is removed when the
launcher exits (and by the next launcher, when one was killed outright: ``_leftovers``).

The layout is ``<runtime dir>/geode-bundle-XXXXXXXX/`` (0700) holding the launcher's record
``launcher.state`` (``_leftovers.LauncherRecord``, locked for the launcher's life) and the copy,
``bundle/``: directories 0700, files 0700 or 0600 (execute bits kept, nothing readable by
others). The copy is made with ``os.scandir``, never following a link: a relative link that
stays inside the bundle is copied as a link, an absolute one or one that leads out is refused,
and so is a special file. ``__pycache__/`` and ``*.pyc`` are not copied: they are not measured,
so they must not run.

The lock file
-------------
A bundle names the system executables it needs (an interpreter, ``mariadbd``) in ``geode.lock``
at its root, a JSON document that is part of the bundle and so of its measurement::

    {"version": 1,
     "executables": {"python3": {"path": "/usr/bin/python3.11", "sha256": "<64 hex>",
                                 "interpreter": true}}}

``path`` is the absolute path as found on ``$PATH`` when the lock is written (``write_lock``,
``geode bundle lock``), and may be a symbolic link: a virtual environment's ``python3`` is one,
and running the file it resolves to would lose the environment's packages. ``sha256`` is of the
file the path resolves to; checking it (``check_executables``, before the command starts)
resolves the path again, hashes that file and compares, and a path that no longer resolves to a
regular executable file, or a different hash, refuses the launch. ``interpreter`` says the
executable's first operand is a script, which must then resolve inside the copy too. The lock is
read strictly: an unknown field, a path that is not absolute, a hash that is not 64 lower-case
hex digits or a ``version`` other than 1 is a ``LaunchError`` naming ``geode.lock`` and the
field.

Resolving the command
---------------------
``resolve_command`` maps the command's argv onto the staged copy:

- a program given as a path (``./app``, ``bin/serve``) must resolve inside the copy;
- a bare name is a file at the copy's root, else an executable of the lock (run by its locked
  absolute path, so ``$PATH`` cannot substitute it), else refused;
- ``geode`` names the running Geode itself (``sys.executable -m geode``), before anything else:
  the runtime is what the platform measures, not the bundle;
- an absolute path is a locked executable's exact path, or a file inside the copy;
- an interpreter's script operand must resolve inside the copy (``python app.py``); ``-c`` and
  ``-m`` for a module outside the copy are refused.

Anything else is a ``LaunchError`` whose one line says what lies outside the bundle.
Services that start locked executables themselves (``geode db serve`` starting ``mariadbd``)
find them through ``$GEODE_BUNDLE_LOCK`` (``locked_executable``), which re-checks the hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import BundleError, measure_bundle
from geode.errors import LaunchError
from geode.runtime._launcher import default_runtime_dir
from geode.runtime._leftovers import LauncherRecord, clean_leftovers

__all__ = [
    "BUNDLE_DIR_ENV",
    "BUNDLE_LOCK_ENV",
    "LOCK_FILE",
    "STAGED_PREFIX",
    "BundleLock",
    "LockedExecutable",
    "StagedBundle",
    "check_executables",
    "locked_executable",
    "read_lock",
    "remove_staged",
    "resolve_command",
    "stage_bundle",
    "write_lock",
]

LOCK_FILE = "geode.lock"
# Set by ``geode run`` for the command: the staged copy's lock file, and the staged copy.
BUNDLE_LOCK_ENV = "GEODE_BUNDLE_LOCK"
BUNDLE_DIR_ENV = "GEODE_BUNDLE_DIR"
# Staging directories in the runtime directory: geode-bundle-XXXXXXXX/{launcher.state,bundle/}.
STAGED_PREFIX = "geode-bundle-"
_COPY = "bundle"
_LOCK_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DEFAULT_INTERPRETERS = re.compile(r"python[0-9.]*|sh|bash|node|perl|ruby")


@dataclass(frozen=True)
class LockedExecutable:
    """A system executable a bundle needs: its absolute path as found on ``$PATH`` (possibly a
    symbolic link) and the SHA-256 of the file that path resolves to."""

    name: str
    path: Path
    sha256: str
    interpreter: bool = False

    def check(self) -> Path:
        """Resolve the path now and hash that file; ``LaunchError`` unless it is still a regular
        executable file with the locked SHA-256. Returns the locked (unresolved) path."""
        resolved = Path(os.path.realpath(self.path))
        try:
            info = os.stat(resolved)
        except OSError:
            raise LaunchError(
                f"{self.name} is locked at {self.path}, which no longer exists"
            ) from None
        if not stat.S_ISREG(info.st_mode) or not os.access(resolved, os.X_OK):
            raise LaunchError(
                f"{self.name} is locked at {self.path}, which is no longer an executable file"
            )
        if _sha256_file(resolved) != self.sha256:
            raise LaunchError(
                f"{self.name} at {self.path} has changed since it was locked "
                f"(its SHA-256 is not the one in {LOCK_FILE})"
            )
        return self.path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


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
            if not name or "/" in name or name in (".", ".."):
                raise _lock_field_error(source, field, "not a bare executable name")
            if not isinstance(entry, dict):
                raise _lock_field_error(source, field, "not a JSON object")
            unknown = sorted(set(entry) - {"path", "sha256", "interpreter"})
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
            executables[name] = LockedExecutable(name, Path(path), digest, interpreter)
        return cls(executables)


@dataclass(frozen=True)
class StagedBundle:
    """A private copy of a bundle, its measurement, and its lock. ``record`` keeps the copy
    registered (locked) for the launcher's life, so that the next launcher removes it if this
    one is killed outright."""

    directory: Path
    measurement: bytes
    lock: BundleLock
    record: LauncherRecord | None = None

    @property
    def lock_file(self) -> Path:
        return self.directory / LOCK_FILE


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
    bundle: Path, names: Sequence[str], *, interpreters: Sequence[str] = (), path: str | None = None
) -> BundleLock:
    """Lock the executables ``names`` (found on ``path``, default ``$PATH``; kept as found, an
    absolute path that may be a symbolic link; the file it resolves to is hashed) into
    ``bundle/geode.lock``, keeping entries already there for other names. ``interpreters``
    marks names whose first operand is a script (default: ``python*``, ``sh``, ``bash``,
    ``node``, ``perl``, ``ruby``); given, it replaces that guess (and its names are locked too).
    """
    existing = dict(read_lock(bundle).executables)
    wanted = list(dict.fromkeys([*names, *interpreters]))
    for name in wanted:
        if not name or "/" in name or name in (".", ".."):
            raise LaunchError(f"{name!r} is not a bare executable name")
        found = shutil.which(name, path=path)
        if found is None:
            raise LaunchError(f"{name} is not found on $PATH")
        found_path = Path(os.path.abspath(found))
        resolved = Path(os.path.realpath(found_path))
        if not resolved.is_file():
            raise LaunchError(f"{name} at {found_path} is not a regular file")
        if interpreters:
            interpreter = name in interpreters
        else:
            interpreter = _DEFAULT_INTERPRETERS.fullmatch(name) is not None
        existing[name] = LockedExecutable(name, found_path, _sha256_file(resolved), interpreter)
    lock = BundleLock(existing)
    text = json.dumps(lock.to_json(), indent=2) + "\n"
    try:
        (bundle / LOCK_FILE).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise LaunchError(f"cannot write {bundle / LOCK_FILE}: {exc.strerror}") from None
    return lock


# --- Staging ---------------------------------------------------------------------------------


def _skipped(name: str, is_dir: bool) -> bool:
    """What the measurement skips is not copied either: it must not run unmeasured."""
    return (is_dir and name == "__pycache__") or (not is_dir and name.endswith(".pyc"))


def _copy_file(source: str, info: os.stat_result, target: Path, shown: str) -> None:
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LaunchError(f"cannot read {shown} in the bundle: {exc.strerror}") from None
    try:
        now = os.fstat(src)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise LaunchError(f"{shown} in the bundle changed while it was copied")
        mode = 0o700 if info.st_mode & 0o111 else 0o600
        dst = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
        )
        try:
            os.fchmod(dst, mode)
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_tree(source: Path, target: Path) -> list[tuple[str, Path]]:
    """Copy ``source`` into the existing ``target``; the links made, (shown name, copy path)."""
    links: list[tuple[str, Path]] = []
    stack: list[tuple[Path, Path, str]] = [(source, target, "")]
    while stack:
        src_dir, dst_dir, prefix = stack.pop()
        try:
            entries = list(os.scandir(src_dir))
        except OSError as exc:
            raise LaunchError(f"cannot read {src_dir}: {exc.strerror}") from None
        for entry in entries:
            shown = prefix + entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise LaunchError(f"cannot read {shown} in the bundle: {exc.strerror}") from None
            mode = info.st_mode
            if _skipped(entry.name, stat.S_ISDIR(mode)):
                continue
            dst = dst_dir / entry.name
            if stat.S_ISDIR(mode):
                os.mkdir(dst, 0o700)
                stack.append((Path(entry.path), dst, shown + "/"))
            elif stat.S_ISREG(mode):
                _copy_file(entry.path, info, dst, shown)
            elif stat.S_ISLNK(mode):
                link = os.readlink(entry.path)
                if os.path.isabs(link):
                    raise LaunchError(
                        f"the link {shown} points outside the bundle (to the absolute path {link})"
                    )
                os.symlink(link, dst)
                links.append((shown, dst))
            else:
                raise LaunchError(f"{shown} in the bundle is a special file: it cannot be staged")
    return links


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def stage_bundle(source: Path, base_dir: Path | None = None, *, service: str = "?") -> StagedBundle:
    """Copy ``source`` into a new private directory under ``base_dir`` (default: the runtime
    directory) and measure the copy. ``LaunchError`` for what cannot be copied (a special file,
    a link out of the bundle). What dead launchers left in ``base_dir`` is removed first; the
    copy is registered (``launcher.state``) for the next launcher to remove if this one dies."""
    base = default_runtime_dir() if base_dir is None else base_dir
    if not source.is_dir():
        raise LaunchError(f"the bundle {source} is not a directory")
    clean_leftovers(base)
    try:
        holder = Path(tempfile.mkdtemp(prefix=STAGED_PREFIX, dir=base))
    except OSError as exc:
        raise LaunchError(f"cannot make a private directory in {base}: {exc.strerror}") from None
    record: LauncherRecord | None = None
    try:
        record = LauncherRecord.create(holder, service)
        copy = holder / _COPY
        os.mkdir(copy, 0o700)
        links = _copy_tree(Path(os.path.realpath(source)), copy)
        root = os.path.realpath(copy)
        for shown, link in links:
            if not _inside(root, os.path.realpath(link)):
                raise LaunchError(
                    f"the link {shown} points outside the bundle (to {os.readlink(link)})"
                )
        try:
            measurement = measure_bundle(copy)
        except BundleError as exc:
            raise LaunchError(f"cannot measure the staged bundle: {exc}") from None
        lock = read_lock(copy)
    except BaseException as exc:
        shutil.rmtree(holder, ignore_errors=True)
        if record is not None:
            record.close()
        if isinstance(exc, OSError):
            raise LaunchError(f"cannot stage the bundle {source}: {exc.strerror}") from None
        raise
    return StagedBundle(copy, measurement, lock, record)


def remove_staged(staged: StagedBundle) -> None:
    """Remove the staged copy (quietly; what is left is removed by the next launcher)."""
    holder = staged.directory.parent
    if staged.record is not None and holder.name.startswith(STAGED_PREFIX):
        shutil.rmtree(holder, ignore_errors=True)
        staged.record.close()
    else:
        shutil.rmtree(staged.directory, ignore_errors=True)


def check_executables(lock: BundleLock) -> None:
    """Hash every locked executable again; ``LaunchError`` naming the first that is missing,
    changed, or no longer a regular executable file."""
    for _name, entry in sorted(lock.executables.items()):
        entry.check()


# --- Resolving the command --------------------------------------------------------------------

# Python's options: those taking an argument, and those that run code not in a file.
_PY_WITH_ARGUMENT = frozenset("WX")
_PY_FLAGS = frozenset("bBdEhiIOPqsSuvVxR")
_SHELL_FLAGS = frozenset("aeEfhkmnptuvxCHP")
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})


class _Resolver:
    def __init__(self, staged: StagedBundle) -> None:
        self.staged = staged
        self.root = os.path.realpath(staged.directory)

    def in_copy(self, what: str, path: str) -> str:
        """The real path of ``path`` (relative to the copy, or absolute) if it is a regular
        file inside the copy; else the one-line refusal."""
        candidate = os.path.join(self.root, path)
        real = os.path.realpath(candidate)
        if not _inside(self.root, real) or not os.path.lexists(real):
            raise LaunchError(f"the {what} {path} is outside the bundle")
        if not os.path.isfile(real):
            raise LaunchError(f"the {what} {path} is not a file in the bundle")
        return real

    def program(self, argv: Sequence[str]) -> list[str]:
        name, rest = argv[0], list(argv[1:])
        if not name:
            raise LaunchError("the command is empty")
        if "/" not in name:
            if name == "geode":
                return [sys.executable, "-m", "geode", *rest]
            at_root = os.path.join(self.root, name)
            if os.path.isfile(at_root) and _inside(self.root, os.path.realpath(at_root)):
                return [os.path.realpath(at_root), *rest]
            entry = self.staged.lock.executables.get(name)
            if entry is None:
                raise LaunchError(
                    f"{name} is outside the bundle: lock it with 'geode bundle lock DIR {name}'"
                )
            return self.locked(entry, rest)
        if os.path.isabs(name):
            for entry in self.staged.lock.executables.values():
                if str(entry.path) == name:
                    return self.locked(entry, rest)
        return [self.in_copy("program", name), *rest]

    def locked(self, entry: LockedExecutable, rest: list[str]) -> list[str]:
        if not entry.interpreter:
            return [str(entry.path), *rest]
        base = entry.name
        if re.fullmatch(r"python[0-9.]*", base):
            operands = self.python(base, rest)
        elif base in _SHELLS:
            operands = self.options(base, rest, _SHELL_FLAGS)
        else:
            operands = self.options(base, rest, frozenset())
        return [str(entry.path), *operands]

    def script(self, name: str, before: list[str], rest: list[str]) -> list[str]:
        if not rest or rest[0] == "-":
            raise LaunchError(f"{name} would read its program from standard input, not the bundle")
        return [*before, self.in_copy("script", rest[0]), *rest[1:]]

    def options(self, name: str, argv: list[str], flags: frozenset[str]) -> list[str]:
        """An interpreter whose options are single letters without arguments (``flags``)."""
        before: list[str] = []
        for i, arg in enumerate(argv):
            if arg == "--":
                return self.script(name, [*before, arg], argv[i + 1 :])
            if not arg.startswith("-") or arg == "-":
                return self.script(name, before, argv[i:])
            letters = arg[1:]
            if arg.startswith("--"):
                raise LaunchError(f"the option {arg} of {name} is not allowed by geode run")
            if "c" in letters or ("e" in letters and name not in _SHELLS):
                raise LaunchError(f"{arg} runs code that is not in the bundle")
            unknown = [c for c in letters if c not in flags]
            if unknown:
                raise LaunchError(f"the option {arg} of {name} is not allowed by geode run")
            before.append(arg)
        return self.script(name, before, [])

    def python(self, name: str, argv: list[str]) -> list[str]:
        before: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--" or not arg.startswith("-") or arg == "-":
                rest = argv[i + 1 :] if arg == "--" else argv[i:]
                return self.script(name, before, rest)
            if arg.startswith("--"):
                raise LaunchError(f"the option {arg} of {name} is not allowed by geode run")
            for j, letter in enumerate(arg[1:], start=1):
                if letter == "c":
                    raise LaunchError(f"{arg} runs code that is not in the bundle")
                if letter == "m":
                    module = arg[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else "")
                    after = argv[i + 1 :] if arg[j + 1 :] else argv[i + 2 :]
                    self.module(module)
                    return [*before, arg[: j + 1], module, *after]
                if letter in _PY_WITH_ARGUMENT:
                    if not arg[j + 1 :]:
                        before.append(arg)
                        i += 1
                        if i >= len(argv):
                            raise LaunchError(f"the option {arg} of {name} needs an argument")
                        arg = argv[i]
                    break
                if letter not in _PY_FLAGS:
                    raise LaunchError(f"the option -{letter} of {name} is not allowed by geode run")
            before.append(arg)
            i += 1
        return self.script(name, before, [])

    def module(self, module: str) -> None:
        """``-m module`` runs only a module of the copy (the copy is its working directory, the
        first place Python looks)."""
        parts = module.split(".")
        if not module or not all(p.isidentifier() for p in parts):
            raise LaunchError(f"-m {module} is not a module name")
        base = os.path.join(self.root, *parts)
        for candidate in (base + ".py", os.path.join(base, "__main__.py")):
            real = os.path.realpath(candidate)
            if os.path.isfile(real) and _inside(self.root, real):
                return
        raise LaunchError(f"-m {module} runs a module that is not in the bundle")


def resolve_command(staged: StagedBundle, argv: Sequence[str]) -> list[str]:
    """The argv to execute, in the staged copy (see the module docstring)."""
    if not argv:
        raise LaunchError("the command is empty")
    return _Resolver(staged).program(argv)


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
