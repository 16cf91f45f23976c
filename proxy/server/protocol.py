"""The HTTP connection handler: what happens before a request reaches routing.

aiohttp answers malformed requests itself, with a plain-text body that quotes the offending
bytes, and logs them with a traceback. Those bytes can hold a client's credentials (a control
character inside an ``Authorization`` header is enough), so here such requests are answered
in the gateway's JSON error shape with a fixed message, and logged as one line without them.

The handler also drains properly on shutdown (``shutdown``), and bounds what a connection may
cost: at most ``max_connections`` at once, and ``head_timeout`` seconds to send the first
request's head (slowloris; later heads wait at most aiohttp's keep-alive timeout). The head
limits are aiohttp's public settings, set here (``MAX_*``), and ``refuse_unroutable`` (a
middleware) answers CONNECT and targets no route can place.

For the rest aiohttp offers no public hook (the connection level), so ``ProxyRunner`` swaps
in this handler class: one ``__class__`` assignment on the server it made. Every aiohttp
internal used here is listed in ``aiohttp_support.py``, checked when a ``ProxyRunner`` is
made, and tested.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, http_exceptions, web, web_protocol
from aiohttp.helpers import set_exception
from aiohttp.typedefs import Handler

from ..errors import BROKEN_CHUNK
from ..responses import error_body, error_response
from . import aiohttp_support as support

__all__ = ["MAX_HEADERS", "MAX_HEADER_FIELD", "MAX_REQUEST_LINE", "ProxyRunner"]

# What a request head may hold: the request line (414 past it), one header line (431), the
# number of headers (431). aiohttp's defaults, stated here so a release cannot move them.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 8190
MAX_HEADERS = 128

log = logging.getLogger("proxy.protocol")

_DRAIN_POLL = 0.05  # seconds between looks at a draining connection
_CUT = 0.01  # what aiohttp's shutdown is left to wait once our drain is over

_BUSY = error_body("TooManyConnections", "the proxy is at its connection limit; retry shortly")
_TOO_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
) % (len(_BUSY), _BUSY)

# The line LineTooLong quotes is the request line's: the C parser quotes the target, the
# Python parser the whole line. Anything else it quotes is a header's (with the C parser, a
# value beginning with "/" reads as a target: 414 for 431, a refusal all the same).
_REQUEST_LINE = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+ )?/")


def _classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """Status, type and a fixed message for a request aiohttp could not parse."""
    if isinstance(exc, http_exceptions.LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray) and _REQUEST_LINE.match(line):
            return 414, "URITooLong", "the request target is too long"
        return 431, "HeaderTooLarge", "a request header is too large"
    text = str(exc).lower() if exc is not None else ""
    if support.TEXT_TOO_MANY_HEADERS in text:
        return 431, "HeaderTooLarge", "the request has too many headers"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return 400, "BadRequest", "not an HTTP request (invalid method)"
    if any(words in text for words in support.TEXT_FRAMING):
        return 400, "BadRequest", "conflicting or invalid Content-Length / Transfer-Encoding"
    if isinstance(exc, http_exceptions.TransferEncodingError) or support.TEXT_CHUNKED in text:
        return 400, "BadRequest", BROKEN_CHUNK
    if support.TEXT_NO_HOST in text:  # 3.14's parser; 3.13's lets the guard refuse it (403)
        return 400, "BadRequest", "the request has no Host header"
    if support.TEXT_HEADER in text:
        return 400, "BadRequest", "an invalid header (name or value)"
    if status >= 500:
        return 500, "InternalError", "the proxy failed to handle the request"
    return 400, "BadRequest", "a malformed HTTP request"


@web.middleware
async def refuse_unroutable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CONNECT (405), a target no route can place (400) and a request line of another HTTP
    than 1.0 or 1.1 (505), in the gateway's shape. Every path has a route (app.py's
    catch-all), so what matches none is not a path: ``CONNECT host:port`` (aiohttp gives it an
    empty path), ``OPTIONS *``; aiohttp 3.13 and 3.14 both run the middlewares on a request no
    route matched. aiohttp's parser takes ``GET /x`` with no version for HTTP/0.9 and
    ``HTTP/2.0`` as a version like any."""
    if request.version not in (HttpVersion10, HttpVersion11):
        refusal = 505, "HTTPVersionNotSupported", "only HTTP/1.1 and HTTP/1.0 are supported"
    elif request.method == "CONNECT":
        refusal = 405, "MethodNotAllowed", "CONNECT is not supported"
    elif request.match_info.http_exception is not None:
        refusal = 400, "BadRequest", "the request target must be a path (origin-form), not a URL"
    else:
        return await handler(request)
    return error_response(*refusal)


class _ProxyRequestHandler(web_protocol.RequestHandler):
    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        self._max_connections: int = kwargs.pop("max_connections", 1000)
        self._head_timeout: float = kwargs.pop("head_timeout", 30.0)
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if manager is not None and len(manager.connections) >= self._max_connections:
            assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP and Unix both
            transport.write(_TOO_BUSY)
            transport.close()
            self._refused = True
            log.warning("refused a connection: at the limit of %d", self._max_connections)
            return
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._close and not self._force_close and self._request_in_progress:
            # Draining: aiohttp drops every byte once a connection is closing, which would
            # stall an upload in flight. So its own path reads them, with the flag lowered
            # for that call only (not the parser itself: 3.14 moved it). A pipelined request
            # parsed here is never served: once the flag is up again, start() stops after
            # the request in flight and closes the connection.
            self._close = False
            try:
                self._feed(data)
            finally:
                self._close = True
            return
        self._feed(data)
        if self._head_timer is not None and self._request_count:
            self._head_timer.cancel()
            self._head_timer = None

    def _feed(self, data: bytes) -> None:
        """aiohttp's own ``data_received``, and one correction: with its C parser, a broken
        chunk in the middle of a request body is queued as the error of a *next* request, and
        the body in flight never ends (client and upstream wait ``timeouts.client``). It is
        handed to the body instead: its reader (forward.py) answers 400, the upload is cut."""
        queued = len(self._messages)
        super().data_received(data)
        current = self._current_request
        if current is None or len(self._messages) <= queued or current.content.is_eof():
            return
        if isinstance(self._messages[-1][0], web_protocol._ErrInfo):
            self._messages.pop()
            # A fixed text: the parser's own quotes the client's bytes.
            set_exception(current.content, http_exceptions.TransferEncodingError(BROKEN_CHUNK))

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp's
        """Let the request in flight finish, its body still read, within ``timeout``; then
        cut what is left at once. (aiohttp's own waits ``timeout`` twice and stops reading
        request bodies at the start.)"""
        deadline = self._loop.time() + (timeout or 0.0)
        # aiohttp offers no event for "this request is done"; a short poll, only at shutdown.
        while self._request_in_progress and self._loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL)
        await super().shutdown(_CUT)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if not self._refused:  # a refused connection was never set up
            super().connection_lost(exc)

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as exc:
            # aiohttp 3.13 lets some requests kill its request loop (a CONNECT whose target
            # is a URL fails in yarl); the connection would then hang, holding a slot.
            log.info("closed a connection aiohttp could not serve (%s)", type(exc).__name__)
            self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp logs a parse error met after the head (3.13: bytes after a CONNECT) with
        # a traceback whose text quotes the client's bytes: one line, by class, instead.
        error = kw.get("exc_info")
        if isinstance(error, http_exceptions.HttpProcessingError):
            log.info("closed a connection after a malformed request (%s)", type(error).__name__)
            return
        super().log_exception(*args, **kw)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._request_count and self.transport is not None:
            log.warning(
                "closed a connection that sent no complete request head in %g s", self._head_timeout
            )
            self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code, error_type, text = _classify(exc, status)
        if code >= 500:
            # Our own failure: keep the traceback (no request bytes in it), answer plainly.
            self.logger.exception("error handling %s %s", request.method, request.path)
        else:
            log.info("refused a malformed request from %s: %d %s", request.remote, code, text)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        response = error_response(code, error_type, text)
        response.force_close()
        return response


class _ProxyServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """``ProxyRunner(app, max_connections=1000, head_timeout=30, ...)``: an ``AppRunner``
    whose connections use the handler above, with the head limits above and
    ``refuse_unroutable`` added to ``app``'s middlewares. Raises ``UnsupportedAiohttp`` at
    once if the installed aiohttp lacks what this module relies on."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        support.check_aiohttp()
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE)
        kwargs.setdefault("max_field_size", MAX_HEADER_FIELD)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        if refuse_unroutable not in app.middlewares:
            app.middlewares.append(refuse_unroutable)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProxyServer  # same state, one method different
        return server
