"""An instance's mesh credentials, as ``geode run`` lays them out, and the TLS contexts built
on them (by ``geode.protocol``'s mesh and public roles). Contexts made here are reloaded in
place when the files change (certificate renewal), so servers and clients keep running with the
new certificate for new connections."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from geode.errors import LaunchError
from geode.manifest import MeshConfig
from geode.pki import SpiffeId
from geode.protocol import (
    MeshSSLContext,
    check_certificate_and_key,
    mesh_client_context,
    mesh_server_context,
    public_server_context,
)

__all__ = ["Credentials"]

log = logging.getLogger("geode.runtime")

_Context = TypeVar("_Context", bound=ssl.SSLContext)


@dataclass
class Credentials:
    """Paths of an instance's certificate chain, key and CAs, its identity and mesh view."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    spiffe_id: SpiffeId
    mesh: MeshConfig | None = None
    _contexts: weakref.WeakSet[ssl.SSLContext] = field(default_factory=weakref.WeakSet)
    _stamp: tuple[float, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """The credentials ``geode run`` gave this process (``GEODE_*`` variables)."""
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in ("GEODE_CERT_FILE", "GEODE_KEY_FILE", "GEODE_CA_FILE", "GEODE_SPIFFE_ID")
            if not env.get(name)
        ]
        if missing:
            raise LaunchError(f"{missing[0]} is not set: run this service under 'geode run'")
        mesh = None
        if env.get("GEODE_MESH_FILE"):
            try:
                mesh = MeshConfig.model_validate_json(Path(env["GEODE_MESH_FILE"]).read_bytes())
            except (OSError, ValueError) as exc:
                raise LaunchError(f"cannot read GEODE_MESH_FILE: {exc}") from None
        credentials = cls(
            cert_file=Path(env["GEODE_CERT_FILE"]),
            key_file=Path(env["GEODE_KEY_FILE"]),
            ca_file=Path(env["GEODE_CA_FILE"]),
            spiffe_id=SpiffeId.parse(env["GEODE_SPIFFE_ID"]),
            mesh=mesh,
        )
        credentials._stamp = credentials._files_stamp()
        return credentials

    def _files_stamp(self) -> tuple[float, ...]:
        try:
            return tuple(p.stat().st_mtime_ns for p in (self.cert_file, self.key_file))
        except FileNotFoundError:
            return ()

    def _tracked(self, context: _Context) -> _Context:
        """``context``, reloaded from now on when the files are renewed."""
        self._contexts.add(context)
        return context

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS for a mesh server: a client certificate from the mesh CA is required."""
        return self._tracked(mesh_server_context(self.cert_file, self.key_file, self.ca_file))

    def public_ssl_context(self) -> ssl.SSLContext:
        """TLS for a page served outside the mesh (a browser): the instance's certificate, no
        client certificate asked. Clients verify it against the deployment's root."""
        return self._tracked(public_server_context(self.cert_file, self.key_file))

    def client_ssl_context(self, peers: Iterable[str | SpiffeId] | None) -> MeshSSLContext:
        """TLS for a mesh client that accepts only the given SPIFFE ids (``None``: any peer of
        the mesh). Host names are not checked: in the mesh the SPIFFE id is the identity."""
        return self._tracked(
            mesh_client_context(self.cert_file, self.key_file, self.ca_file, peers=peers)
        )

    def reload(self) -> bool:
        """Load renewed files into every context made here; True when they had changed."""
        with self._lock:
            stamp = self._files_stamp()
            if not stamp or stamp == self._stamp:
                return False
            try:
                # Check the pair on a scratch context first: a renewal caught between its two
                # file replacements must not reach the live contexts.
                check_certificate_and_key(self.cert_file, self.key_file)
                for context in list(self._contexts):
                    context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                log.info("certificate reload deferred (%s); next poll", exc)
                return False
            self._stamp = stamp
            log.info("reloaded the renewed certificate into %d TLS contexts", len(self._contexts))
            return True

    def watch(
        self, interval: float = 5.0, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> threading.Event:
        """Poll for renewed files in a daemon thread; set the returned event to stop.

        With ``loop``, renewed files are loaded on that loop's thread, between its handshakes:
        an OpenSSL context must not change while another thread starts a connection from it.
        Give the loop that serves (or connects) with these contexts; without one, the files are
        loaded on the polling thread, which suits contexts only used from that thread or ones
        that no other thread uses while it loads.
        """
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval):
                if loop is None:
                    self.reload()
                    continue
                if self._files_stamp() == self._stamp:
                    continue
                try:
                    loop.call_soon_threadsafe(self.reload)
                except RuntimeError:  # the loop is closed: nothing left to reload for
                    return

        threading.Thread(target=poll, name="geode-credentials", daemon=True).start()
        return stop
