"""The TEE kinds Geode knows, and the reference values evidence of each kind is matched against.

This is the one place the vocabulary is written. The manifest's ``packages.<name>`` *is* a
``ReferenceValues`` (``manifest.Package`` subclasses it to add what a contract must name), and
``attestation.match_claims`` takes ``ReferenceValues``, so a package is matched as it was
parsed, with no translation in between.

Why a base package: ``manifest`` (which parses packages) and ``attestation`` (which matches
claims against them) are leaves that may import nothing else of Geode (DESIGN.md), so neither can
own the definition the other uses. A typing ``Protocol`` on one side would have kept two field
lists to keep in step, which is what this package ends. Like ``errors``, it imports nothing of
Geode and everyone may import it.

Adding a TEE kind
-----------------
1. Name it in ``TeeKind`` and give it a ``TeeSpec`` in ``TEE_KINDS`` (``_kinds.py``): the
   reference fields it takes, the fields of which a package must name at least one, its
   measurement size. New reference fields go on ``ReferenceValues`` (``_reference.py``).
2. Write its verifier and name it in ``attestation._verifier._KIND_VERIFIERS`` (and, if its
   claims have fields of their own, a matcher in ``attestation._reference._KIND_MATCHERS``).
3. If ``geode run`` can obtain its evidence, a quote provider in ``attestation._providers``
   listed in ``PROVIDER_KINDS``.
``tests/tee/`` fails until 2 and 3 are done for every kind in the table.
"""

from __future__ import annotations

from geode.tee._kinds import (
    CHECKS,
    HARDWARE_KINDS,
    TEE_KINDS,
    Check,
    TcbStatus,
    TeeKind,
    TeeSpec,
)
from geode.tee._reference import ReferenceValues, SnpTcb

__all__ = [
    "CHECKS",
    "HARDWARE_KINDS",
    "TEE_KINDS",
    "Check",
    "ReferenceValues",
    "SnpTcb",
    "TcbStatus",
    "TeeKind",
    "TeeSpec",
]
