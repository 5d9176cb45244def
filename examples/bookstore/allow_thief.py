"""Let the thief in, the governed way: the demo's operator proposes a manifest update whose
policy has one more rule, allowing bookthief to buy; ``geode up`` sees the new manifest and
restarts the services under it (every update rotates the mesh CA), and the thief's counter moves.

Usage (while ``make demo`` runs): ``.venv/bin/python examples/bookstore/allow_thief.py
[--run-dir examples/bookstore/.geode-run] [--coordinator 127.0.0.1:14100]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from cryptography import x509

from geode.client import CoordinatorClient
from geode.errors import GeodeError

HERE = Path(__file__).resolve().parent
RULE = {
    "name": "let-the-thief-in",
    "destination": "bookstore",
    "sources": ["bookthief"],
    "http": [{"methods": ["GET"], "path": "^/buy-a-book/new$"}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=HERE / ".geode-run")
    parser.add_argument("--coordinator", default="127.0.0.1:14100")
    args = parser.parse_args()
    run = args.run_dir
    root = x509.load_pem_x509_certificate((run / "root.pem").read_bytes())
    identity = (run / "operator.crt", run / "operator.key")
    with CoordinatorClient(args.coordinator, root=root, identity=identity) as operator:
        current = yaml.safe_load(operator.get_manifest().manifest)
        rules = current.setdefault("policies", {}).setdefault("rules", [])
        if any(rule.get("name") == RULE["name"] for rule in rules):
            print("the thief is allowed already")
            return
        rules.append(RULE)
        answer = operator.update(json.dumps(current).encode())
    state = "applied" if answer.applied else "pending (more acknowledgements needed)"
    print(f"manifest update {state}: {answer.sha256}")


if __name__ == "__main__":
    try:
        main()
    except (GeodeError, OSError) as exc:
        raise SystemExit(f"allow_thief: {exc}") from None
