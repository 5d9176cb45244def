"""bookthief: makes the buyer's calls, and more, and must steal nothing.

Under ``geode run`` it is a perfectly attested service with its own mesh certificate: what stops
it is the traffic policy (403 from the bookstore's transparent TLS ingress and from the
warehouse's ``PolicyMiddleware``). Its page counts what it stole (0) and what was refused.

``--self-signed``, run outside ``geode run``: no attestation, so no mesh certificate; it makes a
CA and a certificate of its own, claiming the buyer's SPIFFE id, and fails every handshake.
It then prints its counts as JSON lines instead of serving a page.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

COUNTS = {"stolen": 0, "refused": 0, "handshake_failures": 0, "errors": 0}
LAST: dict[str, str] = {}
STARTED = time.time()


async def steal(http: httpx.AsyncClient, interval: float) -> None:
    targets = [("GET", os.environ["BOOKSTORE_URL"] + "/buy-a-book/new", None)]
    if os.environ.get("WAREHOUSE_URL"):
        restock = {"title": "The Count of Monte Cristo", "copies": 1}
        targets.append(("POST", os.environ["WAREHOUSE_URL"] + "/restock-books", restock))
    while True:
        for method, url, body in targets:
            try:
                answer = await http.request(method, url, json=body)
                if answer.status_code == 200:
                    COUNTS["stolen"] += 1
                    LAST["stolen"] = answer.text[:200]
                else:
                    COUNTS["refused"] += 1
                    LAST["refusal"] = f"{answer.status_code} {answer.text[:200]}"
            except httpx.TransportError as exc:
                refusal = tls_refusal(exc)
                if refusal is not None:  # the server refused this certificate in the handshake
                    COUNTS["handshake_failures"] += 1
                    LAST["handshake"] = refusal[:200]
                else:
                    COUNTS["errors"] += 1
                    LAST["error"] = f"{type(exc).__name__}: {exc}"[:200]
            except Exception as exc:
                COUNTS["errors"] += 1
                LAST["error"] = f"{type(exc).__name__}: {exc}"[:200]
        await asyncio.sleep(interval)


def tls_refusal(exc: BaseException) -> str | None:
    """Why the TLS handshake did not complete, if that is what ``exc`` comes from (the server
    refused the certificate: with an alert, or by closing mid-handshake); ``None`` for anything
    else (nobody listening, a timeout, a connection cut after the handshake)."""
    if not isinstance(exc, httpx.ConnectError):  # the handshake is part of connecting
        return None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def snapshot() -> dict[str, object]:
    uptime = int(time.time() - STARTED)
    return {"service": "bookthief", "uptime_s": uptime, **COUNTS, "last": LAST}


async def raw(_request: Request) -> JSONResponse:
    return JSONResponse(snapshot())


async def page(_request: Request) -> HTMLResponse:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in {**COUNTS, **LAST}.items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1>"
        "<title>bookthief</title><h1>bookthief</h1>"
        f"<p>Books stolen: <b id=stolen>{COUNTS['stolen']}</b></p><table>{rows}</table>"
    )


async def attested() -> None:
    from geode.runtime import Credentials, mesh_async_client

    credentials = Credentials.from_env()
    context = credentials.public_ssl_context()
    pages = Starlette(routes=[Route("/", page), Route("/raw", raw)])
    server = uvicorn.Server(
        uvicorn.Config(
            pages,
            host="127.0.0.1",
            port=int(os.environ["PAGE_PORT"]),
            ssl_context_factory=lambda _config, _default: context,
            log_level="warning",
        )
    )
    interval = float(os.environ.get("BUY_INTERVAL", "0.5"))
    credentials.watch(5.0, loop=asyncio.get_running_loop())  # renewed certificates
    async with mesh_async_client(credentials, None, timeout=5) as http:  # any mesh server
        await asyncio.gather(server.serve(), steal(http, interval))


def self_made_identity(directory: Path, claimed: str) -> tuple[Path, Path]:
    """A CA and a leaf of the thief's own making, claiming ``claimed`` as SPIFFE id."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Totally Legit Mesh CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bookbuyer")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(claimed)]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "thief.pem", directory / "thief.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


async def self_signed(seconds: float) -> None:
    # Outside geode run nothing sets the addresses: the demo's own, unless given.
    os.environ.setdefault("BOOKSTORE_URL", "https://localhost:14001")
    os.environ.setdefault("WAREHOUSE_URL", "https://localhost:14002")
    with tempfile.TemporaryDirectory() as directory:
        claimed = os.environ.get("CLAIMED_ID", "spiffe://bookstore.geode.local/service/bookbuyer")
        cert_file, key_file = self_made_identity(Path(directory), claimed)
        context = ssl.create_default_context()
        context.check_hostname = False  # the thief would accept any server: it wants the books
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(cert_file, key_file)
        # TLS 1.2: the server judges the client's certificate inside the handshake, so a refusal
        # ends the handshake (in TLS 1.3 the client would be done before the server judges).
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(verify=context, timeout=5) as http:
            task = asyncio.create_task(steal(http, 0.2))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                print(json.dumps(snapshot()), flush=True)
            task.cancel()


if __name__ == "__main__":
    if "--self-signed" in sys.argv:
        asyncio.run(self_signed(float(os.environ.get("THIEF_SECONDS", "5"))))
    else:
        asyncio.run(attested())
