"""Helpers of the attestation tests, one module per kind of evidence: synthetic ``intel``,
``snp`` and ``nvidia`` evidence under test roots, and the real ``vectors`` from public projects."""
