"""The paths of the data-plane benchmark: the app, a throwaway mesh PKI, and the processes that
stand between the load generator and the app on each path.

- ``a``: the app on uvicorn (httptools, uvloop), plaintext. ``a-tls``: the same with the server's
  mesh TLS context and nothing else of Geode's (a diagnostic).
- ``b``: the app under ``serve_asgi``.
- ``c1``: a Geode ingress (``TransparentProxy``, http ``IngressRoute``) in front of the app of
  ``a``; ``c``: a Geode egress (``TransparentProxy`` with an ``EgressRoute``) in front of that.
- ``c0``: a diagnostic floor for ``c``: two bare uvloop relays (plaintext in, mTLS between them,
  plaintext to the app) that only copy bytes. No HTTP parsing, no policy, no SPIFFE id check: what
  any asyncio proxy pair costs before it does a proxy's work.
- ``d``: two nginx processes, a "client sidecar" and a "server sidecar", in front of the app of
  ``a``, each from its own config in the run's directory, run in the foreground.

Each Python server is a spawned process running one of the ``serve_*`` functions, with its
output in a log file in the run's directory. ``deploy`` starts what the chosen paths need.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast

import uvicorn
import uvloop
from _harness import (
    HarnessError,
    free_port,
    process_tree_cpu_seconds,
    wait_for_port,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from geode.manifest import (
    EgressRoute,
    HttpRule,
    IngressRoute,
    MeshConfig,
    MeshPolicy,
    MeshRule,
)
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)
from geode.proxy import TransparentProxy
from geode.runtime import Credentials, serve_asgi

TRUST_DOMAIN = "bench.local"
HOST = "127.0.0.1"
PING = "/ping"


def _body(size: int) -> bytes:
    skeleton = {"service": "bench", "status": "ok", "message": ""}
    room = size - len(json.dumps(skeleton, separators=(",", ":")))
    skeleton["message"] = ("pong from the Geode data-plane benchmark app" + "." * size)[:room]
    return json.dumps(skeleton, separators=(",", ":")).encode()


BODY = _body(100)  # the client compares every answer's body with it
PATH_NAMES = {
    "a": "plaintext (uvicorn)",
    "a-tls": "uvicorn + mTLS, no Geode",
    "b": "library mTLS (serve_asgi)",
    "c": "Geode egress -> mTLS -> ingress",
    "c1": "client mTLS -> Geode ingress",
    "c0": "bare uvloop TLS relay pair (floor)",
    "d": "nginx mTLS sidecar pair",
}


def spiffe(name: str) -> SpiffeId:
    return SpiffeId.for_service(TRUST_DOMAIN, name)


SERVER_ID = spiffe("server")
CLIENT_ID = spiffe("client")


# -- the app ------------------------------------------------------------------------------------


async def ping(request: Request) -> Response:
    if request.method == "POST":
        await request.body()  # read in full, as an app does
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route(PING, ping, methods=["GET", "POST"])])


# -- the PKI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A leaf's files, as ``geode run`` lays them out; picklable, unlike ``Credentials``."""

    name: str
    cert_file: str  # the leaf, then the mesh CA
    key_file: str
    ca_file: str  # the mesh CA alone

    def credentials(self, mesh: MeshConfig | None = None) -> Credentials:
        return Credentials(
            cert_file=Path(self.cert_file),
            key_file=Path(self.key_file),
            ca_file=Path(self.ca_file),
            spiffe_id=spiffe(self.name),
            mesh=mesh,
        )


@dataclass(frozen=True)
class Pki:
    server: Identity
    client: Identity
    nginx_ca_file: str  # the mesh CA and the root: OpenSSL in nginx wants a self-signed anchor


def make_pki(directory: Path) -> Pki:
    directory.mkdir(mode=0o700)
    root = CertificateAuthority.create_root("Bench Root CA")
    mesh = root.create_intermediate("Bench Mesh CA")
    ca_file = directory / "mesh-ca.pem"
    ca_file.write_text(certificate_pem(mesh.certificate))
    nginx_ca_file = directory / "mesh-ca-and-root.pem"
    nginx_ca_file.write_text(certificate_pem(mesh.certificate) + certificate_pem(root.certificate))

    def leaf(name: str) -> Identity:
        key = generate_private_key()
        cert = mesh.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name=name,
                spiffe_id=spiffe(name),
                dns_names=["localhost"],
                ip_addresses=[HOST],
            )
        )
        cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
        cert_file.write_text(certificate_pem(cert) + certificate_pem(mesh.certificate))
        key_file.touch(mode=0o600)
        key_file.write_bytes(private_key_pem(key))
        return Identity(name, str(cert_file), str(key_file), str(ca_file))

    return Pki(leaf("server"), leaf("client"), str(nginx_ca_file))


def server_policy() -> MeshPolicy:
    """Strict: the client may ``GET`` and ``POST /ping`` (``dataplane.py --body``), nothing
    else; the regex runs on every request."""
    rule = MeshRule(
        name="bench",
        sources=[str(CLIENT_ID)],
        http=[HttpRule(methods=["GET", "POST"], path=f"^{PING}$")],
    )
    return MeshPolicy(mode="strict", rules=[rule])


def server_mesh(ingress: Sequence[IngressRoute] = ()) -> MeshConfig:
    return MeshConfig(
        trust_domain=TRUST_DOMAIN,
        service="server",
        spiffe_id=str(SERVER_ID),
        policy=server_policy(),
        ingress=list(ingress),
    )


def client_mesh(egress: EgressRoute) -> MeshConfig:
    return MeshConfig(
        trust_domain=TRUST_DOMAIN, service="client", spiffe_id=str(CLIENT_ID), egress=[egress]
    )


# -- server processes -----------------------------------------------------------------------------

UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "access_log": False,
    "log_level": "warning",
    "lifespan": "off",
    # Longer than the gaps between phases: an idle keep-alive connection must not be dropped.
    "timeout_keep_alive": 300,
}


def _log_to(path: str) -> None:
    """Send this process's stdout and stderr to ``path`` (shown if something fails)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its servers itself
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve_plain_app(port: int, log: str) -> None:
    _log_to(log)
    uvicorn.Server(
        uvicorn.Config(app, host=HOST, port=port, http="httptools", **UVICORN_OPTIONS)
    ).run()


def serve_tls_app(server: Identity, port: int, log: str) -> None:
    """uvicorn with the server's mesh TLS context and nothing of Geode's on top."""
    _log_to(log)
    context = server.credentials().server_ssl_context()
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        http="httptools",
        ssl_context_factory=lambda _config, _default: context,
        **UVICORN_OPTIONS,
    )
    uvicorn.Server(config).run()


def serve_library_app(server: Identity, port: int, log: str) -> None:
    _log_to(log)
    credentials = server.credentials(server_mesh())
    serve_asgi(app, credentials, host=HOST, port=port, watch=None, **UVICORN_OPTIONS).run()


def serve_proxy(identity: Identity, mesh_json: str, log: str) -> None:
    """A ``TransparentProxy`` on uvloop, as ``geode run`` runs one, until SIGTERM."""
    _log_to(log)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        mesh = MeshConfig.model_validate_json(mesh_json)
        async with TransparentProxy(identity.credentials(mesh), listen_host=HOST):
            await stop.wait()

    uvloop.run(main())


class _Relay(asyncio.Protocol):
    """One side of a bare byte relay: what arrives is written to the other side, unchanged."""

    def __init__(self, other: _Relay | None = None) -> None:
        self.other = other
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # arrived before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.other is None or self.other.transport is None:
            self.early.append(data)
        else:
            self.other.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


def serve_relay(
    port: int, upstream_port: int, server: Identity | None, client: Identity | None, log: str
) -> None:
    """A bare relay on uvloop: ``server`` set, it accepts mTLS; ``client`` set, it speaks mTLS
    upstream (checking the chain and the host name only)."""
    _log_to(log)
    accept_ctx = server.credentials().server_ssl_context() if server else None
    connect_ctx = None
    if client is not None:
        connect_ctx = ssl.create_default_context(cafile=client.ca_file)
        connect_ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the mesh CA is the anchor
        connect_ctx.load_cert_chain(client.cert_file, client.key_file)

    class Inbound(_Relay):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self) -> None:
            assert self.transport is not None
            try:
                _, outbound = await asyncio.get_running_loop().create_connection(
                    lambda: _Relay(self),
                    HOST,
                    upstream_port,
                    ssl=connect_ctx,
                    server_hostname="localhost" if connect_ctx else None,
                )
            except OSError as exc:
                print(f"relay: cannot connect upstream: {exc}", flush=True)
                self.transport.close()
                return
            self.other = outbound
            if self.early:
                outbound.transport.writelines(self.early)  # type: ignore[union-attr]
                self.early.clear()
            self.transport.resume_reading()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        relay = await asyncio.get_running_loop().create_server(
            Inbound, HOST, port, ssl=accept_ctx, backlog=1024
        )
        async with relay:
            await stop.wait()

    uvloop.run(main())


class Server(abc.ABC):
    """One server-side process of a path: started, waited for, metered, stopped."""

    def __init__(self, name: str, ports: Sequence[int], log: Path) -> None:
        self.name = name
        self.ports = ports
        self.log = log

    @property
    @abc.abstractmethod
    def pid(self) -> int: ...

    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def wait_ready(self) -> None:
        for port in self.ports:
            try:
                wait_for_port(port, self.alive, self.name)
            except HarnessError as exc:
                raise HarnessError(f"{exc}\n{self.log_tail()}") from None

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except FileNotFoundError:
            text = ""
        tail = "\n".join(text.splitlines()[-lines:]) or "(empty)"
        return f"--- {self.name} log ({self.log}) ---\n{tail}"


class PythonServer(Server):
    def __init__(
        self,
        name: str,
        ports: Sequence[int],
        log: Path,
        target: Callable[..., None],
        *args: object,
    ) -> None:
        super().__init__(name, ports, log)
        context = multiprocessing.get_context("spawn")
        self.process: BaseProcess = context.Process(
            target=target, args=(*args, str(log)), name=name, daemon=True
        )
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class NginxServer(Server):
    """``nginx -p PREFIX -c CONF -g 'daemon off;'``: its master in the foreground, one worker."""

    def __init__(self, name: str, binary: str, prefix: Path, conf: str, port: int) -> None:
        super().__init__(name, [port], prefix / "error.log")
        prefix.mkdir()
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / temp).mkdir()
        (prefix / "nginx.conf").write_text(conf)
        with (prefix / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [binary, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # fast shutdown of master and worker
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        stderr = self.log.with_name("stderr.log")
        text = stderr.read_text(errors="replace").strip() if stderr.exists() else ""
        return super().log_tail(lines) + (f"\n{text}" if text else "")


NGINX_COMMON = """\
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    # Keep every benchmark connection open for the whole run (nginx closes after 1000 requests
    # by default).
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""

NGINX_CLIENT_SIDECAR = """\
    upstream server_sidecar {{
        server {host}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass https://server_sidecar;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {cert};
            proxy_ssl_certificate_key {key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            # nginx checks a host name, not a SPIFFE id: the server leaf carries "localhost".
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }}
    }}"""

NGINX_SERVER_SIDECAR = """\
    upstream app {{
        server {host}:{app_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    # nginx cannot read URI SANs: the client is recognised by its subject, checked per request
    # as Geode checks its policy.
    map $ssl_client_s_dn $mesh_peer_allowed {{
        "CN=client" 1;
        default 0;
    }}
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = {ping} {{
            if ($mesh_peer_allowed = 0) {{ return 403; }}
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Mesh-Peer $ssl_client_s_dn;
        }}
        location / {{ return 403; }}
    }}"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


# -- the paths ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the load generator connects for one path, and whether it speaks mTLS."""

    port: int
    tls: Identity | None  # the client's identity for mTLS straight to the server; None: plain


@dataclass
class Deployment:
    """Every server process of the run, and how each path is reached."""

    servers: dict[str, Server] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    components: dict[str, list[str]] = field(default_factory=dict)  # path -> server names
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why

    def add(self, server: Server) -> None:
        self.servers[server.name] = server

    def stop(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop()


def deploy(
    paths: Sequence[str], pki: Pki, base: Path, *, app_reads_bodies: bool = False
) -> Deployment:
    """Start the processes the chosen paths need, in parallel, and wait until all listen;
    ``app_reads_bodies``: the ingress's route says so (``IngressRoute.app_reads_bodies``)."""
    deployment = Deployment()
    try:
        _start(deployment, paths, pki, base, app_reads_bodies)
        for server in deployment.servers.values():
            server.wait_ready()
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _start(
    deployment: Deployment, paths: Sequence[str], pki: Pki, base: Path, app_reads_bodies: bool
) -> None:
    needs_app = {"a", "c", "c1", "c0", "d"} & set(paths)
    app_port = free_port()
    if needs_app:
        deployment.add(PythonServer("app", [app_port], base / "app.log", serve_plain_app, app_port))
    if "a" in paths:
        deployment.targets["a"] = Target(app_port, None)
        deployment.components["a"] = ["app"]
    if "a-tls" in paths:
        port = free_port()
        deployment.add(
            PythonServer("uvicorn+tls", [port], base / "tls.log", serve_tls_app, pki.server, port)
        )
        deployment.targets["a-tls"] = Target(port, pki.client)
        deployment.components["a-tls"] = ["uvicorn+tls"]
    if "b" in paths:
        port = free_port()
        deployment.add(
            PythonServer(
                "serve_asgi", [port], base / "library.log", serve_library_app, pki.server, port
            )
        )
        deployment.targets["b"] = Target(port, pki.client)
        deployment.components["b"] = ["serve_asgi"]
    if {"c", "c1"} & set(paths):
        ingress_port = free_port()
        # Set only when asked: a revision from before the setting refuses the field.
        reads = {"app_reads_bodies": True} if app_reads_bodies else {}
        route = IngressRoute(port=ingress_port, app_port=app_port, protocol="http", **reads)
        mesh = server_mesh([route])
        deployment.add(
            PythonServer(
                "ingress",
                [ingress_port],
                base / "ingress.log",
                serve_proxy,
                pki.server,
                mesh.model_dump_json(),
            )
        )
        if "c1" in paths:
            deployment.targets["c1"] = Target(ingress_port, pki.client)
            deployment.components["c1"] = ["ingress", "app"]
        if "c" in paths:
            egress_port = free_port()
            route = EgressRoute(
                host=HOST, port=ingress_port, local_port=egress_port, peers=[str(SERVER_ID)]
            )
            deployment.add(
                PythonServer(
                    "egress",
                    [egress_port],
                    base / "egress.log",
                    serve_proxy,
                    pki.client,
                    client_mesh(route).model_dump_json(),
                )
            )
            deployment.targets["c"] = Target(egress_port, None)
            deployment.components["c"] = ["egress", "ingress", "app"]
    if "c0" in paths:
        inner, outer = free_port(), free_port()
        deployment.add(
            PythonServer(
                "relay in",
                [inner],
                base / "relay-in.log",
                serve_relay,
                inner,
                app_port,
                pki.server,
                None,
            )
        )
        deployment.add(
            PythonServer(
                "relay out",
                [outer],
                base / "relay-out.log",
                serve_relay,
                outer,
                inner,
                None,
                pki.client,
            )
        )
        deployment.targets["c0"] = Target(outer, None)
        deployment.components["c0"] = ["relay out", "relay in", "app"]
    if "d" in paths:
        nginx = find_nginx()
        if nginx is None:
            deployment.skipped["d"] = "no nginx binary (install it: apt-get install nginx)"
        else:
            server_port, client_port = free_port(), free_port()
            server_conf = NGINX_SERVER_SIDECAR.format(
                host=HOST,
                port=server_port,
                app_port=app_port,
                cert=pki.server.cert_file,
                key=pki.server.key_file,
                ca=pki.nginx_ca_file,
                ping=PING,
            )
            client_conf = NGINX_CLIENT_SIDECAR.format(
                host=HOST,
                port=client_port,
                upstream_port=server_port,
                cert=pki.client.cert_file,
                key=pki.client.key_file,
                ca=pki.nginx_ca_file,
            )
            for name, conf, port in (
                ("nginx server sidecar", server_conf, server_port),
                ("nginx client sidecar", client_conf, client_port),
            ):
                prefix = base / name.replace(" ", "-")
                body = NGINX_COMMON.format(body=conf)
                deployment.add(NginxServer(name, nginx, prefix, body, port))
            deployment.targets["d"] = Target(client_port, None)
            deployment.components["d"] = ["nginx client sidecar", "nginx server sidecar", "app"]
