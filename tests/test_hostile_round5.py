"""Hostile input against the hot-path commit (8437c69): the gateway's silence timed by one
clock for every request (upstream/silence.py, its uses in forward.py, client_body.py,
answer.py), answers that came whole (``_WholeAnswer``), the 401 replay that releases the
refused answer unread, and the request factory's refusals (``/-/unroutable``). A scripted
gateway on a raw loopback socket (``Scripted``) and raw client sockets; everything listens
on 127.0.0.1.

Found and fixed: one ``Wait`` served both the head and the body, so a streamed upload still
going after the head came (its turns pause and restart the wait) left a silent gateway
untimed, or restarted the wait while the proxy was blocked on a slow client and cut a
healthy answer. The answer now has its own wait (forward.py). A refused CONNECT kept its
connection open, and the tunnel's bytes that followed were read as the next request (a
request could ride behind a body aiohttp does not frame for CONNECT): the 405 now closes it
(refusals.py). A whole answer a gateway sent unasked on a pooled connection, after the one
it was asked for had ended, was taken for the next request's answer (another client's),
and the connection stayed one answer behind: such a connection is now closed unused
(session.py's AsSent).

Held, kept as guards: clients hanging up while the gateway is silent (a clean 499, no wait
left), 40 stalls at once with answers straddling the deadline, slow uploaders, 1xx or half
a head then silence, a never-ending 401 before the replay, bodiless answers that claim a
length, whole answers over 64 KiB in each framing and HTTP version."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.server.keys import FORWARDERS

from .conftest import Gateway, Proxy, ProxyFactory
from .scripted import Scripted, raw, scripted_proxy, silent
from .waiting import until

AIOHTTP = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])


def silences(proxy: Proxy) -> int:
    forwarders = proxy.running.runner.app[FORWARDERS]
    return sum(len(f._silence) for f in forwarders.values())


async def upload_forever(
    writer: asyncio.StreamWriter, every: float, stop: asyncio.Event, piece: int = 1
) -> None:
    with contextlib.suppress(ConnectionError):
        while not stop.is_set():
            writer.write(b"%x\r\n%s\r\n" % (piece, b"u" * piece))
            await writer.drain()
            await asyncio.sleep(every)
        writer.write(b"0\r\n\r\n")


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, f"{record.name}: {record.getMessage()}"
        text = record.getMessage()
        for words in ("Traceback", "never retrieved", "Error handling request"):
            assert words not in text, text


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "proxy.access"]


async def connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def read_all(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, str]:
    """What arrives until the proxy closes (``closed``), resets, or ``seconds`` pass."""
    got = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(1 << 20):
                got += chunk
    except TimeoutError:
        return bytes(got), "still open"
    except ConnectionError:
        return bytes(got), "reset"
    return bytes(got), "closed"


# --- one wait for the head, another for the body: a streamed upload may outlive the head --


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UPLOAD_HEAD = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_an_upload_still_going_leaves_a_silent_gateway_timed(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway answers early (head and 10 of 100 bytes) and falls silent while the
    client is still uploading, a piece every 50 ms. Each piece the upload waited for used
    to pause the answer's wait (one Wait for both): the gateway's silence went untimed for
    as long as the client kept trickling."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await asyncio.sleep(30)

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="0.3"
        )
        reader, writer = await connect(proxy)
        writer.write(UPLOAD_HEAD)
        stop = asyncio.Event()
        uploading = asyncio.create_task(upload_forever(writer, 0.05, stop))
        got, end = await read_all(reader, 3)
        stop.set()
        await uploading
        writer.close()
        assert got.endswith(b"\r\n\r\n0123456789")
        assert end == "reset", "the gateway's silence mid-body was not timed"
        await until(lambda: silences(proxy) == 0, "the waits ended")
    lines = [r.getMessage() for r in caplog.records if "mid-response" in r.getMessage()]
    assert lines == [
        "upstream failed mid-response: POST /x: timeout; aborting the client connection"
    ]
    no_tracebacks(caplog)


async def test_an_upload_still_going_does_not_cut_an_answer_the_client_reads_slowly(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway streams 32 MiB at once and stops reading the upload; the client keeps
    uploading and reads nothing for 1.5 s. The proxy, blocked writing to the client,
    must wait (not the gateway's silence); the upload's turn used to restart the answer's
    wait, which then ran out and cut a healthy answer."""
    size = 32 << 20

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size >> 16):
            writer.write(b"y" * 65536)
            await writer.drain()
        await asyncio.sleep(30)

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="0.3"
        )
        reader, writer = await connect(proxy)
        writer.write(UPLOAD_HEAD)
        stop = asyncio.Event()
        uploading = asyncio.create_task(upload_forever(writer, 0.005, stop, 1 << 18))
        await asyncio.sleep(1.5)
        got = bytearray()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while len(got) < size and (chunk := await reader.read(1 << 20)):
                    got += chunk
        stop.set()
        await uploading
        writer.close()
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b"y" * 65536) and len(got) > size, "the answer was cut"
    assert not [r for r in caplog.records if "mid-response" in r.getMessage()]
    no_tracebacks(caplog)


# --- clients hanging up, many stalled at once --------------------------------------------


@pytest.mark.parametrize("stall", ["head", "body"])
async def test_a_client_hanging_up_while_the_gateway_is_silent_is_a_clean_499(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, stall: str
) -> None:
    """The wait is cancelled by the hang-up, not expired: no TimeoutError, no 504 and no
    traceback; the gateway's connection is closed and no wait is left on the clock."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
        if stall == "body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await silent(reader)
        raise ConnectionError

    caplog.set_level(logging.INFO)
    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="5")
        for _ in range(3):
            _, writer = await connect(proxy)
            writer.write(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await until(lambda: silences(proxy) == 1, "the wait began")
            await asyncio.sleep(0.05)
            writer.close()
        await until(lambda: silences(proxy) == 0, "the waits ended")
        await until(lambda: upstream.closed == 3, "the gateway's connections closed")
        await until(lambda: len(access_lines(caplog)) == 3, "three access lines")
    assert [line.split(" ")[:3] for line in access_lines(caplog)] == [["GET", "/x", "499"]] * 3
    no_tracebacks(caplog)


async def test_many_stalled_requests_each_end_and_the_others_are_served(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """40 requests at once: a third find the gateway silent before its head, a third
    mid-body, a third answered; and a gateway answering just as the wait runs out (0.2
    to 0.4 s, the limit 0.3 s) gives a whole 200 or a clean 504, nothing in between. No wait
    is left on the clock, and the proxy serves on."""
    delays = iter([0.2 + 0.2 * n / 13 for n in range(14)])

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        if head.startswith(b"GET /head"):
            await silent(reader)
        elif head.startswith(b"GET /body"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await silent(reader)
        else:
            await asyncio.sleep(next(delays, 0))
            writer.write(OK_HEAD)
            return
        raise ConnectionError

    async def one(path: str) -> tuple[str, int, bytes]:
        try:
            async with proxy.http.get(proxy.url + path) as response:
                return path, response.status, await response.read()
        except aiohttp.ClientPayloadError:
            return path, -1, b""

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="0.3"
        )
        paths = ["/head", "/body", "/ok"] * 13 + ["/ok"]
        results = await asyncio.gather(*(one(path) for path in paths))
        await until(lambda: silences(proxy) == 0, "the waits ended")
        assert await one("/after") == ("/after", 200, b"ok")
    for path, status, body in results:
        if path == "/head":
            assert status == 504 and b"UpstreamTimeout" in body, (path, status, body)
        elif path == "/body":
            assert status == -1, (path, status, body)  # cut: the client connection reset
        else:
            assert (status, body) == (200, b"ok") or (
                status == 504 and b"UpstreamTimeout" in body
            ), (path, status, body)
    no_tracebacks(caplog)


# --- the request factory's refusals ------------------------------------------------------

NEXT = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32


@pytest.mark.skipif(
    AIOHTTP < (3, 14), reason="3.13 does not answer CONNECT followed by more bytes at all"
)
@pytest.mark.parametrize(
    "after",
    [b"\r\n" + NEXT, b"\r\n" + TLS_HELLO + NEXT, b"Content-Length: 7\r\n\r\nabcdefg" + NEXT],
    ids=["a request", "a TLS hello", "a body"],
)
async def test_a_refused_connect_ends_its_connection(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, after: bytes
) -> None:
    """What follows a CONNECT head is a tunnel's to the client (a TLS hello sent early, a
    body framed by a Content-Length aiohttp's parser ignores for CONNECT): the 405 used to
    keep the connection open and read those bytes as the next request (a 400 for the hello,
    or a request smuggled behind the body). Now the 405 closes it, as 501 and 505 do."""
    caplog.set_level(logging.INFO)
    proxy = await proxy_factory(gateway.url)
    out = await raw(proxy, b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + after)
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nConnection: close\r\n" in out
    assert [line.split(" ")[:3] for line in access_lines(caplog)] == [["CONNECT", "-", "405"]]
    assert (
        await raw(proxy, NEXT.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    ).startswith(b"HTTP/1.1 200 OK\r\n")


# --- a gateway that says more than it was asked ------------------------------------------

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nnot-yours!!"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bytes_the_gateway_sends_unasked_answer_no_one(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """The gateway ends an answer (its Content-Length met), the connection goes back to the
    pool, then a whole second answer arrives on it unasked. aiohttp kept it and handed it to
    the next request sent on that connection (another client's), and every later answer
    on it to the request after its own. Now that connection is closed unused: a GET is
    sent again on another (its own answer), a POST fails as a broken connection (502)."""
    answered = 0
    first_read, smuggled = asyncio.Event(), asyncio.Event()

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        nonlocal answered
        answered += 1
        if answered == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            await writer.drain()
            await first_read.wait()  # the client has it all: the connection is in the pool
            writer.write(SMUGGLED)
            await writer.drain()
            smuggled.set()
            return
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nown")

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream)
        async with proxy.http.get(proxy.url + "/first") as response:
            assert await response.read() == b"first"
        first_read.set()
        await asyncio.wait_for(smuggled.wait(), 5)
        await asyncio.sleep(0.05)  # a few turns of the loop: the proxy has read them
        seen = []
        for _ in range(3):
            async with proxy.http.request(method, proxy.url + "/x", data=b"d") as response:
                seen.append((response.status, await response.read()))
    assert all(b"not-yours" not in body for _, body in seen), seen
    if method == "GET":
        assert seen == [(200, b"own")] * 3
    else:
        assert seen[0][0] == 502 and seen[1:] == [(200, b"own")] * 2, seen
    no_tracebacks(caplog)


# --- what held (kept as guards) ----------------------------------------------------------


async def test_a_slow_uploader_is_not_taken_for_a_silent_gateway(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    """Pauses longer than timeouts.read (0.3 s) but shorter than timeouts.client between
    the pieces of a streamed upload: the wait is paused while the client is awaited."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += await reader.read(1 << 16)
        writer.write(OK_HEAD)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 10
            await asyncio.sleep(0.45)

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="0.3"
        )
        async with proxy.http.post(proxy.url + "/x", data=body()) as response:
            assert (response.status, await response.read()) == (200, b"ok")
        assert silences(proxy) == 0


@pytest.mark.parametrize("first", [b"100 Continue", b"103 Early Hints", b"200 OK\r\nContent"])
async def test_a_gateway_that_says_a_little_then_nothing_is_a_504(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture, first: bytes
) -> None:
    """An informational answer, or half a head, then silence: the head's wait runs out.
    (A head trickled a byte at a time is timed whole, as a head: its bytes are no answer.)"""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes) -> None:
        writer.write(b"HTTP/1.1 " + first + (b"\r\n\r\n" if first[0:1] == b"1" else b""))
        await silent(reader)
        raise ConnectionError

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(
            proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="0.3"
        )
        async with proxy.http.get(proxy.url + "/x") as response:
            assert response.status == 504
            assert b"UpstreamTimeout" in await response.read()
        await until(lambda: upstream.closed == 1, "the proxy hung up on the gateway")
        assert silences(proxy) == 0
    no_tracebacks(caplog)


async def test_a_401_that_never_ends_is_not_read_before_the_replay(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The refused answer is released unread (its connection closed, not pooled half
    read) and the request sent again with a new token; the next requests are served."""
    answered = 0

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        nonlocal answered
        answered += 1
        if answered == 1:
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"10000\r\n" + b"z" * 65536 + b"\r\n")
                await writer.drain()
        writer.write(OK_HEAD)

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream, DAP_PROXY_TIMEOUTS_READ="5")
        for _ in range(2):
            async with proxy.http.post(proxy.url + "/x", data=b"abc") as response:
                assert (response.status, await response.read()) == (200, b"ok")
        await until(lambda: upstream.closed >= 1, "the 401's connection closed")
        assert answered == 3 and silences(proxy) == 0
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("method", "status"),
    [("GET", b"204 No Content"), ("GET", b"304 Not Modified"), ("HEAD", b"200 OK")],
)
async def test_an_empty_answer_that_claims_a_length_keeps_the_connection_in_step(
    gateway: Gateway, proxy_factory: ProxyFactory, method: str, status: bytes
) -> None:
    """An answer that has no body whatever its Content-Length says (taken whole, one
    write): no body goes out, and the client's next request on the connection is answered
    in turn."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if head.startswith(b"GET /next"):
            writer.write(OK_HEAD)
        else:
            writer.write(b"HTTP/1.1 " + status + b'\r\nContent-Length: 7\r\nETag: "a"\r\n\r\n')

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream)
        out = await raw(
            proxy,
            method.encode() + b" /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
    first, _, second = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nok"), out


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_an_answer_larger_than_a_read_that_came_whole_arrives_whole(
    gateway: Gateway, proxy_factory: ProxyFactory, framing: str, version: bytes
) -> None:
    """300 KiB sent with its head in one write (what _WholeAnswer takes in one go when it
    is all in), in each framing, to an HTTP/1.1 and an HTTP/1.0 client: every byte, once."""
    body = bytes(range(256)) * 1200

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if framing == "length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif framing == "chunked":
            chunk = b"%x\r\n%s\r\n" % (len(body), body)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
            raise ConnectionError  # ends the connection: the body's end

    async with Scripted(script) as upstream:
        proxy = await scripted_proxy(proxy_factory, gateway, upstream)
        out = await raw(
            proxy, b"GET /x HTTP/" + version + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
    head, _, got = out.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        pieces, rest = [], got
        while (size := int(rest.split(b"\r\n", 1)[0], 16)) > 0:
            start = rest.index(b"\r\n") + 2
            pieces.append(rest[start : start + size])
            rest = rest[start + size + 2 :]
        got = b"".join(pieces)
    assert head.startswith(b"HTTP/" + version + b" 200 OK\r\n")
    assert got == body
