"""Evidence verification cost: verifications per second, per kind, in one process.

What is measured
----------------
``EvidenceVerifier.verify`` -- the call the Coordinator makes for every activation -- on real
evidence from ``../shared/vectors`` (see its SOURCES.txt), at a time inside the windows of its
certificates and collateral:

- ``simulated``: a simulated quote (Ed25519), for scale;
- ``sgx`` and ``tdx``: dcap-qvl's SGX v3 and TDX v4 quotes, chain only (``Unverified``) and
  with their collateral (TCB info, QE identity, root and PCK CRLs: the TCB status);
- ``sev-snp``: go-sev-guest's Milan v2 report with its VCEK, and veraison's Genoa report with
  its configfs-tsm auxblob (the chain travels with the report);
- ``nvidia``: nvtrust's H100 SPDM report with its five-certificate chain.

A kind whose verifier has not landed is reported as such. Each case is verified once untimed
(parsed collateral, pinned roots and similar caches warm up, as in a running Coordinator), then
in ``--rounds`` timed rounds of ``--seconds`` each; the median round is reported. The floor is
in-process ECDSA P-256 verifications per second on the same machine, so ratios can be compared
across machines.

Run: ``.venv/bin/python benchmarks/evidence.py [--seconds 2 --rounds 3] [--json | --markdown]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import Evidence, EvidenceVerifier, SimulatedPlatform
from geode.errors import EvidenceError

REPO = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path:
    for candidate in (
        os.environ.get("GEODE_VECTORS"),
        REPO.parent / "shared" / "vectors",
        "/work/shared/vectors",
    ):
        if candidate and (Path(candidate) / "SHA256SUMS").is_file():
            return Path(candidate)
    sys.exit("test vectors not found: set GEODE_VECTORS to the shared vectors folder")


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    data: bytes
    at: datetime.datetime
    certs: bytes | None = None
    collateral: bytes | None = None


def cases(vectors: Path) -> list[Case]:
    def read(name: str) -> bytes:
        return (vectors / name).read_bytes()

    return [
        Case("sgx v3, chain only", "sgx", read("sgx_v3_dcapqvl.quote.bin"), utc("2025-07-01")),
        Case(
            "sgx v3, with collateral",
            "sgx",
            read("sgx_v3_dcapqvl.quote.bin"),
            utc("2025-07-01"),
            collateral=read("sgx_v3_dcapqvl.collateral.json"),
        ),
        Case("tdx v4, chain only", "tdx", read("tdx_v4_dcapqvl.quote.bin"), utc("2025-07-01")),
        Case(
            "tdx v4, with collateral",
            "tdx",
            read("tdx_v4_dcapqvl.quote.bin"),
            utc("2025-07-01"),
            collateral=read("tdx_v4_dcapqvl.collateral.json"),
        ),
        Case(
            "sev-snp Milan v2, VCEK given",
            "sev-snp",
            read("snp_milan_v2_vcek.report.bin"),
            utc("2026-01-01"),
            certs=read("snp_milan_v2_vcek.vcek.der"),
        ),
        Case(
            "sev-snp Genoa v3, auxblob",
            "sev-snp",
            read("snp_genoa_v3_configfs_tsm.outblob.bin")
            + read("snp_genoa_v3_configfs_tsm.auxblob.bin"),
            utc("2026-01-01"),
        ),
        Case(
            "nvidia H100 SPDM",
            "nvidia",
            read("nvidia_h100_spdm.report.bin"),
            utc("2026-11-27"),
            certs=read("nvidia_h100_spdm.certchain.pem"),
        ),
    ]


def rate(call: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        call()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def ecdsa_floor(seconds: float) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    signature = key.sign(b"x" * 64, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    return rate(lambda: public.verify(signature, b"x" * 64, ec.ECDSA(hashes.SHA256())), seconds)


def measure(args: argparse.Namespace) -> dict[str, object]:
    platform_key = SimulatedPlatform.generate()
    simulated = platform_key.quote(bytes(32), bytes(64))
    results: list[dict[str, object]] = []

    def run_case(name: str, kind: str, verify: Callable[[], object]) -> None:
        try:
            claims = verify()
        except EvidenceError as exc:
            if "not supported yet" in str(exc):
                results.append({"case": name, "kind": kind, "status": "not landed"})
                return
            raise
        rounds = [rate(verify, args.seconds) for _ in range(args.rounds)]
        median = statistics.median(rounds)
        results.append(
            {
                "case": name,
                "kind": kind,
                "per_second": round(median, 1),
                "rounds": [round(r, 1) for r in rounds],
                "microseconds": round(1e6 / median),
                "tcb_status": getattr(claims, "tcb_status", ""),
            }
        )

    verifier = EvidenceVerifier(simulation=True, platform_keys=[platform_key.public_key])
    run_case("simulated", "simulated", lambda: verifier.verify(simulated))
    hardware = EvidenceVerifier()
    for case in cases(vectors_dir()):
        evidence = Evidence(case.kind, case.data)

        def verify(case: Case = case, evidence: Evidence = evidence) -> object:
            return hardware.verify(
                evidence, certs=case.certs, collateral=case.collateral, at=case.at
            )

        run_case(case.name, case.kind, verify)
    return {
        "results": results,
        "ecdsa_p256_verify_per_second": round(ecdsa_floor(args.seconds), 1),
        "machine": machine(),
        "command": "python benchmarks/evidence.py " + " ".join(sys.argv[1:]),
    }


def machine() -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography

    return {
        "cpus": str(os.cpu_count()),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a timed round")
    parser.add_argument("--rounds", type=int, default=3)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--markdown", action="store_true", help="rows for RESULTS.md")
    args = parser.parse_args()
    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    floor = report["ecdsa_p256_verify_per_second"]
    results = report["results"]
    assert isinstance(results, list)
    assert isinstance(floor, float)
    if args.markdown:
        commit = report["machine"]["commit"]  # type: ignore[index]
        for row in results:
            if "per_second" not in row:
                print(f"| {commit} | {row['case']} | not landed | | | |")
                continue
            ratio = row["per_second"] / floor
            print(
                f"| {commit} | {row['case']} | {row['per_second']} | {row['microseconds']} "
                f"| {row['tcb_status']} | {ratio:.3f} |"
            )
        print(f"floor: ECDSA P-256 verify/s {floor}")
        return
    for row in results:
        if "per_second" not in row:
            print(f"{row['case']:<32} not landed")
            continue
        print(
            f"{row['case']:<32} {row['per_second']:>9.1f}/s {row['microseconds']:>7} µs"
            f"  {row['tcb_status']}"
        )
    print(f"{'ECDSA P-256 verify (floor)':<32} {floor:>9.1f}/s")
    print("machine:", json.dumps(report["machine"]))


if __name__ == "__main__":
    main()
