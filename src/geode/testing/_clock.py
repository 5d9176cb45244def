"""A clock that stands still until a test moves it."""

from __future__ import annotations

import datetime

__all__ = ["FakeClock"]

_START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class FakeClock:
    """A ``geode.pki.Clock`` (called for the current time, an aware UTC ``datetime``) for the
    ``clock=`` parameters of the CA, the Coordinator and the nonce store: it tells ``now`` until
    ``advance`` moves it, so a test can step past an expiry without waiting for it."""

    def __init__(self, now: datetime.datetime = _START) -> None:
        if now.utcoffset() is None:
            raise ValueError(f"{now.isoformat()}: a clock tells aware times (give a tzinfo)")
        self._now = now.astimezone(datetime.UTC)

    @property
    def now(self) -> datetime.datetime:
        return self._now

    def __call__(self) -> datetime.datetime:
        return self._now

    def advance(self, by: datetime.timedelta) -> datetime.datetime:
        """Move the clock by ``by`` (backwards when negative, as a reset clock does); the new
        time."""
        self._now += by
        return self._now
