"""Fakes shared by the unit tests: a clock that moves only when told to, a token source, and
a token endpoint on a loopback port (for ``TokenClient``: what it sends is seen as sent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.errors import TokenError
from proxy.gateway import LOGIN_PATH
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


class FakeTokenEndpoint:
    """The gateway's token endpoint as a test sets it: ``answer(...)`` for every login;
    ``seen`` holds each login's headers and form; ``hold`` keeps answers back."""

    def __init__(self) -> None:
        self.url = URL()  # set once the server listens
        self.seen: list[tuple[CIMultiDictProxy[str], dict[str, str]]] = []
        self.hold = False
        self.release = asyncio.Event()  # ends held answers
        self._answer: tuple[int, bytes, dict[str, str]] = (200, b"{}", {})

    def answer(
        self,
        status: int = 200,
        *,
        payload: object = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        if payload is not None:
            body = json.dumps(payload).encode()
        self._answer = (status, body, {"Content-Type": "application/json", **(headers or {})})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(LOGIN_PATH, self._login)
        return app

    async def _login(self, request: web.Request) -> web.Response:
        form: dict[str, Any] = dict(await request.post())
        self.seen.append((request.headers, form))
        if self.hold:
            await self.release.wait()
        status, body, headers = self._answer
        return web.Response(status=status, body=body, headers=headers)
