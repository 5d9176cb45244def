"""Helpers of the confidential-database tests: ``mariadb`` (a deployment's certificates on disk,
TLS clients, checksums, a plaintext search of a data directory)."""
