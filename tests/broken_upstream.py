"""A deliberately broken HTTP/1.1 server on a raw loopback socket, for fault-injection tests.

aiohttp's own server is too well behaved to reset a connection at a chosen byte, to answer
with half a body, or to accept a connection and never say anything; this one does exactly
that, one behaviour at a time, switchable while it runs::

    async with BrokenUpstream(relay_to=gateway.url) as upstream:
        upstream.mode = Mode.HANG        # accept, read the request, never answer
        ...
        upstream.mode = Mode.RELAY       # back to normal: pipe bytes to the real gateway

``await upstream.refuse()`` stops listening (keeping the port, so connections are refused)
and ``await upstream.listen()`` starts again. Only ever binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from types import TracebackType

from yarl import URL

__all__ = ["BODY_BYTE", "BrokenUpstream", "Mode"]

BODY_BYTE = b"x"  # what every partial body is made of
PROMISED = 1024 * 1024  # the Content-Length a cut response promises
SENT = 64 * 1024  # how much of it arrives before the cut


class Mode(enum.Enum):
    RELAY = "relay"  # a transparent TCP pipe to ``relay_to``
    HANG = "hang"  # read the request, then say nothing until the peer gives up
    RESET = "reset"  # read the request, then reset the connection (RST)
    CLOSE = "close"  # read the request, then close the connection (FIN), no answer
    CUT_LENGTH = "cut-length"  # promise PROMISED bytes by Content-Length, send SENT, reset
    CUT_CHUNKED = "cut-chunked"  # chunked: send SENT bytes in chunks, reset, no last chunk
    FIN_LENGTH = "fin-length"  # as CUT_LENGTH, but end with a clean FIN
    FIN_CHUNKED = "fin-chunked"  # as CUT_CHUNKED, but end with a clean FIN
    CUT_UNTIL_CLOSE = "cut-until-close"  # no length, no chunking: SENT bytes, then reset
    STALL_BODY = "stall-body"  # Content-Length PROMISED, send SENT, then nothing


class BrokenUpstream:
    """A loopback server that misbehaves as ``mode`` says; ``url`` is where it listens."""

    def __init__(self, relay_to: str | None = None, mode: Mode = Mode.RELAY) -> None:
        self.mode = mode
        self._relay = URL(relay_to) if relay_to else None
        self._server: asyncio.Server | None = None
        self._stopped: list[asyncio.Server] = []  # closed by refuse(), awaited by close()
        self._port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0  # connections accepted, in any mode
        self.requests = 0  # request heads read (not counted in RELAY mode)
        self.peer_closed = asyncio.Event()  # a peer hung up on a HANG or STALL_BODY connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: connections to ``url`` are refused until ``listen()``.

        Connections already open stay open. ``close()`` (the listening socket is closed
        at once) rather than ``wait_closed()``, which from Python 3.12 on also waits for
        every open connection: the proxy's pooled keep-alive ones would hold it for 15 s.
        """
        if self._server is not None:
            self._server.close()
            self._stopped.append(self._server)
            self._server = None

    async def close(self) -> None:
        """Stop listening and drop every connection still open (relayed ones included)."""
        await self.refuse()
        # Aborting the transports lets each connection's task end by itself: cancelling
        # asyncio's stream callbacks instead gets an error logged with a traceback.
        for writer in list(self._writers):
            writer.transport.abort()
        for _ in range(100):
            if not self._writers:
                break
            await asyncio.sleep(0.01)
        # Only now, with no connection left: from 3.12 on it waits for them.
        for server in self._stopped:
            await server.wait_closed()
        self._stopped.clear()

    async def __aenter__(self) -> BrokenUpstream:
        await self.listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ per connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode is Mode.RELAY:
            await self._pipe(reader, writer)
            return
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        length = _content_length(head)
        if length:
            await reader.readexactly(length)
        if mode is Mode.HANG:
            await self._wait_for_hangup(reader)
        elif mode is Mode.RESET:
            _reset(writer)
        elif mode is Mode.CLOSE:
            writer.close()
        elif mode in (Mode.CUT_LENGTH, Mode.FIN_LENGTH, Mode.STALL_BODY):
            writer.write(_head(f"Content-Length: {PROMISED}") + BODY_BYTE * SENT)
            await writer.drain()
            if mode is Mode.STALL_BODY:
                await self._wait_for_hangup(reader)
            else:
                await _end(writer, reset=mode is Mode.CUT_LENGTH)
        elif mode in (Mode.CUT_CHUNKED, Mode.FIN_CHUNKED):
            writer.write(_head("Transfer-Encoding: chunked"))
            for _ in range(4):
                writer.write(b"%x\r\n%s\r\n" % (SENT // 4, BODY_BYTE * (SENT // 4)))
            await writer.drain()
            await _end(writer, reset=mode is Mode.CUT_CHUNKED)
        elif mode is Mode.CUT_UNTIL_CLOSE:
            writer.write(_head("Connection: close") + BODY_BYTE * SENT)
            await writer.drain()
            await _end(writer, reset=True)

    async def _wait_for_hangup(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.peer_closed.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._relay is None:
            raise RuntimeError("RELAY mode needs relay_to")
        up_reader, up_writer = await asyncio.open_connection(self._relay.host, self._relay.port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


def _head(*extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/octet-stream", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: SO_LINGER on, zero seconds."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _end(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    # Give the bytes time to leave before the cut: a reset discards what is unsent.
    await asyncio.sleep(0.05)
    if reset:
        _reset(writer)
    else:
        writer.close()
