"""A private copy of a key file: what ``geode run`` demands of the simulated platform key."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from geode._files import create_private_file
from geode.errors import PKIError

__all__ = ["install_key"]


def install_key(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, readable by the current user only (mode 0600), replacing
    ``target`` atomically.

    Kubernetes mounts Secret files owned by root, or group-readable under an ``fsGroup``; Geode
    refuses key files that anyone but their owner can read. An init container running as the
    workload's user makes the copy on a memory-backed volume.
    """
    data = source.read_bytes()
    if not data.strip():
        raise PKIError(f"{source}: the key file is empty")
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    create_private_file(temporary, data)
    os.replace(temporary, target)
