"""A real ``redis-server`` for the shared-state tests, on a free loopback port, nothing saved
to disk; stopped (or frozen, to play a slow Redis) and restarted on the same port by the tests.

Without ``redis-server`` the tests that need it FAIL, saying how to install it: CI installs
Debian's package (``.ci/run``), and a silent skip would hide the whole feature untested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

INSTALL_HINT = (
    "redis-server is not installed, and the shared-state tests need a real one: "
    "apt-get install redis-server (Debian, Ubuntu; .ci/run does it), brew install redis (macOS)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``await server.start()``, ``server.url``, ``await server.stop()``; ``freeze``/``thaw``
    stop and continue the process (a Redis that accepts connections and never answers)."""

    def __init__(
        self, directory: Path, password: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: serve TLS only (``rediss://``), with the certificate and key written by
        ``tls_files``; the context is how this helper's own probes trust it."""
        self.directory = directory
        self.password = password
        self.tls = tls
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL_HINT)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.tls:
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.directory / "redis.pem")]
            argv += ["--tls-key-file", str(self.directory / "redis.key")]
        argv += ["--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        for _ in range(500):  # until it answers PING (or says it needs the password)
            if await self._answers():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 1)
            return line.startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def command(self, *words: str) -> bytes:
        """One command, its first reply line (the tests' own look at what Redis holds)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls)
        try:
            if self.password:
                writer.write(f"AUTH {self.password}\r\n".encode())
                await reader.readline()
            writer.write(" ".join(words).encode() + b"\r\n")
            return (await asyncio.wait_for(reader.readline(), 5)).strip()
        finally:
            writer.close()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    async def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.thaw()  # a frozen process would not act on SIGTERM
        self.process.terminate()
        await self.process.wait()
        self.process = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()
