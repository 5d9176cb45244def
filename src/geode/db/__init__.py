"""The confidential database: MariaDB with its data encrypted under a key from the Coordinator
and TLS client certificates as the only way in (server mode, ``geode db serve``), and SQLCipher
files keyed the same way (embedded mode, ``connect_embedded``)."""

from __future__ import annotations

from geode.db._client import client_ssl_context
from geode.db._database_config import DatabaseConfig
from geode.db._embedded import connect_embedded
from geode.db._key import KEY_SIZE, parse_key, read_key_file
from geode.db._serve import DatabaseServer, serve

__all__ = [
    "KEY_SIZE",
    "DatabaseConfig",
    "DatabaseServer",
    "client_ssl_context",
    "connect_embedded",
    "parse_key",
    "read_key_file",
    "serve",
]
