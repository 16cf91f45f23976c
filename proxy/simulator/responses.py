"""The simulator's own answers: gateway-style JSON errors and S3-style XML errors.

The official client parses every gateway error strictly, as JSON with
``{"error": {"type", "uuid", "message"}}`` and not one key more, so every gateway error
is built here. Object storage is not the gateway: like S3, it answers in XML.
"""

from __future__ import annotations

import json
import uuid
from xml.sax.saxutils import escape

from aiohttp import web

__all__ = ["gateway_error", "injected_error", "json_response", "storage_error"]


def json_response(data: object, status: int = 200) -> web.Response:
    """Compact JSON, ``application/json`` as the client requires."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type="application/json")


def gateway_error(
    status: int, error_type: str, message: str, *, retry_after: int | None = None
) -> web.Response:
    """``{"error": {"type", "uuid", "message"}}`` with a fresh uuid, as the gateway answers."""
    error = {"type": error_type, "uuid": str(uuid.uuid4()), "message": message}
    response = json_response({"error": error}, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api-gateway"'
    return response


def storage_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style ``<Error>`` document, as object storage answers a bad download."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


_INJECTED_TYPES = {
    400: "ValidationError",
    401: "Unauthorized",
    403: "AccountDisabled",  # one of the 403 types the client knows
    404: "ObjectNotFound",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


def injected_error(status: int, retry_after: int) -> web.Response:
    """The answer for a status a test injected, shaped as the gateway would send it."""
    if status == 504:
        # The gateway's own timeout answer has only a message, as Instructure documents.
        return json_response({"error": {"message": "Endpoint request timed out"}}, 504)
    return gateway_error(
        status,
        _INJECTED_TYPES.get(status, "HttpError"),
        f"Simulated failure with status {status}.",
        retry_after=retry_after if status in (429, 503) else None,
    )
