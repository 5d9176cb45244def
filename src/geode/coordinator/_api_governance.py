"""The client API's governance endpoints: secrets, updates, the manifest log, the audit log and
recovery. Users authenticate with the client certificate the manifest lists for them; roles
decide what each may do (``Manifest.grants``). Every change goes through one lock, is saved
(group commit) before it is answered, and its audit entry reaches the log file after that.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from geode.coordinator._base import Pending, both
from geode.coordinator._core import Coordinator
from geode.coordinator._http import (
    ApiError,
    Handler,
    answer,
    json_body,
    peer_certificate_der,
    read_body,
)
from geode.coordinator._persist import GroupCommit
from geode.coordinator._secrets import exported_secret, is_set
from geode.coordinator._updates import PackageUpdate, apply_package_update
from geode.errors import SealError, Unauthenticated
from geode.manifest import MAX_MANIFEST_BYTES, load_manifest, parse_manifest_data
from geode.protocol import (
    NONCE_QUERY_PATTERN,
    AuditLogAnswer,
    CancelAnswer,
    ManifestLog,
    PendingUpdateAnswer,
    RecoveryUpload,
    Routes,
    SecretAnswer,
    SecretBody,
    SecretSetAnswer,
    UpdatePending,
    UpdateRef,
)

__all__ = ["Governor", "governance_handlers"]

log = logging.getLogger("geode.coordinator.api")

T = TypeVar("T")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_request", f"{field}: not base64", path=field) from None


class Governor:
    """Serialises governance changes and carries each from memory to disk to the audit log."""

    def __init__(
        self,
        coordinator: Coordinator,
        persist: GroupCommit,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.persist = persist
        self.on_change = on_change
        self.lock = asyncio.Lock()

    async def commit(self, pending: Pending[T]) -> T:
        """Save a change made in memory (undone by the writer if the write fails), then log it."""
        await self.persist.commit(pending.revert)
        await self.changed()
        return pending.value

    async def changed(self) -> None:
        await self.flush_audit()
        if self.on_change is not None:
            self.on_change()

    async def flush_audit(self) -> None:
        """Append the saved entries that the log file does not hold yet."""
        lines = self.coordinator.unflushed_audit()
        if not lines:
            return
        try:
            await asyncio.to_thread(self.coordinator.audit_sink.append_missing, lines)
        except SealError as exc:
            # The entries stay in the sealed state and are appended by the next flush or start.
            log.error("audit log not written, retried with the next change: %s", exc)
            return
        self.coordinator.audit_flushed(lines)


def governance_handlers(governor: Governor) -> dict[str, Handler]:
    """The governance routes' handlers, by operation id (``geode.protocol.Routes``)."""
    coordinator = governor.coordinator

    def authenticated(request: Request) -> str:
        coordinator.require_manifest()  # 503 in recovery, 409 before a manifest
        der = peer_certificate_der(request)
        if der is None:
            raise Unauthenticated(
                "this call needs the client certificate of a user named in the manifest"
            )
        user = coordinator.user_for(der)
        if user is None:
            fingerprint = hashlib.sha256(der).hexdigest()
            raise Unauthenticated(
                f"the client certificate (sha256 {fingerprint}) is no user's of this deployment",
                code="unknown_user",
            )
        return user

    def still_granted(request: Request, resource: str, action: str, *names: str) -> str:
        """Under the governance lock, right before a change: the caller's user and grants as
        the manifest in force now has them (an update may have landed while it waited)."""
        user = authenticated(request)
        if not names:
            coordinator.require_grant(user, resource, action)
        for name in names:
            coordinator.require_grant(user, resource, action, name)
        return user

    async def get_secret(request: Request) -> Response:
        name = request.path_params["name"]
        user = authenticated(request)
        coordinator.require_grant(user, "secrets", "read", name)
        spec, stored = coordinator.read_secret(name)
        if spec.type != "plain" and not is_set(stored):
            raise ApiError(404, "secret_not_set", f"secret {name!r} has not been set yet")
        log.info("user %s read secret %s", user, name)
        return answer(
            SecretAnswer(
                name=name,
                type=spec.type,
                set=is_set(stored),
                value=base64.b64encode(exported_secret(stored)).decode(),
            )
        )

    async def put_secret(request: Request) -> Response:
        name = request.path_params["name"]
        user = authenticated(request)
        coordinator.require_grant(user, "secrets", "write", name)
        value = _b64((await json_body(request, SecretBody)).value, "value")
        async with governor.lock:
            user = still_granted(request, "secrets", "write", name)
            await governor.commit(coordinator.write_secret(user, name, value))
        return answer(SecretSetAnswer(name=name, set=True))

    async def post_update(request: Request) -> Response:
        user = authenticated(request)
        raw = await read_body(request, MAX_MANIFEST_BYTES)
        data = parse_manifest_data(raw)
        if isinstance(data, dict) and set(data) == {"packages"}:
            return await _package_update(request, user, PackageUpdate.parse(data))
        coordinator.require_grant(user, "manifest", "update")
        document = await asyncio.to_thread(load_manifest, raw)
        async with governor.lock:
            user = still_granted(request, "manifest", "update")
            threshold = coordinator.manifest_threshold()
            prepared = None
            if threshold <= 1:
                prepared = await asyncio.to_thread(coordinator.prepare_update, raw)
            proposal = coordinator.propose_update(user, document)
            if prepared is None:
                await governor.commit(proposal)
                return answer(_pending_answer(), 202)
            try:
                applied = coordinator.adopt_update(prepared, kind="manifest", users=[user])
            except Exception:
                proposal.revert()
                raise
            result = await governor.commit(
                Pending(applied.value, both(proposal.revert, applied.revert))
            )
        return answer(result, 201)

    async def _package_update(request: Request, user: str, update: PackageUpdate) -> Response:
        for name in sorted(update.packages):
            coordinator.require_grant(user, "packages", "update", name)
        async with governor.lock:
            user = still_granted(request, "packages", "update", *sorted(update.packages))
            document = coordinator.require_manifest()
            raw = apply_package_update(document.raw, document.manifest, update)
            prepared = await asyncio.to_thread(coordinator.prepare_update, raw)
            pending = coordinator.adopt_update(
                prepared, kind="package", users=[user], packages=sorted(update.packages)
            )
            result = await governor.commit(pending)
        return answer(result, 201)

    def _pending_answer() -> UpdatePending:
        pending = coordinator.pending_update()
        assert pending is not None
        return UpdatePending(
            applied=False,
            sha256=pending.sha256,
            acknowledgements=pending.acknowledgements,
            threshold=pending.threshold,
        )

    async def get_update(request: Request) -> Response:
        authenticated(request)
        return answer(PendingUpdateAnswer(pending=coordinator.pending_update()))

    async def acknowledge(request: Request) -> Response:
        user = authenticated(request)
        coordinator.require_grant(user, "manifest", "update")
        sha256 = bytes.fromhex((await json_body(request, UpdateRef)).sha256)
        async with governor.lock:
            user = still_granted(request, "manifest", "update")
            raw = coordinator.pending_manifest()
            prepared = None
            if coordinator.acknowledgements_after(user) >= coordinator.manifest_threshold():
                prepared = await asyncio.to_thread(coordinator.prepare_update, raw)
            ack = coordinator.acknowledge_update(user, sha256)
            if prepared is None:
                await governor.commit(ack)
                return answer(_pending_answer())
            pending = coordinator.pending_update()
            assert pending is not None
            try:
                applied = coordinator.adopt_update(
                    prepared, kind="manifest", users=pending.acknowledgements
                )
            except Exception:
                ack.revert()
                raise
            result = await governor.commit(Pending(applied.value, both(ack.revert, applied.revert)))
        return answer(result)

    async def cancel(request: Request) -> Response:
        user = authenticated(request)
        coordinator.require_grant(user, "manifest", "update")
        sha256 = bytes.fromhex((await json_body(request, UpdateRef)).sha256)
        async with governor.lock:
            user = still_granted(request, "manifest", "update")
            await governor.commit(coordinator.cancel_update(user, sha256))
        return answer(CancelAnswer(cancelled=sha256.hex()))

    async def get_manifest_log(request: Request) -> Response:
        authenticated(request)
        return answer(ManifestLog(updates=coordinator.manifest_log()))

    async def get_audit(request: Request) -> Response:
        authenticated(request)
        async with governor.lock:
            await governor.flush_audit()
            head = coordinator.audit_head()
            entries = await asyncio.to_thread(coordinator.audit_sink.read)
        return answer(AuditLogAnswer(entries=entries, head=head))

    async def get_recovery(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce", "")
        if not re.fullmatch(NONCE_QUERY_PATTERN, nonce_hex):
            raise ApiError(
                400, "invalid_request", "nonce: 16 to 64 bytes in lowercase hex", path="nonce"
            )
        async with governor.lock:
            await asyncio.to_thread(coordinator.prepare_recovery)
            return answer(coordinator.recovery_offer(bytes.fromhex(nonce_hex)))

    async def post_recovery(request: Request) -> Response:
        body = await json_body(request, RecoveryUpload)
        share = _b64(body.share, "share")
        signature = _b64(body.signature, "signature")
        async with governor.lock:
            pending = coordinator.recover(body.party, share, signature)
            if pending.value.state == "recovery":
                return answer(pending.value)
            result = await governor.commit(pending)
            coordinator.recovery_saved()
        return answer(result)

    return {
        Routes.secret.operation_id: get_secret,
        Routes.set_secret.operation_id: put_secret,
        Routes.pending_update.operation_id: get_update,
        Routes.update.operation_id: post_update,
        Routes.acknowledge_update.operation_id: acknowledge,
        Routes.cancel_update.operation_id: cancel,
        Routes.manifest_log.operation_id: get_manifest_log,
        Routes.audit.operation_id: get_audit,
        Routes.recovery_offer.operation_id: get_recovery,
        Routes.recover.operation_id: post_recovery,
    }
