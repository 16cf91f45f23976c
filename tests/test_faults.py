"""Fault injection: every way the token endpoint, the gateway, a client or the process can
fail, and what the proxy does about it.

For each fault a test asserts what the client sees (status and the gateway-shaped error body
the proxy writes), the line the proxy logs, and that the proxy goes on serving afterwards.
The last test sweeps everything captured along the way (log records at DEBUG, bodies and
headers clients received, exception texts, a subprocess's stderr) for the client secret and
for every token the gateway simulator issued.

Faults come from the simulator's knobs (``gateway.state.faults``) or, where the simulator is
too well behaved, from ``BrokenUpstream`` (tests/broken_upstream.py): a raw socket that
hangs, resets, or cuts a response at a chosen byte. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.aiohttp_compat import basic_credentials
from proxy.server.keys import CONFIG
from proxy.simulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SIMULATOR_STATE,
    SimulatorState,
)
from proxy.simulator.identity import TokenIssuer

from .broken_upstream import BODY_BYTE, PROMISED, SENT, BrokenUpstream, Mode
from .conftest import Proxy, ProxyFactory
from .gateway_routes import pattern
from .waiting import until

TABLES = "/dap/query/canvas/table"
LOGIN = "/ids/auth/login"
SHORT = "0.3"  # seconds: every timeout a test waits out


# ---------------------------------------------------------------------- the secrets sweep


@dataclass
class Sweep:
    """Everything the fault tests captured, and every secret that must not be in it."""

    texts: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    records: int = 0
    proxies: list[Proxy] = field(default_factory=list)  # this test's, read at its end

    def saw(self, *items: object) -> None:
        for item in items:
            if isinstance(item, bytes):
                self.texts.append(item.decode("latin-1"))
            elif isinstance(item, CIMultiDictProxy):
                self.texts.extend(f"{k}: {v}" for k, v in item.items())
            else:
                self.texts.append(str(item))

    def saw_exception(self, exc: BaseException) -> None:
        self.saw(str(exc), repr(exc), "".join(traceback.format_exception(exc)))

    def saw_proxies(self) -> None:
        """What each proxy of the test holds and would show: reprs and its last error."""
        for proxy in self.proxies:
            tokens = proxy.tokens
            self.saw(repr(proxy.running.runner.app[CONFIG]), repr(tokens), repr(tokens.state.token))
            if tokens.state.error is not None:
                self.saw_exception(tokens.state.error)
        self.proxies.clear()

    def leaks(self) -> list[str]:
        """What of the secret and the tokens appears in the captured text, if anything."""
        haystack = "\n".join(self.texts)
        basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
        found = [s for s in (DEMO_CLIENT_SECRET, basic, *self.tokens) if s in haystack]
        # A piece of a token is a leak too (a log line with its last 20 characters, say).
        # Any 16 characters of a JWT's signature, or of an opaque token, are unique to it;
        # its header, and much of its payload, are the same in every token.
        pieces: set[str] = set()
        for token in self.tokens:
            secret = token.rsplit(".", 1)[-1]
            pieces.update(secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1))
        runs = set(re.findall(rf"[A-Za-z0-9_-]{{{WINDOW},}}", haystack))
        seen = {run[i : i + WINDOW] for run in runs for i in range(len(run) - WINDOW + 1)}
        return found + sorted(pieces & seen)


SWEEP = Sweep()
WINDOW = 16


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        SWEEP.records += 1
        SWEEP.saw(record.getMessage(), repr(record.args), record.name)
        if record.exc_info:
            SWEEP.saw("".join(traceback.format_exception(*record.exc_info)))


@pytest.fixture(autouse=True)
def sweep_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log record of every test here, at DEBUG, goes to the sweep."""
    caplog.set_level(logging.DEBUG)
    handler = _Collector(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield
    SWEEP.saw_proxies()
    logging.getLogger().removeHandler(handler)


class RecordingIssuer(TokenIssuer):
    """The simulator's issuer, noting every token it hands out for the sweep."""

    def issue(self, client_id: str, generation: int = 0) -> str:
        token = super().issue(client_id, generation)
        SWEEP.tokens.add(token)
        return token


# ---------------------------------------------------------------------- the gateway


class Probes:
    """What the fault routes saw: uploads that ended, downloads a hang-up cancelled."""

    def __init__(self) -> None:
        self.uploads: list[tuple[str, int]] = []  # ("complete" or an error, bytes read)
        self.upload_started = asyncio.Event()
        self.upload_ended = asyncio.Event()
        self.download_started = asyncio.Event()
        self.download_cancelled = asyncio.Event()

    async def sink(self, request: web.Request) -> web.Response:
        """Reads a whole request body, noting whether it ended or was cut off."""
        size = 0
        outcome = "complete"
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                self.upload_started.set()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = type(exc).__name__
        finally:
            self.uploads.append((outcome, size))
            self.upload_ended.set()
        return web.json_response({"size": size})

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """``?chunks=N&interval=S[&chunked=1]``: N chunks of 1 KiB, one every S seconds."""
        chunks = int(request.query["chunks"])
        interval = float(request.query["interval"])
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = chunks * 1024
        await response.prepare(request)
        try:
            for _ in range(chunks):
                self.download_started.set()
                await response.write(pattern(1024))
                await asyncio.sleep(interval)
        except (asyncio.CancelledError, ConnectionError):
            self.download_cancelled.set()
            raise
        await response.write_eof()
        return response


@dataclass
class Gateway:
    url: str
    app: web.Application
    probes: Probes

    @property
    def state(self) -> SimulatorState:
        return self.app[SIMULATOR_STATE]

    @property
    def token_url(self) -> str:
        return self.url + LOGIN


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def gateway_factory(gateway_factory: Any) -> GatewayFactory:
    """conftest's simulator, with a token issuer that records and the probe routes."""

    async def make(**settings: Any) -> Gateway:
        settings.setdefault("job_duration", 0)
        probes = Probes()

        def prepare(app: web.Application) -> None:
            state = app[SIMULATOR_STATE]
            state.tokens = RecordingIssuer(state.settings.token_lifetime, state.settings.clock)
            app.router.add_route("*", "/faults/sink", probes.sink)
            app.router.add_get("/faults/trickle", probes.trickle)

        base = await gateway_factory(prepare=prepare, **settings)
        return Gateway(base.url, base.app, probes)

    return make


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory()


@pytest.fixture
async def broken(gateway: Gateway) -> AsyncIterator[BrokenUpstream]:
    """A broken upstream in front of the gateway; RELAY mode passes bytes through."""
    async with BrokenUpstream(relay_to=gateway.url) as upstream:
        yield upstream


# ---------------------------------------------------------------------- helpers


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def error(self, status: int, error_type: str) -> dict[str, str]:
        """The proxy's own error: exactly the gateway's shape, with this status and type."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["Content-Type"] == "application/json"
        body = json.loads(self.body)
        assert list(body) == ["error"]
        error: dict[str, str] = body["error"]
        assert sorted(error) == ["message", "type", "uuid"]
        assert error["type"] == error_type
        assert error["uuid"] and error["message"]
        return error


async def fetch(proxy: Proxy, path: str = TABLES, method: str = "GET", **kwargs: Any) -> Answer:
    async with proxy.http.request(method, proxy.url + path, **kwargs) as resp:
        body = await resp.read()
    SWEEP.saw(body, resp.headers)
    return Answer(resp.status, resp.headers, body)


async def served(proxy: Proxy) -> None:
    """A normal request succeeds."""
    answer = await fetch(proxy)
    assert answer.status == 200, answer.body
    assert "accounts" in json.loads(answer.body)["tables"]


async def served_within(proxy: Proxy, seconds: float) -> None:
    """Normal requests succeed again within ``seconds`` (after a backoff, say)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await fetch(proxy)
        if answer.status == 200:
            return
        assert time.monotonic() < deadline, f"still failing: {answer.status} {answer.body!r}"
        await asyncio.sleep(0.1)


async def start_proxy(factory: ProxyFactory, upstream: str, **env: str) -> Proxy:
    env.setdefault("DAP_PROXY_TIMEOUTS_SHUTDOWN", "0.5")
    wait = env.pop("wait_for_token", "yes") == "yes"
    proxy = await factory(upstream, wait_for_token=wait, **env)
    SWEEP.proxies.append(proxy)
    return proxy


def logged(caplog: pytest.LogCaptureFixture, logger: str, level: int, text: str) -> str:
    """The one-line message ``logger`` wrote at ``level`` containing ``text``."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno == level and text in r.getMessage()
    ]
    assert lines, f"no {logging.getLevelName(level)} line from {logger} with {text!r}"
    return lines[-1]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """A fault is logged as a line, never as a traceback or an unhandled error."""
    for record in caplog.records:
        assert record.exc_info is None, f"{record.name}: {record.getMessage()}"
        assert "Traceback" not in record.getMessage()
        assert "never retrieved" not in record.getMessage()
        assert "Error handling request" not in record.getMessage()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_port(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def raw_exchange(proxy: Proxy, request: bytes) -> tuple[bytes, str]:
    """Send bytes as they are; read until the proxy closes. Returns (bytes, how it ended)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(proxy))
    writer.write(request)
    await writer.drain()
    received = bytearray()
    ended = "eof"
    try:
        async with asyncio.timeout(5):
            while data := await reader.read(65536):
                received += data
    except ConnectionResetError:
        ended = "reset"
    except TimeoutError:
        ended = "timeout"
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    SWEEP.saw(bytes(received))
    return bytes(received), ended


def get_request(path: str, version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data in a chunked body, and whether it ended with its last (zero) chunk."""
    data = bytearray()
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return bytes(data), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(data), rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            return bytes(data + rest[:size]), False
        data += rest[:size]
        body = rest[size + 2 :]


# ====================================================================== token endpoint


async def test_token_endpoint_refused(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with BrokenUpstream(relay_to=gateway.url) as token_endpoint:
        await token_endpoint.refuse()  # nothing listens there now
        proxy = await start_proxy(
            proxy_factory, gateway.url, DAP_PROXY_TOKEN_URL=token_endpoint.url + LOGIN
        )
        error = (await fetch(proxy)).error(503, "TokenEndpointUnavailable")
        where = token_endpoint.url.removeprefix("http://")
        assert error["message"] == (
            f"the token endpoint at {where} could not be reached: connection refused"
        )
        line = logged(caplog, "proxy.tokens", logging.WARNING, "could not be reached")
        assert line.startswith(
            f"token refresh failed: the token endpoint at {where} could not be reached: "
            "connection refused; attempt 1, next try in "
        )
        assert line.endswith(" s (no valid token: requests answered 503)")
        assert gateway.state.requests_to("list_tables") == []

        await token_endpoint.listen()  # the same port, answering again
        await served_within(proxy, 5)
    logged(caplog, "proxy.tokens", logging.INFO, "token refreshed: expires in 3599 s")
    assert_no_tracebacks(caplog)


async def test_token_endpoint_hanging(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with BrokenUpstream(relay_to=gateway.url, mode=Mode.HANG) as token_endpoint:
        started = time.monotonic()
        proxy = await start_proxy(
            proxy_factory,
            gateway.url,
            DAP_PROXY_TOKEN_URL=token_endpoint.url + LOGIN,
            DAP_PROXY_TIMEOUTS_TOKEN=SHORT,
        )
        assert 0.3 <= time.monotonic() - started < 2
        error = (await fetch(proxy)).error(503, "TokenEndpointUnavailable")
        assert error["message"] == "the token endpoint did not answer within 0.3 s"
        line = logged(caplog, "proxy.tokens", logging.WARNING, "did not answer")
        assert line.startswith(
            "token refresh failed: the token endpoint did not answer within 0.3 s; attempt 1"
        )
        # The proxy gave up on the hanging connection rather than leaving it open.
        await asyncio.wait_for(token_endpoint.peer_closed.wait(), 2)

        token_endpoint.mode = Mode.RELAY
        await served_within(proxy, 5)
    assert_no_tracebacks(caplog)


async def test_token_endpoint_slow_but_in_time(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.state.faults.token_delay = 0.4
    proxy = await start_proxy(
        proxy_factory, gateway.url, DAP_PROXY_TIMEOUTS_TOKEN="2", wait_for_token="no"
    )
    started = time.monotonic()
    await served(proxy)  # waits for the one slow fetch, then succeeds
    assert time.monotonic() - started < 2
    line = logged(caplog, "proxy.tokens", logging.INFO, "token refreshed")
    took = float(line.rsplit("(took ", 1)[1].removesuffix(" s)"))
    assert 0.4 <= took < 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert gateway.state.token_requests == 1
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_token_endpoint_500(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.state.faults.token_statuses = [500] * 100
    proxy = await start_proxy(proxy_factory, gateway.url)
    answer = await fetch(proxy)
    error = answer.error(503, "TokenEndpointUnavailable")
    assert error["message"] == "the token endpoint answered HTTP 500"
    assert 1 <= int(answer.headers["Retry-After"]) <= 2
    line = logged(caplog, "proxy.tokens", logging.WARNING, "HTTP 500")
    assert line.startswith("token refresh failed: the token endpoint answered HTTP 500; attempt 1")
    # Requests during the backoff are answered at once, without asking the endpoint again.
    for _ in range(10):
        (await fetch(proxy)).error(503, "TokenEndpointUnavailable")
    assert gateway.state.token_requests == 1

    gateway.state.faults.token_statuses = []
    await served_within(proxy, 5)
    assert_no_tracebacks(caplog)


async def test_token_endpoint_429_retry_after_is_honoured_and_passed_on(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.state.faults.token_statuses = [429] * 100
    gateway.state.faults.retry_after = 2
    proxy = await start_proxy(proxy_factory, gateway.url)
    answer = await fetch(proxy)
    error = answer.error(503, "TokenEndpointUnavailable")
    assert error["message"] == "the token endpoint answered HTTP 429"
    assert answer.headers["Retry-After"] == "2"
    line = logged(caplog, "proxy.tokens", logging.WARNING, "HTTP 429")
    assert line.startswith(
        "token refresh failed: the token endpoint answered HTTP 429; attempt 1, next try in 2.0 s"
    )
    await asyncio.sleep(1.5)
    assert gateway.state.token_requests == 1, "asked again before Retry-After"

    gateway.state.faults.token_statuses = []
    await served_within(proxy, 3)
    assert gateway.state.token_requests == 2
    assert_no_tracebacks(caplog)


async def test_503_waiting_on_the_token_attempt_carries_retry_after(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A request that arrives while the failing attempt is in flight gets the same 503,
    with ``Retry-After`` as the README's error table promises."""
    gateway.state.faults.token_statuses = [500] * 100
    gateway.state.faults.token_delay = 0.2
    proxy = await start_proxy(proxy_factory, gateway.url, wait_for_token="no")
    answer = await fetch(proxy)
    answer.error(503, "TokenEndpointUnavailable")
    assert int(answer.headers.get("Retry-After", "0")) >= 1, dict(answer.headers)
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'["access_token"]', "not a JSON object"),
        (b'{"expires_in": 3599, "token_type": "bearer"}', "no access_token"),
        (b'{"access_token": " ", "expires_in": 3599}', "no access_token"),
        (b'{"access_token": "opaque", "expires_in": 3599', "not JSON"),
        (b'{"access_token": "' + b"a" * 70_000 + b'", "expires_in": 3599}', "too large"),
        (b"EXPIRED", "the token has already expired"),
    ],
    ids=["html", "array", "no-token", "blank-token", "truncated", "huge", "expired-jwt"],
)
async def test_token_endpoint_malformed_answer(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    why: str,
) -> None:
    if body == b"EXPIRED":  # a JWT whose exp has passed, and no expires_in to say otherwise
        expired = jwt.encode({"exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256")
        SWEEP.tokens.add(expired)
        body = json.dumps({"access_token": expired, "token_type": "bearer"}).encode()
    gateway.state.faults.token_body = body
    proxy = await start_proxy(proxy_factory, gateway.url)
    answer = await fetch(proxy)
    error = answer.error(503, "TokenEndpointUnavailable")
    message = error["message"]
    if why == "the token has already expired":  # how many seconds ago depends on when it ran
        message = re.sub(r"was \d+ s ago", "was N s ago", message)
        why += " (its exp was N s ago; is this machine's clock right?)"
    assert message == f"the token endpoint sent an invalid answer: {why}"
    assert int(answer.headers["Retry-After"]) >= 1
    logged(
        caplog,
        "proxy.tokens",
        logging.WARNING,
        f"token refresh failed: {error['message']}; attempt 1",
    )
    gateway.state.faults.token_body = None
    await served_within(proxy, 5)
    assert_no_tracebacks(caplog)


async def opaque_token_upstream(aiohttp_server: Any, token: str) -> str:
    """A gateway stand-in that accepts exactly ``token``, which need not be a JWT."""

    async def check(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": {"message": "wrong token"}}, status=401)
        return web.json_response({"tables": ["accounts"]})

    app = web.Application()
    app.router.add_get(TABLES, check)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("answer", "lifetime"),
    [
        ({"access_token": "opaque-token-0123456789abcdef", "expires_in": 1234}, 1234),
        ({"access_token": "opaque-token-0123456789abcdef"}, 3600),
        ({"access_token": "opaque-token-0123456789abcdef", "expires_in": "soon"}, 3600),
        ({"access_token": "jwt", "token_type": "bearer"}, 1800),
    ],
    ids=["opaque-expires_in", "opaque-no-expiry", "opaque-bad-expiry", "jwt-exp-only"],
)
async def test_token_that_is_not_a_jwt_still_works(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
    answer: dict[str, Any],
    lifetime: int,
) -> None:
    """The proxy needs only ``expires_in``, or else a JWT's ``exp``, or else assumes an hour."""
    if answer["access_token"] == "jwt":
        claims = {"exp": int(time.time()) + lifetime, "sub": "x"}
        answer["access_token"] = jwt.encode(claims, "k" * 32, algorithm="HS256")
    token = answer["access_token"]
    SWEEP.tokens.add(token)
    gateway.state.faults.token_body = json.dumps(answer).encode()
    upstream = await opaque_token_upstream(aiohttp_server, token)
    proxy = await start_proxy(proxy_factory, upstream, DAP_PROXY_TOKEN_URL=gateway.token_url)
    await served(proxy)
    await served(proxy)
    held = proxy.tokens.state.token
    assert held is not None
    assert abs(held.lifetime - lifetime) <= 2
    line = logged(caplog, "proxy.tokens", logging.INFO, "token refreshed")
    assert line.startswith(f"token refreshed: expires in {lifetime}") or line.startswith(
        f"token refreshed: expires in {lifetime - 1}"
    )
    assert gateway.state.token_requests == 1
    assert_no_tracebacks(caplog)


async def revoked_while_running(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> tuple[Gateway, Proxy, int]:
    """A proxy holding a valid token whose background refresh the gateway just refused.
    Returns how many token requests that took."""
    # A 3 s token: the refresh is due after 1.5 s, and the token is good until 2 s at least.
    gateway = await gateway_factory(token_lifetime=3)
    proxy = await start_proxy(proxy_factory, gateway.url)
    await served(proxy)
    gateway.state.faults.credentials_revoked = True
    deadline = time.monotonic() + 3
    while proxy.tokens.refreshes["rejected"] == 0:
        assert time.monotonic() < deadline, "no background refresh happened"
        await asyncio.sleep(0.02)
    return gateway, proxy, gateway.state.token_requests


async def test_credentials_revoked_while_running(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The held token keeps working; once the gateway refuses it, requests get a clear 401
    and the token endpoint is not asked again and again."""
    gateway, proxy, _ = await revoked_while_running(gateway_factory, proxy_factory)
    for _ in range(5):
        await served(proxy)  # still using the valid token
    line = logged(caplog, "proxy.tokens", logging.ERROR, "token refresh failed")
    assert line == (
        "token refresh failed: the gateway's token endpoint rejected the proxy's client "
        "credentials (HTTP 401): Invalid client credentials.; not retrying"
    )

    gateway.state.faults.revoke_tokens()  # the gateway now refuses the held token
    await asyncio.sleep(0.05)  # let any refresh the last request started finish
    asked = gateway.state.token_requests
    for _ in range(10):
        error = (await fetch(proxy)).error(401, "CredentialsRejected")
        assert error["message"] == (
            "the gateway's token endpoint rejected the proxy's client credentials "
            "(HTTP 401): Invalid client credentials."
        )
    assert gateway.state.token_requests - asked <= 1
    # The proxy itself still answers: health, and its own local login.
    async with proxy.http.get(proxy.url + "/-/healthy") as resp:
        assert resp.status == 200
    async with proxy.http.post(
        proxy.url + LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("local", "local")},
    ) as resp:
        assert resp.status == 200
        SWEEP.saw(await resp.read())
    assert_no_tracebacks(caplog)


async def test_credentials_revoked_while_running_does_not_hammer_the_token_endpoint(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, proxy, asked = await revoked_while_running(gateway_factory, proxy_factory)
    for _ in range(10):
        await served(proxy)
    assert gateway.state.token_requests == asked, (
        f"{gateway.state.token_requests - asked} token requests for 10 client requests"
    )
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


# ====================================================================== upstream


async def upstream_proxy(
    proxy_factory: ProxyFactory, gateway: Gateway, broken: BrokenUpstream, **env: str
) -> Proxy:
    """A proxy whose upstream is ``broken`` and whose token endpoint is the real simulator."""
    return await start_proxy(
        proxy_factory, broken.url, DAP_PROXY_TOKEN_URL=gateway.token_url, **env
    )


async def test_upstream_refused(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await broken.refuse()
    proxy = await upstream_proxy(proxy_factory, gateway, broken)
    error = (await fetch(proxy)).error(502, "UpstreamUnreachable")
    where = broken.url.removeprefix("http://")
    assert error["message"] == (f"the gateway at {where} could not be reached: connection refused")
    line = logged(caplog, "proxy.forward", logging.WARNING, "upstream request failed")
    assert line == "upstream request failed: GET /dap/query/canvas/table: connection refused"
    logged(caplog, "proxy.access", logging.INFO, "GET /dap/query/canvas/table 502")
    await broken.listen()
    await served(proxy)
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("mode", [Mode.RESET, Mode.CLOSE], ids=["rst", "fin"])
async def test_upstream_drops_the_connection_before_answering(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
    method: str,
) -> None:
    broken.mode = mode
    proxy = await upstream_proxy(proxy_factory, gateway, broken)
    answer = await fetch(proxy, TABLES, method, data=b"{}" if method == "POST" else None)
    error = answer.error(502, "UpstreamUnreachable")
    where = broken.url.removeprefix("http://")
    assert error["message"] in (
        f"the gateway at {where} could not be reached: the connection was closed before an answer",
        f"the gateway at {where} could not be reached: connection reset",
        f"the gateway at {where} could not be reached: ClientOSError",
    )
    # aiohttp may send an idempotent request once more on a fresh connection (RFC 9112
    # section 9.3.1); a POST, which may have reached the gateway, is never sent twice.
    assert broken.requests in ((1, 2) if method == "GET" else (1,))
    line = logged(caplog, "proxy.forward", logging.WARNING, "upstream request failed")
    assert line.startswith(f"upstream request failed: {method} /dap/query/canvas/table: ")
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


CUT_MODES = [Mode.CUT_LENGTH, Mode.CUT_CHUNKED, Mode.FIN_LENGTH, Mode.FIN_CHUNKED]
CUT_IDS = ["length-rst", "chunked-rst", "length-fin", "chunked-fin"]


@pytest.mark.parametrize("mode", CUT_MODES, ids=CUT_IDS)
async def test_upstream_cut_mid_response_aborts_the_client(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
) -> None:
    """The client must see an aborted response, never a complete-looking short body."""
    broken.mode = mode
    proxy = await upstream_proxy(proxy_factory, gateway, broken)
    with pytest.raises(aiohttp.ClientPayloadError) as cut:
        async with proxy.http.get(proxy.url + "/data") as resp:
            assert resp.status == 200
            await resp.read()
    SWEEP.saw_exception(cut.value)

    # The same, byte by byte on a raw socket: the framing never says "complete".
    answer, _ = await raw_exchange(proxy, get_request("/data"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if b"transfer-encoding: chunked" in head.lower():
        data, finished = dechunk(body)
        assert not finished, "a truncated chunked body ended with its last chunk"
    else:
        assert f"Content-Length: {PROMISED}".encode() in head
        data = body
        assert len(data) < PROMISED
    assert data == BODY_BYTE * len(data)

    line = logged(caplog, "proxy.forward", logging.WARNING, "upstream failed mid-response")
    assert line.startswith("upstream failed mid-response: GET /data: ")
    assert line.endswith("; aborting the client connection")
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_reset_of_a_read_until_close_body_aborts_the_client(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body delimited by the connection's end (no length, not chunked) that ends in a
    reset is incomplete: the proxy must not finish it as a whole chunked body."""
    broken.mode = Mode.CUT_UNTIL_CLOSE
    proxy = await upstream_proxy(proxy_factory, gateway, broken)
    answer, _ = await raw_exchange(proxy, get_request("/data"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    _, finished = dechunk(body)
    assert not finished, "a reset body was relayed as complete"
    logged(caplog, "proxy.forward", logging.WARNING, "upstream failed mid-response")
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_cut_is_a_reset_for_an_http10_client(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An HTTP/1.0 client gets a chunked upstream body delimited by the connection's end;
    only a reset (not a clean close) tells it the body is short."""
    broken.mode = Mode.CUT_CHUNKED
    proxy = await upstream_proxy(proxy_factory, gateway, broken)
    answer, ended = await raw_exchange(proxy, get_request("/data", version="1.0"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"content-length" not in head.lower() and b"chunked" not in head.lower()
    assert len(body) < SENT + 1
    assert ended == "reset", "a cut body ended with a clean close looks complete"
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_hanging_times_out_with_504(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken.mode = Mode.HANG
    proxy = await upstream_proxy(proxy_factory, gateway, broken, DAP_PROXY_TIMEOUTS_READ=SHORT)
    started = time.monotonic()
    error = (await fetch(proxy)).error(504, "UpstreamTimeout")
    assert 0.3 <= time.monotonic() - started < 2
    assert error["message"] == "the gateway did not answer in time"
    line = logged(caplog, "proxy.access", logging.INFO, "GET /dap/query/canvas/table 504")
    assert line.startswith("GET /dap/query/canvas/table 504 ")
    await asyncio.wait_for(broken.peer_closed.wait(), 2)  # the proxy hung up on it
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_stalling_mid_body_cuts_the_client_after_the_read_timeout(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken.mode = Mode.STALL_BODY
    proxy = await upstream_proxy(proxy_factory, gateway, broken, DAP_PROXY_TIMEOUTS_READ=SHORT)
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError) as cut:
        async with proxy.http.get(proxy.url + "/data") as resp:
            assert resp.status == 200
            await resp.read()
    SWEEP.saw_exception(cut.value)
    assert 0.3 <= time.monotonic() - started < 2
    assert logged(caplog, "proxy.forward", logging.WARNING, "mid-response") == (
        "upstream failed mid-response: GET /data: timeout; aborting the client connection"
    )
    await asyncio.wait_for(broken.peer_closed.wait(), 2)
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_stalling_mid_body_of_an_answer_taken_whole_is_a_504(
    gateway: Gateway,
    broken: BrokenUpstream,
    proxy_factory: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A table list is taken whole for the metadata cache: nothing has gone to the client
    # yet, so a silent gateway can still be told as what it is.
    broken.mode = Mode.STALL_BODY
    proxy = await upstream_proxy(
        proxy_factory,
        gateway,
        broken,
        DAP_PROXY_TIMEOUTS_READ=SHORT,
        DAP_PROXY_CACHE_ENABLED="true",
    )
    error = (await fetch(proxy, "/dap/query/canvas/table")).error(504, "UpstreamTimeout")
    assert error["message"] == "the gateway went silent mid-answer"
    assert logged(caplog, "proxy.forward", logging.WARNING, "mid-response") == (
        "upstream failed mid-response: GET /dap/query/canvas/table: timeout"
    )
    broken.mode = Mode.RELAY
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_upstream_401_for_a_revoked_token_refreshes_once_and_replays(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(proxy_factory, gateway.url)
    await served(proxy)
    gateway.state.faults.revoke_tokens()
    body = b'{"format": "jsonl"}'
    answer = await fetch(proxy, "/dap/query/canvas/table/accounts/data", "POST", data=body)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["status"] == "complete"
    assert gateway.state.token_requests == 2
    jobs = gateway.state.requests_to("create_job")
    assert len(jobs) == 2, "the refused request and its replay"
    assert jobs[0].headers["Authorization"] != jobs[1].headers["Authorization"]
    assert len([r for r in caplog.records if r.getMessage().startswith("token refreshed")]) == 2
    logged(caplog, "proxy.access", logging.INFO, "POST /dap/query/canvas/table/accounts/data 200")
    await served(proxy)
    assert gateway.state.token_requests == 2
    assert_no_tracebacks(caplog)


async def test_upstream_401_on_a_streamed_upload_still_retires_the_token(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A streamed (chunked) body cannot be replayed, so its 401 reaches the client; but
    the token the gateway refused must not be sent again with the next one."""
    proxy = await start_proxy(proxy_factory, gateway.url)
    await served(proxy)
    gateway.state.faults.revoke_tokens()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"format": '
        yield b'"jsonl"}'

    first = await fetch(proxy, "/faults/sink", "POST", data=chunks())
    assert first.status == 401  # the gateway's own answer, relayed
    second = await fetch(proxy, "/faults/sink", "POST", data=chunks())
    assert second.status == 200, "the refused token was sent again"
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_upstream_5xx_is_passed_through_as_is(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    proxy = await start_proxy(proxy_factory, gateway.url)
    gateway.state.faults.api_statuses = [status]
    gateway.state.faults.retry_after = 7
    answer = await fetch(proxy)
    assert answer.status == status
    body = json.loads(answer.body)
    if status == 504:
        assert body == {"error": {"message": "Endpoint request timed out"}}
    else:
        assert body["error"]["message"] == f"Simulated failure with status {status}."
    assert answer.headers.get("Retry-After") == ("7" if status == 503 else None)
    logged(caplog, "proxy.access", logging.INFO, f"GET /dap/query/canvas/table {status} ")
    assert gateway.state.token_requests == 1, "a 5xx is not a reason to refresh the token"
    await served(proxy)
    assert_no_tracebacks(caplog)


# ====================================================================== clients


async def hang_up_during_upload(proxy: Proxy, gateway: Gateway, size: int) -> tuple[str, int]:
    """Send 512 KiB of a streamed body (``size`` by Content-Length, or chunked if 0), go
    away, and return what the gateway's handler made of it: (outcome, bytes read)."""
    probes = gateway.probes
    framing = f"Content-Length: {size}" if size else "Transfer-Encoding: chunked"
    _, writer = await asyncio.open_connection("127.0.0.1", proxy_port(proxy))
    writer.write(f"POST /faults/sink HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n".encode())
    piece = pattern(64 * 1024)
    for _ in range(8):
        writer.write(piece if size else b"%x\r\n%s\r\n" % (len(piece), piece))
    await writer.drain()
    await asyncio.wait_for(probes.upload_started.wait(), 5)
    writer.transport.abort()  # the client goes away mid-upload
    await asyncio.wait_for(probes.upload_ended.wait(), 5)
    [ended] = probes.uploads
    return ended


async def hang_up_during_download(proxy: Proxy, gateway: Gateway) -> None:
    """Start an endless download, read its first bytes, go away; wait for the gateway's
    handler to be cancelled."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(proxy))
    writer.write(get_request("/faults/trickle?chunks=1000&interval=0.01&chunked=1"))
    await writer.drain()
    assert (await reader.read(4096)).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(gateway.probes.download_started.wait(), 5)
    writer.transport.abort()  # the client goes away mid-download
    await asyncio.wait_for(gateway.probes.download_cancelled.wait(), 5)


@pytest.mark.parametrize("size", [8 * 1024 * 1024, 0], ids=["content-length", "chunked"])
async def test_client_hanging_up_during_a_streamed_upload(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    """The gateway must see the upload aborted, never a complete (short) body."""
    proxy = await start_proxy(proxy_factory, gateway.url)
    outcome, received = await hang_up_during_upload(proxy, gateway, size)
    assert outcome != "complete", f"the gateway took a cut upload as complete ({received} B)"
    assert received <= 8 * 64 * 1024
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_client_hanging_up_during_a_small_upload_sends_nothing_upstream(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A replayable body is read whole first: a client leaving half-way reaches nothing."""
    proxy = await start_proxy(proxy_factory, gateway.url)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy_port(proxy))
    writer.write(
        b"POST /faults/sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
        + b"x" * 500
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    await asyncio.sleep(0.2)
    assert [r for r in gateway.state.requests if r.path == "/faults/sink"] == []
    await served(proxy)
    assert_no_tracebacks(caplog)


async def test_client_hanging_up_during_a_download_cancels_the_upstream_stream(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(proxy_factory, gateway.url)
    await hang_up_during_download(proxy, gateway)
    await served(proxy)
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_client_hanging_up_is_logged(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, direction: str
) -> None:
    proxy = await start_proxy(proxy_factory, gateway.url)
    if direction == "upload":
        await hang_up_during_upload(proxy, gateway, 8 * 1024 * 1024)
        path = "/faults/sink"
    else:
        await hang_up_during_download(proxy, gateway)
        path = "/faults/trickle"
    await until(lambda: f" {path} 499 " in caplog.text, "the 499 access line")
    line = logged(caplog, "proxy.access", logging.INFO, f" {path} 499 ")
    assert line.endswith(" (abandoned: the client hung up, or shutdown cut it)")
    if direction == "upload":
        assert int(re.findall(r" in=(\d+) ", line)[0]) > 0, line


async def test_an_abandoned_download_logs_the_bytes_it_sent(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(proxy_factory, gateway.url)
    await hang_up_during_download(proxy, gateway)  # after its first KiB at least
    await until(lambda: " /faults/trickle 499 " in caplog.text, "the 499 access line")
    line = logged(caplog, "proxy.access", logging.INFO, " /faults/trickle 499 ")
    assert int(re.findall(r" out=(\d+) ", line)[0]) >= 1024, line


# ====================================================================== the process


async def run_proxy(gateway: Gateway, port: int, **env: str) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        gateway.url,
        "--log-level",
        "debug",
        env={
            **clean,
            "DAP_CLIENT_ID": DEMO_CLIENT_ID,
            "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            **env,
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(url + "/-/ready") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("the proxy never became ready")


async def download(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_sigterm_lets_streaming_responses_finish_then_exits_0(gateway: Gateway) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    process = await run_proxy(gateway, port, DAP_PROXY_TIMEOUTS_SHUTDOWN="3")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, url)
            streams = [
                asyncio.create_task(
                    download(http, url + "/faults/trickle?chunks=20&interval=0.05")
                ),
                asyncio.create_task(
                    download(http, url + "/faults/trickle?chunks=20&interval=0.05&chunked=1")
                ),
            ]
            await asyncio.wait_for(gateway.probes.download_started.wait(), 5)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            with pytest.raises(aiohttp.ClientConnectionError) as refused:
                await download(http, url + TABLES)  # no new connections while draining
            SWEEP.saw_exception(refused.value)
            bodies = await asyncio.gather(*streams)
        assert bodies == [pattern(1024) * 20] * 2
        _, stderr_bytes = await asyncio.wait_for(process.communicate(), 10)
        took = time.monotonic() - signalled
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = stderr_bytes.decode()
    SWEEP.saw(stderr)
    assert process.returncode == 0, stderr
    assert took < 3, f"exit took {took:.1f} s: it waited out the drain timeout"
    assert "shutting down: no new connections; up to 3 s for requests in flight" in stderr
    assert stderr.count("GET /faults/trickle 200") == 2
    assert stderr.rstrip().endswith("proxy.server: stopped")
    assert "Traceback" not in stderr


@dataclass
class CutAtShutdown:
    outcomes: list[BaseException | bytes]
    cut_after: float  # seconds from SIGTERM to the streams' end
    exited_after: float  # seconds from SIGTERM to the process's exit
    status: int | None
    stderr: str


async def sigterm_during_long_streams(gateway: Gateway, drain: str) -> CutAtShutdown:
    """Two 5-second downloads (by length and chunked), SIGTERM 0.1 s into them."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    process = await run_proxy(gateway, port, DAP_PROXY_TIMEOUTS_SHUTDOWN=drain)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, url)
            streams = [
                asyncio.create_task(download(http, url + f"/faults/trickle?{query}"))
                for query in ("chunks=100&interval=0.05", "chunks=100&interval=0.05&chunked=1")
            ]
            await asyncio.wait_for(gateway.probes.download_started.wait(), 5)
            await asyncio.sleep(0.1)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*streams, return_exceptions=True)
            cut_after = time.monotonic() - signalled
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        exited_after = time.monotonic() - signalled
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    SWEEP.saw(stderr)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            SWEEP.saw_exception(outcome)
    return CutAtShutdown(
        list(outcomes), cut_after, exited_after, process.returncode, stderr.decode()
    )


async def test_sigterm_cuts_a_response_still_streaming_after_the_drain_timeout(
    gateway: Gateway,
) -> None:
    run = await sigterm_during_long_streams(gateway, drain="0.5")
    for outcome in run.outcomes:
        # Cut, by length or chunked alike: never a complete-looking short body.
        assert isinstance(outcome, aiohttp.ClientPayloadError), f"not cut: {outcome!r}"
    assert 0.4 <= run.cut_after < 2.5, run.cut_after
    assert run.status == 0, run.stderr
    assert run.exited_after < 3
    assert "shutting down: no new connections; up to 0.5 s for requests in flight" in run.stderr
    assert run.stderr.rstrip().endswith("proxy.server: stopped")
    assert "Traceback" not in run.stderr
    await asyncio.wait_for(gateway.probes.download_cancelled.wait(), 2)


async def test_sigterm_cuts_streams_at_the_drain_timeout_not_later(gateway: Gateway) -> None:
    run = await sigterm_during_long_streams(gateway, drain="0.5")
    assert run.status == 0, run.stderr
    assert run.cut_after < 0.5 + 0.3, f"cut {run.cut_after:.2f} s after SIGTERM, drain 0.5 s"


async def test_sigterm_lets_a_streamed_upload_in_flight_finish(gateway: Gateway) -> None:
    """An upload in flight has the whole drain timeout to finish, as a download has."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    process = await run_proxy(gateway, port, DAP_PROXY_TIMEOUTS_SHUTDOWN="2")
    piece = pattern(1024)

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(15):  # 1.4 s in all: longer than half the drain, shorter than it
            yield piece
            await asyncio.sleep(0.1)

    async def upload(http: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with http.post(url + "/faults/sink", data=slow_body()) as resp:
            return resp.status, await resp.read()

    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, url)
            uploading = asyncio.create_task(upload(http))
            await asyncio.wait_for(gateway.probes.upload_started.wait(), 5)
            process.send_signal(signal.SIGTERM)
            status, body = await uploading
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    SWEEP.saw(stderr, body)
    assert gateway.probes.uploads == [("complete", 15 * 1024)]
    assert (status, json.loads(body)) == (200, {"size": 15 * 1024})
    assert process.returncode == 0


# ====================================================================== the sweep, last


async def test_no_secret_or_token_anywhere_in_what_the_fault_tests_captured(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Sweeps everything captured above (and by a few faults of its own, so that it has
    material when run alone): the client secret and every token issued must be absent."""
    proxy = await start_proxy(proxy_factory, gateway.url, DAP_PROXY_TIMEOUTS_READ=SHORT)
    await served(proxy)
    gateway.state.faults.revoke_tokens()
    await served(proxy)  # 401, refresh, replay
    (await fetch(proxy, "/test/hang")).error(504, "UpstreamTimeout")
    gateway.state.faults.token_statuses = [500] * 10
    gateway.state.faults.revoke_tokens()
    # The token was fetched because of a 401: within its holdoff, a 401 is relayed as it is.
    assert (await fetch(proxy)).status == 401
    for path in ("/-/ready", "/-/status", "/-/metrics"):  # what the proxy tells of itself
        await fetch(proxy, path)
    SWEEP.saw_proxies()
    for recorded in gateway.state.requests:  # whatever reached the gateway with a token
        scheme, _, token = recorded.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer":
            SWEEP.tokens.add(token)

    assert len(SWEEP.tokens) >= 2
    assert SWEEP.records >= 10, "the log was not captured"
    assert "token refreshed" in "\n".join(SWEEP.texts)
    leaks = SWEEP.leaks()
    assert not leaks, f"{len(leaks)} secrets, tokens or pieces of tokens in captured output"
