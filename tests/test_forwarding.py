"""Forwarding, against the gateway simulator on a real loopback port."""

from __future__ import annotations

import asyncio
import hashlib
import json
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from proxy.upstream.answer import _WholeAnswer

from .conftest import Gateway, Proxy, ProxyFactory
from .gateway_routes import GZIPPED, headers_of, pattern, pattern_digest
from .scripted import Scripted, scripted_proxy

MB = 1024 * 1024


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with a Content-Length (all the proxy's own answers have one)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def raw_request(proxy: Proxy, request: bytes) -> bytes:
    """Send bytes as they are (no client library tidying them up); return one answer."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_cold_start_burst_makes_one_token_request(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    gateway.state.faults.token_delay = 0.5  # the burst arrives while the first fetch runs
    proxy = await proxy_factory(gateway.url, wait_for_token=False)
    assert not proxy.tokens.ready

    async def one() -> int:
        async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses == [200] * 200
    assert gateway.state.token_requests == 1


async def test_methods_paths_and_queries_are_forwarded_byte_exact(proxy: Proxy) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        target = "/test/echo/a%3Bb/%7E/caf%C3%A9/x%20y;p=1?q=%20a+b&q=2&empty=&raw=%zz&up=../%2F"
        answer = await raw_request(
            proxy,
            f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        seen = json.loads(body)
        assert seen["method"] == method
        assert seen["target"] == target


async def test_head_is_forwarded(proxy: Proxy) -> None:
    async with proxy.http.head(proxy.url + "/test/download?size=1000") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"


async def test_hop_by_hop_and_client_credentials_never_reach_the_gateway(proxy: Proxy) -> None:
    answer = await raw_request(
        proxy,
        b"GET /test/echo/h HTTP/1.1\r\n"
        b"Host: localhost:1234\r\n"
        b"Connection: close, X-Private-Hop\r\n"
        b"X-Private-Hop: secret-hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Foo\r\n"
        b"Upgrade: websocket\r\n"
        b"Proxy-Authorization: Basic cHJveHk6cHJveHk=\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Authorization: Bearer the-clients-own-token\r\n"
        b"X-InstAuth: deprecated-client-token\r\n"
        b"keep-alive: timeout=5\r\n"
        b"connection: X-Lower-Hop\r\n"
        b"x-lower-hop: also private\r\n"
        b"proxy-authorization: Basic bG93ZXI6Y2FzZQ==\r\n"
        b"x-instauth: lower-case-client-token\r\n"
        b"X-Repeated: one\r\n"
        b"X-Repeated: two\r\n"
        b"traceparent: 00-not-valid-w3c-00\r\n"
        b"User-Agent: DataAccessPlatform/2.3.1\r\n"
        b"\r\n",
    )
    seen = headers_of(answer.partition(b"\r\n\r\n")[2])
    names = {k.lower() for k, _ in seen}
    for hop in (
        "connection",
        "x-private-hop",
        "x-lower-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-instauth",
    ):
        assert hop not in names, hop
    auth = [v for k, v in seen if k.lower() == "authorization"]
    assert len(auth) == 1 and auth[0].startswith("Bearer ")
    assert "the-clients-own-token" not in auth[0]
    host = [v for k, v in seen if k.lower() == "host"]
    assert host != ["localhost:1234"] and len(host) == 1
    assert [v for k, v in seen if k == "X-Repeated"] == ["one", "two"]
    assert ("traceparent", "00-not-valid-w3c-00") in seen
    assert ("User-Agent", "DataAccessPlatform/2.3.1") in seen
    assert "accept-encoding" not in names, "the proxy must not invent Accept-Encoding"


@pytest.mark.parametrize("body", [b"", b"x" * 100], ids=["no body", "a body"])
async def test_no_header_is_invented_on_the_way(proxy: Proxy, body: bytes) -> None:
    # aiohttp's client adds these when a request lacks them; session.py's AsSent says not to.
    answer = await raw_request(
        proxy,
        b"POST /test/echo/plain HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
    )
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    names = {name.lower() for name, _ in seen["headers"]}
    assert seen["size"] == len(body)
    invented = names & {"user-agent", "accept", "accept-encoding", "content-type"}
    assert not invented, seen["headers"]


async def test_an_answer_that_came_whole_goes_out_in_one_write() -> None:
    # answer.py's _WholeAnswer holds its head back for the body (aiohttp's switch for it is
    # listed in aiohttp_support.py): one write, where a StreamResponse makes two.
    loop = asyncio.get_running_loop()
    writes: dict[type, list[bytes]] = {}
    for kind in (_WholeAnswer, web.StreamResponse):
        transport = mock.Mock(is_closing=lambda: False)
        transport.write.side_effect = lambda data, kind=kind: writes[kind].append(bytes(data))
        writes[kind] = []
        writer = StreamWriter(mock.Mock(transport=transport, _paused=False), loop)
        request = make_mocked_request("GET", "/dap/x", writer=writer)
        response = kind(status=200, headers={"Content-Length": "5"})
        await response.prepare(request)
        await response.write_eof(b"hello")
    assert len(writes[_WholeAnswer]) == 1, writes
    assert writes[_WholeAnswer][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[_WholeAnswer][0].endswith(b"\r\n\r\nhello")
    assert len(writes[web.StreamResponse]) == 2, "the contrast: a head written at once"


# What a scripted gateway answers, by request path: untyped (no Content-Type, no Server),
# whole or chunked (streamed), or typed; /dap/query/x/table is cached (list_tables).
_UNTYPED = {
    b"/whole": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"/dap/query/x/table": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/typed": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nServer: gw/1\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
}


@pytest.mark.parametrize("path", ["/whole", "/chunked", "/dap/query/x/table", "/typed"])
async def test_no_header_is_invented_on_the_way_back(
    proxy_factory: ProxyFactory, gateway: Gateway, path: str
) -> None:
    # aiohttp's server adds Content-Type: application/octet-stream to a body without one, and
    # its own Server: answer.py takes both back off what the gateway did not send.
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(_UNTYPED[head.split(b" ")[1]])
        await writer.drain()

    async with Scripted(answer) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_CACHE_ENABLED="true"
        )
        for _ in range(2):  # the cached path: filled, then answered from the cache
            async with proxy.http.get(proxy.url + path) as resp:
                assert resp.status == 200
                assert await resp.read() == b"hello"
                if path == "/typed":
                    assert resp.headers["Content-Type"] == "text/csv"
                    assert resp.headers["Server"] == "gw/1"
                else:
                    assert "Content-Type" not in resp.headers, resp.headers
                    assert "Server" not in resp.headers, resp.headers
                assert "Date" in resp.headers  # a proxy adds one (RFC 9110 section 6.6.1)
    if path == "/dap/query/x/table":
        assert len(upstream.heads) == 1, "the second came from the cache"


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Type:\r\nContent-Length: 2\r\n\r\nhi"),
    ],
)
async def test_bodiless_and_oddly_typed_answers_get_nothing_invented(
    proxy_factory: ProxyFactory, gateway: Gateway, method: str, answer: bytes
) -> None:
    # The edges of the rule above: a HEAD's length without its body, 204 and 304, and a
    # Content-Type the gateway sent empty (kept as sent, not replaced).
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(answer)
        await writer.drain()

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream)
        for _ in range(2):  # the connection is still framed right for the next answer
            async with proxy.http.request(method, proxy.url + "/x") as resp:
                body = await resp.read()
                assert resp.headers.getall("Content-Type", []) == (
                    [""] if b"Content-Type:" in answer else []
                ), resp.headers
                assert "Server" not in resp.headers
                assert body == (b"hi" if b"hi" in answer else b"")


async def test_response_headers_repeats_kept_hop_by_hop_dropped(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/test/cookies") as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "X-Upstream-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_location_at_the_gateway_is_rewritten_to_the_proxy(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/test/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == proxy.url + "/dap/job/42?x=%2F"
    async with proxy.http.get(proxy.url + "/test/redirect?away=1", allow_redirects=False) as resp:
        assert resp.headers["Location"] == "https://objects.example/file?sig=1"


async def test_gzip_arrives_byte_identical_with_its_encoding(proxy: Proxy) -> None:
    async with proxy.http.get(
        proxy.url + "/test/gzip", headers={"Accept-Encoding": "gzip"}
    ) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIPPED


@pytest.mark.parametrize("chunked", [False, True])
async def test_50mb_download_streams_intact(proxy: Proxy, chunked: bool) -> None:
    size = 50 * MB
    query = f"size={size}" + ("&chunked=1" if chunked else "")
    digest = hashlib.sha256()
    received = 0
    async with proxy.http.get(proxy.url + "/test/download?" + query) as resp:
        assert resp.status == 200
        assert ("Content-Length" in resp.headers) is not chunked
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == pattern_digest(size)


@pytest.mark.parametrize("chunked", [False, True])
async def test_50mb_upload_streams_intact(proxy: Proxy, chunked: bool) -> None:
    size = 50 * MB

    async def body():  # type: ignore[no-untyped-def]
        for offset in range(0, size, 64 * 1024):
            yield pattern(min(64 * 1024, size - offset))

    headers = {} if chunked else {"Content-Length": str(size)}
    async with proxy.http.post(
        proxy.url + "/test/echo/upload", data=body(), headers=headers
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["size"] == size
    assert seen["sha256"] == pattern_digest(size)
    names = {k.lower(): v for k, v in seen["headers"]}
    if chunked:
        assert names.get("transfer-encoding") == "chunked"
    else:
        assert names.get("content-length") == str(size)


async def test_gateway_401_for_the_current_token_refreshes_once_and_replays(
    gateway: Gateway, proxy: Proxy
) -> None:
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
        assert resp.status == 200
    before = gateway.state.token_requests
    gateway.state.faults.revoke_tokens()
    async with proxy.http.post(
        proxy.url + "/test/echo/replay", data=b'{"format": "jsonl"}'
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["sha256"] == hashlib.sha256(b'{"format": "jsonl"}').hexdigest()
    assert gateway.state.token_requests == before + 1


async def test_second_401_goes_to_the_client_without_looping(
    gateway: Gateway, proxy: Proxy
) -> None:
    before = gateway.state.token_requests
    gateway.state.faults.api_statuses.extend([401, 401])
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
        assert resp.status == 401
    assert gateway.state.token_requests == before + 1


async def test_upstream_failure_mid_response_aborts_the_client(proxy: Proxy) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.http.get(proxy.url + "/test/cut") as resp:
            assert resp.status == 200
            await resp.read()
    # and the proxy keeps serving
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
        assert resp.status == 200


async def test_client_hanging_up_cancels_the_upstream_request(
    gateway: Gateway, proxy: Proxy
) -> None:
    with pytest.raises(TimeoutError):
        async with proxy.http.get(
            proxy.url + "/test/hang", timeout=aiohttp.ClientTimeout(total=0.5)
        ) as resp:
            await resp.read()
    await asyncio.wait_for(gateway.hangups.cancelled.wait(), 5)
