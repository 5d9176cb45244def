"""AdmissionReview (``admission.k8s.io/v1``) in, AdmissionReview out: no I/O of its own (the
``PackageTees`` it is given may read the manifest).

The API server needs an answer with the request's ``uid``. Once the uid is known every outcome
is such an answer: a patch for a labelled pod, ``allowed: true`` without a patch for anything the
webhook does not change, and ``allowed: false`` with a message for a labelled pod it cannot wrap
(403) or a request it cannot read (400). Only a body without a uid gets an HTTP error (400 with a
JSON body), since no AdmissionReview can answer it.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass

from geode.errors import InjectionRefused
from geode.inject._config import InjectorConfig
from geode.inject._packages import PackageTees
from geode.inject._patch import Injection, plan_injection
from geode.inject._pod import JsonObject, json_object, read_pod

__all__ = ["ADMISSION_API_VERSION", "AdmissionAnswer", "answer_review"]

log = logging.getLogger("geode.inject")

ADMISSION_API_VERSION = "admission.k8s.io/v1"


@dataclass(frozen=True)
class AdmissionAnswer:
    """The HTTP status and JSON body to send back."""

    status: int
    body: JsonObject


def _http_error(code: str, message: str, path: str | None = None) -> AdmissionAnswer:
    body: JsonObject = {"error": code, "message": message}
    if path:
        body["path"] = path
    return AdmissionAnswer(400, body)


def _response(uid: str, response: JsonObject) -> AdmissionAnswer:
    return AdmissionAnswer(
        200,
        {
            "apiVersion": ADMISSION_API_VERSION,
            "kind": "AdmissionReview",
            "response": {"uid": uid, **response},
        },
    )


def _denied(uid: str, code: int, reason: str, message: str) -> AdmissionAnswer:
    return _response(
        uid,
        {
            "allowed": False,
            "status": {"status": "Failure", "code": code, "reason": reason, "message": message},
        },
    )


def answer_review(body: bytes, config: InjectorConfig, tees: PackageTees) -> AdmissionAnswer:
    """Answer one AdmissionReview request body; ``tees`` is asked for the TEE of a labelled
    pod's service only (it may read the manifest: call this off the event loop)."""
    try:
        review = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _http_error("invalid_json", f"the body is not JSON: {exc}")
    try:
        envelope = json_object(review, "")
        if envelope.get("apiVersion") != ADMISSION_API_VERSION:
            raise InjectionRefused("apiVersion", f"expected {ADMISSION_API_VERSION}")
        if envelope.get("kind") != "AdmissionReview":
            raise InjectionRefused("kind", "expected AdmissionReview")
        request = json_object(envelope.get("request"), "request")
        uid = request.get("uid")
        if not isinstance(uid, str) or not uid:
            raise InjectionRefused("request.uid", "expected a non-empty string")
    except InjectionRefused as exc:
        return _http_error("invalid_admission_review", str(exc), exc.path)

    try:
        kind = json_object(request.get("kind"), "request.kind")
        namespace = request.get("namespace")
        if not isinstance(namespace, str):
            raise InjectionRefused("request.namespace", "expected a string")
        if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get(
            "operation"
        ) != "CREATE":
            # Only pod creations are registered; anything else is not the webhook's to change.
            return _response(uid, {"allowed": True})
        try:
            pod = read_pod(request.get("object"), namespace)
        except InjectionRefused as exc:
            raise InjectionRefused(f"request.object.{exc.path}".rstrip("."), exc.reason) from None
    except InjectionRefused as exc:
        log.warning("unreadable AdmissionReview %s: %s", uid, exc)
        return _denied(uid, 400, "BadRequest", f"geode inject: {exc}")

    try:
        injection = plan_injection(pod, config, tees)
    except InjectionRefused as exc:
        log.warning("refused pod %s/%s: %s", namespace, pod.name, exc)
        return _denied(uid, 403, "Forbidden", f"geode inject: pod {pod.name}: {exc}")
    return _response(uid, _allowed(injection, namespace, pod.name))


def _allowed(injection: Injection, namespace: str, name: str) -> JsonObject:
    if not injection.operations:
        log.debug("pod %s/%s left alone: %s", namespace, name, injection.skipped)
        return {"allowed": True}
    log.info(
        "pod %s/%s: wrapped %s as service %s",
        namespace,
        name,
        ", ".join(injection.containers),
        injection.service,
    )
    response: JsonObject = {
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(injection.patch()).decode(),
    }
    if injection.warnings:
        response["warnings"] = list(injection.warnings)
    return response
