"""geode.attestation: bundle measurement, simulated quotes, the verifier and the claims match."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.attestation import (
    REPORT_DATA_SIZE,
    BundleError,
    Claims,
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    SimulatedPlatform,
    match_claims,
    measure_bundle,
    platform_key_id,
    verify_simulated_quote,
)
from geode.errors import ClaimsMismatch, EvidenceError, GeodeError
from geode.protocol import key_binding, statement_binding

MEASUREMENT = hashlib.sha256(b"bundle").digest()
REPORT_DATA = bytes(range(64))
QUOTE_SIZE = 240
SIGNED_SIZE = 176


# -- bundles -----------------------------------------------------------------------------------


def make_bundle(root: Path) -> Path:
    """A small bundle: a package with a module, a script and a data file."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "app.py").write_text("print('hello')\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec python -m pkg.app\n")
    (root / "run.sh").chmod(0o755)
    (root / "data.bin").write_bytes(bytes(range(256)))
    (root / "data.bin").chmod(0o644)
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_measurement_is_a_sha256_digest(bundle: Path) -> None:
    assert len(measure_bundle(bundle)) == 32


def test_measurement_is_deterministic(bundle: Path) -> None:
    assert measure_bundle(bundle) == measure_bundle(bundle)


def test_measurement_does_not_depend_on_the_location(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "one")
    second = make_bundle(tmp_path / "elsewhere" / "two")
    assert measure_bundle(first) == measure_bundle(second)


def test_measurement_accepts_str_paths(bundle: Path) -> None:
    assert measure_bundle(str(bundle)) == measure_bundle(bundle)


def test_measurement_of_an_empty_directory_is_stable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert measure_bundle(tmp_path / "a") == measure_bundle(tmp_path / "b")


@pytest.mark.parametrize("offset", [0, 100, 255])
def test_a_changed_byte_changes_the_measurement(bundle: Path, offset: int) -> None:
    before = measure_bundle(bundle)
    data = bytearray((bundle / "data.bin").read_bytes())
    data[offset] ^= 0x01
    (bundle / "data.bin").write_bytes(bytes(data))
    assert measure_bundle(bundle) != before


def test_an_appended_byte_changes_the_measurement(bundle: Path) -> None:
    before = measure_bundle(bundle)
    with (bundle / "pkg" / "app.py").open("ab") as f:
        f.write(b"\n")
    assert measure_bundle(bundle) != before


def test_a_renamed_file_changes_the_measurement(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "data.bin").rename(bundle / "data.bim")
    assert measure_bundle(bundle) != before


def test_moving_a_file_into_a_directory_changes_the_measurement(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "data.bin").rename(bundle / "pkg" / "data.bin")
    assert measure_bundle(bundle) != before


def test_an_added_empty_directory_changes_the_measurement(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "empty").mkdir()
    assert measure_bundle(bundle) != before


def test_an_added_empty_file_changes_the_measurement(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "empty").write_bytes(b"")
    assert measure_bundle(bundle) != before


def test_an_empty_file_and_an_empty_directory_differ(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").mkdir()
    assert measure_bundle(tmp_path / "a") != measure_bundle(tmp_path / "b")


def test_file_boundaries_are_part_of_the_measurement(tmp_path: Path) -> None:
    # "ab" + "c" must not measure like "a" + "bc".
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1").write_bytes(b"ab")
    (tmp_path / "a" / "2").write_bytes(b"c")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "1").write_bytes(b"a")
    (tmp_path / "b" / "2").write_bytes(b"bc")
    assert measure_bundle(tmp_path / "a") != measure_bundle(tmp_path / "b")


@pytest.mark.parametrize("mode", [0o744, 0o700, 0o711, 0o701])
def test_the_exec_bit_changes_the_measurement(bundle: Path, mode: int) -> None:
    before = measure_bundle(bundle)
    (bundle / "data.bin").chmod(mode)
    assert measure_bundle(bundle) != before


@pytest.mark.parametrize(("first", "second"), [(0o644, 0o600), (0o644, 0o444), (0o755, 0o700)])
def test_other_mode_bits_are_ignored(bundle: Path, first: int, second: int) -> None:
    (bundle / "data.bin").chmod(first)
    before = measure_bundle(bundle)
    (bundle / "data.bin").chmod(second)
    assert measure_bundle(bundle) == before


def test_pycache_and_pyc_files_are_ignored(bundle: Path) -> None:
    before = measure_bundle(bundle)
    cache = bundle / "pkg" / "__pycache__"
    cache.mkdir()
    (cache / "app.cpython-311.pyc").write_bytes(b"\x00compiled")
    (cache / "notes.txt").write_text("anything under __pycache__ is skipped")
    (bundle / "legacy.pyc").write_bytes(b"\x00old style")
    (bundle / "__pycache__").mkdir()
    assert measure_bundle(bundle) == before


def test_a_py_file_is_not_ignored_like_a_pyc(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "legacy.py").write_text("")
    assert measure_bundle(bundle) != before


def test_symlinks_are_recorded_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    root = make_bundle(tmp_path / "bundle")
    (root / "link").symlink_to(outside)
    before = measure_bundle(root)
    outside.write_text("two")  # the target's content is not part of the measurement
    assert measure_bundle(root) == before
    (root / "link").unlink()
    (root / "link").symlink_to(tmp_path / "other.txt")  # the target's name is
    assert measure_bundle(root) != before


def test_a_symlink_differs_from_a_copy_of_its_target(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "a")
    second = make_bundle(tmp_path / "b")
    (first / "copy").write_text("print('hello')\n")
    (second / "copy").symlink_to("pkg/app.py")
    assert measure_bundle(first) != measure_bundle(second)


def test_a_dangling_symlink_is_measured(bundle: Path) -> None:
    before = measure_bundle(bundle)
    (bundle / "dangling").symlink_to("does/not/exist")
    assert measure_bundle(bundle) != before


def test_a_symlinked_directory_is_not_walked(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = make_bundle(tmp_path / "bundle")
    (root / "lib").symlink_to(outside, target_is_directory=True)
    before = measure_bundle(root)
    (outside / "new.py").write_text("x = 1\n")
    assert measure_bundle(root) == before


def test_a_fifo_is_refused(bundle: Path) -> None:
    os.mkfifo(bundle / "pkg" / "pipe")
    with pytest.raises(BundleError, match="special file in bundle: pkg/pipe"):
        measure_bundle(bundle)


def test_a_file_is_not_a_bundle(bundle: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        measure_bundle(bundle / "data.bin")


def test_a_missing_directory_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        measure_bundle(tmp_path / "missing")


def test_bundle_error_is_a_geode_error() -> None:
    assert issubclass(BundleError, GeodeError)


# -- simulated quotes --------------------------------------------------------------------------


@functools.cache
def platform() -> SimulatedPlatform:
    return SimulatedPlatform.generate()


@functools.cache
def quote_bytes() -> bytes:
    evidence = platform().quote(
        MEASUREMENT,
        REPORT_DATA,
        debug=True,
        signer=bytes([7]) * 32,
        product_id=16,
        svn=3,
    )
    return evidence.data


def verify(data: bytes) -> Claims:
    return verify_simulated_quote(data, [platform().public_key])


def test_quote_round_trip_gives_the_claims() -> None:
    claims = verify(quote_bytes())
    assert claims == Claims(
        tee="simulated",
        measurement=MEASUREMENT,
        report_data=REPORT_DATA,
        debug=True,
        signer=bytes([7]) * 32,
        product_id=16,
        svn=3,
        tcb_status="Simulated",
        checked=frozenset({"signature"}),
        platform=platform_key_id(platform().public_key).hex(),
    )


def test_quote_defaults() -> None:
    evidence = platform().quote(MEASUREMENT, REPORT_DATA)
    assert evidence.kind == "simulated"
    claims = verify(evidence.data)
    assert (claims.debug, claims.signer, claims.product_id, claims.svn) == (
        False,
        bytes(32),
        0,
        0,
    )


def test_quote_layout() -> None:
    data = quote_bytes()
    assert len(data) == QUOTE_SIZE
    assert data[0:8] == b"GEODESIM"
    assert struct.unpack_from("<HHHH", data, 8) == (1, 1, 3, 16)
    assert data[16:48] == MEASUREMENT
    assert data[80:144] == REPORT_DATA
    assert data[144:176] == platform_key_id(platform().public_key)
    platform().public_key.verify(data[SIGNED_SIZE:], data[:SIGNED_SIZE])


def test_platform_key_id_is_sha256_of_the_raw_public_key() -> None:
    raw = platform().public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert platform_key_id(platform().public_key) == hashlib.sha256(raw).digest()


def test_verify_accepts_a_mapping_of_trusted_keys() -> None:
    key = platform().public_key
    assert verify_simulated_quote(quote_bytes(), {platform_key_id(key): key}).svn == 3


@pytest.mark.parametrize(
    ("measurement", "report_data", "signer"),
    [
        (bytes(31), REPORT_DATA, bytes(32)),
        (MEASUREMENT, bytes(63), bytes(32)),
        (MEASUREMENT, REPORT_DATA, bytes(33)),
    ],
)
def test_quote_refuses_wrong_sizes(measurement: bytes, report_data: bytes, signer: bytes) -> None:
    with pytest.raises(ValueError):
        platform().quote(measurement, report_data, signer=signer)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_is_rejected(mask: int) -> None:
    original = quote_bytes()
    for index in range(QUOTE_SIZE):
        tampered = bytearray(original)
        tampered[index] ^= mask
        with pytest.raises(EvidenceError) as info:
            verify(bytes(tampered))
        assert info.value.field is not None, index


@pytest.mark.parametrize(
    ("index", "field"),
    [(0, "magic"), (7, "magic"), (8, "version"), (10, "flags"), (150, "platform_key_id")],
)
def test_a_flip_in_a_header_field_names_the_field(index: int, field: str) -> None:
    tampered = bytearray(quote_bytes())
    tampered[index] ^= 0x02
    with pytest.raises(EvidenceError) as info:
        verify(bytes(tampered))
    assert info.value.field == field


@pytest.mark.parametrize("index", [10, 12, 14, 16, 60, 100, 143, 176, 239])
def test_a_flip_in_signed_content_fails_the_signature(index: int) -> None:
    tampered = bytearray(quote_bytes())
    tampered[index] ^= 0x01  # bit 0 of the flags is the debug flag, a known flag
    with pytest.raises(EvidenceError) as info:
        verify(bytes(tampered))
    assert info.value.field == "signature"
    assert info.value.offset == SIGNED_SIZE


def test_every_truncation_names_a_field() -> None:
    original = quote_bytes()
    for length in range(QUOTE_SIZE):
        with pytest.raises(EvidenceError) as info:
            verify(original[:length])
        assert info.value.field == "quote"
        assert info.value.offset == length
        assert "truncated" in str(info.value)


@pytest.mark.parametrize("extra", [b"\x00", b"trailing", bytes(240)])
def test_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(EvidenceError, match="trailing bytes") as info:
        verify(quote_bytes() + extra)
    assert info.value.field == "quote"


def test_an_untrusted_platform_key_is_rejected() -> None:
    other = SimulatedPlatform.generate()
    with pytest.raises(EvidenceError) as info:
        verify_simulated_quote(quote_bytes(), [other.public_key])
    assert info.value.field == "platform_key_id"
    assert info.value.offset == 144


def test_no_trusted_keys_rejects_everything() -> None:
    with pytest.raises(EvidenceError) as info:
        verify_simulated_quote(quote_bytes(), [])
    assert info.value.field == "platform_key_id"


def test_a_key_id_claiming_a_trusted_key_with_another_signature_is_rejected() -> None:
    # A forger copies the trusted key id into a quote it signs with its own key.
    forger = Ed25519PrivateKey.generate()
    body = quote_bytes()[:SIGNED_SIZE]
    forged = body + forger.sign(body)
    with pytest.raises(EvidenceError) as info:
        verify(forged)
    assert info.value.field == "signature"


def test_evidence_error_message_names_field_and_offset() -> None:
    with pytest.raises(EvidenceError) as info:
        verify(b"")
    assert str(info.value) == "quote (offset 0): truncated: 0 bytes, expected 240"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_evidence_errors(data: bytes) -> None:
    with pytest.raises(EvidenceError):
        verify(data)


@settings(max_examples=200, deadline=None)
@given(
    magic=st.sampled_from([b"GEODESIM", b"GEODESIX"]),
    version=st.integers(0, 2) | st.integers(0, 0xFFFF),
    flags=st.integers(0, 2) | st.integers(0, 0xFFFF),
    rest=st.binary(min_size=QUOTE_SIZE - 12, max_size=QUOTE_SIZE - 12),
    keep_key_id=st.booleans(),
)
def test_well_framed_garbage_raises_only_evidence_errors(
    magic: bytes, version: int, flags: int, rest: bytes, keep_key_id: bool
) -> None:
    data = bytearray(magic + struct.pack("<HH", version, flags) + rest)
    if keep_key_id:
        data[144:176] = platform_key_id(platform().public_key)
    with pytest.raises(EvidenceError):
        verify(bytes(data))


# -- evidence envelopes ------------------------------------------------------------------------


def test_evidence_json_round_trip() -> None:
    evidence = Evidence("simulated", quote_bytes())
    assert Evidence.from_json(evidence.to_json()) == evidence


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, "evidence"),
        ({"kind": "simulated"}, "evidence"),
        ({"kind": "simulated", "data": "", "extra": 1}, "evidence"),
        ({"kind": "tpm", "data": ""}, "evidence.kind"),
        ({"kind": "simulated", "data": 5}, "evidence.data"),
        ({"kind": "simulated", "data": "not base64!"}, "evidence.data"),
        ({"kind": "simulated", "data": "A" * 200_000}, "evidence.data"),
    ],
)
def test_evidence_from_json_refuses_bad_input(value: object, field: str) -> None:
    with pytest.raises(EvidenceError) as info:
        Evidence.from_json(value)
    assert info.value.field == field


# -- the verifier ------------------------------------------------------------------------------


def simulated_evidence() -> Evidence:
    return Evidence("simulated", quote_bytes())


def test_verifier_accepts_simulated_evidence_when_enabled() -> None:
    verifier = EvidenceVerifier(simulation=True, platform_keys=[platform().public_key])
    assert verifier.verify(simulated_evidence()).measurement == MEASUREMENT


def test_verifier_refuses_simulated_evidence_when_simulation_is_off() -> None:
    verifier = EvidenceVerifier(simulation=False, platform_keys=[platform().public_key])
    with pytest.raises(EvidenceError, match="simulation is not enabled") as info:
        verifier.verify(simulated_evidence())
    assert info.value.field == "kind"


def test_verifier_default_is_no_simulation() -> None:
    with pytest.raises(EvidenceError, match="simulation"):
        EvidenceVerifier().verify(simulated_evidence())


def test_verifier_needs_the_platform_key() -> None:
    verifier = EvidenceVerifier(simulation=True)
    with pytest.raises(EvidenceError) as info:
        verifier.verify(simulated_evidence())
    assert info.value.field == "platform_key_id"


def test_verifier_refuses_unknown_kinds() -> None:
    verifier = EvidenceVerifier(simulation=True, platform_keys=[platform().public_key])
    with pytest.raises(EvidenceError, match="unknown evidence kind") as info:
        verifier.verify(Evidence("tpm", quote_bytes()))
    assert info.value.field == "kind"


@pytest.mark.parametrize("kind", ["sgx", "tdx", "sev-snp", "nvidia"])
def test_hardware_verifiers_refuse_a_simulated_quote(kind: str) -> None:
    verifier = EvidenceVerifier(simulation=True, platform_keys=[platform().public_key])
    with pytest.raises(EvidenceError):
        verifier.verify(Evidence(kind, quote_bytes()))


# -- report-data bindings ----------------------------------------------------------------------


def test_key_binding_is_64_bytes_of_sha256_then_zeros() -> None:
    binding = key_binding(b"key", b"nonce")
    assert len(binding) == REPORT_DATA_SIZE == 64
    assert binding == hashlib.sha256(b"keynonce").digest() + bytes(32)


def test_statement_binding_is_64_bytes_of_sha256_then_zeros() -> None:
    binding = statement_binding(b"root", bytes(32), b"nonce")
    assert len(binding) == 64
    assert binding == hashlib.sha256(b"root" + bytes(32) + b"nonce").digest() + bytes(32)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((b"key", b"nonce"), (b"key", b"nonce2")),
        ((b"key", b"nonce"), (b"key2", b"nonce")),
    ],
)
def test_key_binding_differs_for_different_inputs(
    first: tuple[bytes, bytes], second: tuple[bytes, bytes]
) -> None:
    assert key_binding(*first) != key_binding(*second)


@pytest.mark.parametrize(
    "other",
    [
        (b"root2", bytes(32), b"nonce"),
        (b"root", bytes(31) + b"\x01", b"nonce"),
        (b"root", bytes(32), b"nonce2"),
    ],
)
def test_statement_binding_differs_for_different_inputs(other: tuple[bytes, bytes, bytes]) -> None:
    assert statement_binding(b"root", bytes(32), b"nonce") != statement_binding(*other)


def test_key_and_statement_bindings_are_deterministic() -> None:
    assert key_binding(b"k", b"n") == key_binding(b"k", b"n")
    assert statement_binding(b"r", bytes(32), b"n") == statement_binding(b"r", bytes(32), b"n")


# -- matching claims against reference values --------------------------------------------------

CLAIMS = Claims(
    tee="sgx",
    measurement=MEASUREMENT,
    report_data=bytes(64),
    debug=False,
    signer=bytes([9]) * 32,
    product_id=16,
    svn=2,
    tcb_status="UpToDate",
)
REFERENCE = ReferenceValues(
    tee="sgx",
    measurement=MEASUREMENT.hex(),
    signer=(bytes([9]) * 32).hex(),
    product_id=16,
    min_svn=2,
    debug=False,
)


def test_matching_claims_pass() -> None:
    match_claims(CLAIMS, REFERENCE)
    match_claims(CLAIMS, ReferenceValues(tee="sgx", measurement=MEASUREMENT.hex()))
    match_claims(CLAIMS, ReferenceValues(tee="sgx", signer=REFERENCE.signer, product_id=16))


def test_debug_claims_pass_when_debug_is_allowed() -> None:
    match_claims(
        dataclasses.replace(CLAIMS, debug=True), REFERENCE.model_copy(update={"debug": True})
    )


def test_a_production_enclave_matches_a_debug_package() -> None:
    match_claims(CLAIMS, REFERENCE.model_copy(update={"debug": True}))


@pytest.mark.parametrize(
    ("claims", "reference", "reason"),
    [
        (CLAIMS, REFERENCE.model_copy(update={"measurement": "00" * 32}), "measurement mismatch"),
        (dataclasses.replace(CLAIMS, measurement=bytes(32)), REFERENCE, "measurement mismatch"),
        (CLAIMS, REFERENCE.model_copy(update={"tee": "tdx"}), "tee mismatch"),
        (dataclasses.replace(CLAIMS, tee="simulated"), REFERENCE, "tee mismatch"),
        (CLAIMS, REFERENCE.model_copy(update={"signer": "00" * 32}), "signer mismatch"),
        (CLAIMS, REFERENCE.model_copy(update={"product_id": 17}), "product id mismatch"),
        (CLAIMS, REFERENCE.model_copy(update={"min_svn": 3}), "security version too low"),
        (dataclasses.replace(CLAIMS, debug=True), REFERENCE, "debug mode not allowed"),
    ],
    ids=[
        "measurement",
        "claimed measurement",
        "tee",
        "claimed tee",
        "signer",
        "product id",
        "svn",
        "debug",
    ],
)
def test_mismatches_give_stable_reasons(
    claims: Claims, reference: ReferenceValues, reason: str
) -> None:
    with pytest.raises(ClaimsMismatch) as info:
        match_claims(claims, reference)
    assert info.value.reason == reason


def test_measurement_mismatch_detail_shows_the_claimed_value() -> None:
    with pytest.raises(ClaimsMismatch) as info:
        match_claims(CLAIMS, REFERENCE.model_copy(update={"measurement": "00" * 32}))
    assert MEASUREMENT.hex() in info.value.detail


def test_measurement_comparison_is_case_insensitive_in_the_reference() -> None:
    match_claims(CLAIMS, REFERENCE.model_copy(update={"measurement": MEASUREMENT.hex().upper()}))


def test_simulated_quote_claims_match_a_simulated_package() -> None:
    claims = verify(platform().quote(MEASUREMENT, REPORT_DATA).data)
    match_claims(claims, ReferenceValues(tee="simulated", measurement=MEASUREMENT.hex()))
    with pytest.raises(ClaimsMismatch, match="debug"):
        match_claims(
            verify(quote_bytes()),
            ReferenceValues(tee="simulated", measurement=MEASUREMENT.hex()),
        )


# -- the platform key file ---------------------------------------------------------------------


def test_load_or_create_writes_a_0600_key_and_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "simulation" / "platform.key"
    created = SimulatedPlatform.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    again = SimulatedPlatform.load_or_create(path)
    assert platform_key_id(again.public_key) == platform_key_id(created.public_key)
    evidence = again.quote(MEASUREMENT, REPORT_DATA)
    assert verify_simulated_quote(evidence.data, [created.public_key]).measurement == MEASUREMENT


def test_load_or_create_uses_the_environment_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.key"
    monkeypatch.setenv("GEODE_PLATFORM_KEY", str(path))
    created = SimulatedPlatform.load_or_create()
    assert path.exists()
    assert SimulatedPlatform.load(path).public_key == created.public_key


def test_two_platforms_have_different_keys(tmp_path: Path) -> None:
    first = SimulatedPlatform.load_or_create(tmp_path / "a.key")
    second = SimulatedPlatform.load_or_create(tmp_path / "b.key")
    assert platform_key_id(first.public_key) != platform_key_id(second.public_key)


def test_load_refuses_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "platform.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(EvidenceError, match="not a simulated platform key"):
        SimulatedPlatform.load_or_create(path)


def test_load_refuses_a_key_of_another_type(tmp_path: Path) -> None:
    path = tmp_path / "platform.key"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(EvidenceError, match="Ed25519"):
        SimulatedPlatform.load(path)


def test_load_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "platform.key"
    SimulatedPlatform.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(EvidenceError, match="readable by other users"):
        SimulatedPlatform.load(path)
