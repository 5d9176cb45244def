"""The webhook's HTTPS server: ``POST /mutate`` and ``GET /healthz`` (Starlette on uvicorn).

The serving certificate is re-read when its files change (cert-manager, or an updated Secret,
replaces them in place), so a rotation needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from geode.errors import PKIError
from geode.inject._config import InjectorConfig
from geode.inject._packages import PackageTees
from geode.inject._review import answer_review
from geode.protocol import public_server_context

__all__ = ["MAX_REVIEW_BYTES", "ServingCertificate", "create_app", "webhook_server"]

log = logging.getLogger("geode.inject")

MAX_REVIEW_BYTES = 4 * 1024 * 1024
"""Larger than any pod the API server accepts (its requests are limited to 3 MiB)."""


class ServingCertificate:
    """A TLS server context whose certificate and key are reloaded when their files change."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self._stamp = self._current_stamp()
        try:
            self.context = public_server_context(cert, key)
        except ssl.SSLError as exc:
            raise self._unusable(exc) from None

    def _current_stamp(self) -> tuple[int, ...]:
        stats = (self.cert.stat(), self.key.stat())
        return tuple(n for s in stats for n in (s.st_mtime_ns, s.st_size, s.st_ino))

    def _unusable(self, exc: ssl.SSLError) -> PKIError:
        return PKIError(
            f"{self.cert}, {self.key}: not a PEM certificate and its key ({exc.reason})"
        )

    def _load(self) -> None:
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise self._unusable(exc) from None

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; a broken new pair is logged and the old kept."""
        try:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return False
            self._load()
        except (OSError, PKIError) as exc:
            log.error("serving certificate not reloaded, keeping the current one: %s", exc)
            return False
        self._stamp = stamp
        log.info("serving certificate reloaded from %s", self.cert)
        return True


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _read_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REVIEW_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: InjectorConfig,
    tees: PackageTees,
    certificate: ServingCertificate | None = None,
    reload_interval: float = 30.0,
) -> Starlette:
    """The webhook as an ASGI app; ``tees`` tells each labelled pod's TEE (``ManifestSource``).
    With ``certificate``, it checks the files for a new one every ``reload_interval`` seconds
    while it runs."""

    async def mutate(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return _error(415, "unsupported_media_type", "send the AdmissionReview as JSON")
        body = await _read_body(request)
        if body is None:
            return _error(413, "payload_too_large", f"at most {MAX_REVIEW_BYTES} bytes")
        try:
            # In a worker thread: learning a service's TEE may read the manifest.
            answer = await run_in_threadpool(answer_review, body, config, tees)
        except Exception:  # a bug must not reach the API server as a stack trace
            log.exception("error while answering an AdmissionReview")
            return _error(500, "internal_error", "the webhook failed; see its log")
        return JSONResponse(answer.body, status_code=answer.status)

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if certificate is None:
            yield
            return
        task = asyncio.create_task(_watch(certificate.reload_if_changed, reload_interval))
        try:
            yield
        finally:
            task.cancel()

    return Starlette(
        routes=[
            Route("/mutate", mutate, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


async def _watch(check: Callable[[], bool], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        check()


class _Server(uvicorn.Server):
    """Stops on SIGTERM or SIGINT and returns, so the process exits 0 as a pod's container
    should when asked to stop (uvicorn raises the signal again once it has shut down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def webhook_server(
    config: InjectorConfig,
    tees: PackageTees,
    cert: Path,
    key: Path,
    listen: tuple[str, int],
    *,
    reload_interval: float = 30.0,
) -> uvicorn.Server:
    """A uvicorn server for the webhook over HTTPS; ``run()`` it (it stops on SIGTERM/SIGINT
    when run in the main thread, or when ``should_exit`` is set)."""
    certificate = ServingCertificate(cert, key)

    def context_factory(
        _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        return certificate.context

    return _Server(
        uvicorn.Config(
            create_app(config, tees, certificate, reload_interval),
            host=listen[0],
            port=listen[1],
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            ssl_context_factory=context_factory,
        )
    )
