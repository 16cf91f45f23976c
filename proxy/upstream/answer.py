"""The gateway's answer, relayed to the client: streamed, or taken whole for a ``BodyFilter``.

Headers are out before the body: if the gateway fails mid-body, the only honest signal left
is to reset the client's connection (``abort``), so a truncated body is never taken for a
complete one. That includes a body the gateway ends by closing its connection (neither
``Content-Length`` nor chunked): a reset there resets the client's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import UpstreamUnreachable
from ..observe.logs import BYTES_OUT, REQUEST_ID
from ..responses import proxy_error_response
from .body_filter import MAX_FILTERED_BODY, BodyFilter
from .failures import describe

__all__ = ["UPSTREAM_READ_ERRORS", "abort", "relay_answer"]

log = logging.getLogger("proxy.forward")

# Errors that mean the gateway (not the client) broke the exchange. Timeouts first:
# ServerTimeoutError is a ClientError too.
UPSTREAM_READ_ERRORS = (TimeoutError, aiohttp.ClientError)


async def relay_answer(
    request: web.Request,
    answer: aiohttp.ClientResponse,
    relayed: Any,
    body_filter: BodyFilter | None,
) -> web.StreamResponse:
    """Send ``answer`` with the ``relayed`` headers (already chosen: headers.py)."""
    prefix = b""  # what a filter read before finding the body too large to take whole
    if body_filter is not None and body_filter.wants(answer.status, relayed):
        filtered = await _filtered(request, answer, relayed, body_filter)
        if not isinstance(filtered, bytes):
            return filtered
        prefix = filtered
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=relayed)
    # Taken before anything awaits: once a close-delimited body has ended, the
    # connection is released and how it ended can no longer be asked.
    closed = _closing(answer)
    await response.prepare(request)
    reader = answer.content
    sent = 0  # body bytes, for the access line of a client that hangs up mid-way
    last = b""  # a framed body's final chunk, sent with the end of the response
    try:
        if prefix:
            await response.write(prefix)
            sent = len(prefix)
        while True:
            try:
                chunk = await reader.readany()
                if not chunk and closed is not None and closed.done():
                    closed.result()  # raises if the connection ended by error (a reset)
            except UPSTREAM_READ_ERRORS as exc:  # headers are out: abort (the docstring says why)
                log.warning(
                    "upstream failed mid-response: %s %s: %s; aborting the client connection",
                    request.method,
                    request.path,
                    describe(exc),
                )
                abort(request)
                return response
            if not chunk:
                break
            if closed is None and reader.at_eof():
                # A framed body is complete (its length or last chunk seen): its final
                # bytes go out with the response's end, in one write. A small answer is
                # one such chunk. (A close-delimited body ends only as checked above.)
                last = chunk
                break
            await response.write(chunk)
            sent += len(chunk)
    finally:
        request[BYTES_OUT] = sent
    await response.write_eof(last)
    if last:
        request[BYTES_OUT] = sent + len(last)
    return response


async def _filtered(
    request: web.Request,
    answer: aiohttp.ClientResponse,
    relayed: Any,
    body_filter: BodyFilter,
) -> web.StreamResponse | bytes:
    """The answer read whole and filtered, as a response; or, when it is too large to
    take whole, the bytes read so far (it streams on, unfiltered)."""
    length = answer.content_length
    if length is not None and length > MAX_FILTERED_BODY:
        return b""
    try:
        body = await answer.content.read(MAX_FILTERED_BODY + 1)
        complete = answer.content.at_eof()
    except UPSTREAM_READ_ERRORS as exc:
        log.warning(
            "upstream failed mid-response: %s %s: %s", request.method, request.path, describe(exc)
        )
        return proxy_error_response(
            UpstreamUnreachable("the gateway dropped the connection mid-answer"),
            request[REQUEST_ID],
        )
    if not complete or len(body) > MAX_FILTERED_BODY:
        return body
    body = body_filter.apply(answer.status, relayed, body)
    relayed.pop("Content-Length", None)
    request[BYTES_OUT] = len(body)
    return web.Response(status=answer.status, reason=answer.reason, headers=relayed, body=body)


def _closing(answer: aiohttp.ClientResponse) -> asyncio.Future[None] | None:
    """For a body delimited by the end of its connection (neither ``Content-Length`` nor
    chunked), the connection's ``closed`` future: aiohttp's client ends such a body cleanly
    however the connection ends, and only this future, set before the body's end, tells a
    reset from a close. None for framed bodies (the gateway's own), whose framing tells."""
    if answer.content_length is not None:
        return None
    if "chunked" in answer.headers.get("Transfer-Encoding", "").lower():
        return None
    connection = answer.connection
    protocol = connection.protocol if connection is not None else None
    closed = protocol.closed if protocol is not None else None
    if closed is not None:
        closed.add_done_callback(_retrieve)
    return closed


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark the future's exception as seen: nobody may be looking when the connection ends."""
    if not future.cancelled():
        future.exception()


# struct linger {on, seconds}: two ints on POSIX, two u_shorts on Windows.
_LINGER_NOW = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)


def abort(request: web.Request) -> None:
    """Reset the client connection (RST, not FIN): to a client reading until the connection
    closes (HTTP/1.0), a clean close would make the truncated body look complete."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NOW)
    transport.abort()
