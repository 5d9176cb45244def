"""Geode: a confidential-computing control plane for microservices."""

from __future__ import annotations

from geode.errors import GeodeError

__all__ = ["GeodeError", "__version__"]

__version__ = "0.1.0"
