"""Fakes shared by the unit tests: a clock that moves only when told to, a token source."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.errors import TokenError
from proxy.tokens.token import Token


class FakeClock:
    """Monotonic and wall clocks that move together, only through ``advance``."""

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall - start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTokenSource:
    """Hands out ``token-1``, ``token-2``... or raises what ``outcomes`` says, counting calls."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.outcomes: list[TokenError] = []  # raised in order, before tokens are issued again
        self.delay = 0.0
        self.gate: asyncio.Event | None = None  # when set, fetches wait for it
        self.on_call: Callable[[], None] | None = None

    async def __call__(self) -> Token:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.outcomes:
            raise self.outcomes.pop(0)
        now = self.clock.monotonic()
        return Token(f"token-{self.calls}", obtained_at=now, expires_at=now + self.lifetime)
