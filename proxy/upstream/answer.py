"""The gateway's answer, relayed to the client: streamed, or taken whole for a ``BodyFilter``.

Headers are out before the body: if the gateway fails mid-body, the only honest signal left
is to reset the client's connection (``abort``), so a truncated body is never taken for a
complete one. That includes a body the gateway ends by closing its connection (neither
``Content-Length`` nor chunked): a reset there resets the client's too. An answer whose body
arrived whole with its head (most API answers) goes out in one write, head and body.

The gateway may stay silent ``timeouts.read`` seconds between pieces of the body (``Wait``,
silence.py); past that, it has failed mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import UpstreamTimeout, UpstreamUnreachable
from ..observe.logs import BYTES_OUT, REQUEST_ID
from ..paths import masked_path
from ..responses import proxy_error_response
from .body_filter import MAX_FILTERED_BODY, BodyFilter, BodyRefused, WholeBodyFilter
from .failures import describe
from .headers import NOT_INVENTED_DOWNSTREAM
from .silence import Wait

__all__ = ["UPSTREAM_READ_ERRORS", "FilteredAnswer", "abort", "relay_answer"]

log = logging.getLogger("proxy.forward")

# Errors that mean the gateway (not the client) broke the exchange. Timeouts first:
# ServerTimeoutError is a ClientError too.
UPSTREAM_READ_ERRORS = (TimeoutError, aiohttp.ClientError)


async def relay_answer(
    request: web.Request,
    answer: aiohttp.ClientResponse,
    relayed: Any,
    body_filter: BodyFilter | None,
    wait: Wait,
    *,
    on_complete: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Send ``answer`` with the ``relayed`` headers (already chosen: headers.py).
    ``on_complete(bytes)`` is called once the body went out whole (never after an abort).
    ``wait`` times the gateway's silence."""
    # Taken before anything awaits: once a close-delimited body has ended, the
    # connection is released and how it ended can no longer be asked.
    closed = _closing(answer)
    prefix = b""  # what a filter read before finding the body too large to take whole
    if body_filter is not None and body_filter.wants(answer.status, relayed):
        filtered = await _filtered(request, answer, relayed, body_filter, closed, wait)
        if not isinstance(filtered, bytes):
            return filtered
        prefix = filtered
    reader = answer.content
    whole = reader.is_eof()  # the body came with the head: nothing left to wait for
    response = (_WholeAnswer if whole else _AsAnswered)(
        status=answer.status, reason=answer.reason, headers=relayed
    )
    await response.prepare(request)
    sent = 0  # body bytes, for the access line of a client that hangs up mid-way
    last = b""  # a framed body's final chunk, sent with the end of the response
    try:
        async with contextlib.nullcontext() if whole else wait:
            if prefix:
                wait.paused()
                await response.write(prefix)
                sent = len(prefix)
                wait.heard()
            while True:
                try:
                    chunk = await reader.readany()
                    if not chunk and closed is not None and closed.done():
                        closed.result()  # raises if the connection ended by error (a reset)
                except UPSTREAM_READ_ERRORS as exc:  # headers are out: abort (see the top)
                    _failed_mid_answer(request, exc)
                    return response
                if not chunk:
                    break
                if closed is None and reader.at_eof():
                    # A framed body is complete (its length or last chunk seen): its final
                    # bytes go out with the response's end, in one write. A small answer is
                    # one such chunk. (A close-delimited body ends only as checked above.)
                    last = chunk
                    break
                wait.paused()  # the client's turn
                await response.write(chunk)
                sent += len(chunk)
                wait.heard()
    except TimeoutError as exc:  # the gateway stayed silent too long mid-body
        _failed_mid_answer(request, exc)
        return response
    finally:
        request[BYTES_OUT] = sent
    await response.write_eof(last)
    request[BYTES_OUT] = sent = sent + len(last)
    if on_complete is not None:
        on_complete(sent)
    return response


def _failed_mid_answer(request: web.Request, exc: BaseException, *, aborting: bool = True) -> None:
    """Say the gateway failed mid-answer; reset the client's connection if ``aborting`` (its
    head is out), else an error answer follows (nothing went to the client yet)."""
    log.warning(
        "upstream failed mid-response: %s %s: %s%s",
        request.method,
        masked_path(request.path),
        describe(exc),
        "; aborting the client connection" if aborting else "",
    )
    if aborting:
        abort(request)


class _AsAnswered(web.StreamResponse):
    """The gateway's answer, its head as the gateway sent it: none of what aiohttp's server
    would add (``headers.NOT_INVENTED_DOWNSTREAM``; aiohttp_support.py lists the method this
    wraps)."""

    async def _prepare_headers(self) -> None:
        headers = self.headers
        absent = [name for name in NOT_INVENTED_DOWNSTREAM if name not in headers]
        await super()._prepare_headers()
        for name in absent:
            headers.popall(name, None)


class _WholeAnswer(_AsAnswered):
    """An answer whose body arrived whole with its head: the head waits to go out with the
    body, in one write (as aiohttp's own ``web.Response`` does; aiohttp_support.py lists
    the switch). A streamed answer's head goes out at once, whenever its body comes."""

    _send_headers_immediately = False


class FilteredAnswer(_AsAnswered, web.Response):
    """An answer taken whole and filtered (or from the cache): ``web.Response``'s arguments."""


async def _filtered(
    request: web.Request,
    answer: aiohttp.ClientResponse,
    relayed: Any,
    body_filter: BodyFilter,
    closed: asyncio.Future[None] | None,
    wait: Wait,
) -> web.StreamResponse | bytes:
    """The answer read whole and filtered, as a response; or, when it is too large to
    take whole, the bytes read so far (it streams on, unfiltered), unless the filter must
    see every body (``WholeBodyFilter``): then its error."""
    limit = MAX_FILTERED_BODY
    must_filter = isinstance(body_filter, WholeBodyFilter)
    length = answer.content_length
    if length is not None and length > limit:
        return _too_large(request, body_filter, limit) if must_filter else b""
    # In a loop: one read(n) returns what has arrived so far, not n bytes.
    chunks: list[bytes] = []
    size = 0
    try:
        async with wait:
            while chunk := await answer.content.readany():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    if must_filter:
                        return _too_large(request, body_filter, limit)
                    return b"".join(chunks)
                wait.heard()
            if closed is not None and closed.done():
                closed.result()  # raises if the connection ended by error (a reset)
    except UPSTREAM_READ_ERRORS as exc:
        _failed_mid_answer(request, exc, aborting=False)
        error = (
            UpstreamTimeout("the gateway went silent mid-answer")  # timeouts.read (silence.py)
            if isinstance(exc, TimeoutError)
            else UpstreamUnreachable("the gateway dropped the connection mid-answer")
        )
        return proxy_error_response(error, request[REQUEST_ID])
    try:
        body = body_filter.apply(answer.status, relayed, b"".join(chunks))
    except BodyRefused as exc:
        log.warning("%s %s: %s", request.method, masked_path(request.path), exc.message)
        return proxy_error_response(exc, request[REQUEST_ID])
    relayed.pop("Content-Length", None)
    request[BYTES_OUT] = len(body)
    return FilteredAnswer(status=answer.status, reason=answer.reason, headers=relayed, body=body)


def _too_large(request: web.Request, body_filter: BodyFilter, limit: int) -> web.Response:
    assert isinstance(body_filter, WholeBodyFilter)  # noqa: S101 - only called for one
    error = body_filter.too_large(limit)
    log.warning("%s %s: %s", request.method, masked_path(request.path), error.message)
    return proxy_error_response(error, request[REQUEST_ID])


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
