"""geode.protocol: one table from error code to exception, used both ways."""

from __future__ import annotations

import inspect

import pytest

from geode import errors
from geode.errors import ActivationDenied, ClientError, CoordinatorError, StaleCertificate
from geode.protocol import ERROR_CODES, ErrorBody, error_answer, raise_for_error


def test_every_coordinator_error_has_its_row() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, CoordinatorError)
    ]
    assert classes
    for cls in classes:
        code = cls.code if isinstance(cls.code, str) else None
        if cls is errors.Unauthenticated:  # its code is per instance
            assert ERROR_CODES["authentication_required"].exception is cls
            assert ERROR_CODES["unknown_user"].exception is cls
            continue
        assert code in ERROR_CODES, cls
        assert ERROR_CODES[code].exception is cls
        assert ERROR_CODES[code].status == cls.status


@pytest.mark.parametrize(
    "exc",
    [
        errors.PermissionDenied("no"),
        errors.Unauthenticated("who", code="unknown_user"),
        errors.RecoveryRefused("not yours", status=403),
        errors.StoreConflict("again"),
        errors.CoordinatorUnavailable("recovery"),
        errors.ManifestError("services.web", "bad"),
    ],
)
def test_the_server_answers_with_the_code_and_a_client_raises_it_back(
    exc: errors.GeodeError,
) -> None:
    status, body = error_answer(exc)
    assert body.error in ERROR_CODES
    assert body.message == str(exc)
    with pytest.raises(ClientError) as raised:
        raise_for_error(status, body.model_dump(mode="json"), "fallback")
    assert (raised.value.status, raised.value.code, str(raised.value)) == (
        status,
        body.error,
        str(exc),
    )


def test_a_denied_activation_comes_back_as_itself() -> None:
    status, body = error_answer(ActivationDenied("max_activations reached", "limit 1"))
    wire = body.model_dump(mode="json")
    assert wire == {
        "error": "activation_denied",
        "message": "activation denied: max_activations reached (limit 1)",
        "reason": "max_activations reached",
        "detail": "limit 1",
    }
    with pytest.raises(ActivationDenied) as raised:
        raise_for_error(status, wire, "fallback")
    assert (raised.value.reason, raised.value.detail) == ("max_activations reached", "limit 1")
    status, body = error_answer(StaleCertificate("replaced"))
    with pytest.raises(StaleCertificate, match="replaced"):
        raise_for_error(status, body.model_dump(mode="json"), "fallback")


def test_optional_fields_are_left_out_not_null() -> None:
    body = ErrorBody(error="invalid_request", message="m")
    assert body.model_dump(mode="json") == {"error": "invalid_request", "message": "m"}


@pytest.mark.parametrize("body", [None, [], {"message": "no code"}, "text"])
def test_a_body_that_is_no_error_body_is_a_client_error_with_the_fallback(body: object) -> None:
    with pytest.raises(ClientError, match=r"^fallback$") as raised:
        raise_for_error(502, body, "fallback")
    assert raised.value.status == 502
    assert raised.value.code is None
