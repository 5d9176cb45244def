"""Attack: mutated evidence. Every vector in ``../shared/vectors`` (SGX and TDX quotes with their
collateral, SEV-SNP reports with their VCEK, VLEK or configfs certificate table, the NVIDIA SPDM
report with its chain, loose and in Geode's trailer) is mutated many times -- bit flips, bytes
set to boundaries, truncations, extensions, length fields, DER edits inside the PEM chain a quote
carries and inside every certificate and CRL, collateral JSON with wrong types, missing keys,
deep nesting and huge numbers -- and verified with Geode's ``EvidenceVerifier`` at the vector's
time. Each mutation must end in an ``EvidenceError`` naming its field, or in the very claims of
the unmutated evidence (a change outside what is signed, such as trailing data); nothing may
reach the verifier's last line of defence.

Mutations are drawn from ``(seed, vector, index)``: the seed is ``$GEODE_FUZZ_SEED`` (default
below), the time budget of the whole file ``$GEODE_FUZZ_SECONDS`` (default 60, shared among the
vectors; each gets at least ``MINIMUM`` mutations). A failure prints the seed, the vector, the
index and the mutation; ``python -m tests.attestation.support.fuzz SEED VECTOR INDEX`` replays it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from geode.attestation import Claims, Evidence, EvidenceVerifier
from geode.errors import EvidenceError
from tests.attestation.support.fuzz import (
    SUBJECT_NAMES,
    mutation,
    pem_chain_bit_flipped,
    subject,
    try_mutation,
)
from tests.attestation.support.mutations import DEEP
from tests.attestation.support.vectors import read_vector, requires_vectors

pytestmark = requires_vectors

SEED = int(os.environ.get("GEODE_FUZZ_SEED", "1414"))
BUDGET = float(os.environ.get("GEODE_FUZZ_SECONDS", "60")) / len(SUBJECT_NAMES)
MINIMUM = 150
MAX_REPORTED = 20


_TRIED: dict[str, tuple[int, float]] = {}  # vector: (mutations, seconds)


@pytest.fixture(scope="module", autouse=True)
def _totals() -> Iterator[None]:
    """The figures of the whole run, by evidence kind (shown with ``-s`` or ``-rA``)."""
    yield
    by_kind: dict[str, list[float]] = {}
    for name, (count, seconds) in _TRIED.items():
        kind = subject(name).kind
        total = by_kind.setdefault(kind, [0, 0.0])
        total[0] += count
        total[1] += seconds
    for kind, (count, seconds) in by_kind.items():
        print(f"mutations of {kind} evidence: {count:.0f} in {seconds:.1f} s")
    print(f"mutations in all: {sum(c for c, _ in _TRIED.values())} (seed {SEED})")


def baseline(verifier: EvidenceVerifier, name: str) -> Claims | EvidenceError:
    try:
        return subject(name).verify(verifier)
    except EvidenceError as exc:
        return exc


@pytest.mark.parametrize("name", SUBJECT_NAMES)
def test_every_mutation_is_refused_by_field_or_verifies_with_the_same_claims(name: str) -> None:
    verifier = EvidenceVerifier()
    base = subject(name)
    expected = baseline(verifier, name)
    counts = {"refused": 0, "identical": 0, "problem": 0}
    fields: dict[str, int] = {}
    problems: list[str] = []
    started = time.monotonic()
    index = 0
    slowest = (0.0, 0)
    caught = 0  # mutations that reached the verifier's catch-all (each also a problem)
    while index < MINIMUM or time.monotonic() - started < BUDGET:
        what, mutated = mutation(SEED, base, index)
        began = time.perf_counter()
        outcome = try_mutation(verifier, mutated, expected)
        slowest = max(slowest, (time.perf_counter() - began, index))
        counts[outcome.kind] += 1
        caught += bool(outcome.fallback)
        if outcome.kind == "refused":
            fields[outcome.detail] = fields.get(outcome.detail, 0) + 1
        elif outcome.kind == "problem" and len(problems) < MAX_REPORTED:
            problems.append(
                f"GEODE_FUZZ_SEED={SEED} {name} #{index}: {what}\n    -> {outcome.detail}"
                + "".join(f"\n    catch-all: {line}" for line in outcome.fallback)
            )
        index += 1
    elapsed = time.monotonic() - started
    _TRIED[name] = (index, elapsed)
    print(
        f"{name}: {index} mutations in {elapsed:.1f} s (seed {SEED}): "
        f"{counts['refused']} refused, {counts['identical']} verified with the same claims, "
        f"{counts['problem']} problems ({caught} reached the catch-all); "
        f"slowest #{slowest[1]}: {slowest[0] * 1000:.0f} ms; "
        "by field: "
        + ", ".join(f"{f}={n}" for f, n in sorted(fields.items(), key=lambda i: -i[1])[:8])
    )
    assert not problems, (
        f"{counts['problem']} of {index} mutations of {name} went wrong "
        f"(replay: python -m tests.attestation.support.fuzz SEED {name} INDEX):\n"
        + "\n".join(problems)
    )
    assert counts["refused"] > 0


# -- the examples of the issue, as regression tests ---------------------------------------------

SGX = "sgx_v3_dcapqvl"


def sgx_verify(data: bytes, collateral: bytes | None = None) -> Claims:
    verifier = EvidenceVerifier()
    sgx = subject(SGX)
    return verifier.verify(Evidence("sgx", data), collateral=collateral, at=sgx.at)


def test_one_bit_flipped_in_the_pem_chain_is_an_evidence_error_naming_it() -> None:
    data, offset = pem_chain_bit_flipped(SGX)
    with pytest.raises(EvidenceError) as info:
        sgx_verify(data)
    assert info.value.field == "pck_certification_data"
    assert info.value.offset == offset
    assert "not a valid X509 version" in str(info.value)


def test_one_bit_flipped_in_the_der_of_a_collateral_crl_names_the_crl() -> None:
    doc = json.loads(read_vector(f"{SGX}.collateral.json"))
    crl = bytearray.fromhex(doc["root_ca_crl"])
    assert crl[7:10] == b"\x02\x01\x01"  # the CRL's version, 1 (v2)
    crl[9] ^= 0x10
    doc["root_ca_crl"] = crl.hex()
    with pytest.raises(EvidenceError, match="not a valid CRL version") as info:
        sgx_verify(read_vector(f"{SGX}.quote.bin"), json.dumps(doc).encode())
    assert info.value.field == "collateral.root_ca_crl"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("document", "collateral"),
        ("tcb_info", "collateral.tcb_info"),
        ("qe_identity", "collateral.qe_identity"),
    ],
)
def test_deeply_nested_collateral_json_is_an_evidence_error_naming_it(
    where: str, field: str
) -> None:
    raw = read_vector(f"{SGX}.collateral.json")
    deep = "[" * DEEP + "]" * DEEP
    if where == "document":
        nested = ("[" * DEEP + raw.decode() + "]" * DEEP).encode()
    else:
        nested = json.dumps({**json.loads(raw), where: deep}).encode()
    with pytest.raises(EvidenceError, match=r"JSON nested \d+ deep, more than 32") as info:
        sgx_verify(read_vector(f"{SGX}.quote.bin"), nested)
    assert info.value.field == field


def test_deep_nesting_inside_a_pcs_response_body_is_an_evidence_error() -> None:
    tdx = subject("tdx_v4_gotdx_spr_trailing")
    assert tdx.collateral is not None
    doc = json.loads(tdx.collateral)
    doc["tcb_info"] = '{"tcbInfo": ' + "[" * DEEP + "]" * DEEP + ', "signature": "00"}'
    with pytest.raises(EvidenceError) as info:
        EvidenceVerifier().verify(
            Evidence("tdx", tdx.data), collateral=json.dumps(doc).encode(), at=tdx.at
        )
    assert info.value.field == "collateral.tcb_info"


def test_the_last_line_of_defence_refuses_and_logs_a_bug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What no parser may let through any more, should one again: a refusal, logged as a bug.
    def broken(data: bytes, **_: object) -> Claims:
        raise KeyError("a parser's own exception")

    monkeypatch.setattr("geode.attestation._intel.verify_sgx_quote", broken)
    with pytest.raises(EvidenceError) as info:
        EvidenceVerifier().verify(Evidence("sgx", b"x"))
    assert (info.value.field, str(info.value)) == (
        "evidence",
        "evidence: malformed evidence (KeyError)",
    )
    assert [r.levelname for r in caplog.records if r.name == "geode.attestation"] == ["ERROR"]
    assert "bug: verifying sgx evidence raised KeyError" in caplog.text
