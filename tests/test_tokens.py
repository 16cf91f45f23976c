"""TokenManager (fake source, fake clock) and TokenClient (a token endpoint on a loopback port)."""

from __future__ import annotations

import asyncio
import base64
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from yarl import URL

from proxy.config import Credentials
from proxy.errors import CredentialsRejected, TokenEndpointUnavailable
from proxy.gateway import LOGIN_PATH
from proxy.tokens.manager import TokenManager
from proxy.tokens.token import Token
from proxy.upstream.token_client import TokenClient

from .fakes import FakeClock, FakeTokenEndpoint, FakeTokenSource
from .waiting import until

SECRET = "s3cr3t-value-never-shown"


def manager(source: FakeTokenSource, clock: FakeClock, **kwargs: object) -> TokenManager:
    options: dict[str, object] = {
        "refresh_margin": 300.0,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return TokenManager(source, clock=clock, **options)  # type: ignore[arg-type]


async def settle() -> None:
    """Let background tasks run (they never sleep on the fake clock)."""
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- TokenManager


async def test_cold_start_many_callers_one_fetch() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.delay = 0.01
    tokens = manager(source, clock)
    got = await asyncio.gather(*(tokens.token() for _ in range(200)))
    assert source.calls == 1
    assert {t.access_token for t in got} == {"token-1"}
    await tokens.close()


async def test_fresh_token_is_reused_without_fetching() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    first = await tokens.token()
    clock.advance(3600 - 300 - 1)  # one second before the refresh is due
    assert await tokens.token() is first
    await settle()
    assert source.calls == 1
    await tokens.close()


async def test_stale_token_is_served_while_one_background_refresh_runs() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    first = await tokens.token()
    clock.advance(3600 - 300 + 1)  # inside the margin, still valid
    source.gate = asyncio.Event()  # hold the refresh open
    served = await asyncio.gather(*(tokens.token() for _ in range(50)))
    assert all(t is first for t in served), "callers must not wait while the token is valid"
    await until(lambda: source.calls > 1, "the background refresh started")
    assert source.calls == 2, "exactly one refresh for fifty stale hits"
    source.gate.set()
    await settle()
    assert (await tokens.token()).access_token == "token-2"
    await tokens.close()


async def test_refresh_margin_never_exceeds_half_the_lifetime() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock, lifetime=60)
    tokens = manager(source, clock, refresh_margin=300)
    first = await tokens.token()
    clock.advance(29)
    assert await tokens.token() is first
    await settle()
    assert source.calls == 1, "a 300 s margin on a 60 s token must not refresh at once"
    clock.advance(2)  # past half the lifetime
    assert await tokens.token() is first
    await until(lambda: source.calls > 1, "the refresh started")
    assert source.calls == 2
    await tokens.close()


async def test_failed_refresh_keeps_serving_the_valid_token_and_retries() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    first = await tokens.token()
    clock.advance(3400)  # stale
    source.outcomes = [TokenEndpointUnavailable("down"), TokenEndpointUnavailable("down")]
    assert await tokens.token() is first
    await until(lambda: tokens.refreshes["success"] == 2, "two backoffs, then success")
    assert source.calls == 4
    assert (await tokens.token()).access_token == "token-4"
    assert tokens.refreshes == {"success": 2, "rejected": 0, "unavailable": 2}
    await tokens.close()


async def test_expired_token_is_never_handed_out() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock, backoff_base=10, backoff_cap=10)
    await tokens.token()
    source.outcomes = [TokenEndpointUnavailable("the token endpoint answered HTTP 500")]
    clock.advance(3600)
    with pytest.raises(TokenEndpointUnavailable):
        await tokens.token()
    assert not tokens.ready
    # While backing off, callers are answered at once with a Retry-After, not queued.
    with pytest.raises(TokenEndpointUnavailable) as raised:
        await asyncio.wait_for(tokens.token(), 0.5)
    assert raised.value.retry_after is not None and raised.value.retry_after >= 1
    assert source.calls == 2
    await tokens.close()


async def test_rejected_credentials_are_not_retried_in_a_loop() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.outcomes = [CredentialsRejected("rejected (HTTP 401)")]
    tokens = manager(source, clock, rejected_retry_interval=60)
    with pytest.raises(CredentialsRejected):
        await tokens.token()
    await settle()  # nothing is due: the fake clock has not moved
    for _ in range(20):
        with pytest.raises(CredentialsRejected):
            await tokens.token()
    assert source.calls == 1
    clock.advance(61)  # one new try per interval, so a fixed secret is picked up
    assert (await tokens.token()).access_token == "token-2"
    assert source.calls == 2
    await tokens.close()


async def test_replace_drops_the_refused_token_once_for_all_callers() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    refused = await tokens.token()
    new = await asyncio.gather(*(tokens.replace(refused) for _ in range(20)))
    assert source.calls == 2
    assert {t.access_token for t in new} == {"token-2"}
    # A late caller still holding the old token gets the new one, with no extra fetch.
    assert (await tokens.replace(refused)).access_token == "token-2"
    assert source.calls == 2
    await tokens.close()


async def test_first_token_reports_the_first_outcome() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.outcomes = [CredentialsRejected("nope")]
    tokens = manager(source, clock)
    await tokens.start()
    with pytest.raises(CredentialsRejected):
        await tokens.first_token()
    await tokens.close()


async def test_background_timer_refreshes_without_traffic() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock, lifetime=0.2)  # refresh due after 0.1 s of loop time
    tokens = manager(source, clock)
    await tokens.token()

    def tick() -> None:
        clock.advance(0.1)

    source.on_call = tick
    # The timer must refresh before expiry with no request arriving.
    await until(lambda: source.calls >= 2)
    await tokens.close()


def test_token_repr_hides_the_token() -> None:
    token = Token("eyJ-secret-token", obtained_at=0, expires_at=10)
    assert "eyJ-secret-token" not in repr(token)


# ---------------------------------------------------------------------- TokenClient

TOKEN_URL = "https://gateway.test/ids/auth/login"
CLIENT_ID = "us-east-1#6f0c-client"


@pytest.fixture
async def endpoint(aiohttp_server: Any) -> AsyncIterator[FakeTokenEndpoint]:
    fake = FakeTokenEndpoint()
    fake.url = (await aiohttp_server(fake.app())).make_url(LOGIN_PATH)
    yield fake
    fake.release.set()  # a held answer ends, so that the server closes at once


async def fetch(url: URL, clock: FakeClock | None = None, within: float = 5) -> Token:
    async with aiohttp.ClientSession() as session:
        client = TokenClient(
            session,
            url,
            Credentials(CLIENT_ID, SECRET),
            timeout=within,
            clock=clock or FakeClock(),
        )
        return await client.fetch()


async def test_client_sends_basic_auth_with_hash_and_grant_type(
    endpoint: FakeTokenEndpoint,
) -> None:
    endpoint.answer(payload={"access_token": "abc", "expires_in": 3599, "scope": "x"})
    clock = FakeClock()
    token = await fetch(endpoint.url, clock)
    assert token.access_token == "abc"
    assert token.expires_at == clock.now + 3599
    assert token.scope == "x"
    ((headers, form),) = endpoint.seen
    scheme, credentials = headers["Authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{CLIENT_ID}:{SECRET}"
    assert form == {"grant_type": "client_credentials"}


async def test_client_reads_expiry_from_jwt_when_expires_in_is_missing(
    endpoint: FakeTokenEndpoint,
) -> None:
    clock = FakeClock()
    access = jwt.encode({"exp": int(clock.time()) + 1200}, "k" * 32, algorithm="HS256")
    endpoint.answer(payload={"access_token": access})
    token = await fetch(endpoint.url, clock)
    assert token.lifetime == pytest.approx(1200, abs=1)


async def test_client_defaults_to_one_hour(endpoint: FakeTokenEndpoint) -> None:
    endpoint.answer(payload={"access_token": "not-a-jwt"})
    assert (await fetch(endpoint.url)).lifetime == 3600


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_client_rejected_credentials(endpoint: FakeTokenEndpoint, status: int) -> None:
    endpoint.answer(status, payload={"error": {"message": f"bad {SECRET}"}})
    with pytest.raises(CredentialsRejected) as raised:
        await fetch(endpoint.url)
    assert f"HTTP {status}" in raised.value.message
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(500, {}, None), (503, {}, None), (429, {"Retry-After": "7"}, 7.0), (404, {}, None)],
)
async def test_client_transient_failures(
    endpoint: FakeTokenEndpoint, status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    endpoint.answer(status, body=b"oops", headers=headers)
    with pytest.raises(TokenEndpointUnavailable) as raised:
        await fetch(endpoint.url)
    assert f"HTTP {status}" in raised.value.message
    assert raised.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"token_type": "bearer"}', "no access_token"),
        (b'{"access_token": "a", "expires_in": -5}', None),
    ],
)
async def test_client_invalid_answers(
    endpoint: FakeTokenEndpoint, body: bytes, why: str | None
) -> None:
    endpoint.answer(body=body)
    if why is None:  # a negative expires_in falls back to the JWT, then to one hour
        assert (await fetch(endpoint.url)).lifetime == 3600
        return
    with pytest.raises(TokenEndpointUnavailable, match=why):
        await fetch(endpoint.url)


async def test_client_network_errors(endpoint: FakeTokenEndpoint) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = endpoint.url.with_port(probe.getsockname()[1])
    with pytest.raises(TokenEndpointUnavailable, match="could not be reached"):
        await fetch(closed)
    endpoint.hold = True
    with pytest.raises(TokenEndpointUnavailable, match=r"did not answer within 0\.2 s"):
        await fetch(endpoint.url, within=0.2)


def test_client_repr_hides_the_secret() -> None:
    client = TokenClient(
        None,  # type: ignore[arg-type]
        URL(TOKEN_URL),
        Credentials(CLIENT_ID, SECRET),
        timeout=5,
    )
    assert SECRET not in repr(client)
    assert SECRET not in repr(Credentials(CLIENT_ID, SECRET))
