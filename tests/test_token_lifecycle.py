"""The token lifecycle (issue 17): explicit states, crashes that back off and are reported
once, ``close()`` that never raises, tokens refused for their own ``exp``, and the one 401
rule (tokens/flow.py). Unit tests on a fake clock; the proxy-level ones on the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from yarl import URL

from proxy.config import Config, Credentials
from proxy.errors import CredentialsRejected, TokenEndpointUnavailable
from proxy.gateway import LOGIN_PATH
from proxy.observe.background import Supervisor
from proxy.observe.metrics import Metrics
from proxy.server import serve as server
from proxy.server.keys import CONFIG, SUPERVISOR
from proxy.server.reload import Reloader
from proxy.tokens.flow import send_with_token
from proxy.tokens.manager import TokenManager
from proxy.tokens.refresher import Phase
from proxy.tokens.token import Token
from proxy.upstream.token_client import MAX_LIFETIME, TokenClient

from .conftest import Gateway, ProxyFactory, proxy_config
from .fakes import FakeClock, FakeTokenEndpoint, FakeTokenSource

TABLES = "/dap/query/canvas/table"


def manager(source: Any, clock: FakeClock, **kwargs: Any) -> TokenManager:
    options: dict[str, Any] = {"rng": random.Random(7), "backoff_base": 10, "backoff_cap": 30}
    options.update(kwargs)
    return TokenManager(source, clock=clock, **options)


async def until(condition: Any, what: str, seconds: float = 10) -> None:
    """Wait for an event (a hang guard, never a count after a sleep)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.005)


class BrokenToken(Token):
    """A token whose refresh time cannot be worked out: the step after the fetch raises."""

    def refresh_due(self, margin: float) -> float:
        raise ValueError("a bug after the fetch")


def crash_after_fetch(how: str, source: FakeTokenSource) -> tuple[Any, dict[str, Any]]:
    """A source and options under which the step after a successful fetch raises."""
    if how == "hook":

        def hook(outcome: str, seconds: float) -> None:
            if outcome == "success":
                raise ValueError("the metrics hook broke")

        return source, {"on_refresh": hook}

    async def broken() -> Token:
        token = await source()
        return BrokenToken(token.access_token, token.obtained_at, token.expires_at)

    return broken, {}


# ---------------------------------------------------------------------- crashes back off


@pytest.mark.parametrize("how", ["hook", "token"])
async def test_a_crash_after_a_successful_fetch_backs_off(how: str) -> None:
    """50 concurrent requests under a crash after the fetch: one token request, not 50."""
    clock = FakeClock()
    source = FakeTokenSource(clock)
    supervisor = Supervisor()
    fetch, options = crash_after_fetch(how, source)
    tokens = manager(fetch, clock, supervisor=supervisor, **options)
    try:
        outcomes = await asyncio.gather(
            *(tokens.token() for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(o, TokenEndpointUnavailable) for o in outcomes), outcomes
        assert "ValueError" in str(outcomes[0])
        assert "a bug" not in str(outcomes[0]) and "broke" not in str(outcomes[0])
        for _ in range(50):  # while backing off, answered at once with a Retry-After
            with pytest.raises(TokenEndpointUnavailable) as raised:
                await tokens.token()
            assert raised.value.retry_after is not None and raised.value.retry_after >= 1
        assert source.calls == 1
        state = tokens.state
        assert state.phase is Phase.BACKOFF and state.until - clock.now >= 5
        assert tokens.refreshes == {"success": 0, "rejected": 0, "unavailable": 1}
        assert tokens.last_refresh is not None and tokens.last_refresh[1] == "unavailable"
        assert not tokens.ready
        assert list(supervisor.problems) == ["token refresh"]
        assert supervisor.problems["token refresh"].error == "ValueError"
    finally:
        await tokens.close()


async def test_a_crash_is_reported_once_then_cleared_by_the_next_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    source = FakeTokenSource(clock)
    supervisor = Supervisor()
    broken = [True]

    def hook(outcome: str, seconds: float) -> None:
        if outcome == "success" and broken[0]:
            raise ValueError("the metrics hook broke")

    tokens = TokenManager(
        source, clock=clock, backoff_base=0.001, backoff_cap=0.002, name="yale",
        supervisor=supervisor, on_refresh=hook,
    )  # fmt: skip
    try:
        await tokens.start()
        await until(lambda: source.calls >= 4, "several crashed attempts")
        assert "token refresh (yale)" in supervisor.problems
        broken[0] = False
        await until(lambda: tokens.ready, "recovered")
        assert tokens.state.error is None and tokens.state.phase is Phase.VALID
        assert supervisor.problems == {}
    finally:
        await tokens.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "token refresh (yale) failed unexpectedly (ValueError); it carries on"
    ]
    assert any(r.getMessage() == "token refresh (yale) recovered" for r in caplog.records)


async def test_a_source_raising_something_unforeseen_backs_off_like_an_outage() -> None:
    clock = FakeClock()
    supervisor = Supervisor()
    calls = 0

    async def source() -> Token:
        nonlocal calls
        calls += 1
        raise KeyError("a bug in the source")

    tokens = manager(source, clock, supervisor=supervisor)
    try:
        outcomes = await asyncio.gather(
            *(tokens.token() for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(o, TokenEndpointUnavailable) for o in outcomes)
        assert calls == 1 and tokens.state.phase is Phase.BACKOFF
        assert supervisor.problems["token refresh"].error == "KeyError"
    finally:
        await tokens.close()


class ExplodingRandom(random.Random):
    """Jitter that raises: a bug inside the failure handling itself kills the worker."""

    def uniform(self, a: float, b: float) -> float:
        raise ZeroDivisionError("jitter")


async def test_a_worker_that_dies_still_backs_off_and_close_does_not_raise() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.outcomes = [TokenEndpointUnavailable("down")]
    supervisor = Supervisor()
    tokens = manager(source, clock, rng=ExplodingRandom(), supervisor=supervisor)
    with pytest.raises(TokenEndpointUnavailable):
        await tokens.token()
    await until(lambda: tokens.state.phase is Phase.BACKOFF, "backing off after the death")
    for _ in range(20):
        with pytest.raises(TokenEndpointUnavailable):
            await tokens.token()
    assert source.calls == 1
    assert supervisor.problems["token refresh"].error == "ZeroDivisionError"
    await tokens.close()  # must not raise
    assert tokens.state.phase is Phase.CLOSED


async def test_close_during_a_fetch_fails_the_waiters_and_never_raises() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.gate = asyncio.Event()  # the fetch never ends by itself
    tokens = manager(source, clock)
    waiter = asyncio.create_task(tokens.token())
    await until(lambda: source.calls == 1, "the fetch started")
    await tokens.close()
    with pytest.raises(TokenEndpointUnavailable, match="shutting down"):
        await asyncio.wait_for(waiter, 5)  # a hang guard only
    with pytest.raises(TokenEndpointUnavailable, match="shutting down"):
        await tokens.token()
    await tokens.close()  # twice is fine
    assert source.calls == 1


async def test_a_token_arriving_too_late_to_use_is_a_failed_fetch() -> None:
    """A 10 s token whose answer took 6 s would need refreshing at once: not taken."""
    clock = FakeClock()

    async def slow_source() -> Token:
        sent = clock.now
        clock.advance(6)
        return Token("late-token", obtained_at=sent, expires_at=sent + 10)

    tokens = manager(slow_source, clock, refresh_margin=300)
    try:
        with pytest.raises(TokenEndpointUnavailable, match="expires in 4 s: too soon to use"):
            await tokens.token()
        assert tokens.refreshes["unavailable"] == 1 and tokens.state.token is None
        assert tokens.state.phase is Phase.BACKOFF
    finally:
        await tokens.close()


async def test_rejected_credentials_are_a_phase_with_a_retry_time() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    source.outcomes = [CredentialsRejected("refused (HTTP 401)")]
    tokens = manager(source, clock, rejected_retry_interval=60)
    try:
        with pytest.raises(CredentialsRejected):
            await tokens.token()
        assert tokens.state.phase is Phase.REJECTED
        assert tokens.state.until == pytest.approx(clock.now + 60)
        tokens.credentials_changed()  # a reload: asked at once, not after the interval
        assert (await tokens.first_token()).access_token == "token-2"
        assert tokens.state.phase is Phase.VALID
    finally:
        await tokens.close()


async def test_refused_credentials_leave_no_refresh_timer_to_try_before_the_interval() -> None:
    """The refresh timer set when a token arrived must not start a fetch while REJECTED:
    refused credentials get one try per interval, whatever was scheduled before."""
    clock = FakeClock()
    source = FakeTokenSource(clock, lifetime=0.4)  # its refresh falls due in ~0.2 s
    tokens = manager(source, clock, rejected_retry_interval=60)
    try:
        await tokens.first_token()
        source.outcomes = [CredentialsRejected("refused (HTTP 401)")]
        tokens.credentials_changed()  # fetches now, and is refused
        await until(lambda: tokens.state.phase is Phase.REJECTED, "refused")
        calls = source.calls
        await asyncio.sleep(0.5)  # past when the old timer would have fired
        assert source.calls == calls, "a refused credential was tried again early"
    finally:
        await tokens.close()


# ---------------------------------------------------------------------- the Supervisor


async def test_the_supervisor_logs_an_error_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    supervisor = Supervisor(restart_after=0)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise RuntimeError(f"failure {runs}")

    await asyncio.wait_for(supervisor.run("watcher", flaky), 5)  # a hang guard only
    assert runs == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["watcher failed unexpectedly (RuntimeError); it carries on"]
    assert supervisor.problems == {}, "it ended well: its problem is over"
    supervisor.record("reload", RuntimeError("one"))
    supervisor.record("reload", RuntimeError("two"))  # the same episode: debug
    supervisor.record("reload", OSError("another kind"))  # news: said again
    supervisor.clear("reload")
    supervisor.clear("reload")  # nothing to clear: nothing said
    messages = [r.getMessage() for r in caplog.records if r.name == "proxy.background"]
    assert messages.count("reload failed unexpectedly (RuntimeError); it carries on") == 1
    assert messages.count("reload failed again (RuntimeError)") == 1
    assert messages.count("reload failed unexpectedly (OSError); it carries on") == 1
    assert messages.count("watcher recovered") == 1
    assert messages.count("reload recovered") == 1
    assert supervisor.problems == {}


# ---------------------------------------------------------------------- the token's own exp


async def fetch_answer(answer: dict[str, Any], clock: FakeClock, margin: float = 300) -> Token:
    """``answer`` from a fake token endpoint on a loopback port, fetched by a TokenClient."""
    endpoint = FakeTokenEndpoint()
    endpoint.answer(payload=answer)
    runner = web.AppRunner(endpoint.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            client = TokenClient(
                session,
                URL(f"http://127.0.0.1:{port}{LOGIN_PATH}"),
                Credentials("us-east-1#id", "s3cr3t-value"),
                timeout=5,
                clock=clock,
                refresh_margin=margin,
            )
            return await client.fetch()
    finally:
        await runner.cleanup()


def jwt_expiring(clock: FakeClock, seconds: float) -> str:
    return jwt.encode({"exp": int(clock.time() + seconds)}, "k" * 32, algorithm="HS256")


async def test_a_jwt_whose_exp_has_passed_is_refused_despite_expires_in() -> None:
    clock = FakeClock()
    answer = {"access_token": jwt_expiring(clock, -60), "expires_in": 3599}
    with pytest.raises(TokenEndpointUnavailable) as raised:
        await fetch_answer(answer, clock)
    assert raised.value.message == (
        "the token endpoint sent an invalid answer: the token has already expired "
        "(its exp was 60 s ago; is this machine's clock right?)"
    )


async def test_a_jwt_expiring_within_the_refresh_margin_is_refused() -> None:
    clock = FakeClock()
    answer = {"access_token": jwt_expiring(clock, 100), "expires_in": 3599}
    with pytest.raises(TokenEndpointUnavailable) as raised:
        await fetch_answer(answer, clock)
    assert raised.value.message == (
        "the token endpoint sent an invalid answer: the token expires in 100 s by its exp "
        "(not the 3599 s stated), within the 300 s refresh margin"
    )


@pytest.mark.parametrize(
    ("exp_in", "expires_in", "lifetime"),
    [
        (1000, 3599, 1000),  # the JWT's exp comes first: it is the truth
        (3600, 3599, 3599),  # consistent: expires_in as ever
        (2, 3, 3),  # short-lived by design (the simulator's 3 s tokens), whole-second exp
        (10**12, None, MAX_LIFETIME),  # far future: refreshed daily all the same
        (None, 10**400, 3600),  # past float's range: no crash, taken as not stated
    ],
    ids=["exp-first", "consistent", "short-lived", "exp-far-future", "expires_in-huge"],
)
async def test_the_token_lifetime_from_exp_and_expires_in(
    exp_in: float | None, expires_in: int | None, lifetime: float
) -> None:
    clock = FakeClock()
    access = jwt_expiring(clock, exp_in) if exp_in is not None else "opaque-token"
    answer: dict[str, Any] = {"access_token": access}
    if expires_in is not None:
        answer["expires_in"] = expires_in
    token = await fetch_answer(answer, clock)
    assert token.lifetime == pytest.approx(lifetime, abs=1)


async def test_a_jwt_with_an_exp_past_floats_range_does_not_crash() -> None:
    clock = FakeClock()
    access = jwt.encode({"exp": 10**400}, "k" * 32, algorithm="HS256")
    token = await fetch_answer({"access_token": access}, clock)
    assert token.lifetime == MAX_LIFETIME
    access = jwt.encode({"exp": -(10**400)}, "k" * 32, algorithm="HS256")
    with pytest.raises(TokenEndpointUnavailable, match="already expired"):
        await fetch_answer({"access_token": access, "expires_in": 3599}, clock)


# ---------------------------------------------------------------------- the one 401 rule


class Reply:
    """A response as the flow sees it, noting whether it was released."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.released = False

    def release(self) -> None:
        self.released = True


class Gatekeeper:
    """A gateway stand-in: answers 401 to the tokens in ``refused``, else 200."""

    def __init__(self, *refused: str) -> None:
        self.refused = set(refused)
        self.sent: list[str] = []
        self.replies: list[Reply] = []

    async def __call__(self, token: Token) -> Reply:
        self.sent.append(token.access_token)
        reply = Reply(401 if token.access_token in self.refused else 200)
        self.replies.append(reply)
        return reply


async def test_a_401_is_replayed_once_with_a_new_token() -> None:
    clock = FakeClock()
    tokens = manager(FakeTokenSource(clock), clock)
    try:
        gateway = Gatekeeper("token-1")
        reply = await send_with_token(tokens, gateway, replayable=True)
        assert reply.status == 200 and gateway.sent == ["token-1", "token-2"]
        first = gateway.replies[0]
        assert first.released, "the 401 is released before the replay"
        # The replay refused too: its 401 goes back as it is, no third try.
        gateway = Gatekeeper("token-2", "token-3")
        clock.advance(31)  # past the holdoff
        reply = await send_with_token(tokens, gateway, replayable=True)
        assert reply.status == 401 and gateway.sent == ["token-2", "token-3"]
        assert not reply.released, "the caller relays it"
    finally:
        await tokens.close()


async def test_a_401_within_the_holdoff_is_relayed_without_a_token_request() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    try:
        await send_with_token(tokens, Gatekeeper("token-1"), replayable=True)
        assert source.calls == 2
        clock.advance(10)
        gateway = Gatekeeper("token-2")
        for _ in range(20):
            reply = await send_with_token(tokens, gateway, replayable=True)
            assert reply.status == 401
        assert source.calls == 2 and tokens.relayed_401s == 20
    finally:
        await tokens.close()


async def test_a_401_on_a_body_that_cannot_be_replayed_is_relayed_and_retires_the_token() -> None:
    clock = FakeClock()
    tokens = manager(FakeTokenSource(clock), clock)
    try:
        gateway = Gatekeeper("token-1")
        reply = await send_with_token(tokens, gateway, replayable=False)
        assert reply.status == 401 and gateway.sent == ["token-1"] and not reply.released
        assert (await tokens.token()).access_token == "token-2"
    finally:
        await tokens.close()


async def test_a_401_then_refused_credentials_raise_and_release() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    try:
        await tokens.token()
        source.outcomes = [CredentialsRejected("refused (HTTP 401)")]
        gateway = Gatekeeper("token-1")
        with pytest.raises(CredentialsRejected):
            await send_with_token(tokens, gateway, replayable=True)
        assert gateway.replies[0].released
        with pytest.raises(CredentialsRejected):  # not asked again within the interval
            await send_with_token(tokens, gateway, replayable=True)
        assert source.calls == 2 and all(r.released for r in gateway.replies)
    finally:
        await tokens.close()


async def test_cancelled_after_a_401_releases_the_response() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = manager(source, clock)
    try:
        await tokens.token()
        gateway = Gatekeeper("token-1")
        source.gate = asyncio.Event()  # the replacement never comes
        task = asyncio.create_task(send_with_token(tokens, gateway, replayable=True))
        await until(lambda: source.calls == 2, "the replacement asked for")
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gateway.replies[0].released
    finally:
        await tokens.close()


# ---------------------------------------------------------------------- the proxy


def break_the_metrics_hook(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The step after every successful fetch raises while ``broken[0]``."""
    broken = [True]
    observer = Metrics.token_observer

    def token_observer(self: Metrics, profile: str) -> Any:
        observe = observer(self, profile)

        def hook(outcome: str, seconds: float) -> None:
            if broken[0] and outcome == "success":
                raise ValueError("the step after the fetch broke")
            observe(outcome, seconds)

        return hook

    monkeypatch.setattr(Metrics, "token_observer", token_observer)
    return broken


async def test_a_proxy_with_a_crash_after_fetch_shows_it_then_recovers(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = break_the_metrics_hook(monkeypatch)
    proxy = await proxy_factory(gateway.url)
    statuses = await asyncio.gather(*(_status(proxy, TABLES) for _ in range(50)))
    assert set(statuses) == {503}
    assert gateway.state.token_requests <= 2, "no spin: backoff after a crash"
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 503
        message = (await resp.json())["error"]["message"]
    assert "token refresh: ValueError" in message and "broke" not in message
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        status = await resp.json()
    profile = status["profiles"]["default"]
    assert profile["state"] in ("backoff", "fetching")
    assert profile["last_refresh"]["outcome"] == "unavailable"
    assert profile["refreshes"]["success"] == 0
    assert [p["task"] for p in status["problems"]] == ["token refresh"]

    broken[0] = False
    await until(lambda: proxy.tokens.ready, "recovered after the backoff")
    async with proxy.http.get(proxy.url + "/-/status") as resp:
        status = await resp.json()
    assert status["problems"] == []
    assert status["profiles"]["default"]["state"] == "valid"
    assert status["profiles"]["default"]["last_refresh"]["outcome"] == "success"
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 200 and "problems" not in await resp.json()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


async def _status(proxy: Any, path: str) -> int:
    async with proxy.http.get(proxy.url + path) as resp:
        await resp.read()
        return resp.status


async def test_shutdown_with_a_crashed_refresher_exits_0(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    break_the_metrics_hook(monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    serving = asyncio.create_task(server.serve(proxy_config(gateway.url)))
    # serve() answers SIGTERM once it has installed its handler (after the first token).
    await until(lambda: signal.getsignal(signal.SIGTERM) is not before, "serving")
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, 10) == 0  # a hang guard only
    messages = [r.getMessage() for r in caplog.records]
    assert "stopped" in messages
    assert any("failed unexpectedly (ValueError)" in m for m in messages), "it did crash"


# ---------------------------------------------------------------------- a hostile token endpoint
# What a short campaign against the token surface found (a real server on a loopback port).


async def _in_pieces(request: web.Request) -> web.StreamResponse:
    """A good answer, in two pieces with a pause between (as TCP may deliver it)."""
    body = json.dumps({"access_token": "opaque-token", "expires_in": 3599}).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[:10])
    await asyncio.sleep(0.05)
    await response.write(body[10:])
    return response


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(b"a" * 65536)
    return response


def _answer(body: bytes) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler


@pytest.mark.parametrize(
    ("handler", "outcome"),
    [
        (_in_pieces, "ok"),
        (_answer(b"[" * 60_000), "not JSON"),  # RecursionError inside json
        (_answer(b'{"access_token": "abc\\r\\nX-Evil: 1"}'), "a header cannot carry"),
        (_answer('{"access_token": "tökén"}'.encode()), "a header cannot carry"),
        (_answer(b'{"access_token": "a", "expires_in": NaN}'), "ok"),
        (_endless, "too large"),
    ],
    ids=["in-pieces", "deep-json", "crlf-token", "non-ascii-token", "nan-expiry", "endless"],
)
async def test_a_hostile_token_endpoint_gets_a_named_failure(
    aiohttp_server: Any, handler: Any, outcome: str
) -> None:
    app = web.Application()
    app.router.add_post("/ids/auth/login", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = TokenClient(
            session,
            URL(str(server.make_url("/ids/auth/login"))),
            Credentials("us-east-1#id", "s3cr3t-value"),
            timeout=5,
            refresh_margin=300,
        )
        if outcome == "ok":
            assert round((await client.fetch()).lifetime) >= 3599
            return
        with pytest.raises(TokenEndpointUnavailable, match=outcome):
            await client.fetch()


async def test_a_refusal_with_a_deeply_nested_body_is_a_refusal_not_a_crash(
    aiohttp_server: Any,
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, body=b"[" * 60_000, content_type="application/json")

    app = web.Application()
    app.router.add_post("/ids/auth/login", refuse)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        client = TokenClient(
            session,
            URL(str(server.make_url("/ids/auth/login"))),
            Credentials("us-east-1#id", "s3cr3t-value"),
            timeout=5,
        )
        with pytest.raises(CredentialsRejected, match="HTTP 401"):
            await client.fetch()


async def test_a_source_cancelled_from_within_backs_off_and_fails_the_waiters() -> None:
    """A cancellation that is not close()'s (a library's timeout gone wrong) must not leave
    callers waiting on an attempt no one will finish."""
    clock = FakeClock()

    async def source() -> Token:
        raise asyncio.CancelledError

    supervisor = Supervisor()
    tokens = manager(source, clock, supervisor=supervisor)
    try:
        with pytest.raises(TokenEndpointUnavailable, match="CancelledError"):
            await asyncio.wait_for(tokens.token(), 5)  # a hang guard only
        assert tokens.state.phase is Phase.BACKOFF
        assert supervisor.problems["token refresh"].error == "CancelledError"
    finally:
        await tokens.close()


async def test_the_reloader_clears_its_problem_when_it_next_succeeds(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url)
    app = proxy.running.runner.app
    config = app[CONFIG]
    broken = [True]

    def load() -> Config:
        if broken[0]:
            raise RuntimeError("unforeseen")
        return config

    reloader = Reloader(app, config, load)
    await reloader._signalled()  # what SIGHUP schedules (in a task: files read off the loop)
    assert app[SUPERVISOR].problems["reload"].error == "RuntimeError"
    broken[0] = False
    await reloader._signalled()
    assert app[SUPERVISOR].problems == {}
