"""Admission: which requests the proxy acts on, checked before anything goes upstream.

Every request gets an id first: the client's ``X-Request-Id`` when it is plain and short,
else a new one; it goes upstream, back to the client, and into the access log. Then, in
order, each refusal a gateway-shaped error and nothing sent upstream:

1. ``CONNECT`` and ``TRACE`` (405): a proxy that tunnels or reflects headers (our token!)
   is a different product.
2. The target: origin-form only (the ``/-/`` endpoints too); no ``/-/`` under a profile
   prefix (404: never forwarded); no ``//`` prefix, dot segments (``..;x`` included), or
   encoded ``.``, ``/``, ``\\`` or NUL in the path (400), checked on the path as received
   and as it will be forwarded (after a profile prefix is removed). The upstream host is
   fixed anyway; this stops paths meant to be read differently by something between us and
   the gateway.
3. ``Host`` must be allowed (403): a web page reaching the proxy through a DNS name it
   controls (DNS rebinding) is refused.
4. Browsers: a cross-site request (``Origin`` or ``Sec-Fetch-Site``) is refused (403) unless
   its origin is configured for CORS; preflights for allowed origins are answered here.
5. ``Transfer-Encoding`` other than ``chunked`` (501).
6. Who is calling (access.py): with inbound authentication configured, unknown callers
   get 401; a local token refused (expired, its key or grant gone) gets a 401 saying why
   and to log in again. Only the local login (``routing.is_local_login``) skips this: it
   checks the credentials it is sent. The ``Caller`` is kept on the request for the profile checks.
   Wrong credentials are throttled per address as failed logins are (429, ``Retry-After``),
   so keys cannot be guessed as ``Bearer`` values at network speed either.
7. Method and path allow-lists (405, 403), on the path as it will be forwarded.

The proxy's own endpoints (``/-/...``) pass steps 3 and 4 too (``admit_endpoint``), and,
with inbound authentication, the private ones (status, metrics) step 6.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets

from aiohttp import hdrs, web
from multidict import istr

from ..aiohttp_compat import RequestKey
from ..config import Policy
from ..observe.logs import REQUEST_ID
from ..responses import REQUEST_ID_HEADER, error_response
from .access import ANYONE, AccessControl, Caller, Refusal
from .routing import Route
from .throttle import LoginThrottle

__all__ = ["CALLER", "Guard", "cors_headers"]

CALLER: RequestKey[Caller | None] = RequestKey("caller")  # the admitted Caller
_SHUT_OUT = RequestKey("shut_out", float)  # how long a guessing address must wait
_REFUSED = RequestKey("refused", str)  # why a credential was refused, when it says
_REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
_ENCODED_SEPARATORS = re.compile(r"%(?:2[eEfF]|5[cC]|00)")
# With allowed_paths, also what could be decoded into a separator by a second decoding
# (%25 is "%") or read as a path parameter (";") by something behind the gateway.
_AMBIGUOUS = re.compile(r"%25|;")
_CROSS_SITE = frozenset({"cross-site", "same-site"})
# Header names looked up on every request, as istr: no case folding per lookup.
_SEC_FETCH_SITE = istr("Sec-Fetch-Site")
# A client's own request id is kept when it is plain and short; otherwise one is made.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_NEEDS_KEY = (
    "this proxy requires an access key (Authorization: Bearer <key>) "
    "or a local token from /ids/auth/login"
)


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "the request target must be a path (origin-form), not a URL"
    if path.startswith("//"):
        return "the path must not start with //"
    if "\\" in path or ("%" in path and _ENCODED_SEPARATORS.search(path)):
        return "the path must not contain \\ or an encoded '.', '/', '\\' or NUL"
    if "/." in path and any(
        segment.partition(";")[0] in (".", "..") for segment in path.split("/")
    ):
        return "the path must not contain . or .. segments"
    return None


# A Host header as RFC 9110 has it: a name or IPv4 address, or a bracketed IPv6 address,
# then an optional numeric port. Anything else (userinfo, junk after "]", a port that is not
# a number) names no host, and is refused rather than read leniently.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:@/\\\s]*))(?::[0-9]{0,5})?")


@functools.lru_cache(maxsize=256)  # a few Host values, on every request: parsed once each
def _host_name(host: str) -> str:
    """``Host`` without its port, lower case; IPv6 brackets removed; "" if malformed.

    A bare IPv6 address (``::1``, unbracketed) is accepted as it is."""
    host = host.strip().lower()
    if host.count(":") > 1 and not host.startswith("["):
        return host
    match = _HOST.fullmatch(host)
    if match is None:
        return ""
    return match["v6"] or match["name"] or ""


def _allowed_path(path: str, prefixes: tuple[str, ...]) -> bool:
    """``path`` is one of ``prefixes`` or below one, segment by segment (``/dap/query``
    admits ``/dap/query/x``, not ``/dap/queryx``)."""
    if _AMBIGUOUS.search(path):
        return False
    for prefix in prefixes:
        if prefix.endswith("/"):
            if path.startswith(prefix) or path == prefix[:-1]:
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


class Guard:
    """Admission for ``policy`` and ``access``: ``refusal = guard.admit(request, route)``.

    Called first by the handlers themselves (app.py) rather than as a middleware, so that
    which endpoint gets which checks, in which order, reads in one place. (aiohttp caches
    its middleware chains: this is a choice of clarity, not of speed.)
    """

    def __init__(self, policy: Policy, access: AccessControl) -> None:
        self._hosts = policy.allowed_hosts
        self._origins = policy.allowed_origins
        self._methods = policy.allowed_methods
        self._paths = policy.allowed_paths
        self._access = access
        # Keys presented as Bearer values are guessed at as easily as at the login: wrong
        # ones are throttled per address in the same way (throttle.py).
        self._throttle = LoginThrottle()
        # Request ids: a random prefix per process and a counter. Unique, and cheaper than
        # a UUID a request; they identify, they do not authorise.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)

    def _tag(self, request: web.Request) -> str:
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
            request_id = f"{self._id_prefix}-{next(self._ids):x}"
        request[REQUEST_ID] = request_id
        return request_id

    def _browser_refusal(
        self, request: web.Request, request_id: str, preflight: bool
    ) -> web.StreamResponse | None:
        """Steps 3 and 4: a ``Host`` not allowed, a cross-site browser request."""
        headers = request.headers
        hosts = self._hosts
        if hosts is not None:
            given = headers.get(hdrs.HOST, "")
            if _host_name(given) not in hosts:
                shown = "".join(ch for ch in given if ch.isprintable())[:100] or "(none)"
                return error_response(
                    403,
                    "HostNotAllowed",
                    f"the Host {shown!r} is not allowed: add its name to allowed_hosts "
                    "(DAP_PROXY_ALLOWED_HOSTS)",
                    request_id=request_id,
                )
        origin = headers.get(hdrs.ORIGIN)
        if origin is not None or headers.get(_SEC_FETCH_SITE) in _CROSS_SITE:
            if origin is None or origin not in self._origins:
                return error_response(
                    403,
                    "OriginNotAllowed",
                    "cross-site browser requests are refused (see allowed_origins)",
                    request_id=request_id,
                )
            if (
                preflight
                and request.method == "OPTIONS"
                and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
            ):
                return _preflight(request, origin)
        return None

    def identify(self, request: web.Request) -> Caller | None:
        """Who sends this request (``None``: refuse with 401); kept on the request.

        An address that presented too many wrong credentials is not even checked for a
        while (``None``, and ``refuse_unknown`` answers 429)."""
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        # Without authentication nothing is a guess; without credentials nothing is either.
        guessable = self._access.required and authorization is not None
        address = request.remote or "local"
        wait = self._throttle.shut_out(address) if guessable else 0.0
        caller: Caller | None = None
        if wait > 0:
            request[_SHUT_OUT] = wait
        else:
            outcome = self._access.admit(authorization)
            if isinstance(outcome, Refusal):
                request[_REFUSED] = outcome.message
                if guessable and outcome.guess:
                    self._throttle.failed(address)
            else:
                caller = outcome
        request[CALLER] = caller
        return caller

    def refuse_unknown(self, request: web.Request, request_id: str) -> web.Response:
        """401 for a caller ``identify`` did not know (saying why, when a local token was
        refused: to log in again); 429 while its address is shut out."""
        wait = request.get(_SHUT_OUT)
        if wait is not None:
            return error_response(
                429,
                "TooManyRequests",
                f"too many wrong credentials from this address; retry in {wait:.0f} s",
                retry_after=wait,
                request_id=request_id,
            )
        message = request.get(_REFUSED) or _NEEDS_KEY
        return error_response(401, "AuthenticationError", message, request_id=request_id)

    def admit_endpoint(self, request: web.Request, *, private: bool) -> web.StreamResponse | None:
        """Admission for the proxy's own ``/-/`` endpoints: Host and browser checks; for
        ``private`` ones (status, metrics), a known caller when authentication is on."""
        request_id = self._tag(request)
        if not request.raw_path.startswith("/"):
            # Absolute-form (``GET http://host/-/status``): refused here as for forwarding.
            return error_response(
                400,
                "BadRequest",
                "the request target must be a path (origin-form), not a URL",
                request_id=request_id,
            )
        refusal = self._browser_refusal(request, request_id, preflight=False)
        if refusal is not None:
            return refusal
        if private and self._access.required and self.identify(request) is None:
            return self.refuse_unknown(request, request_id)
        return None

    def admit(self, request: web.Request, route: Route) -> web.StreamResponse | None:
        """``None`` to go on, else the response that refuses the request."""
        request_id = self._tag(request)

        def refuse(status: int, error_type: str, message: str) -> web.Response:
            return error_response(status, error_type, message, request_id=request_id)

        method = request.method
        if method in _REFUSED_METHODS:
            return refuse(405, "MethodNotAllowed", f"{method} is not supported")
        # The path as it will be forwarded (routing.py read it once). A profile prefix is a
        # profile's name, which cannot hold what this looks for, so this covers the path as
        # received too.
        if (problem := _path_problem(route.path)) is not None:
            return refuse(400, "BadRequest", problem)
        if route.prefixed and (route.path == "/-" or route.path.startswith("/-/")):
            # /-/ is the proxy's own and never forwarded, under a profile prefix neither.
            return refuse(
                404, "NotFound", "the proxy's own endpoints are at /-/..., not under a profile"
            )
        refusal = self._browser_refusal(request, request_id, preflight=True)
        if refusal is not None:
            return refusal
        encoding = request.headers.get(hdrs.TRANSFER_ENCODING)
        if encoding is not None and encoding.strip().lower() != "chunked":
            return refuse(501, "NotImplemented", "only the chunked transfer coding is supported")
        if route.login:
            request[CALLER] = ANYONE  # the login checks the credentials it is sent
            return None
        if self.identify(request) is None:
            return self.refuse_unknown(request, request_id)
        methods = self._methods
        if methods is not None and method not in methods:
            response = refuse(405, "MethodNotAllowed", f"{method} is not allowed by this proxy")
            response.headers[hdrs.ALLOW] = ", ".join(sorted(methods))
            return response
        if self._paths is not None and not _allowed_path(route.path, self._paths):
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
