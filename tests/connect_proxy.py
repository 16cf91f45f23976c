"""An institution's network, for the tests: an egress proxy and a private CA.

``ConnectProxy`` is a small egress HTTP proxy, as an institution runs one (Squid and the like).

It answers ``CONNECT host:port`` by opening a TCP connection and piping bytes both ways
(TLS stays end to end), and absolute-form requests (``GET http://host:port/x``) by sending
them on in origin form. With ``credentials`` set, a request without the right
``Proxy-Authorization`` gets ``407``. ``hosts`` maps made-up names (``gateway.invalid``)
to loopback ports: such a name resolves nowhere else, so a test that passes proves the
traffic went through this proxy. Only mapped names and 127.0.0.1 are reached.

``PrivateCA`` issues server certificates from a CA no trust store knows, as a network that
re-signs TLS does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConnectProxy", "PrivateCA"]


@dataclass
class ConnectProxy:
    """``proxy = ConnectProxy(credentials=("u", "p"), hosts={"x.invalid": 8443})``;
    ``await proxy.start()`` gives its port; ``proxy.seen`` lists ``"CONNECT x.invalid:443"``,
    ``"GET http://x.invalid:80/path"``... (with ``refused`` for those answered 407/403)."""

    credentials: tuple[str, str] | None = None
    hosts: dict[str, int] = field(default_factory=dict)
    refuse_connect: bool = False  # answer every CONNECT 403, as a proxy's deny rule does
    seen: list[str] = field(default_factory=list)
    # The request heads that went on, as the target received them (Proxy-Authorization gone).
    forwarded_heads: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Cut the connections rather than cancel the tasks: on Python 3.11 asyncio logs an
        # error for a cancelled connection handler.
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [line for line in header_lines if line]
        if not self._authorized(headers):
            self.seen.append(f"{method} {target} refused")
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            if self.refuse_connect:
                self.seen.append(f"CONNECT {target} refused")
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            self.seen.append(f"CONNECT {target}")
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await self._open(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._pipe(reader, writer, up_reader, up_writer)
            return
        # Absolute form: http://host:port/path -> origin form to that host. Connection:
        # close, so the client never sends a request for another host down this connection.
        self.seen.append(f"{method} {target}")
        rest = target.removeprefix("http://")
        authority, slash, path = rest.partition("/")
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
        kept = [
            line
            for line in headers
            if line.split(":", 1)[0].strip().lower()
            not in ("proxy-authorization", "proxy-connection", "connection", "keep-alive")
        ]
        new_head = "\r\n".join(
            [f"{method} {slash}{path} {version}", *kept, "Connection: close", "", ""]
        ).encode("latin-1")
        self.forwarded_heads.append(new_head)
        up_reader, up_writer = await self._open(host, int(port))
        up_writer.write(new_head)
        await up_writer.drain()
        await self._pipe(reader, writer, up_reader, up_writer)

    def _authorized(self, headers: list[str]) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                return value.strip() == expected
        return False

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if host in self.hosts:
            port = self.hosts[host]
        elif host != "127.0.0.1":
            raise ConnectionError(f"the test proxy reaches only loopback, not {host}")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers.add(up_writer)
        return up_reader, up_writer

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.write_eof()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


class PrivateCA:
    """An institution's own certificate authority (``trustme``): ``ca.server_context(names)``
    for a TLS server, ``ca.pem_file(tmp_path)`` for the proxy's ``ca_file``."""

    def __init__(self) -> None:
        import trustme

        self._ca = trustme.CA()

    def server_context(self, *names: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(*names).configure_cert(context)
        return context

    def pem_file(self, directory: Path) -> str:
        path = directory / "institution-ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        return str(path)
