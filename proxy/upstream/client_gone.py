"""Has the client hung up? Asked of a request waiting for a rate-limit slot, so that a ghost
is never sent to the gateway (and never spends its budget).

aiohttp cancels a handler when its connection is lost, but it learns of the loss only by
reading the socket. A client that sent part of a large body and hung up has filled the
request's buffer: aiohttp paused reading (flow control), so it never sees the close, and the
request would wait for its slot and go. The socket itself knows: on Linux ``poll`` reports
``POLLRDHUP`` (the peer's FIN) even with unread bytes before it, and ``POLLHUP``/``POLLERR``
for a reset. Elsewhere (no ``POLLRDHUP``) only what the transport knows is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

__all__ = ["POLL_SECONDS", "ClientGone", "client_gone", "unless_client_goes"]

POLL_SECONDS = 0.25  # how often a waiting request looks at its client's socket
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
_CAN_POLL = hasattr(select, "poll") and hasattr(select, "POLLRDHUP")

T = TypeVar("T")


class ClientGone(Exception):
    """The client hung up while its request waited: it is dropped, unsent."""


def client_gone(request: web.Request) -> bool:
    """True when the client's connection is closed, or its peer has shut it down."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    if not _CAN_POLL:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    try:
        poller.register(sock.fileno(), _HUNG_UP)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed under us
        return True


async def unless_client_goes(request: web.Request, waiting: Awaitable[T]) -> T:
    """``await waiting``, looking at the client every ``POLL_SECONDS``; raises ``ClientGone``
    (and closes the connection) if it hangs up first. ``waiting`` is cancelled then, so a
    queued request leaves its queue at once."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if client_gone(request):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                if request.transport is not None:
                    request.transport.abort()  # aiohttp then forgets the connection
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
