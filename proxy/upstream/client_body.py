"""The client's request body, as the gateway is sent it: read whole (so a refused request can
be replayed) or streamed as it arrives, a client silent too long given up on either way.
Which of the two is ``Forwarder._hold``'s call (the replay budget, forward.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import http_exceptions, web

from ..errors import BROKEN_CHUNK, ClientTooSlow, MalformedBody
from ..observe.logs import BYTES_IN, REQUEST_ID
from .silence import Wait

__all__ = ["request_body"]

log = logging.getLogger("proxy.forward")

_TOO_SLOW = "the client stopped sending its request body"


async def request_body(
    request: web.Request, client_timeout: float, wait: Wait, *, whole: bool
) -> Any:
    """The body to send: read first when ``whole`` (so it can be sent twice), else streamed.
    While a streamed body waits for the client, the gateway's silence is not timed (``wait``,
    silence.py): it is waiting for the same bytes."""
    if not request.body_exists:
        return None
    if whole:
        try:
            async with asyncio.timeout(client_timeout):
                body = await request.read()
        except TimeoutError:
            raise ClientTooSlow(_TOO_SLOW) from None
        request[BYTES_IN] = len(body)
        return body
    return _stream(request, client_timeout, wait)


async def _stream(request: web.Request, client_timeout: float, wait: Wait) -> AsyncIterator[bytes]:
    body = request.content
    received = 0
    try:
        while True:
            try:
                wait.paused()
                async with asyncio.timeout(client_timeout):
                    chunk = await body.readany()
                wait.heard()
            except TimeoutError:
                _cut_if_answering(request, _TOO_SLOW)
                raise ClientTooSlow(_TOO_SLOW) from None
            except ClientTooSlow as exc:  # too slow for min_request_rate (server/protocol.py)
                _cut_if_answering(request, exc.message)
                raise
            except http_exceptions.HttpProcessingError:
                # Raised into aiohttp's client while it sends the body: it drops the
                # upstream connection, so the gateway sees the upload cut off, never a
                # short body that looks complete.
                _cut_if_answering(request, BROKEN_CHUNK)
                raise MalformedBody(BROKEN_CHUNK) from None
            if not chunk:
                return
            received += len(chunk)
            yield chunk
    finally:
        request[BYTES_IN] = received


def _cut_if_answering(request: web.Request, why: str) -> None:
    """A gateway that answers while the upload is still coming (an echo, a stream) has its
    answer under way by the time the body breaks: it can no longer become a 400 or 408, and
    the gateway would wait for the rest of the body as the client waits for the rest of the
    answer. So the client's connection is cut, which cancels its request, upstream too."""
    if request.writer.output_size > 0 and request.transport is not None:
        log.warning(
            "cut %s %s mid-answer: %s (request %s)",
            request.method,
            request.path,
            why,
            request.get(REQUEST_ID, "-"),
        )
        request.transport.close()
