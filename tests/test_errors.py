"""Each failure the proxy answers for itself: status, gateway-shaped body, and no secrets."""

from __future__ import annotations

import logging
import socket

import pytest

from proxy.simulator import DEMO_CLIENT_SECRET

from .conftest import Gateway, Proxy, ProxyFactory

TABLES = "/dap/query/canvas/table"


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def error_of(proxy: Proxy, path: str = TABLES) -> tuple[int, dict[str, str], dict[str, str]]:
    async with proxy.http.get(proxy.url + path) as resp:
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"type", "uuid", "message"}
        return resp.status, body["error"], dict(resp.headers)


async def test_rejected_credentials(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    gateway.state.faults.credentials_revoked = True
    proxy = await proxy_factory(gateway.url, wait_for_token=False)
    status, error, _ = await error_of(proxy)
    assert status == 401
    assert error["type"] == "CredentialsRejected"
    assert "rejected the proxy's client credentials" in error["message"]
    # Not retried in a loop: the next requests are answered without asking again.
    asked = gateway.state.token_requests
    for _ in range(5):
        assert (await error_of(proxy))[0] == 401
    assert gateway.state.token_requests == asked


async def test_token_endpoint_unavailable(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    gateway.state.faults.token_statuses.extend([500] * 50)
    proxy = await proxy_factory(gateway.url)
    status, error, headers = await error_of(proxy)
    assert status == 503
    assert error["type"] == "TokenEndpointUnavailable"
    assert "HTTP 500" in error["message"]
    assert int(headers["Retry-After"]) >= 1
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 503


async def test_gateway_unreachable(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        f"http://127.0.0.1:{closed_port()}",
        DAP_PROXY_TOKEN_URL=gateway.url + "/ids/auth/login",
    )
    status, error, _ = await error_of(proxy)
    assert status == 502
    assert error["type"] == "UpstreamUnreachable"
    assert "could not be reached" in error["message"]


async def test_gateway_timeout(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_TIMEOUTS_READ="0.3")
    status, error, _ = await error_of(proxy, "/test/slow?seconds=3")
    assert status == 504
    assert error["type"] == "UpstreamTimeout"


async def test_absolute_form_target_is_refused(proxy: Proxy) -> None:
    from .test_forwarding import raw_request

    answer = await raw_request(
        proxy,
        b"GET http://127.0.0.1:1/steal HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"type":"BadRequest"' in answer


async def test_reserved_prefix_is_never_forwarded(gateway: Gateway, proxy: Proxy) -> None:
    seen = len(gateway.state.requests)
    status, _, _ = await error_of(proxy, "/-/no-such-thing")
    assert status == 404
    assert len(gateway.state.requests) == seen


async def test_health_and_readiness(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/-/healthy") as resp:
        assert resp.status == 200
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 200


async def test_no_secret_or_token_in_logs_or_bodies(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[bytes] = []
    proxy = await proxy_factory(gateway.url, DAP_PROXY_TIMEOUTS_READ="0.5")
    tokens_seen = set()

    async def get(path: str) -> None:
        async with proxy.http.get(proxy.url + path) as resp:
            bodies.append(await resp.read())
            bodies.append(str(resp.headers).encode())
        if proxy.tokens.state.token is not None:
            tokens_seen.add(proxy.tokens.state.token.access_token)

    await get(TABLES)
    gateway.state.faults.revoke_tokens()
    await get(TABLES)  # 401 upstream, refresh, replay
    await get("/test/slow?seconds=2")  # 504
    gateway.state.faults.token_statuses.extend([500] * 10)
    gateway.state.faults.revoke_tokens()
    await get(TABLES)  # 401, refresh fails
    await get(TABLES)  # 503
    gateway.state.faults.token_statuses.clear()
    gateway.state.faults.credentials_revoked = True
    await proxy.tokens.close()
    await get(TABLES)  # 401 CredentialsRejected
    assert len(tokens_seen) >= 2
    captured = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in (DEMO_CLIENT_SECRET, *tokens_seen):
        assert secret not in captured
        for body in bodies:
            assert secret.encode() not in body
    assert "token refreshed" in caplog.text  # the log was really captured
