"""The client API's governance endpoints: secrets, updates, the manifest log, the audit log and
recovery. Users authenticate with the client certificate the manifest lists for them; roles
decide what each may do (``Manifest.grants``). Every change is one call into the transaction
(``Transaction.govern``): made after the changes before it, saved before it is answered, its
audit entry in the log file after that.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re

from starlette.requests import Request
from starlette.responses import Response

from geode.coordinator._coordinator import Coordinator
from geode.coordinator._holder import Pending, both
from geode.coordinator._http import (
    ApiError,
    Handler,
    answer,
    json_body,
    peer_certificate_der,
    read_body,
)
from geode.coordinator._secrets import exported_secret, is_set
from geode.coordinator._transaction import Transaction
from geode.coordinator._updates import PackageUpdate, apply_package_update
from geode.errors import PermissionDenied, Unauthenticated
from geode.manifest import (
    MAX_MANIFEST_BYTES,
    is_package_update,
    load_manifest,
    parse_manifest_data,
)
from geode.protocol import (
    NONCE_QUERY_PATTERN,
    AuditLogAnswer,
    CancelAnswer,
    ManifestLog,
    PendingUpdateAnswer,
    RecoveryProgress,
    RecoveryUpload,
    Routes,
    SecretAnswer,
    SecretBody,
    SecretSetAnswer,
    UpdateApplied,
    UpdatePending,
    UpdateRef,
)

__all__ = ["governance_handlers"]

log = logging.getLogger("geode.coordinator.api")


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_request", f"{field}: not base64", path=field) from None


def governance_handlers(coordinator: Coordinator, transaction: Transaction) -> dict[str, Handler]:
    """The governance routes' handlers, by operation id (``geode.protocol.Routes``)."""
    governance = coordinator.governance
    recovery = coordinator.recovery

    def authenticated(request: Request) -> str:
        governance.require_manifest()  # 503 in recovery, 409 before a manifest
        der = peer_certificate_der(request)
        if der is None:
            raise Unauthenticated(
                "this call needs the client certificate of a user named in the manifest"
            )
        user = governance.user_for(der)
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
            governance.require_grant(user, resource, action)
        for name in names:
            governance.require_grant(user, resource, action, name)
        return user

    async def get_secret(request: Request) -> Response:
        name = request.path_params["name"]
        user = authenticated(request)
        governance.require_grant(user, "secrets", "read", name)
        spec, stored = governance.read_secret(name)
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
        governance.require_grant(user, "secrets", "write", name)
        value = _b64((await json_body(request, SecretBody)).value, "value")

        async def change() -> Pending[None]:
            granted = still_granted(request, "secrets", "write", name)
            return governance.write_secret(granted, name, value)

        await transaction.govern(change)
        return answer(SecretSetAnswer(name=name, set=True))

    def may_update_something(user: str) -> None:
        """Before a body is read: the caller may update the manifest or some package."""
        manifest = governance.require_manifest().manifest
        if manifest.grants(user, "manifest", "update") or any(
            manifest.grants(user, "packages", "update", name) for name in manifest.packages
        ):
            return
        raise PermissionDenied(f"user {user!r} may not update the manifest or any package")

    async def post_update(request: Request) -> Response:
        user = authenticated(request)
        may_update_something(user)
        raw = await read_body(request, MAX_MANIFEST_BYTES)
        # Validated in a worker within its budget first, then parsed in a thread: never on the
        # event loop, which serves both APIs.
        await coordinator.manifest_worker.check(raw, update=True)
        data = await asyncio.to_thread(parse_manifest_data, raw)
        if is_package_update(data):
            return await _package_update(request, user, PackageUpdate.parse(data))
        governance.require_grant(user, "manifest", "update")
        document = await asyncio.to_thread(load_manifest, raw)

        async def change() -> Pending[tuple[UpdatePending | UpdateApplied, int]]:
            granted = still_granted(request, "manifest", "update")
            prepared = None
            if governance.manifest_threshold() <= 1:
                prepared = await asyncio.to_thread(governance.prepare_update, raw)
            proposal = governance.propose_update(granted, document)
            if prepared is None:
                return Pending((_pending_answer(), 202), proposal.revert)
            try:
                applied = governance.adopt_update(prepared, kind="manifest", users=[granted])
            except Exception:
                proposal.revert()
                raise
            return Pending((applied.value, 201), both(proposal.revert, applied.revert))

        result, status = await transaction.govern(change)
        return answer(result, status)

    async def _package_update(request: Request, user: str, update: PackageUpdate) -> Response:
        for name in sorted(update.packages):
            governance.require_grant(user, "packages", "update", name)

        async def change() -> Pending[UpdateApplied]:
            granted = still_granted(request, "packages", "update", *sorted(update.packages))
            document = governance.require_manifest()
            raw = apply_package_update(document.raw, document.manifest, update)
            prepared = await asyncio.to_thread(governance.prepare_update, raw)
            return governance.adopt_update(
                prepared, kind="package", users=[granted], packages=sorted(update.packages)
            )

        result = await transaction.govern(change)
        return answer(result, 201)

    def _pending_answer() -> UpdatePending:
        pending = governance.pending_update()
        assert pending is not None
        return UpdatePending(
            applied=False,
            sha256=pending.sha256,
            acknowledgements=pending.acknowledgements,
            threshold=pending.threshold,
        )

    async def get_update(request: Request) -> Response:
        authenticated(request)
        return answer(PendingUpdateAnswer(pending=governance.pending_update()))

    async def acknowledge(request: Request) -> Response:
        user = authenticated(request)
        governance.require_grant(user, "manifest", "update")
        sha256 = bytes.fromhex((await json_body(request, UpdateRef)).sha256)

        async def change() -> Pending[UpdatePending | UpdateApplied]:
            granted = still_granted(request, "manifest", "update")
            raw = governance.pending_manifest()
            prepared = None
            if governance.acknowledgements_after(granted) >= governance.manifest_threshold():
                prepared = await asyncio.to_thread(governance.prepare_update, raw)
            ack = governance.acknowledge_update(granted, sha256)
            if prepared is None:
                return Pending(_pending_answer(), ack.revert)
            pending = governance.pending_update()
            assert pending is not None
            try:
                applied = governance.adopt_update(
                    prepared, kind="manifest", users=pending.acknowledgements
                )
            except Exception:
                ack.revert()
                raise
            return Pending(applied.value, both(ack.revert, applied.revert))

        result = await transaction.govern(change)
        return answer(result)

    async def cancel(request: Request) -> Response:
        user = authenticated(request)
        governance.require_grant(user, "manifest", "update")
        sha256 = bytes.fromhex((await json_body(request, UpdateRef)).sha256)

        async def change() -> Pending[None]:
            granted = still_granted(request, "manifest", "update")
            return governance.cancel_update(granted, sha256)

        await transaction.govern(change)
        return answer(CancelAnswer(cancelled=sha256.hex()))

    async def get_manifest_log(request: Request) -> Response:
        authenticated(request)
        return answer(ManifestLog(updates=governance.manifest_log()))

    async def get_audit(request: Request) -> Response:
        authenticated(request)
        async with transaction.serialised():
            await transaction.flush_audit()
            head = governance.audit_head()
            entries = await asyncio.to_thread(coordinator.audit_sink.read)
        return answer(AuditLogAnswer(entries=entries, head=head))

    async def get_recovery(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce", "")
        if not re.fullmatch(NONCE_QUERY_PATTERN, nonce_hex):
            raise ApiError(
                400, "invalid_request", "nonce: 16 to 64 bytes in lowercase hex", path="nonce"
            )
        async with transaction.serialised():
            await asyncio.to_thread(recovery.prepare)
            return answer(recovery.offer(bytes.fromhex(nonce_hex)))

    async def post_recovery(request: Request) -> Response:
        body = await json_body(request, RecoveryUpload)
        share = _b64(body.share, "share")
        signature = _b64(body.signature, "signature")

        async def change() -> Pending[RecoveryProgress]:
            # Below the threshold nothing is written; at it, the opened state is saved (under
            # this Coordinator's sealing key) before the session is dropped and it is answered.
            return recovery.recover(body.party, share, signature)

        result = await transaction.govern(change)
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
