"""The client's request body, as the gateway is sent it: read whole (so a refused request can
be replayed) or streamed as it arrives, a client silent too long given up on either way.
Which of the two is ``Forwarder._hold``'s call (the replay budget, forward.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import http_exceptions, web

from ..errors import BROKEN_CHUNK, ClientTooSlow, MalformedBody
from ..observe.logs import BYTES_IN

__all__ = ["request_body"]

_TOO_SLOW = "the client stopped sending its request body"


async def request_body(request: web.Request, client_timeout: float, *, whole: bool) -> Any:
    """The body to send: read first when ``whole`` (so it can be sent twice), else streamed."""
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
    return _stream(request, client_timeout)


async def _stream(request: web.Request, client_timeout: float) -> AsyncIterator[bytes]:
    body = request.content
    received = 0
    try:
        while True:
            try:
                async with asyncio.timeout(client_timeout):
                    chunk = await body.readany()
            except TimeoutError:
                raise ClientTooSlow(_TOO_SLOW) from None
            except http_exceptions.HttpProcessingError:
                # Raised into aiohttp's client while it sends the body: it drops the
                # upstream connection, so the gateway sees the upload cut off, never a
                # short body that looks complete.
                raise MalformedBody(BROKEN_CHUNK) from None
            if not chunk:
                return
            received += len(chunk)
            yield chunk
    finally:
        request[BYTES_IN] = received
