"""What the connection level answers, and why (protocol.py decides when).

aiohttp answers malformed requests itself, with a plain-text body that quotes the offending
bytes. Those bytes can hold a client's credentials (a control character inside an
``Authorization`` header is enough), so ``classify`` gives each a status, the gateway's
error type and a fixed message; ``unroutable`` decides what parses but is no request for a
path, and ``answer_unroutable`` answers it; ``raw_answer`` is the bytes written to a
connection that never reached a handler (a refused or cut connection), in the gateway's
shape too.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, http_exceptions, web, web_protocol
from yarl import URL

from ..aiohttp_compat import RequestKey
from ..errors import BROKEN_CHUNK
from ..responses import error_body, error_response
from . import aiohttp_support as support
from .drain import Stopping

__all__ = [
    "REFUSAL",
    "SUPPORTED_VERSIONS",
    "UNROUTABLE",
    "answer_unroutable",
    "classify",
    "in_flight_last",
    "last_when_stopping",
    "raw_answer",
    "unroutable",
]

SUPPORTED_VERSIONS = (HttpVersion11, HttpVersion10)

Refusal = tuple[int, str, str]  # status, the gateway's error type, a fixed message

# Where a request ``unroutable`` refuses is routed (protocol.py adds the route), and its
# refusal. A request of another HTTP version is answered as HTTP/1.1, so the status line is
# one the client can read.
UNROUTABLE = "/-/unroutable"
_UNROUTABLE_URL = URL(UNROUTABLE)
REFUSAL = RequestKey("refusal", tuple)
# The refusals that end their connection: what else such a client sends may not be HTTP/1.1
# (after CONNECT, a tunnel's bytes: a TLS hello, or a body its Content-Length never framed,
# would be read as the next request).
_CLOSING = (405, 501, 505)

# The line LineTooLong quotes is the request line's: the C parser quotes the target, the
# Python parser the whole line. Anything else it quotes is a header's (with the C parser, a
# value beginning with "/" reads as a target: 414 for 431, a refusal all the same).
_REQUEST_LINE = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+ )?/")

_VERSION_TEXT = "only HTTP/1.1 and HTTP/1.0 are supported"

_ERROR = web_protocol.ERROR  # the request aiohttp makes for one it could not parse


def classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
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
    if support.TEXT_VERSION in text:  # the C parser: HTTP/1.2, HTTP/3.0
        return 505, "HTTPVersionNotSupported", _VERSION_TEXT
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


def unroutable(method: str, target: str, version: str | None) -> Refusal | None:
    """Whether a request that parsed is still no request for a path, decided once for the
    request factory below: a request line of another HTTP than 1.0 or 1.1 (505, ``version``
    names it), ``OPTIONS *`` (501), CONNECT (405, whatever its target) and a target that is
    not a path (400: ``CONNECT host:port``, absolute-form). None for every other request.
    aiohttp's Python parser takes ``GET /x`` with no version for HTTP/0.9 and ``HTTP/2.0`` as
    a version like any."""
    if version is not None:
        return 505, "HTTPVersionNotSupported", f"{_VERSION_TEXT}, not HTTP/{version}"
    if method == "OPTIONS" and target == "*":
        return 501, "NotImplemented", "OPTIONS * is not supported: ask about a path"
    if method == "CONNECT":
        return 405, "MethodNotAllowed", "CONNECT is not supported"
    if not target.startswith("/"):
        return 400, "BadRequest", "the request target must be a path (origin-form), not a URL"
    return None


async def answer_unroutable(request: web.Request) -> web.StreamResponse:
    """The route of ``UNROUTABLE``: where the request factory sends what ``unroutable``
    refuses (its own target kept for the access line), answered in the gateway's shape."""
    refusal = request.get(REFUSAL)
    if refusal is None:  # a client asking for the path itself
        return error_response(404, "NotFound", "no such proxy endpoint")
    return error_response(*refusal)  # the factory closes the connection when it must


_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


def raw_answer(status: int, error_type: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for a connection no handler has:
    ``raw_answer(503, "TooManyConnections", "...")``."""
    body = error_body(error_type, message)
    retry = b"Retry-After: 1\r\n" if status == 503 else b""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    ) % (status, _REASONS[status].encode(), retry, len(body), body)


def last_when_stopping(factory: Any, stopping: Stopping) -> Any:
    """``web.Server.request_factory``, wrapped: once the proxy is stopping, every request is
    its connection's last (its answer says ``Connection: close``); a request line of another
    HTTP version, and one aiohttp could not parse, are answered as HTTP/1.1 (aiohttp would
    echo the version: ``HTTP/2.0 505``); a request ``unroutable`` refuses is routed to
    ``UNROUTABLE`` with its refusal. (A middleware could decide the same after routing, at
    a cost to every request: two more coroutines each, about a twentieth of a small one.)"""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
        version = message.version
        # Once per request: the common case first, by identity (the C parser reuses it).
        if (
            stopping.since is None
            and (
                version is HttpVersion11
                or (version in SUPPORTED_VERSIONS and message is not _ERROR)
            )
            and message.path[:1] == "/"
            and message.method != "CONNECT"
        ):
            return factory(message, payload, protocol, writer, task)
        refused = version not in SUPPORTED_VERSIONS
        refusal = None
        if message is not _ERROR:  # aiohttp routes that one to its own error handler
            named = f"{version[0]}.{version[1]}" if refused else None
            refusal = unroutable(message.method, message.path, named)
        close = refused or message is _ERROR or stopping.since is not None
        if refusal is not None:
            close = close or refusal[0] in _CLOSING
            # The access line shows a path or "*", never a URL (it may carry userinfo).
            shown = message.path if message.path[:1] == "/" or message.path == "*" else "-"
            message = message._replace(url=_UNROUTABLE_URL, path=shown)
        if refused or message is _ERROR:
            message = message._replace(version=HttpVersion11)
        if close and not message.should_close:
            message = message._replace(should_close=True)
        request: web.BaseRequest = factory(message, payload, protocol, writer, task)
        if refusal is not None:
            request[REFUSAL] = refusal
        return request

    return make


def in_flight_last(server: web.Server) -> None:
    """The requests in flight at the stop signal: their answers say ``Connection: close``
    too (those made after it are marked as they are made: ``last_when_stopping``)."""
    for handler in server.connections:
        request = handler._current_request
        if request is not None and not request._message.should_close:
            request._message = request._message._replace(should_close=True)
