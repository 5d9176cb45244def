"""The one timer of an HTTP ingress connection, for each thing it waits for in turn.

A keep-alive connection moves from wait to wait (a request head, the exchange's progress, the
next request) several times per request: the timer is not cancelled and made anew each time.
A timer that would fire no later than the new deadline stays armed, and re-arms itself for the
rest when it fires early; progress only notes the time (``touch``), checked when it fires.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

__all__ = ["Wait", "WaitTimer"]


class Wait(enum.Enum):
    """What the connection's timer waits for."""

    HEAD = enum.auto()  # a request head: 408 if it is late
    IDLE = enum.auto()  # a request on a keep-alive connection: closed if none comes
    PROGRESS = enum.auto()  # a byte moving, during an exchange: ``inactivity`` after the last
    CLOSING = enum.auto()  # closed, flushing: aborted if that takes too long


class WaitTimer:
    """Calls ``expired(wait)`` when the current wait is over: ``delay`` after it was armed, or
    for ``Wait.PROGRESS``, ``inactivity`` seconds after the last ``touch``."""

    __slots__ = (
        "_at",
        "_deadline",
        "_expired",
        "_handle",
        "_inactivity",
        "_loop",
        "progress",
        "wait",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        inactivity: float,
        expired: Callable[[Wait], None],
    ) -> None:
        self._loop = loop
        self._inactivity = inactivity
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # loop time the timer fires at
        self._deadline = 0.0  # loop time the wait ends (``Wait.PROGRESS``: see ``progress``)
        self.wait = Wait.IDLE  # what the timer means
        self.progress = 0.0  # loop time of the last byte moved (``Wait.PROGRESS``)

    def touch(self) -> None:
        """A byte moved: the ``Wait.PROGRESS`` deadline starts over (lazily)."""
        self.progress = self._loop.time()

    def arm(self, delay: float, wait: Wait) -> None:
        """Wait ``delay`` seconds for ``wait``."""
        self.wait = wait
        self._deadline = self._loop.time() + delay
        if self._handle is not None and self._at <= self._deadline:
            return
        self.cancel()
        self._at = self._deadline
        self._handle = self._loop.call_at(self._deadline, self._fire)

    def arm_progress(self) -> None:
        """Touch, and wait for progress unless that is what the timer waits for already."""
        self.touch()
        if self.wait is not Wait.PROGRESS or self._handle is None:
            self.arm(self._inactivity, Wait.PROGRESS)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if self.wait is Wait.PROGRESS:
            deadline = self.progress + self._inactivity
        if self._loop.time() < deadline:  # armed for an earlier wait, or bytes moved since
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self._expired(self.wait)
