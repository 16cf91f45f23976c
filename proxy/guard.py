"""Admission: which requests the proxy acts on, checked before anything goes upstream.

Every request gets an id first: the client's ``X-Request-Id`` when it is plain and short,
else a new one; it goes upstream, back to the client, and into the access log. Then, in
order, each refusal a gateway-shaped error and nothing sent upstream:

1. ``CONNECT`` and ``TRACE`` (405): a proxy that tunnels or reflects headers (our token!)
   is a different product.
2. The target: origin-form only; no ``//`` prefix, dot segments, or encoded ``.``, ``/``,
   ``\\`` or NUL in the path (400). The upstream host is fixed anyway; this stops paths
   meant to be read differently by something between us and the gateway.
3. (``/-/`` endpoints are the proxy's own and never come here: orchestrator probes send
   the pod's address as ``Host`` and no credentials.)
4. ``Host`` must be allowed (403): a web page reaching the proxy through a DNS name it
   controls (DNS rebinding) is refused.
5. Browsers: a cross-site request (``Origin`` or ``Sec-Fetch-Site``) is refused (403) unless
   its origin is configured for CORS; preflights for allowed origins are answered here.
6. ``Transfer-Encoding`` other than ``chunked`` (501).
7. Who is calling (access.py): with inbound authentication configured, unknown callers
   get 401; the local login checks its own credentials. The ``Caller`` is kept on the
   request for choosing and checking the profile.
8. Method and path allow-lists (405, 403).
"""

from __future__ import annotations

import itertools
import re
import secrets

from aiohttp import hdrs, web

from .access import AccessControl
from .config import Policy
from .logs import REQUEST_ID
from .responses import error_response

__all__ = ["CALLER", "LOGIN_PATH", "REQUEST_ID_HEADER", "Guard", "cors_headers"]

LOGIN_PATH = "/ids/auth/login"
_LOGIN_SLASHES = LOGIN_PATH.count("/")
CALLER = "caller"  # the request key holding the admitted Caller
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
_ENCODED_SEPARATORS = re.compile(r"%(?:2[eEfF]|5[cC]|00)")
_CROSS_SITE = frozenset({"cross-site", "same-site"})
REQUEST_ID_HEADER = "X-Request-Id"
# A client's own request id is kept when it is plain and short; otherwise one is made.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "the request target must be a path (origin-form), not a URL"
    if path.startswith("//"):
        return "the path must not start with //"
    if "\\" in path or _ENCODED_SEPARATORS.search(path):
        return "the path must not contain \\ or an encoded '.', '/', '\\' or NUL"
    if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
        return "the path must not contain . or .. segments"
    return None


def _host_name(host: str) -> str:
    """``Host`` without its port, lower case; IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


class Guard:
    """Admission for ``policy`` and ``access``: ``refusal = guard.admit(request)``.

    Called first by the catch-all handler rather than as a middleware: aiohttp builds a
    middleware chain per request, which cost more than every check here together.
    """

    def __init__(self, policy: Policy, access: AccessControl) -> None:
        self._hosts = policy.allowed_hosts
        self._origins = policy.allowed_origins
        self._methods = policy.allowed_methods
        self._paths = policy.allowed_paths
        self._access = access
        # Request ids: a random prefix per process and a counter. Unique, and cheaper than
        # a UUID a request; they identify, they do not authorise.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        """``None`` to go on, else the response that refuses the request."""
        headers = request.headers
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
            request_id = f"{self._id_prefix}-{next(self._ids):x}"
        request[REQUEST_ID] = request_id

        def refuse(status: int, error_type: str, message: str) -> web.Response:
            return error_response(status, error_type, message, request_id=request_id)

        method = request.method
        if method in _REFUSED_METHODS:
            return refuse(405, "MethodNotAllowed", f"{method} is not supported")
        path = request.raw_path.partition("?")[0]
        if (problem := _path_problem(path)) is not None:
            return refuse(400, "BadRequest", problem)
        hosts = self._hosts
        if hosts is not None and _host_name(headers.get(hdrs.HOST, "")) not in hosts:
            return refuse(403, "HostNotAllowed", "this Host is not allowed (see allowed_hosts)")
        origin = headers.get(hdrs.ORIGIN)
        if origin is not None or headers.get("Sec-Fetch-Site") in _CROSS_SITE:
            if origin is None or origin not in self._origins:
                return refuse(
                    403,
                    "OriginNotAllowed",
                    "cross-site browser requests are refused (see allowed_origins)",
                )
            if method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers:
                return _preflight(request, origin)
        encoding = headers.get(hdrs.TRANSFER_ENCODING)
        if encoding is not None and encoding.strip().lower() != "chunked":
            return refuse(501, "NotImplemented", "only the chunked transfer coding is supported")
        if path.endswith(LOGIN_PATH) and path.count("/") <= _LOGIN_SLASHES + 1:
            return None  # [/<profile>]/ids/auth/login checks its own credentials

        caller = self._access.identify(headers.get(hdrs.AUTHORIZATION))
        request[CALLER] = caller
        if caller is None:
            return refuse(
                401,
                "AuthenticationError",
                "this proxy requires an access key (Authorization: Bearer <key>) "
                "or a local token from /ids/auth/login",
            )
        methods = self._methods
        if methods is not None and method not in methods:
            response = refuse(405, "MethodNotAllowed", f"{method} is not allowed by this proxy")
            response.headers[hdrs.ALLOW] = ", ".join(sorted(methods))
            return response
        if self._paths is not None and not path.startswith(self._paths):
            return refuse(403, "PathNotAllowed", "this path is not allowed by this proxy")
        return None


def _preflight(request: web.Request, origin: str) -> web.Response:
    headers = cors_headers(origin)
    headers["Access-Control-Allow-Methods"] = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
    requested = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    headers["Access-Control-Max-Age"] = "600"
    return web.Response(status=204, headers=headers)
