"""A gateway that misbehaves on a raw loopback socket, as a test script says (``Scripted``),
and a raw client connection to the proxy (``raw``). Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .conftest import Gateway, Proxy, ProxyFactory

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


async def silent(reader: asyncio.StreamReader) -> None:
    """Say nothing more, until the proxy hangs up (what it still sends is dropped)."""
    while await reader.read(1 << 16):
        pass


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
