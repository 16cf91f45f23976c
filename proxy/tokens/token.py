"""A gateway access token (``Token``, never in a repr) and where time comes from (``Clock``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Clock", "Token"]


class Clock(Protocol):
    """Where time comes from: the ``time`` module itself, or a fake in tests (never a patch).
    ``monotonic`` is for expiry arithmetic, ``time`` only to read a JWT's ``exp``."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


@dataclass(frozen=True)
class Token:
    """A gateway access token and when it stops being usable (monotonic seconds)."""

    access_token: str = field(repr=False)
    obtained_at: float
    expires_at: float
    scope: str = ""
    # Worked out once, not on every request that sends the token:
    authorization: str = field(init=False, repr=False, compare=False)  # "Bearer ..."
    _usable_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_once = object.__setattr__  # frozen: these two are derived, here only
        set_once(self, "authorization", f"Bearer {self.access_token}")
        # Sent until a safety gap before expiry, which covers the trip to the gateway.
        set_once(self, "_usable_until", self.expires_at - min(5.0, self.lifetime / 10))

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def usable(self, now: float) -> bool:
        """Sent until a safety gap before expiry, which covers the trip to the gateway."""
        return now < self._usable_until

    def refresh_due(self, margin: float) -> float:
        """When to start refreshing: ``margin`` before expiry, never past half the lifetime."""
        return self.expires_at - min(margin, self.lifetime / 2)
