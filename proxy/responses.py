"""Responses the proxy writes itself, in the gateway's own error shape.

The official client parses error bodies strictly: ``{"error": {"type", "uuid", "message"}}``,
exactly those keys, as JSON. Every error body the proxy makes is built by ``error_body``
(protocol.py writes its own bytes for requests that never reach a handler, with that body);
``uuid`` is the request's id, for quoting in a support ticket.
"""

from __future__ import annotations

import json
import math
import uuid

from aiohttp import web
from multidict import istr

from .errors import ProxyError

__all__ = [
    "REQUEST_ID_HEADER",
    "error_body",
    "error_response",
    "json_response",
    "proxy_error_response",
]

REQUEST_ID_HEADER = istr("X-Request-Id")  # istr: looked up and set without case-folding


def _compact(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def error_body(error_type: str, message: str, request_id: str = "") -> bytes:
    """The gateway's error shape, as compact JSON bytes."""
    return _compact({"error": {"type": error_type, "uuid": request_id, "message": message}})


def json_response(data: object, status: int = 200) -> web.Response:
    """A compact JSON response with the content type the official client requires."""
    return web.Response(status=status, body=_compact(data), content_type="application/json")


def error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
) -> web.Response:
    """``error_body`` with ``status``, the request id also as ``X-Request-Id`` (and
    ``Retry-After``)."""
    request_id = request_id or uuid.uuid4().hex
    body = error_body(error_type, message, request_id)
    response = web.Response(status=status, body=body, content_type="application/json")
    response.headers[REQUEST_ID_HEADER] = request_id
    if retry_after is not None:
        # Whole seconds, rounded up: a client that waits that long is not too early.
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def proxy_error_response(exc: ProxyError, request_id: str | None = None) -> web.Response:
    """The response for one of our own exceptions; its message is written to be shown."""
    return error_response(
        exc.status, exc.type, exc.text, retry_after=exc.retry_after, request_id=request_id
    )
