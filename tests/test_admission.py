"""Admission (issue 11): what the proxy lets through, to whom, and what it shows them.

- the local login has one definition (``routing.is_local_login``): ``POST`` to the login
  path and nothing else skips the access check;
- the proxy's own endpoints pass the Host and browser checks, and the private ones need a key;
- gateway text is cleaned of every credential form before it is shown anywhere;
- path checks apply to the path as forwarded;
- malformed login bodies, failed-login throttling, 401-driven refreshes, and what happens
  beyond loopback.

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import web

from proxy.admission.throttle import LoginThrottle
from proxy.aiohttp_compat import basic_credentials
from proxy.cli import main as cli
from proxy.cli.token import print_token
from proxy.config import load_config
from proxy.errors import ConfigError, CredentialsRejected
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from proxy.tokens.manager import TokenManager

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory, proxy_config
from .fakes import FakeClock, FakeTokenSource
from .waiting import until

KEY = "admission-key-0123456789"
TABLES = "/dap/query/canvas/table"
ECHO = "/test/echo/x"  # a gateway test route, outside the rate budgets
LOGIN = "/ids/auth/login"
OWN_ENDPOINTS = ("/-/healthy", "/-/ready", "/-/status", "/-/metrics")


# ---------------------------------------------------------------------- helpers


def yale(gateway: Gateway) -> dict[str, str]:
    """A named profile ``yale`` on the same gateway, beside the default one."""
    return {
        "DAP_PROXY_PROFILE_YALE_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_PROXY_PROFILE_YALE_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_PROFILE_YALE_UPSTREAM": gateway.url,
    }


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    proxy: Proxy, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, the JSON body (``{}`` if not JSON) and headers of one request."""
    async with proxy.http.request(method, proxy.url + path, **kwargs) as resp:
        raw = await resp.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return resp.status, body if isinstance(body, dict) else {}, dict(resp.headers)


def error_of(body: dict[str, Any], error_type: str) -> str:
    """The message of a gateway-shaped error of ``error_type``."""
    assert list(body) == ["error"], body
    assert sorted(body["error"]) == ["message", "type", "uuid"], body
    assert body["error"]["type"] == error_type, body
    message: str = body["error"]["message"]
    return message


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def raw_request(proxy: Proxy, data: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes as they are (``Connection: close`` expected); status, head, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), 10)  # a hang guard only
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, head, body


def raw_get(target: str, method: str = "GET", host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


def seen_since(gateway: Gateway, before: int) -> list[tuple[str, str]]:
    """(method, raw path) of what reached the gateway after the first ``before`` requests."""
    return [(r.method, r.path) for r in list(gateway.state.requests)[before:]]


# ====================================================================== 1. the local login


NOT_LOGINS = (
    ("GET", LOGIN),
    ("PUT", "/dap/ids/auth/login?q=1"),
    ("DELETE", "/anything/ids/auth/login?x=1"),
    ("GET", "/yale/ids/auth/login"),
)


@pytest.mark.parametrize(("method", "target"), NOT_LOGINS)
async def test_other_methods_on_the_login_path_need_a_key(
    gateway: Gateway, proxy_factory: ProxyFactory, method: str, target: str
) -> None:
    # With named profiles, /anything would be an unknown profile (404): yale only for its case.
    profiles = yale(gateway) if target.startswith("/yale/") else {}
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=KEY, **profiles)
    before = len(gateway.state.requests)
    status, body, _ = await call(proxy, method, target)
    assert status == 401, body
    error_of(body, "AuthenticationError")
    assert seen_since(gateway, before) == [], "an unauthenticated request reached the gateway"

    # With a key it is an ordinary request, forwarded (the gateway has no such route).
    status, body, _ = await call(proxy, method, target, headers=bearer())
    forwarded = target.removeprefix("/yale")
    assert seen_since(gateway, before) == [(method, forwarded)]
    assert status != 401


async def test_other_methods_on_the_login_path_obey_the_allow_lists(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_ACCESS_KEYS=KEY,
        DAP_PROXY_ALLOWED_METHODS="GET,POST",
        DAP_PROXY_ALLOWED_PATHS="/dap/",
    )
    before = len(gateway.state.requests)
    status, body, headers = await call(proxy, "PUT", LOGIN + "?q=1", headers=bearer())
    assert status == 405
    error_of(body, "MethodNotAllowed")
    assert headers["Allow"] == "GET, POST"
    status, body, _ = await call(proxy, "GET", LOGIN, headers=bearer())
    assert status == 403
    error_of(body, "PathNotAllowed")
    assert seen_since(gateway, before) == []
    # POST is still the local login, which the allow-lists do not hide.
    status, body, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("tool", KEY)},
    )
    assert status == 200, body
    assert seen_since(gateway, before) == []


async def test_post_to_the_login_path_is_the_local_login(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=KEY, **yale(gateway))
    before = len(gateway.state.requests)
    for path in (LOGIN, "/yale" + LOGIN, LOGIN + "?x=1"):
        status, body, _ = await call(
            proxy,
            "POST",
            path,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_credentials("tool", KEY)},
        )
        assert status == 200, (path, body)
        assert sorted(body) == ["access_token", "expires_in", "scope", "token_type"]
    status, body, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("x", "y")},
    )
    assert status == 401
    # Deeper paths ending in the login path are not the login: they need a key.
    status, body, _ = await call(proxy, "POST", "/dap/ids/auth/login")
    assert status == 401
    assert seen_since(gateway, before) == []


# ====================================================================== 2. own endpoints


@pytest.mark.parametrize("path", OWN_ENDPOINTS)
async def test_own_endpoints_refuse_a_rebinding_host_and_cross_site_origins(
    proxy: Proxy, path: str
) -> None:
    status, body, _ = await call(proxy, "GET", path, headers={"Host": "evil.example"})
    assert status == 403
    assert "evil.example" in error_of(body, "HostNotAllowed")
    status, body, _ = await call(proxy, "GET", path, headers={"Origin": "https://evil.example"})
    assert status == 403
    error_of(body, "OriginNotAllowed")
    status, body, _ = await call(proxy, "GET", path, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = await call(proxy, "GET", path, headers={"Host": "localhost:8080"})
    assert status == 200


async def test_status_and_metrics_need_a_key_probes_do_not(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=KEY)
    for path in ("/-/status", "/-/metrics"):
        for headers in ({}, bearer("wrong-key-0123456789"), {"Authorization": f"Basic {KEY}"}):
            status, body, _ = await call(proxy, "GET", path, headers=headers)
            assert status == 401, (path, headers)
            error_of(body, "AuthenticationError")
        status, _, _ = await call(proxy, "GET", path, headers=bearer())
        assert status == 200
    for path in ("/-/healthy", "/-/ready"):
        status, _, _ = await call(proxy, "GET", path)
        assert status == 200

    # A local token from the local login will do too.
    status, body, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("tool", KEY)},
    )
    assert status == 200
    local = {"Authorization": f"Bearer {body['access_token']}"}
    status, body, _ = await call(proxy, "GET", "/-/status", headers=local)
    assert status == 200
    assert body["ready"] is True
    status, _, _ = await call(proxy, "GET", "/-/metrics", headers=local)
    assert status == 200


WORDS = "client frobnicated by policy 7"


async def rejecting_token_endpoint(
    aiohttp_server: Any, answer: Callable[[web.Request], str]
) -> str:
    """A token endpoint on loopback that answers 401 with ``{"error": {"message": ...}}``."""

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": answer(request)}}, status=401)

    app = web.Application()
    app.router.add_post(LOGIN, login)
    server = await aiohttp_server(app)
    return str(server.make_url(LOGIN))


async def not_ready(proxy: Proxy) -> None:
    """Wait for the first token request's outcome (a rejection)."""
    with pytest.raises(CredentialsRejected):
        await asyncio.wait_for(proxy.tokens.first_token(), 10)  # a hang guard only


async def test_ready_shows_the_token_endpoints_words_only_to_callers_with_a_key(
    gateway: Gateway, proxy_factory: ProxyFactory, aiohttp_server: Any
) -> None:
    token_url = await rejecting_token_endpoint(aiohttp_server, lambda _: WORDS)
    proxy = await proxy_factory(
        gateway.url, wait_for_token=False, DAP_PROXY_ACCESS_KEYS=KEY, DAP_PROXY_TOKEN_URL=token_url
    )
    await not_ready(proxy)
    status, body, _ = await call(proxy, "GET", "/-/ready")
    assert status == 503
    anonymous = error_of(body, "NotReady")
    assert "rejected the proxy's client credentials" in anonymous
    assert WORDS not in anonymous
    status, body, _ = await call(proxy, "GET", "/-/ready", headers=bearer())
    assert status == 503
    assert WORDS in error_of(body, "NotReady")
    status, body, _ = await call(proxy, "GET", "/-/ready", headers=bearer("not-the-key-0123456789"))
    assert WORDS not in error_of(body, "NotReady")


# ====================================================================== 3. redaction, end to end

CLIENT_ID = "us-east-1#leaky-client"
SECRET = "s3cret/with+odd chars&=~42"


def credential_forms() -> dict[str, str]:
    pair = f"{CLIENT_ID}:{SECRET}".encode()
    std, url = base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()
    return {
        "secret": SECRET,
        "base64": std,
        "base64 unpadded": std.rstrip("="),
        "base64url": url,
        "base64url unpadded": url.rstrip("="),
        "quoted secret": quote(SECRET, safe=""),
        "quote_plus secret": quote_plus(SECRET),
        "quoted pair": quote(f"{CLIENT_ID}:{SECRET}", safe=""),
    }


QUOTES: dict[str, Callable[[web.Request], str]] = {
    "the Authorization header": lambda r: f"bad header {r.headers['Authorization']} here",
    "the header's value alone": lambda r: "got " + r.headers["Authorization"].split()[1],
    "the URL-safe pair": lambda _: "pair " + credential_forms()["base64url unpadded"],
    "the URL-encoded secret": lambda _: f"secret={quote(SECRET, safe='')}; retry",
    "the URL-encoded pair": lambda _: "cred=" + quote(f"{CLIENT_ID}:{SECRET}", safe=""),
    "the form-encoded secret": lambda _: "client_secret=" + quote_plus(SECRET),
    "the secret itself": lambda _: f"the secret {SECRET} is wrong",
}


@pytest.mark.parametrize("quoting", sorted(QUOTES))
async def test_token_endpoint_words_never_show_a_credential(
    gateway: Gateway,
    proxy_factory: ProxyFactory,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    quoting: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    token_url = await rejecting_token_endpoint(aiohttp_server, QUOTES[quoting])
    env = {
        "DAP_CLIENT_ID": CLIENT_ID,
        "DAP_CLIENT_SECRET": SECRET,
        "DAP_PROXY_TOKEN_URL": token_url,
    }
    proxy = await proxy_factory(gateway.url, wait_for_token=False, **env)
    await not_ready(proxy)
    shown: list[str] = []
    status, body, _ = await call(proxy, "GET", TABLES)
    assert status == 401
    shown.append(error_of(body, "CredentialsRejected"))
    status, body, _ = await call(proxy, "GET", "/-/ready")
    assert status == 503
    shown.append(error_of(body, "NotReady"))
    status, body, _ = await call(proxy, "GET", "/-/status")
    shown.append(json.dumps(body))
    assert body["profiles"]["default"]["last_refresh"]["outcome"] == "rejected"
    assert await print_token(proxy_config(gateway.url, **env)) == 3
    captured = capsys.readouterr()
    shown += [captured.out, captured.err]
    shown += [record.getMessage() for record in caplog.records]
    # The endpoint's words are shown, masked: this test is not passing for want of text.
    assert any("[secure]" in text for text in shown[:2]), shown[:2]
    everything = "\n".join(shown)
    for name, form in credential_forms().items():
        assert form not in everything, f"{name} ({quoting}) shown"


# ====================================================================== 4. path checks


async def test_a_profile_prefix_cannot_hide_a_double_slash(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **yale(gateway))
    before = len(gateway.state.requests)
    status, head, body = await raw_request(proxy, raw_get("/yale//evil.example/x"))
    assert status == 400, head
    assert "//" in error_of(json.loads(body), "BadRequest")
    assert seen_since(gateway, before) == []


@pytest.mark.parametrize(
    ("target", "admitted"),
    [
        ("/dap/query/..;/job/1", False),
        ("/dap/query/%252e%252e/job/1", False),
        ("/dap/query;x=1/../job", False),
        ("/dap/queryx/table", False),
        ("/dap/query/canvas/table", True),
        ("/yale/dap/query/canvas/table", True),
        ("/yale/dap/query/..;/job/1", False),
        ("/yale/dap/job/1", False),
    ],
)
async def test_allowed_paths_apply_to_the_path_as_forwarded(
    gateway: Gateway, proxy_factory: ProxyFactory, target: str, admitted: bool
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ALLOWED_PATHS="/dap/query/", **yale(gateway))
    before = len(gateway.state.requests)
    status, head, _ = await raw_request(proxy, raw_get(target))
    if admitted:
        assert status == 200, head
        assert seen_since(gateway, before) == [("GET", target.removeprefix("/yale"))]
    else:
        assert status in (400, 403), head
        assert seen_since(gateway, before) == []


# ====================================================================== 5. login bodies

MALFORMED = {
    "multipart without a boundary": ("multipart/form-data", b"grant_type=client_credentials"),
    "an unknown charset": (
        "application/x-www-form-urlencoded; charset=nope",
        b"grant_type=client_credentials",
    ),
    "invalid UTF-8": (
        "application/x-www-form-urlencoded; charset=utf-8",
        b"grant_type=client_credentials&x=\xff\xfe\xc3",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_login_bodies_get_400_and_one_line(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    content_type, data = MALFORMED[case]
    status, body, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data=data,
        headers={
            "Content-Type": content_type,
            "Authorization": basic_credentials("tool", "any"),
        },
    )
    assert status == 400, body
    error_of(body, "BadRequest")
    lines = [r for r in caplog.records if r.name == "proxy.login"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "malformed login body" in lines[0].getMessage()
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert "Error handling request" not in record.getMessage()
    # And the proxy goes on answering logins.
    status, _, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("t", "a")},
    )
    assert status == 200


async def test_an_oversized_login_body_is_refused(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = b"grant_type=client_credentials&pad=" + b"a" * (64 * 1024)
    status, body, _ = await call(
        proxy,
        "POST",
        LOGIN,
        data=data,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": basic_credentials("tool", "any"),
        },
    )
    assert status in (400, 413), body
    assert body["error"]["type"] in ("BadRequest", "RequestTooLarge")
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()


# ====================================================================== 6. 401s bounded


def always_401(app: web.Application) -> None:
    async def deny(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"type": "AuthenticationError", "uuid": "u", "message": "no"}}, status=401
        )

    app.router.add_get("/test/deny", deny)


async def test_a_gateway_refusing_every_token_costs_a_handful_of_token_requests(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    gateway = await gateway_factory(prepare=always_401)
    proxy = await proxy_factory(gateway.url)
    first = gateway.state.token_requests
    for _ in range(50):
        status, body, _ = await call(proxy, "GET", "/test/deny")
        assert status == 401
        assert body["error"]["message"] == "no", "the gateway's own 401 reaches the client"
    assert gateway.state.token_requests - first <= 3
    assert len(gateway.state.requests_to("login")) <= 4
    assert proxy.tokens.ready, "the held token is still in use"
    status, _, _ = await call(proxy, "GET", TABLES)
    assert status == 200, "other paths go on working"
    async with proxy.http.get(proxy.url + "/-/metrics") as resp:
        metrics = await resp.text()
    relayed = [
        line
        for line in metrics.splitlines()
        if line.startswith('proxy_upstream_401_relayed_total{profile="default"}')
    ]
    assert relayed, metrics
    assert float(relayed[0].split()[-1]) >= 48


async def test_revoked_tokens_are_still_recovered_from(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url)
    first = gateway.state.token_requests
    for _ in range(20):
        gateway.state.faults.revoke_tokens()
        status, _, _ = await call(proxy, "GET", ECHO)
        assert status in (200, 401)
    assert gateway.state.token_requests - first <= 3


async def manager(clock: FakeClock, source: FakeTokenSource, **kwargs: Any) -> TokenManager:
    tokens = TokenManager(source, clock=clock, **kwargs)
    await tokens.start()
    await tokens.first_token()
    return tokens


async def test_a_token_fetched_for_a_401_is_not_replaced_within_the_holdoff() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = await manager(clock, source)
    try:
        first = await tokens.token()
        second = await tokens.replace(first)
        assert second is not None and second.access_token == "token-2"
        assert source.calls == 2
        clock.advance(29)
        assert await tokens.replace(second) is None, "relayed as it is, within the holdoff"
        assert source.calls == 2
        assert tokens.relayed_401s == 1
        assert await tokens.token() is second
        clock.advance(2)
        third = await tokens.replace(second)
        assert third is not None and third.access_token == "token-3"
        assert source.calls == 3
    finally:
        await tokens.close()


async def test_the_held_token_stays_in_use_while_its_replacement_is_fetched() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = await manager(clock, source)
    try:
        first = await tokens.token()
        source.gate = asyncio.Event()
        replacing = asyncio.create_task(tokens.replace(first))
        await until(lambda: source.calls > 1, "the replacement is being fetched")
        assert source.calls == 2
        assert await asyncio.wait_for(tokens.token(), 5) is first  # a hang guard only
        assert tokens.ready
        source.gate.set()
        replaced = await asyncio.wait_for(replacing, 5)  # a hang guard only
        assert replaced is not None and replaced.access_token == "token-2"
        assert await tokens.token() is replaced
    finally:
        await tokens.close()


async def test_replace_raises_when_the_refresh_is_rejected() -> None:
    clock = FakeClock()
    source = FakeTokenSource(clock)
    tokens = await manager(clock, source)
    try:
        first = await tokens.token()
        source.outcomes = [CredentialsRejected("the token endpoint refused")]
        with pytest.raises(CredentialsRejected):
            await tokens.replace(first)
        assert not tokens.ready, "the refused token and refused credentials: not ready"
        with pytest.raises(CredentialsRejected):
            await tokens.replace(first)
        assert source.calls == 2, "not asked again at once"
    finally:
        await tokens.close()


# ====================================================================== 7. login throttling


async def test_guessing_at_the_login_is_throttled(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=KEY)
    statuses: list[int] = []
    refusals: list[tuple[dict[str, Any], dict[str, str]]] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for guess in range(50):
            async with http.post(
                proxy.url + LOGIN,
                data={"grant_type": "client_credentials"},
                headers={
                    "Authorization": basic_credentials("tool", f"guess-{guess:04d}-0123456789")
                },
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    refusals.append((await resp.json(), dict(resp.headers)))
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= 7, statuses
    body, headers = refusals[0]
    message = error_of(body, "TooManyRequests")
    assert "retry in" in message
    assert int(headers["Retry-After"]) >= 1
    # While shut out, the right key is not even checked.
    async with proxy.http.post(
        proxy.url + LOGIN,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials("tool", KEY)},
    ) as resp:
        assert resp.status == 429


def test_throttle_doubles_caps_and_clears_on_success() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free=5, base=1.0, cap=30.0, clock=clock.monotonic)
    for _ in range(5):
        assert throttle.failed("10.0.0.1") == 0
        assert throttle.shut_out("10.0.0.1") == 0
    waits = []
    for _ in range(8):
        waits.append(throttle.failed("10.0.0.1"))
        assert throttle.shut_out("10.0.0.1") == waits[-1]
        clock.advance(waits[-1])
        assert throttle.shut_out("10.0.0.1") == 0
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    # The address is shut out, and only the address.
    throttle.failed("10.0.0.1")
    assert throttle.shut_out("10.0.0.1") == 30
    assert throttle.shut_out("10.0.0.2") == 0
    throttle.succeeded("10.0.0.1")
    assert throttle.shut_out("10.0.0.1") == 0
    assert throttle.failed("10.0.0.1") == 0, "a success starts the count again"


def test_throttle_counts_an_ipv6_address_by_its_64() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free=1, cap=10.0, clock=clock.monotonic)
    throttle.failed("2001:db8:1:2::1")
    assert throttle.failed("2001:db8:1:2:ffff::9") == 1, "the same /64: one count"
    assert throttle.shut_out("2001:db8:1:2::7") == 1
    assert throttle.shut_out("2001:db8:1:3::1") == 0, "another /64"
    throttle.failed("::ffff:10.0.0.1")
    assert throttle.failed("10.0.0.1") == 1, "an IPv4-mapped address is its IPv4 address"
    assert throttle.shut_out("local") == 0


def test_throttle_forgets_after_a_quiet_spell() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(free=1, cap=10.0, clock=clock.monotonic)
    throttle.failed("x")
    assert throttle.failed("x") == 1
    clock.advance(101)
    assert throttle.failed("x") == 0


def test_throttle_memory_is_bounded() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(maxsize=100, clock=clock.monotonic)
    for n in range(5000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._entries) <= 100  # private: the cache is the thing being bounded


# ====================================================================== 8. beyond loopback


async def test_host_not_allowed_names_the_host_and_the_setting(proxy: Proxy) -> None:
    status, body, _ = await call(proxy, "GET", TABLES, headers={"Host": "rebind.evil.example:80"})
    assert status == 403
    message = error_of(body, "HostNotAllowed")
    assert "rebind.evil.example" in message
    assert "allowed_hosts" in message


async def test_with_access_keys_any_host_is_admitted(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_ACCESS_KEYS=KEY)
    for host in (socket.gethostname(), socket.getfqdn(), "192.0.2.7:8080", "proxy.internal"):
        status, body, _ = await call(proxy, "GET", ECHO, headers={**bearer(), "Host": host})
        assert status == 200, (host, body)
        status, _, _ = await call(proxy, "GET", "/-/status", headers={**bearer(), "Host": host})
        assert status == 200
    status, _, _ = await call(proxy, "GET", TABLES, headers={"Host": "proxy.internal"})
    assert status == 401, "the key is what admits, not the Host"


async def test_allowed_hosts_are_enforced_even_with_keys(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        gateway.url, DAP_PROXY_ACCESS_KEYS=KEY, DAP_PROXY_ALLOWED_HOSTS="proxy.internal"
    )
    status, body, _ = await call(proxy, "GET", TABLES, headers={**bearer(), "Host": "evil.example"})
    assert status == 403
    error_of(body, "HostNotAllowed")
    status, _, _ = await call(proxy, "GET", "/-/healthy", headers={"Host": "evil.example"})
    assert status == 403
    status, _, _ = await call(
        proxy, "GET", TABLES, headers={**bearer(), "Host": "PROXY.internal:8080"}
    )
    assert status == 200


def test_short_access_keys_are_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_ACCESS_KEYS": f"short-key,{KEY}",
    }
    with pytest.raises(ConfigError) as raised:
        load_config(None, env)
    (problem,) = [p for p in raised.value.problems if p.startswith("access_keys")]
    assert "shorter than 16 characters" in problem
    assert "short-key" not in str(raised.value), "a key is a secret: never echoed"

    for name in list(__import__("os").environ):
        if name.startswith("DAP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "shorter than 16 characters" in err
    assert "short-key" not in err
