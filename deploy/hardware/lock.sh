#!/usr/bin/env bash
# Print requirements.lock: Geode's runtime dependencies as resolved for the images' Python
# (CPython 3.11, x86-64 glibc), binary wheels only, each pinned to the sha256 of its one file.
# Usage: deploy/hardware/lock.sh > deploy/hardware/requirements.lock   (then review the diff)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip install --quiet --dry-run --ignore-installed --report "$work/report.json" \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --target "$work/target" "$repo"

"$python" - "$work/report.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
print("# Geode's runtime dependencies, locked by hash, for the Coordinator images (deploy/hardware).")
print("# For CPython 3.11 on x86-64 glibc (Debian 12's python3): binary wheels only, one per package.")
print("# Installed with: pip install --require-hashes --no-deps --only-binary=:all: -r requirements.lock")
print("# Regenerate (and review the diff) with: deploy/hardware/lock.sh > deploy/hardware/requirements.lock")
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
    if name == "geode":
        continue  # built from this tree by the image recipes
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    print(f"{name}=={version} \\\n    --hash=sha256:{digest}")
PY
