"""Child processes that do not outlive their parent.

Like ``geode.errors``, this module imports nothing from Geode, so every layer may use it.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

__all__ = ["parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send the child ``signum`` when its parent dies (even by
    SIGKILL); ``None`` where that cannot be asked. ``prctl`` is looked up here, in the parent,
    so the child only makes the one system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return hook
