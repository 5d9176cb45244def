"""Pin the bookstore bundles' measurements in manifest.yaml (after changing a bundle).

Usage: python examples/bookstore/pin.py [--check]. With --check, only report stale pins (exit 1).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from geode.attestation import measure_bundle

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.yaml"
PACKAGES = ("bookbuyer", "bookthief", "bookstore", "bookwarehouse", "database")


def pinned(text: str, package: str) -> str:
    found = re.search(rf'^  {package}: {{.*measurement: "([0-9a-f]{{64}})"', text, re.MULTILINE)
    if found is None:
        raise SystemExit(f"{MANIFEST}: no measurement line for package {package}")
    return found.group(1)


def stale(text: str) -> dict[str, str]:
    """The packages whose pinned measurement is not their bundle's: name -> measurement."""
    actual = {name: measure_bundle(HERE / name).hex() for name in PACKAGES}
    return {name: value for name, value in actual.items() if pinned(text, name) != value}


def main() -> int:
    text = MANIFEST.read_text()
    changes = stale(text)
    if "--check" in sys.argv:
        for name in changes:
            print(f"{name}: pinned measurement is stale", file=sys.stderr)
        return 1 if changes else 0
    for name, value in changes.items():
        line = re.compile(rf'^(  {name}: {{.*measurement: ")[0-9a-f]{{64}}(")', re.MULTILINE)
        text = line.sub(rf"\g<1>{value}\g<2>", text, count=1)
        print(f"{name}: pinned {value}")
    MANIFEST.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
