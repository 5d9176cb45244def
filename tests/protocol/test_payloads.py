"""geode.protocol: the signed payloads and bindings keep their bytes (statements, audit entries
and shares signed before must verify after)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from geode.protocol import (
    audit_entry_hash,
    audit_signing_payload,
    join_answer_binding,
    join_request_binding,
    key_binding,
    manifest_signing_payload,
    recovery_binding,
    recovery_upload_payload,
    renewal_payload,
    statement_binding,
    statement_signing_payload,
)

A = bytes(range(32))
B = bytes(range(32, 64))
C = b"sealed"

# SHA-256 of each payload for fixed inputs, as the formats have always produced them.
PAYLOADS: dict[str, Callable[[], bytes]] = {
    "key_binding": lambda: key_binding(A, B),
    "statement_binding": lambda: statement_binding(A, B, C),
    "statement_signing_payload": lambda: statement_signing_payload(A, B, C, "active"),
    "renewal_payload": lambda: renewal_payload(A, B),
    "manifest_signing_payload": lambda: manifest_signing_payload(A),
    "audit_entry_hash": lambda: audit_entry_hash({"seq": 1, "b": [1, "x"], "a": None}),
    "audit_signing_payload": lambda: audit_signing_payload(A),
    "recovery_binding": lambda: recovery_binding(A, B),
    "recovery_upload_payload": lambda: recovery_upload_payload("p1", A, B),
    "join_request_binding": lambda: join_request_binding(A, B),
    "join_answer_binding": lambda: join_answer_binding(A, B, C, b"k"),
}
DIGESTS = {
    "key_binding": "00f91febbe7d4fb8a6aec2e73cb00b47ee561971ba5e92ca2cdf973a02fba251",
    "statement_binding": "3c04d5d36e144c1a30f14d8e73410a8f4c905710f0627badafb0ae26dd56a8a2",
    "statement_signing_payload": "f7ce2e1cb402ca86519833e89865d747206935c337d4436383ffa404e0085223",
    "renewal_payload": "dca8ebf268c8f90776cdd99f0f06b7957a4a32ddc8fe27937710dfe3fd634768",
    "manifest_signing_payload": "52b4d2014a541464cf60362f1d5258cad7bade37b34d52862b7c361a2d8d65e5",
    "audit_entry_hash": "6da678f7c6d5877fd1acda6078bd47f8ee16b60c2437e107e9e0af8252f789c1",
    "audit_signing_payload": "bd2aa6a4a789a15489525b2dcc315132b628179cdef77da5c7cae378be4a6ca0",
    "recovery_binding": "0029a24b9e4c3c4eb7f018640102dadddf0ee92aee7ef299c769479b96bf7ffc",
    "recovery_upload_payload": "bbd6864ba3ad56d66aea0d5c1aaf881aa2d90bc543121ad67c0a46a2244f75fc",
    "join_request_binding": "616134ff77caf3b7ee9df7931c37eedfa9b1f0fc537fd9298d8238df03d04737",
    "join_answer_binding": "ef54fc788ee53d1a086c1dccea01580895a9320d7f322c4467ebd56a42e1b4f7",
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_bytes_do_not_change(name: str) -> None:
    assert hashlib.sha256(PAYLOADS[name]()).hexdigest() == DIGESTS[name]


@pytest.mark.parametrize(
    "binding",
    [
        lambda: key_binding(A, B),
        lambda: statement_binding(A, B, C),
        lambda: recovery_binding(A, B),
        lambda: join_request_binding(A, B),
        lambda: join_answer_binding(A, B, C, b"k"),
    ],
)
def test_bindings_fill_the_report_data(binding: Callable[[], bytes]) -> None:
    assert len(binding()) == 64
