"""The aiohttp surface the proxy stands on, exercised: what a name check cannot show.

``proxy/server/aiohttp_support.py`` lists every aiohttp internal the proxy relies on; each
entry whose words or behaviour matter names its test (``tested_by``), here or elsewhere.
Then a hostile-input campaign over raw sockets against the limits (set as aiohttp's public
settings), CONNECT in its forms, broken chunked bodies, absolute-form targets and request
lines of other HTTP versions: each answered in the gateway's shape, never forwarded,
nothing of the client's bytes in the log, and the proxy serves on.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp import http_parser, web

from proxy.server.aiohttp_support import INTERNALS
from proxy.server.protocol import (
    MAX_HEADER_FIELD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    ProxyRunner,
    _classify,
)

from .conftest import Gateway, Proxy

AIOHTTP = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
SECRET = b"k-7d1e-tunnel-secret-never-logged"
BOUND = 5  # seconds

# ---------------------------------------------------------------- the list and its tests


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)}


def test_every_internal_that_needs_more_than_a_name_names_a_test_that_exists() -> None:
    here = Path(__file__).parent
    named = [item for item in INTERNALS if item.tested_by]
    assert named, "the parser's words at least need a test"
    for item in named:
        assert item.tested_by is not None
        file, _, name = item.tested_by.rpartition("::")
        assert name in _test_names(here / (file or Path(__file__).name)), item


# ---------------------------------------------------------------- the parser's words

PARSERS = {"python": http_parser.HttpRequestParserPy}
if getattr(http_parser, "HttpRequestParserC", None) is not None:
    PARSERS["c"] = http_parser.HttpRequestParserC

HOST = b"Host: localhost\r\n"
WORDS = {
    "target too long": (
        b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
    ),
    "header too long": (b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "header name too long": (b"GET / HTTP/1.1\r\n" + HOST + b"X" * 9000 + b": v\r\n\r\n", 431),
    "too many headers": (
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
        431,
    ),
    "not HTTP": (b"\x16\x03\x01 / HTTP/1.1\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        400,
    ),
    "a broken chunk size": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    "a control character in a header": (
        b"GET / HTTP/1.1\r\n" + HOST + b"Authorization: a\x01b\r\n\r\n",
        400,
    ),
}
MESSAGES = {
    "target too long": "the request target is too long",
    "header too long": "a request header is too large",
    "header name too long": "a request header is too large",
    "too many headers": "the request has too many headers",
    "not HTTP": "not an HTTP request (invalid method)",
    "Content-Length and Transfer-Encoding": "conflicting or invalid",
    "two Content-Lengths": "conflicting or invalid",
    "a broken chunk size": "invalid chunked encoding",
    "a control character in a header": "an invalid header (name or value)",
}


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize("case", list(WORDS))
def test_each_parser_message_is_told_apart(parser: str, case: str) -> None:
    """Both of aiohttp's parsers (C, the default; Python, without its extensions), straight:
    the words protocol.py's ``_classify`` matches must still be in what each raises."""
    data, status = WORDS[case]
    loop = asyncio.new_event_loop()
    try:
        made = PARSERS[parser](
            mock.Mock(),
            loop,
            2**16,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
        )
        with pytest.raises(aiohttp.http_exceptions.HttpProcessingError) as raised:
            made.feed_data(data)
    finally:
        loop.close()
    code, _, message = _classify(raised.value, 400)
    assert (code, message[: len(MESSAGES[case])]) == (status, MESSAGES[case]), raised.value


# ---------------------------------------------------------------- a real server

Answer = tuple[int | None, bytes]  # status (None: closed with no answer), body


async def exchange(port: int, data: bytes, *, wait: float = BOUND) -> Answer:
    """Send raw bytes; read until the connection closes (every answer here closes it) or
    ``wait`` passes. (None, b"") when it closed without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        try:
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    got += chunk
                    if b"\r\n\r\n" in got and _complete(got):
                        break
        except TimeoutError:
            if not got:
                raise
        except ConnectionResetError:
            pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not got:
        return None, b""
    head, _, body = got.partition(b"\r\n\r\n")
    # The first answer only: what follows it in the same read (an answer to bytes sent
    # after the head, read as a next request) is not this answer's body.
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            body = body[: int(value)]
    return int(head.split(b" ", 2)[1]), body


def _complete(got: bytes) -> bool:
    head, _, body = got.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def gateway_shaped(body: bytes) -> dict[str, str]:
    parsed = json.loads(body)
    assert list(parsed) == ["error"], body
    error: dict[str, str] = parsed["error"]
    assert sorted(error) == ["message", "type", "uuid"], body
    return error


async def still_serving(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/dap/query/canvas/table") as resp:
        assert resp.status == 200


def heads(count: int) -> bytes:
    """``count`` header lines in all, Host among them."""
    return HOST + b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))


def target(length: int) -> bytes:
    """A request line of exactly ``length`` bytes (without its CRLF) for a local endpoint."""
    fixed = b"GET /-/healthy? HTTP/1.1"
    return b"GET /-/healthy?" + b"a" * (length - len(fixed)) + b" HTTP/1.1"


def field(length: int) -> bytes:
    """A header line of exactly ``length`` bytes (name, colon, space, value). (aiohttp's C
    parser bounds the value alone, and the target alone; its Python parser each whole line.
    A line at the limit passes both, a value a byte over it neither.)"""
    return b"X-Big: " + b"a" * (length - len(b"X-Big: "))


# Local endpoints (/-/healthy) where a request passes: the gateway behind has limits of its
# own, and the proxy adds headers, so a forwarded request at the limit is its business.
CAMPAIGN: dict[str, tuple[bytes, int, str]] = {
    # the request line: aiohttp's max_line_size bounds the target (the C parser)
    "target at the limit": (target(MAX_REQUEST_LINE) + b"\r\n" + HOST + b"\r\n", 200, ""),
    "target one over": (
        b"GET /-/healthy?" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        "URITooLong",
    ),
    "target with no end": (b"GET /" + b"a" * 3 * MAX_REQUEST_LINE, 414, "URITooLong"),
    # one header line
    "header at the limit": (
        b"GET /-/healthy HTTP/1.1\r\n" + HOST + field(MAX_HEADER_FIELD) + b"\r\n\r\n",
        200,
        "",
    ),
    "header one over": (
        b"GET /-/healthy HTTP/1.1\r\n"
        + HOST
        + b"X-Big: "
        + b"a" * (MAX_HEADER_FIELD + 1)
        + b"\r\n\r\n",
        431,
        "HeaderTooLarge",
    ),
    "header with no end": (
        b"GET /-/healthy HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 3 * MAX_HEADER_FIELD,
        431,
        "HeaderTooLarge",
    ),
    "header name too long": (
        b"GET /-/healthy HTTP/1.1\r\n" + HOST + b"X" * (MAX_HEADER_FIELD + 1) + b": v\r\n\r\n",
        431,
        "HeaderTooLarge",
    ),
    # the number of headers
    "headers at the limit": (
        b"GET /-/healthy HTTP/1.1\r\n" + heads(MAX_HEADERS) + b"\r\n",
        200,
        "",
    ),
    "headers one over": (
        b"GET /-/healthy HTTP/1.1\r\n" + heads(MAX_HEADERS + 1) + b"\r\n",
        431,
        "HeaderTooLarge",
    ),
    "headers far over": (
        b"GET /-/healthy HTTP/1.1\r\n" + heads(10 * MAX_HEADERS) + b"\r\n",
        431,
        "HeaderTooLarge",
    ),
    # CONNECT: refused (refusals.unroutable), whatever its target
    "CONNECT host:port": (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        405,
        "MethodNotAllowed",
    ),
    "CONNECT IPv6": (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
        405,
        "MethodNotAllowed",
    ),
    "CONNECT a host alone": (
        b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        405,
        "MethodNotAllowed",
    ),
    "CONNECT a path": (b"CONNECT /dap/x HTTP/1.1\r\n" + HOST + b"\r\n", 405, "MethodNotAllowed"),
    "CONNECT *": (b"CONNECT * HTTP/1.1\r\n" + HOST + b"\r\n", 405, "MethodNotAllowed"),
    "CONNECT HTTP/1.0": (b"CONNECT example.com:443 HTTP/1.0\r\n\r\n", 405, "MethodNotAllowed"),
    "connect in lower case": (
        b"connect example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        400,
        "BadRequest",
    ),
    # other targets that are not a path
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", 501, "NotImplemented"),
    "absolute-form": (
        b"GET http://127.0.0.1:9/steal HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        400,
        "BadRequest",
    ),
    "absolute-form https": (
        b"GET https://example.com/dap/x HTTP/1.1\r\n" + HOST + b"\r\n",
        400,
        "BadRequest",
    ),
    "authority-form GET": (b"GET example.com:443 HTTP/1.1\r\n" + HOST + b"\r\n", 400, "BadRequest"),
    # broken chunked bodies
    "chunk size not hex": (
        b"POST /dap/x HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        400,
        "BadRequest",
    ),
    "chunk shorter than its size": (
        b"POST /dap/x HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
        "BadRequest",
    ),
    "chunk size negative": (
        b"POST /dap/x HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n",
        400,
        "BadRequest",
    ),
    "chunk size overflowing": (
        b"POST /dap/x HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n",
        400,
        "BadRequest",
    ),
    "chunks with bare LF": (
        b"POST /dap/x HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        400,
        "BadRequest",
    ),
    "LF in a chunk extension": (
        b"POST /dap/x HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n",
        400,
        "BadRequest",
    ),
    "chunked twice": (
        b"POST /dap/x HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
        "BadRequest",
    ),
    # request lines of other HTTP versions
    "HTTP/0.9 (no version)": (b"GET /-/healthy\r\n\r\n", 505, "HTTPVersionNotSupported"),
    "HTTP/0.9 with headers": (
        b"GET /dap/query/canvas/table\r\n" + HOST + b"\r\n",
        505,
        "HTTPVersionNotSupported",
    ),
    "HTTP/2.0": (
        b"GET /dap/query/canvas/table HTTP/2.0\r\n" + HOST + b"\r\n",
        505,
        "HTTPVersionNotSupported",
    ),
    "HTTP/1.2": (b"GET /-/healthy HTTP/1.2\r\n" + HOST + b"\r\n", 505, "HTTPVersionNotSupported"),
    "HTTP/3.0": (b"GET /-/healthy HTTP/3.0\r\n" + HOST + b"\r\n", 505, "HTTPVersionNotSupported"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "BadRequest"),
    "TLS on the plain port": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"a" * 50,
        400,
        "BadRequest",
    ),
}


@pytest.mark.parametrize("case", list(CAMPAIGN))
async def test_each_malformed_request_gets_the_gateway_shape(
    gateway: Gateway, proxy: Proxy, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data, status, error_type = CAMPAIGN[case]
    seen = len(gateway.state.requests)
    code, body = await exchange(port_of(proxy), data)
    assert code == status, body
    if error_type:
        assert gateway_shaped(body)["type"] == error_type
        assert len(gateway.state.requests) == seen, "nothing may reach the gateway"
    assert "Traceback" not in caplog.text
    await still_serving(proxy)


async def test_http_1_1_without_host_is_refused_either_way(gateway: Gateway, proxy: Proxy) -> None:
    """3.14's parser refuses it (400); 3.13's leaves it to the guard (403)."""
    seen = len(gateway.state.requests)
    for data in (
        b"GET /dap/query/canvas/table HTTP/1.1\r\n\r\n",
        b"POST /dap/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ):
        code, body = await exchange(port_of(proxy), data)
        expected = (400, "BadRequest") if AIOHTTP >= (3, 14) else (403, "HostNotAllowed")
        assert (code, gateway_shaped(body)["type"]) == expected, body
    assert len(gateway.state.requests) == seen, "nothing may reach the gateway"


@pytest.mark.xfail(
    AIOHTTP < (3, 14),
    reason="aiohttp 3.13 reads the bytes after a CONNECT head as a next request before "
    "answering: the connection closes with no answer (no bytes are logged: protocol.py)",
    strict=True,
)
async def test_connect_followed_by_tunnel_bytes_is_refused(gateway: Gateway, proxy: Proxy) -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + SECRET
    code, body = await exchange(port_of(proxy), data)
    assert code == 405
    assert gateway_shaped(body)["type"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    "after", [SECRET, b"\x16\x03\x01\x02\x00\x01\x00" + SECRET, b"Content-Length: 5"]
)
async def test_connect_followed_by_tunnel_bytes_logs_none_of_them(
    gateway: Gateway, proxy: Proxy, caplog: pytest.LogCaptureFixture, after: bytes
) -> None:
    """Whatever the release does with them (3.13: no answer, 3.14: 405), the bytes after a
    CONNECT head (a tunnel's, a client's secrets) are in no log line, and no traceback."""
    caplog.set_level(logging.DEBUG)
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + after
    code, _ = await exchange(port_of(proxy), data)
    assert code in (None, 405)
    assert SECRET.decode() not in caplog.text
    assert "Traceback" not in caplog.text
    await still_serving(proxy)


@pytest.mark.parametrize(
    "line",
    [
        b"GET http://user:" + SECRET + b"@example.com/x HTTP/1.1",
        b"CONNECT user:" + SECRET + b"@example.com:443 HTTP/1.1",
        b"CONNECT " + SECRET + b".example.com:443 HTTP/1.1",
    ],
    ids=["absolute-form with userinfo", "authority-form with userinfo", "authority-form"],
)
async def test_a_target_that_is_not_a_path_is_refused_and_not_logged(
    gateway: Gateway, proxy: Proxy, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    code, body = await exchange(port_of(proxy), line + b"\r\n" + HOST + b"\r\n")
    assert code in (400, 405), body
    assert gateway_shaped(body)["type"] in ("BadRequest", "MethodNotAllowed")
    assert SECRET.decode() not in caplog.text
    await still_serving(proxy)


async def test_connect_to_a_url_neither_hangs_nor_logs_it(
    gateway: Gateway, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp 3.13's request loop died on it (yarl cannot read the URL as host:port) and
    the connection used to hang, holding a slot; the request factory now routes it to its
    refusal before yarl reads it (405, as any CONNECT); 3.14's parser answers 400 first."""
    caplog.set_level(logging.DEBUG)
    data = b"CONNECT http://example.com:443/x" + SECRET + b" HTTP/1.1\r\n" + HOST + b"\r\n"
    code, body = await exchange(port_of(proxy), data)
    assert code in (400, 405), body
    assert gateway_shaped(body)["type"] == {400: "BadRequest", 405: "MethodNotAllowed"}[code]
    assert SECRET.decode() not in caplog.text
    assert "Traceback" not in caplog.text
    await still_serving(proxy)


async def test_the_head_limits_are_aiohttps_public_settings() -> None:
    """Set on the runner (not aiohttp's defaults left to move), and overridable there."""
    runner = ProxyRunner(web.Application())
    kwargs = runner._kwargs  # what AppRunner passes to web.Server, which passes it on
    assert kwargs["max_line_size"] == MAX_REQUEST_LINE
    assert kwargs["max_field_size"] == MAX_HEADER_FIELD
    assert kwargs["max_headers"] == MAX_HEADERS
    assert ProxyRunner(web.Application(), max_headers=7)._kwargs["max_headers"] == 7


async def test_a_failure_after_the_answer_started_cuts_the_connection() -> None:
    """``request.writer.output_size``: a handler that fails once its answer is under way
    must not have an error response written into the middle of its body."""

    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError("failed mid-answer")

    app = web.Application()
    app.router.add_get("/half", half)
    runner = ProxyRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /half HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(BOUND):
            got = await reader.read()  # to the end: the proxy closes the connection
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b"partial" in got
    assert b"InternalError" not in got and got.count(b"HTTP/1.") == 1, got
