"""Hostile input against the hot-path commit (8437c69): the gateway's silence timed by one
clock for every request (upload/silence.py, its uses in forward.py, client_body.py,
answer.py), answers that came whole (``_WholeAnswer``), the 401 replay that releases the
refused answer unread, and the request factory's refusals (``/-/unroutable``). A scripted
gateway on a raw loopback socket (``Scripted``) and raw client sockets; everything listens
on 127.0.0.1.

Found and fixed: one ``Wait`` served both the head and the body, so a streamed upload still
going after the head came (its turns pause and restart the wait) left a silent gateway
untimed, or restarted the wait while the proxy was blocked on a slow client and cut a
healthy answer. The answer now has its own wait (forward.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from proxy.server.keys import FORWARDERS

from .conftest import Gateway, Proxy, ProxyFactory
from .waiting import until

LOGIN = "/ids/auth/login"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


class Scripted:
    """A gateway on 127.0.0.1 that reads a request head (and a Content-Length body) and then
    does what ``script`` says with the connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heads: list[bytes] = []
        self.closed = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                await self.script(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed += 1
            writer.close()
            self._tasks.discard(task)


async def raw(proxy: Proxy, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the proxy says until it closes."""
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def scripted_proxy(
    proxy_factory: ProxyFactory, gateway: Gateway, upstream: Scripted, **env: str
) -> Proxy:
    return await proxy_factory(upstream.url, DAP_PROXY_TOKEN_URL=gateway.url + LOGIN, **env)


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
