"""Resolving the command: ``resolve_command`` maps the command's argv onto the staged copy.

- a program given as a path (``./app``, ``bin/serve``) must resolve inside the copy;
- a bare name is a file at the copy's root, else an executable of the lock (run by its locked
  absolute path, so ``$PATH`` cannot substitute it), else refused;
- ``geode`` names the running Geode itself (``sys.executable -m geode``), before anything else:
  the runtime is what the platform measures, not the bundle;
- an absolute path is a locked executable's exact path, or a file inside the copy;
- an interpreter's script operand must resolve inside the copy (``python app.py``); ``-c`` and
  ``-m`` for a module outside the copy are refused.

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
                return [sys.executable, "-m", "geode", *rest]
            at_root = os.path.join(self.root, name)
            if os.path.isfile(at_root) and is_inside(self.root, os.path.realpath(at_root)):
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
            if os.path.isfile(real) and is_inside(self.root, real):
                return
        raise LaunchError(f"-m {module} runs a module that is not in the bundle")


def resolve_command(staged: StagedBundle, argv: Sequence[str]) -> list[str]:
    """The argv to execute, in the staged copy (see the module docstring)."""
    if not argv:
        raise LaunchError("the command is empty")
    return _Resolver(staged).program(argv)
