"""The budgets several replicas share, as shaping.py sees them: a Protocol, so that the
shaper (this floor) never imports the Redis code above it (sharing/shared_state.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Reservation", "SharedBudgets"]


@dataclass(frozen=True)
class Reservation:
    """A shared budget's answer: a slot ``wait`` seconds from now (``granted``), or none
    within the wait allowed (then ``wait`` is when one frees); ``ticket`` gives it back."""

    granted: bool
    wait: float
    ticket: str = ""


class SharedBudgets(Protocol):
    """Budgets kept with every replica. ``reserve`` answers ``None`` when it cannot now
    (the store is away or slow): the caller uses its own budget then."""

    async def reserve(
        self, profile: str, endpoint: str, limit: int, window: float, max_wait: float
    ) -> Reservation | None: ...

    def release(self, profile: str, endpoint: str, ticket: str) -> None: ...

    def pause(self, profile: str, endpoint: str, seconds: float) -> None: ...
