"""What stands in front of every handler, outermost first:

1. ``errors``: aiohttp's own 404/405 and any crash become gateway-style JSON errors;
2. ``record``: every request is written down in the state, before anything can refuse it;
3. ``bearer``: all but the public routes (login, object download) need a valid token;
4. ``rate_limit``: documented per-minute limits, per client and per endpoint;
5. ``api_faults``: failures a test injected, as if from behind the gateway.

Routes a test adds to the app go through the same chain, so they are protected too.
Unknown paths are authenticated before they are found missing: without a token they
answer 401, with one 404.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from ..aiohttp_compat import RequestKey
from .identity import bearer_token
from .ratelimit import RATE_LIMITS
from .responses import gateway_error, injected_error
from .state import SIMULATOR_STATE, RecordedRequest

__all__ = ["MIDDLEWARES", "PUBLIC_ROUTES", "authenticated_client"]

log = logging.getLogger(__name__)

# Routes reached without a bearer token: the token endpoint itself, and pre-signed
# downloads, which carry their own signature instead.
PUBLIC_ROUTES = frozenset({"login", "object"})

_CLIENT_ID = RequestKey("client_id", str)

_ERROR_TYPES = {404: "ObjectNotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}


def _route_name(request: web.Request) -> str | None:
    return request.match_info.route.name


def authenticated_client(request: web.Request) -> str:
    """The client id of the token a request was let in with (for routes tests add)."""
    client_id: str = request[_CLIENT_ID]
    return client_id


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "No route matches this path." if exc.status == 404 else exc.reason
        response = gateway_error(exc.status, _ERROR_TYPES.get(exc.status, "HttpError"), message)
        if hdrs.ALLOW in exc.headers:
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except Exception:
        # The details go to the log; a client only learns that it failed.
        log.exception("simulator handler failed for %s %s", request.method, request.path)
        return gateway_error(500, "InternalServerError", "Internal server error.")


@web.middleware
async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
    recorded = RecordedRequest(
        request.method, request.raw_path, _route_name(request), CIMultiDict(request.headers)
    )
    request.app[SIMULATOR_STATE].requests.append(recorded)
    return await handler(request)


@web.middleware
async def bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _route_name(request) in PUBLIC_ROUTES:
        return await handler(request)
    token = bearer_token(request.headers.get(hdrs.AUTHORIZATION), request.headers.get("X-InstAuth"))
    if token is None:
        return gateway_error(401, "Unauthorized", "A bearer token is required.")
    state = request.app[SIMULATOR_STATE]
    claims = state.tokens.verify(token)
    if claims is None or claims.generation != state.faults.token_generation:
        return gateway_error(401, "Unauthorized", "The token is invalid, expired or revoked.")
    request[_CLIENT_ID] = claims.sub
    return await handler(request)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SIMULATOR_STATE]
    route = _route_name(request)
    limit = RATE_LIMITS.get(route or "") if state.settings.rate_limits else None
    if limit is not None:
        key = (authenticated_client(request), route)
        wait = state.limiter.hit(key, limit, state.settings.clock())
        if wait is not None:
            return gateway_error(
                429, "TooManyRequests", "Rate limit exceeded for this endpoint.", retry_after=wait
            )
    return await handler(request)


@web.middleware
async def api_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _route_name(request) in PUBLIC_ROUTES:
        return await handler(request)
    faults = request.app[SIMULATOR_STATE].faults
    if faults.api_delay:
        await asyncio.sleep(faults.api_delay)
    if faults.api_disconnects and request.transport is not None:
        faults.api_disconnects -= 1
        request.transport.close()  # the client sees the connection drop, no answer
        return web.Response(status=500)
    if faults.api_statuses:
        return injected_error(faults.api_statuses.pop(0), faults.retry_after)
    return await handler(request)


MIDDLEWARES = (errors, record, bearer, rate_limit, api_faults)
