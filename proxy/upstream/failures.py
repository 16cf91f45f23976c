"""Why a connection to the gateway, storage or an egress proxy failed, in words a user can
act on: the operating system's reason (``connection refused``, ``name not resolved``) or the
exception's class, never its text (a foreign exception's text may hold URLs or more).
Every module that reports an upstream failure asks here.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp

__all__ = ["connection_failure", "describe"]


def connection_failure(exc: aiohttp.ClientError) -> str:
    """Why a connection failed, in the OS's words (``connection refused``), else the class."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate could not be verified"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):
            return "name not resolved"
        for kind, reason in (
            (ConnectionRefusedError, "connection refused"),
            (ConnectionResetError, "connection reset"),
            (TimeoutError, "timed out"),
        ):
            if isinstance(error, kind):
                return reason
        if error.errno is not None:
            # asyncio's strerror is "Connect call failed (address)"; the errno says why.
            reason = os.strerror(error.errno)
            if reason.startswith("Unknown error") and error.strerror:  # Windows' WSA codes
                reason = error.strerror
            return reason.lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before an answer"
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    """What went wrong, in the operating system's words or by class (never by its text)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the egress proxy refused the connection (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"the egress proxy could not be reached: {connection_failure(exc)}"
    if isinstance(exc, aiohttp.ClientError):
        return connection_failure(exc)
    return type(exc).__name__
