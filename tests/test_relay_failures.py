"""Issue 19, item 12, and issue 20, item 10: on the relay path, an egress proxy's or
storage's own error is never relayed as it is. A gateway-shaped 502 names the hop that
failed and its status, with the request id; no ``Via``, ``Server`` or ``X-Squid-*`` header,
no ``Proxy-Authorization`` echoed; the access line says ``up=egress:407`` or
``up=storage:503``. Storage's answers a client can act on keep their status (404, 403, 416)
in the gateway's shape; 200, 206 and 304 pass."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from .conftest import GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .relay_support import (
    DATA,
    Storage,
    error_of,
    object_url,
    object_url_route,
    relay_proxy,
)

PASSWORD = "squid-pw-0123"
SQUID_HEADERS = (
    b"Server: squid/5.7\r\nMime-Version: 1.0\r\nX-Squid-Error: ERR_CACHE_ACCESS_DENIED 0\r\n"
    b'Via: 1.1 squid.example.edu (squid/5.7)\r\nProxy-Authenticate: Basic realm="squid"\r\n'
    b"X-Cache: MISS from squid.example.edu\r\n"
)
_LEAKS = ("squid", "Squid", "Via", PASSWORD, "ERR_", "<html")


class SquidRefusing:
    """An egress proxy that answers everything as squid does without valid credentials: 407
    and its HTML page, which echoes what it was sent (``Proxy-Authorization`` included)."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SquidRefusing:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen.append(head)
            page = b"<html><body>ERR_CACHE_ACCESS_DENIED; you sent:<pre>" + head + b"</pre>"
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n" + SQUID_HEADERS
                + b"Content-Type: text/html\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % len(page) + page
            )  # fmt: skip
            await writer.drain()
        writer.close()


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "proxy.access"]


def _assert_gateway_shaped(status: int, headers: Any, error: Any, hop: str) -> None:
    assert (status, error["type"]) == (502, "BadGateway")
    assert hop in error["message"]
    assert headers["X-Request-Id"] == error["uuid"]
    for name in headers:
        assert not name.lower().startswith(("via", "x-squid", "x-cache", "proxy-")), name
    assert "squid" not in headers.get("Server", "").lower()
    for leak in _LEAKS:
        assert leak not in error["message"], leak


async def test_an_egress_proxy_refusing_a_connect_is_a_502_naming_it(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    async with SquidRefusing() as squid:
        gateway = await gateway_factory(object_url_route(storage))
        proxy = await proxy_factory(
            gateway.url,
            DAP_PROXY_OBJECT_RELAY="true",
            DAP_PROXY_CA_FILE=storage.ca_file,
            HTTPS_PROXY=f"http://carol:{PASSWORD}@127.0.0.1:{squid.port}",
            NO_PROXY="127.0.0.1",
        )
        _, url = await object_url(proxy)
        status, headers, error = await error_of(proxy, "GET", url)
    _assert_gateway_shaped(status, headers, error, f"egress proxy at 127.0.0.1:{squid.port}")
    assert "HTTP 407" in error["message"]
    assert squid.seen and squid.seen[0].startswith(b"CONNECT storage.invalid:")
    assert any(" 502 " in line and "up=egress:407" in line for line in _access_lines(caplog))


async def test_an_egress_proxys_own_page_in_absolute_form_is_not_relayed(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The upstream's own http origin goes through the egress proxy in absolute form: what
    comes back may be the egress proxy's page, with its status, and is said, not relayed."""
    caplog.set_level(logging.INFO, "proxy.access")

    @web.middleware
    async def squid_page(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/bucket/"):
            return web.Response(
                status=407,
                text=f"<html>ERR_CACHE_ACCESS_DENIED {request.headers.get('Authorization')}",
                content_type="text/html",
                headers={"Server": "squid/5.7", "X-Squid-Error": "ERR_CACHE_ACCESS_DENIED 0"},
            )
        response: web.StreamResponse = await handler(request)
        return response

    def prepare(app: web.Application) -> None:
        object_url_route(storage)(app)
        app.middlewares.insert(0, squid_page)

    gateway = await gateway_factory(prepare)
    port = URL(gateway.url).port
    assert port is not None
    egress_proxy.hosts["gateway.invalid"] = port
    storage.origin = f"http://gateway.invalid:{port}"
    proxy = await proxy_factory(
        storage.origin, DAP_PROXY_OBJECT_RELAY="true", HTTP_PROXY=egress_proxy.url
    )
    _, url = await object_url(proxy)
    status, headers, error = await error_of(proxy, "GET", url)
    _assert_gateway_shaped(status, headers, error, f"egress proxy at 127.0.0.1:{egress_proxy.port}")
    assert any("up=egress:407" in line for line in _access_lines(caplog))


async def test_storage_errors_are_said_in_the_gateways_shape(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    storage.status = 503
    status, headers, error = await error_of(proxy, "GET", url)
    _assert_gateway_shaped(status, headers, error, "object storage at storage.invalid")
    assert "HTTP 503" in error["message"] and "AmazonS3" not in headers.get("Server", "")
    assert any(" 502 " in line and "up=storage:503" in line for line in _access_lines(caplog))
    for code, error_type in ((404, "ObjectNotFound"), (403, "StorageRefused")):
        storage.status = code
        status, headers, error = await error_of(proxy, "GET", url)
        assert (status, error["type"]) == (code, error_type)
        assert "<html" not in error["message"] and "Via" not in headers
    storage.status = 200
    status, headers, error = await error_of(proxy, "GET", url, headers={"Range": "bytes=99999-"})
    assert (status, error["type"]) == (416, "RangeNotSatisfiable")
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"
    async with proxy.http.get(url) as response:
        etag = response.headers["ETag"]
        assert await response.read() == DATA
    async with proxy.http.get(url, headers={"If-None-Match": etag}) as response:
        assert response.status == 304


async def test_storage_cutting_the_object_short_resets_the_client(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    """Headers are out: a truncated object must never look whole (upstream/answer.py)."""
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    storage.truncate = True
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.http.get(url) as response:
            assert response.status == 200
            await response.read()
    async with proxy.http.get(proxy.url + "/-/metrics") as response:
        metrics = await response.text()
    assert 'proxy_relay_objects_total{profile="default"}' not in metrics  # not counted
