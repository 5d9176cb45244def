"""The connection budgets of the Coordinator's APIs fit under the process's open-file limit,
raised to the hard limit first; and a flood is one warning per kind and interval, not a
flood of the log; and a sub-second idle timeout is not rounded."""

from __future__ import annotations

import asyncio
import logging
import resource

import pytest
import uvicorn

from geode.coordinator import ConnectionLimits
from geode.coordinator._limits import FD_RESERVE, ApiGate, HeadLimitedProtocol, fit_fd_limit


def _rlimit(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    current = [(soft, hard)]
    monkeypatch.setattr(resource, "getrlimit", lambda _which: current[-1])
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: current.append(limits))
    return current


def test_the_soft_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to = _rlimit(monkeypatch, 1024, 65536)
    assert fit_fd_limit(ConnectionLimits()) == ConnectionLimits()
    assert set_to[-1] == (65536, 65536)


def test_budgets_that_do_not_fit_are_lowered_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _rlimit(monkeypatch, 1024, 1024)
    wanted = ConnectionLimits(client_max_connections=3000, mesh_max_connections=1000)
    fitted = fit_fd_limit(wanted)
    total = fitted.client_max_connections + fitted.mesh_max_connections
    assert total <= 1024 - FD_RESERVE
    assert fitted.client_max_connections == 3 * fitted.mesh_max_connections
    assert fitted.head_timeout == wanted.head_timeout
    assert "the open-file limit is 1024" in caplog.text


def test_a_flood_of_refusals_is_one_warning_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ApiGate("client API", ConnectionLimits(), 2, "--client-max-connections")
    releases = [gate.admit(), gate.admit()]
    assert gate.admit() is None
    with caplog.at_level(logging.WARNING, "geode.coordinator.limits"):
        for port in range(1000):
            gate.warn("2 connections open", f"192.0.2.1:{port}")
    assert len(caplog.records) == 1
    assert "client API: 2 connections open; peer 192.0.2.1:0" in caplog.text
    for release in releases:
        assert release is not None
        release()
        release()  # a second release gives nothing back
    assert gate.open == 0


def test_a_sub_second_idle_timeout_is_kept_as_it_is() -> None:
    """uvicorn.Config's keep-alive timeout is whole seconds; each connection's is the
    ``--idle-timeout`` given (500ms stays 0.5 s, not 1 s)."""
    from uvicorn.server import ServerState

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    async def made() -> HeadLimitedProtocol:
        config = uvicorn.Config(app, timeout_keep_alive=1, lifespan="off", log_config=None)
        protocol = HeadLimitedProtocol(config=config, server_state=ServerState(), app_state={})
        limits = ConnectionLimits(idle_timeout=0.5)
        protocol.admitted(ApiGate("client API", limits, 1, "--x"), lambda: None, 0.0)
        return protocol

    assert asyncio.run(made()).timeout_keep_alive == 0.5
