"""Resolving the command: ``resolve_command`` maps the command's argv onto the staged copy.

- a program given as a path (``./app``, ``bin/serve``) must resolve inside the copy;
- a bare name is a file at the copy's root, else an executable of the lock (run by its locked
  absolute path, so ``$PATH`` cannot substitute it), else refused;
- a file of the copy whose first line is ``#!`` runs only with a locked interpreter:
  ``#!/usr/bin/env NAME`` needs NAME locked, ``#!/abs/path`` needs a locked executable at exactly
  that path, or one whose locked target it resolves to (``/bin/sh`` for ``/usr/bin/sh``); the
  argv becomes ``[locked path, (its #! argument,) script, ...]``, checked as that interpreter's
  command;
- ``geode`` names the running Geode itself (``sys.executable -P -m geode``), before anything
  else, and only as ``geode db serve``: the runtime is what the platform measures, not the
  bundle, and no other subcommand is one a bundle runs;
- an absolute path is a locked executable's exact path, or a file inside the copy;
- a locked executable that is not an interpreter is the program only when the lock marks it
  ``program`` (its arguments are then the caller's); otherwise it is there for the bundle's own
  use (``mariadbd`` for ``geode db serve``) and refused as the command, or as a ``#!`` line's;
- an interpreter's script operand must resolve inside the copy (``python app.py``; for Python
  also a directory of the copy with a ``__main__.py`` there, or a zip file); ``-c``, ``-i`` and
  reading the program from standard input are refused. A shell's lone ``-`` ends its options
  (``#!/bin/sh -``); Python's ``-V``, ``--version``, ``-h``, ``--help`` (and ``--help-*``) alone
  are allowed (Python prints and exits before importing anything); a ``#!`` line is split on the
  first space or tab, as Linux does.

Python's options are checked against what could load code from elsewhere: ``-X`` only with the
options of ``_PY_X_OPTIONS`` (not ``pycache_prefix``, which reads bytecode from another
directory, nor ``frozen_modules`` or ``presite``), ``-W`` not with a category in a module (Python
imports that module), and ``-m`` only for a module of the copy that Python finds there first:
a module file, or a package with ``__init__.py`` at every level (a namespace directory is
shadowed by any regular package elsewhere), not a name of the standard library (a module
imported at start-up is run from ``sys.modules``), and not with ``-P``, ``-I``, ``-E`` or ``-s``
(which change where Python looks).

Anything else is a ``LaunchError`` whose one line says what lies outside the bundle.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from geode.errors import LaunchError
from geode.runtime._bundle import LockedExecutable
from geode.runtime._staging import StagedBundle, is_inside

__all__ = ["resolve_command"]

# Python's options: those taking an argument, and those that run code not in a file.
_PY_WITH_ARGUMENT = frozenset("WX")
_PY_FLAGS = frozenset("bBdEhIOPqsSuvVxR")  # not -i: it reads code from stdin after
# Options that change where -m looks for its module.
_PY_PATH_FLAGS = frozenset("PIEs")
# -X options (Python 3.11 to 3.13) that load no code: diagnostics, modes, limits.
_PY_X_OPTIONS = frozenset(
    {
        "faulthandler",
        "showrefcount",
        "tracemalloc",
        "importtime",
        "dev",
        "utf8",
        "warn_default_encoding",
        "no_debug_ranges",
        "int_max_str_digits",
        "perf",
        "cpu_count",
        "gil",
    }
)
_SHELL_FLAGS = frozenset("aeEfhkmnptuvxCHP")
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
_ENV = frozenset({"/usr/bin/env", "/bin/env"})
# What Linux reads of a ``#!`` line (BINPRM_BUF_SIZE).
_SHEBANG_MAX = 256
# A lone option that makes Python print its version or help and exit, before it imports anything.
_PY_INFO = frozenset(
    {"-V", "-VV", "--version", "-h", "--help", "--help-env", "--help-xoptions", "--help-all"}
)
# The only Geode subcommand a bundle runs through the runtime.
_GEODE_SUBCOMMANDS = (("db", "serve"),)


def _shebang(path: str) -> str | None:
    """The ``#!`` line of the file ``path`` (without ``#!``), or ``None`` if it has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SHEBANG_MAX)
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    line, newline, _ = head[2:].partition(b"\n")
    if not newline:
        raise LaunchError(f"the #! line of {path} is longer than {_SHEBANG_MAX} bytes")
    return line.decode(errors="replace").strip()


def _check_warning_filter(python: str, value: str) -> None:
    """``-W action:message:category:module:lineno``: a category with a dot is imported."""
    fields = value.split(":")
    if len(fields) > 2 and "." in fields[2]:
        raise LaunchError(
            f"-W {value} of {python} names a warning category in a module, which Python imports"
        )


def _check_x_option(python: str, value: str) -> None:
    name = value.split("=", 1)[0]
    if name not in _PY_X_OPTIONS:
        raise LaunchError(f"the option -X {name} of {python} is not allowed by geode run")


class _Resolver:
    def __init__(self, staged: StagedBundle) -> None:
        self.staged = staged
        self.root = os.path.realpath(staged.directory)

    def in_copy(self, what: str, path: str) -> str:
        """The real path of ``path`` (relative to the copy, or absolute) if it is a regular
        file inside the copy; else the one-line refusal."""
        candidate = os.path.join(self.root, path)
        real = os.path.realpath(candidate)
        if not is_inside(self.root, real) or not os.path.lexists(real):
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
                return self.geode(rest)
            at_root = os.path.join(self.root, name)
            if os.path.isfile(at_root) and is_inside(self.root, os.path.realpath(at_root)):
                return self.of_copy(name, os.path.realpath(at_root), rest)
            entry = self.staged.lock.executables.get(name)
            if entry is None:
                raise LaunchError(
                    f"{name} is outside the bundle: lock it with 'geode bundle lock DIR {name}'"
                )
            return self.locked(entry, rest)
        if os.path.isabs(name):
            entry = self.at_path(name)
            if entry is not None:
                return self.locked(entry, rest)
        return self.of_copy(name, self.in_copy("program", name), rest)

    def at_path(self, path: str) -> LockedExecutable | None:
        for entry in self.staged.lock.executables.values():
            if str(entry.path) == path:
                return entry
        return None

    def interpreter_at(self, path: str) -> LockedExecutable | None:
        """The locked executable a ``#!`` path names: by its locked path, or resolving to its
        locked target (``#!/bin/sh`` for ``sh`` locked at ``/usr/bin/sh``); it runs by its
        locked path either way."""
        entry = self.at_path(path)
        if entry is not None or not os.path.isabs(path):
            return entry
        real = os.path.realpath(path)
        found = [e for e in self.staged.lock.executables.values() if str(e.target) == real]
        # The same file locked under two names: the one checked as an interpreter, whatever the
        # order of the lock.
        found.sort(key=lambda e: (not e.interpreter, e.name))
        return found[0] if found else None

    def geode(self, rest: list[str]) -> list[str]:
        if tuple(rest[:2]) not in _GEODE_SUBCOMMANDS:
            shown = " ".join(rest[:2] if rest[:1] == ["db"] else rest[:1]) or "(no subcommand)"
            allowed = ", ".join(f"'geode {' '.join(c)}'" for c in _GEODE_SUBCOMMANDS)
            raise LaunchError(f"geode {shown} is not run by geode run (a bundle runs {allowed})")
        # -P: the copy (the working directory) is not searched for the module geode.
        return [sys.executable, "-P", "-m", "geode", *rest]

    def of_copy(self, name: str, real: str, rest: list[str]) -> list[str]:
        """The file ``real`` of the copy as the program: itself, or its locked ``#!``
        interpreter."""
        line = _shebang(real)
        if line is None:
            return [real, *rest]
        # Like Linux: the interpreter ends at the first space or tab; the rest, trimmed, is one
        # argument.
        interpreter, *tail = re.split(r"[ \t]+", line.strip(" \t"), maxsplit=1)
        argument = tail[0] if tail else ""
        if interpreter in _ENV:
            entry = self.staged.lock.executables.get(argument)
            if entry is None:
                if argument and re.fullmatch(r"[\w.+-]+", argument) and argument[0] != "-":
                    raise LaunchError(
                        f"the program {name} runs {argument} (#!{line}), which is not locked: "
                        f"lock it with 'geode bundle lock DIR {argument}'"
                    )
                raise LaunchError(
                    f"the program {name} starts with #!{line}, which names no locked executable"
                )
            return self.locked(entry, [real, *rest])
        entry = self.interpreter_at(interpreter)
        if entry is None:
            raise LaunchError(
                f"the program {name} starts with #!{line}, and {interpreter} is not a locked "
                "executable's path"
            )
        return self.locked(entry, [argument, real, *rest] if argument else [real, *rest])

    def locked(self, entry: LockedExecutable, rest: list[str]) -> list[str]:
        if not entry.interpreter:
            if not entry.program:
                raise LaunchError(
                    f"{entry.name} is locked for the bundle's own use (e.g. by geode db serve), "
                    "not as the command"
                )
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
        if re.fullmatch(r"python[0-9.]*", name):
            directory = self.directory_with_main(rest[0])
            if directory is not None:
                return [*before, directory, *rest[1:]]
        return [*before, self.in_copy("script", rest[0]), *rest[1:]]

    def directory_with_main(self, path: str) -> str | None:
        """The real path of ``path`` if it is a directory inside the copy with a
        ``__main__.py`` file inside the copy (Python runs it, with the directory first on its
        path); else ``None``."""
        real = os.path.realpath(os.path.join(self.root, path))
        if not os.path.isdir(real) or not is_inside(self.root, real):
            return None
        main = os.path.realpath(os.path.join(real, "__main__.py"))
        if not os.path.isfile(main) or not is_inside(self.root, main):
            raise LaunchError(f"the script {path} is a directory without __main__.py in the bundle")
        return real

    def options(self, name: str, argv: list[str], flags: frozenset[str]) -> list[str]:
        """An interpreter whose options are single letters without arguments (``flags``)."""
        before: list[str] = []
        for i, arg in enumerate(argv):
            # For a shell, a lone ``-`` ends the options as ``--`` does (``#!/bin/sh -``).
            if arg == "--" or (arg == "-" and name in _SHELLS and i + 1 < len(argv)):
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
        if len(argv) == 1 and argv[0] in _PY_INFO:
            return list(argv)  # Python prints and exits before it imports anything
        before: list[str] = []
        seen: set[str] = set()
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
                    path_flags = sorted(seen & _PY_PATH_FLAGS)
                    if path_flags:
                        raise LaunchError(
                            f"-m {module} with -{path_flags[0]} of {name} is not allowed by "
                            "geode run: Python would not look for the module in the bundle first"
                        )
                    self.module(module)
                    return [*before, arg[: j + 1], module, *after]
                if letter in _PY_WITH_ARGUMENT:
                    value = arg[j + 1 :]
                    if not value:
                        before.append(arg)
                        i += 1
                        if i >= len(argv):
                            raise LaunchError(f"the option {arg} of {name} needs an argument")
                        arg = value = argv[i]
                    if letter == "W":
                        _check_warning_filter(name, value)
                    else:
                        _check_x_option(name, value)
                    break
                if letter not in _PY_FLAGS:
                    raise LaunchError(f"the option -{letter} of {name} is not allowed by geode run")
                seen.add(letter)
            before.append(arg)
            i += 1
        return self.script(name, before, [])

    def module(self, module: str) -> None:
        """``-m module`` runs only a module of the copy that Python finds there first (the copy
        is its working directory, the first entry of its path): a module file, or a package
        with ``__init__.py`` at every level and a ``__main__.py``; never a name of the
        standard library, which Python may take from the modules imported at start-up."""
        parts = module.split(".")
        if not module or not all(p.isidentifier() for p in parts):
            raise LaunchError(f"-m {module} is not a module name")

        def file_in_copy(*path: str) -> bool:
            real = os.path.realpath(os.path.join(self.root, *path))
            return os.path.isfile(real) and is_inside(self.root, real)

        packages = all(file_in_copy(*parts[:k], "__init__.py") for k in range(1, len(parts)))
        if file_in_copy(*parts, "__init__.py"):
            found = file_in_copy(*parts, "__main__.py")
        else:
            found = file_in_copy(*parts[:-1], parts[-1] + ".py")
        if not (packages and found):
            raise LaunchError(f"-m {module} runs a module that is not in the bundle")
        if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
            raise LaunchError(
                f"-m {module} names a module of Python's standard library: run the bundle's "
                "file by its path instead"
            )


def resolve_command(staged: StagedBundle, argv: Sequence[str]) -> list[str]:
    """The argv to execute, in the staged copy (see the module docstring)."""
    if not argv:
        raise LaunchError("the command is empty")
    return _Resolver(staged).program(argv)
