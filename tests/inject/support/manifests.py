"""A manifest with a service in each TEE kind, for the webhook's TEE tests."""

from __future__ import annotations

from geode.inject import ServiceTees

SIMULATED = "ab" * 32
SIGNER = "cd" * 32
SNP = "ef" * 48
MRTD = "01" * 48

MANIFEST = f"""
version: 1
trust_domain: shop.test
packages:
  app: {{tee: simulated, measurement: "{SIMULATED}"}}
  enclave: {{tee: sgx, signer: "{SIGNER}", product_id: 1, min_svn: 1}}
  vm: {{tee: sev-snp, measurement: "{SNP}"}}
  td: {{tee: tdx, mrtd: "{MRTD}"}}
services:
  bookstore: {{package: app}}
  bookwarehouse: {{package: app}}
  ledger: {{package: enclave}}
  vault: {{package: vm}}
  search: {{package: td}}
""".encode()

TEES = ServiceTees.from_manifest(MANIFEST)
"""bookstore and bookwarehouse simulated, ledger sgx, vault sev-snp, search tdx."""
