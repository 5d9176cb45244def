"""A tiny confidential service: shows the identity and secrets Geode gave it, then exits."""

import os
import ssl
import sys
from pathlib import Path

from cryptography import x509

cert = x509.load_pem_x509_certificates(Path(os.environ["GEODE_CERT_FILE"]).read_bytes())[0]
sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
token_bytes = len(os.environ["API_TOKEN"]) // 2
db_key = Path(os.environ["GEODE_SECRETS_DIR"], "db.key").read_bytes()
print(f"hello: I am {os.environ['GEODE_SPIFFE_ID']} (instance {os.environ['GEODE_INSTANCE_ID']})")
print(f"hello: certificate URI SAN {uris}, issued by {cert.issuer.rfc4514_string()}")
print(f"hello: GREETING={os.environ['GREETING']!r}, API_TOKEN has {token_bytes} bytes")
print(f"hello: db.key has {len(db_key)} bytes; args {sys.argv[1:]}")
context = ssl.create_default_context(cafile=os.environ["GEODE_CA_FILE"])
context.load_cert_chain(os.environ["GEODE_CERT_FILE"], os.environ["GEODE_KEY_FILE"])
print("hello: my certificate and key load into an SSLContext: ready for mutual TLS")
