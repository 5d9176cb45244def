"""The ``geode`` command line; thin over the client, coordinator and runtime packages."""

from __future__ import annotations

from geode.cli._main import cli, main

__all__ = ["cli", "main"]
