"""A real ``geode run`` process in a guest of a fake TEE platform.

Run as::

    python -m tests.support.tee_service --guest TREE -- <geode run arguments>

it reloads the guest whose device tree a test launched (``tests.support.hardware.load_guest``:
the same platform, the same launch parameters, so the same HOST_DATA or MRCONFIGID) and runs the
real command, ``geode run ...``, with that guest's quote provider handed in the one way tests
may: ``CliDeps(quote_providers=...)`` as click's ``obj``. No flag or environment variable of the
production command is involved.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geode.attestation import QuoteProvider
from geode.cli import cli
from geode.cli._common import CliDeps
from tests.support.hardware import load_guest

__all__ = ["main", "tee_service_argv"]


def tee_service_argv(guest: Path, *run_args: str) -> list[str]:
    """The command line of ``geode run RUN_ARGS`` in the guest whose tree is ``guest`` (to be
    started from the repository root, where ``tests`` is a package: ``cwd=REPO``)."""
    return [sys.executable, "-m", "tests.support.tee_service", "--guest", str(guest), "--", "run",
            *run_args]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.support.tee_service")
    parser.add_argument("--guest", type=Path, required=True)
    options = parser.parse_args(ours)
    guest = load_guest(options.guest)

    def quote_providers(_name: str | None) -> QuoteProvider | None:
        return guest.quote_provider()

    cli.main(command, prog_name="geode", obj=CliDeps(quote_providers=quote_providers))


if __name__ == "__main__":
    main()
