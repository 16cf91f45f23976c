"""Hostile input: each gets a clear 4xx, reaches nothing upstream, and the proxy serves on."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from .conftest import Gateway, Proxy, ProxyFactory
from .test_forwarding import raw_request, read_response

CLIENT_SECRET_IN_HEADER = "k-3f9a-client-key-never-logged"


def split(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def assert_still_serving(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
        assert resp.status == 200


BIG = b"a" * 9000
CASES = {
    "malformed request line": (b"GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, b"BadRequest"),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n", 400, b"BadRequest"),
    "absolute-form target": (
        b"GET http://127.0.0.1:9/steal HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        400,
        b"origin-form",
    ),
    "CONNECT": (b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n", 405, b"CONNECT"),
    "TRACE": (b"TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405, b"TRACE"),
    "double slash": (b"GET //127.0.0.2/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, b"//"),
    "encoded slashes": (
        b"GET /%2F%2F127.0.0.2/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        400,
        b"encoded",
    ),
    "dot segments": (b"GET /dap/../test/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, b"segments"),
    "encoded dots": (b"GET /dap/%2e%2e/x HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, b"encoded"),
    "backslash": (b"GET /dap/%5c..%5cx HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, b"encoded"),
    "header too large": (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + BIG + b"\r\n\r\n",
        431,
        b"HeaderTooLarge",
    ),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: localhost\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        431,
        b"HeaderTooLarge",
    ),
    "URL too long": (b"GET /" + BIG + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414, b"URITooLong"),
    "Content-Length with Transfer-Encoding": (
        b"POST /dap/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        b"Transfer-Encoding",
    ),
    "two Content-Lengths": (
        b"POST /dap/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
        400,
        b"Content-Length",
    ),
    "invalid chunked body": (
        b"POST /test/echo/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        400,
        b"chunked",
    ),
    "unknown transfer coding": (
        b"POST /test/echo/x HTTP/1.1\r\nHost: localhost\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        b"chunked transfer coding",
    ),
    "control character in a header": (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
        + CLIENT_SECRET_IN_HEADER.encode()
        + b"\x01x\r\n\r\n",
        400,
        b"invalid header",
    ),
    "foreign Host (DNS rebinding)": (
        b"GET /dap/query/canvas/table HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n",
        403,
        b"HostNotAllowed",
    ),
    "cross-site browser request": (
        b"POST /dap/query/canvas/table/accounts/data HTTP/1.1\r\nHost: localhost\r\n"
        b"Origin: https://evil.example\r\nContent-Length: 2\r\n\r\n{}",
        403,
        b"OriginNotAllowed",
    ),
    "cross-site fetch without Origin": (
        b"GET /dap/query/canvas/table HTTP/1.1\r\nHost: localhost\r\n"
        b"Sec-Fetch-Site: cross-site\r\n\r\n",
        403,
        b"OriginNotAllowed",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_request_is_refused_and_reaches_nothing(
    gateway: Gateway, proxy: Proxy, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request, status, hint = CASES[case]
    seen = len(gateway.state.requests)
    code, body = split(await raw_request(proxy, request))
    assert code == status, body
    assert b'"error":{"type":' in body
    assert hint in body
    assert len(gateway.state.requests) == seen, "nothing may reach the gateway"
    await assert_still_serving(proxy)
    # Refusals never quote the request's bytes, in the answer or in the log.
    assert CLIENT_SECRET_IN_HEADER not in caplog.text
    assert CLIENT_SECRET_IN_HEADER.encode() not in body
    assert "Traceback" not in caplog.text


async def test_slow_request_head_is_cut_off(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_TIMEOUTS_CLIENT="0.5")
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /dap/query/canvas/table HTTP/1.1\r\nHost: local")  # and then nothing
    await writer.drain()
    code, body = split(await asyncio.wait_for(reader.read(), 5))  # to EOF: it is closed
    assert code == 408
    assert b"RequestTimeout" in body
    assert b"timeouts.client" in body  # which limit
    writer.close()
    await writer.wait_closed()
    await assert_still_serving(proxy)


@pytest.mark.parametrize("chunked", [False, True])
async def test_slow_request_body_gets_408(
    gateway: Gateway, proxy_factory: ProxyFactory, chunked: bool
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_TIMEOUTS_CLIENT="0.5")
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        if chunked
        else (b"Content-Length: 100\r\n\r\nhello")
    )
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /test/echo/slow HTTP/1.1\r\nHost: localhost\r\n" + framing)
    await writer.drain()
    answer = await read_response(reader)
    writer.close()
    await writer.wait_closed()
    code, body = split(answer)
    assert code == 408
    assert b"RequestTimeout" in body
    await assert_still_serving(proxy)


async def test_connection_limit(gateway: Gateway, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        gateway.url, DAP_PROXY_MAX_CONNECTIONS="3", DAP_PROXY_MAX_CONNECTIONS_PER_ADDRESS="3"
    )
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(host, int(port))
    code, body = split(await read_response(reader))
    writer.close()
    await writer.wait_closed()
    assert code == 503
    assert b"TooManyConnections" in body
    assert b"max_connections: 3" in body  # which limit
    for _, held_writer in held:
        held_writer.close()
        await held_writer.wait_closed()
    await asyncio.sleep(0.1)
    await assert_still_serving(proxy)


# Issue 19, item 13: what is no HTTP/1.x request for a path gets the gateway's shape, and a
# status line the client can read (aiohttp echoed the request's version: "HTTP/2.0 505").
ODD_REQUESTS = {
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 501, b"OPTIONS *"),
    "HTTP/2.0": (b"GET /dap/x HTTP/2.0\r\nHost: localhost\r\n\r\n", 505, b"not HTTP/2.0"),
    "HTTP/1.2": (b"GET /dap/x HTTP/1.2\r\nHost: localhost\r\n\r\n", 505, b"HTTP/1.1"),
}


@pytest.mark.parametrize("case", list(ODD_REQUESTS))
async def test_options_star_and_other_http_versions_get_a_gateway_shaped_http_1_1_answer(
    gateway: Gateway, proxy: Proxy, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    request, status, hint = ODD_REQUESTS[case]
    seen = len(gateway.state.requests)
    answer = await raw_request(proxy, request)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:40]
    _, body = split(answer)
    error = json.loads(body)["error"]
    assert sorted(error) == ["message", "type", "uuid"]
    assert hint in error["message"].encode()
    assert len(gateway.state.requests) == seen, "nothing may reach the gateway"
    assert "Traceback" not in caplog.text
    await assert_still_serving(proxy)
