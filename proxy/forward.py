"""One request upstream and its response back, streamed both ways.

The target URL is built from the configured upstream's scheme, host and port, and only the
client's raw path and query are appended, byte for byte: no request line, ``Host`` header or
path can send a request (or our token) anywhere else.

Bodies are never held whole. A request body small enough to replay (no body, or a
``Content-Length`` up to ``replay_body_limit``) is read first, so that when the gateway
refuses a token we still hold we can refresh it once and send the same request again.
Bodies held that way share one budget, ``replay_memory`` bytes across all requests in
flight (its counter is ``Metrics.replay_bytes_held``): past it, a body streams and is not
replayed, so memory stays bounded however many uploads arrive at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import http_exceptions, web
from yarl import URL

from . import headers
from .body_filter import MAX_FILTERED_BODY, BodyFilter
from .errors import (
    ClientTooSlow,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .logs import (
    BYTES_IN,
    BYTES_OUT,
    CLIENT_CLOSED,
    HELD_SECONDS,
    PROFILE,
    REQUEST_ID,
    UPSTREAM_SECONDS,
    AccessLog,
    record_request,
)
from .metrics import Metrics
from .responses import REQUEST_ID_HEADER, error_response, proxy_error_response
from .shaping import OverBudget, Shaper
from .token_client import connection_failure
from .tokens import Token, TokenManager

__all__ = ["Forwarder"]

log = logging.getLogger("proxy.forward")

# Errors that mean the gateway (not the client) broke the exchange. Timeouts first:
# ServerTimeoutError is a ClientError too.
_UPSTREAM_READ_ERRORS = (TimeoutError, aiohttp.ClientError)
_TOO_SLOW = "the client stopped sending its request body"
_MALFORMED = "invalid chunked encoding"  # the words protocol.py uses for the same fault


class _MalformedBody(ProxyError):
    """The client's body broke its own framing mid-way (an invalid chunk)."""

    status = 400
    type = "BadRequest"


class Forwarder:
    """Forwards requests to one upstream: ``await forwarder.forward(request)``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: URL,
        tokens: TokenManager,
        *,
        replay_body_limit: int,
        replay_memory: int,
        client_timeout: float,
        metrics: Metrics,
        access_log: AccessLog,
        profile: str = "default",
        shaper: Shaper | None = None,
        proxy: URL | None = None,  # the egress proxy for ``upstream`` (egress.proxy_for)
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._base_path = upstream.raw_path.rstrip("/")
        self._tokens = tokens
        self._replay_body_limit = replay_body_limit
        self._replay_memory = replay_memory
        self._client_timeout = client_timeout
        self._metrics = metrics
        self._access_log = access_log
        self._profile = profile
        self._shaper = shaper  # None: rate limits are not shaped
        host = upstream.raw_host or ""
        self._where = f"[{host}]:{upstream.port}" if ":" in host else f"{host}:{upstream.port}"
        self._proxy = proxy

    async def forward(
        self,
        request: web.Request,
        raw_target: str,
        local_prefix: str = "",
        *,
        endpoint: str | None = None,
        body_filter: BodyFilter | None = None,
    ) -> web.StreamResponse:
        """Forward ``request`` to ``raw_target`` (its path and query, less any profile
        prefix, which is ``local_prefix``: Locations get it back). ``endpoint`` is its
        rate-limit class (shaping.py), ``body_filter`` a hook on its answer (body_filter.py).
        """
        request[PROFILE] = self._profile
        request_id: str = request[REQUEST_ID]  # given by the guard, which runs first
        try:
            target = self._target(raw_target)
        except ValueError as exc:
            return error_response(400, "BadRequest", str(exc), request_id=request_id)
        metrics = self._metrics
        metrics.in_flight += 1
        started = time.perf_counter()
        try:
            return await self._exchange(
                request, target, request_id, local_prefix, endpoint, body_filter
            )
        except asyncio.CancelledError:
            # aiohttp writes no access line for a cancelled handler: write ours.
            seconds = time.perf_counter() - started
            sent = request.get(BYTES_OUT, 0)
            record_request(self._access_log, self._metrics, request, CLIENT_CLOSED, sent, seconds)
            raise
        finally:
            metrics.in_flight -= 1

    async def _exchange(
        self,
        request: web.Request,
        target: URL,
        request_id: str,
        local_prefix: str,
        endpoint: str | None,
        body_filter: BodyFilter | None,
    ) -> web.StreamResponse:
        held = self._hold(request)
        try:
            try:
                body, replayable = await self._request_body(request, whole=held is not None)
                upstream = await self._send_within_limits(
                    request, target, body, replayable, endpoint
                )
            except ProxyError as exc:
                response = proxy_error_response(exc, request_id)
                if isinstance(exc, _MalformedBody):
                    response.force_close()  # what follows on the connection cannot be framed
                return response
            if upstream.status < 200:
                # aiohttp's client skips 100 and 103 itself; a 101 means the gateway switched
                # protocols on a request that never asked to (Upgrade is not forwarded), and
                # relaying it would leave the client waiting for a response that never comes.
                upstream.close()
                what = "switch protocols" if upstream.status == 101 else "answer with only a 1xx"
                log.warning(
                    "upstream answered %d: %s %s", upstream.status, request.method, request.path
                )
                return proxy_error_response(
                    UpstreamError(f"the gateway tried to {what}"), request_id
                )
            try:
                return await self._relay(request, upstream, request_id, local_prefix, body_filter)
            finally:
                upstream.release()
        finally:
            if held:
                self._metrics.replay_bytes_held -= held

    async def _send_within_limits(
        self,
        request: web.Request,
        target: URL,
        body: Any,
        replayable: bool,
        endpoint: str | None,
    ) -> aiohttp.ClientResponse:
        """Send once a rate-limit slot is ours (shaping.py), with a valid token (and its
        401 handling). A gateway 429 pauses the endpoint's budget; the request waits for
        the pause to pass and goes again if its body allows and its wait has time left,
        else the 429 goes to the client as it is."""
        shaper = self._shaper if endpoint is not None else None
        started = time.monotonic()
        while True:
            # The token first: a request answered 503 for want of one must not spend a slot.
            token = await self._tokens.token()
            if shaper is not None:
                assert endpoint is not None  # noqa: S101 - shaper is set only then
                left = max(0.0, shaper.max_wait - (time.monotonic() - started))
                try:
                    waited = await shaper.acquire(self._profile, endpoint, left)
                except OverBudget as exc:
                    raise RateLimited(
                        f"over the gateway's rate limit for {endpoint.replace('_', ' ')} "
                        f"(shared by everyone using this proxy); a slot frees in "
                        f"{exc.retry_after:.0f} s",
                        retry_after=exc.retry_after,
                    ) from None
                if waited:
                    request[HELD_SECONDS] = request.get(HELD_SECONDS, 0.0) + waited
                    token = await self._tokens.token()  # the one held may have been replaced
            upstream = await self._send(request, target, token, body)
            if upstream.status == 401:
                upstream = await self._after_401(request, target, token, body, replayable, upstream)
            if upstream.status != 429 or shaper is None:
                return upstream
            assert endpoint is not None  # noqa: S101
            pause = headers.retry_after_seconds(upstream.headers.get("Retry-After"))
            shaper.gateway_429(self._profile, endpoint, pause)
            left = shaper.max_wait - (time.monotonic() - started)
            if not replayable or (pause or shaper.window) > left:
                return upstream  # the client's own wait would run out: it decides
            upstream.release()

    def _hold(self, request: web.Request) -> int | None:
        """Bytes set aside from the replay budget to read this request's body whole, or
        None: it streams (chunked, too large, or the budget is spent). Counted before the
        body is read, so concurrent uploads cannot all fit the same remainder."""
        if not request.body_exists:
            return 0
        length = request.content_length
        if length is None or length > self._replay_body_limit:
            return None
        metrics = self._metrics
        if metrics.replay_bytes_held + length > self._replay_memory:
            return None
        metrics.replay_bytes_held += length
        return length

    async def _after_401(
        self,
        request: web.Request,
        target: URL,
        token: Token,
        body: Any,
        replayable: bool,
        first: aiohttp.ClientResponse,
    ) -> aiohttp.ClientResponse:
        """The gateway refused a token we thought valid (revoked, clock skew). The token
        manager fetches a new one, unless it is in its holdoff (tokens.py); with it, a
        replayable request is sent once more. Otherwise the 401 goes to the client as it
        is, and the next request uses the new token."""
        try:
            replacement = await self._tokens.replace(token)
            if replacement is None or not replayable:
                return first
            await first.read()  # small; read whole so its connection can be reused
        except BaseException:
            first.release()  # refused, or cancelled while waiting: it must not leak
            raise
        first.release()
        return await self._send(request, target, replacement, body)

    def _target(self, raw_target: str) -> URL:
        """The upstream URL for a request target, keeping its percent-encoding exactly."""
        if not raw_target.startswith("/"):
            raise ValueError("the request target must be a path (origin-form), not a URL")
        path, _, query = raw_target.partition("?")
        return URL.build(
            scheme=self._upstream.scheme,
            host=self._upstream.raw_host or "",
            port=self._upstream.explicit_port,
            path=self._base_path + path,
            query_string=query,
            encoded=True,
        )

    async def _request_body(self, request: web.Request, *, whole: bool) -> tuple[Any, bool]:
        """The body to send and whether it can be sent twice (``whole``: read it first)."""
        if not request.body_exists:
            return None, True
        if whole:
            try:
                async with asyncio.timeout(self._client_timeout):
                    body = await request.read()
            except TimeoutError:
                raise ClientTooSlow(_TOO_SLOW) from None
            request[BYTES_IN] = len(body)
            return body, True
        return self._stream(request), False

    async def _stream(self, request: web.Request) -> AsyncIterator[bytes]:
        """The client's body as it arrives; a client silent too long is given up on."""
        body = request.content
        received = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self._client_timeout):
                        chunk = await body.readany()
                except TimeoutError:
                    raise ClientTooSlow(_TOO_SLOW) from None
                except http_exceptions.HttpProcessingError:
                    # Raised into aiohttp's client while it sends the body: it drops the
                    # upstream connection, so the gateway sees the upload cut off, never a
                    # short body that looks complete.
                    raise _MalformedBody(_MALFORMED) from None
                if not chunk:
                    return
                received += len(chunk)
                yield chunk
        finally:
            request[BYTES_IN] = received

    async def _send(
        self, request: web.Request, target: URL, token: Token, body: Any
    ) -> aiohttp.ClientResponse:
        outgoing = headers.to_upstream(request.headers, token.access_token)
        outgoing[REQUEST_ID_HEADER] = request[REQUEST_ID]  # the client may quote it upstream
        started = time.perf_counter()
        try:
            response = await self._session.request(
                request.method,
                target,
                headers=outgoing,
                data=body,
                allow_redirects=False,
                proxy=self._proxy,
            )
        except TimeoutError:
            raise UpstreamTimeout("the gateway did not answer in time") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, ClientTooSlow | _MalformedBody):  # sending the body
                raise exc.__cause__ from None
            log.warning(
                "upstream request failed: %s %s: %s", request.method, request.path, _name(exc)
            )
            raise UpstreamUnreachable(
                f"the gateway at {self._where} could not be reached: {_name(exc)}"
            ) from None
        took = time.perf_counter() - started
        request[UPSTREAM_SECONDS] = took
        self._metrics.observe_upstream(took, self._profile)
        return response

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        local_prefix: str,
        body_filter: BodyFilter | None = None,
    ) -> web.StreamResponse:
        relayed = headers.to_client(upstream.headers, self._upstream, request, local_prefix)
        relayed[REQUEST_ID_HEADER] = request_id
        prefix = b""  # what a filter read before finding the body too large to take whole
        if body_filter is not None and body_filter.wants(upstream.status, relayed):
            filtered = await self._filtered(request, upstream, relayed, body_filter)
            if not isinstance(filtered, bytes):
                return filtered
            prefix = filtered
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=relayed
        )
        # Taken before anything awaits: once a close-delimited body has ended, the
        # connection is released and how it ended can no longer be asked.
        closed = _closing(upstream)
        await response.prepare(request)
        reader = upstream.content
        sent = 0  # body bytes, for the access line of a client that hangs up mid-way
        try:
            if prefix:
                await response.write(prefix)
                sent = len(prefix)
            while True:
                try:
                    chunk = await reader.readany()
                    if not chunk and closed is not None and closed.done():
                        closed.result()  # raises if the connection ended by error (a reset)
                except _UPSTREAM_READ_ERRORS as exc:
                    # Headers are out; the only honest signal left is to cut the connection,
                    # so the client cannot take a truncated body for a complete one.
                    log.warning(
                        "upstream failed mid-response: %s %s: %s; aborting the client connection",
                        request.method,
                        request.path,
                        _name(exc),
                    )
                    _abort(request)
                    return response
                if not chunk:
                    break
                await response.write(chunk)
                sent += len(chunk)
        finally:
            request[BYTES_OUT] = sent
        await response.write_eof()
        return response

    async def _filtered(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        relayed: Any,
        body_filter: BodyFilter,
    ) -> web.StreamResponse | bytes:
        """The answer read whole and filtered, as a response; or, when it is too large to
        take whole, the bytes read so far (it streams on, unfiltered)."""
        length = upstream.content_length
        if length is not None and length > MAX_FILTERED_BODY:
            return b""
        try:
            body = await upstream.content.read(MAX_FILTERED_BODY + 1)
            complete = upstream.content.at_eof()
        except _UPSTREAM_READ_ERRORS as exc:
            log.warning(
                "upstream failed mid-response: %s %s: %s", request.method, request.path, _name(exc)
            )
            return proxy_error_response(
                UpstreamUnreachable("the gateway dropped the connection mid-answer"),
                request[REQUEST_ID],
            )
        if not complete or len(body) > MAX_FILTERED_BODY:
            return body
        body = body_filter.apply(upstream.status, relayed, body)
        relayed.pop("Content-Length", None)
        response = web.Response(
            status=upstream.status, reason=upstream.reason, headers=relayed, body=body
        )
        request[BYTES_OUT] = len(body)
        return response


def _closing(upstream: aiohttp.ClientResponse) -> asyncio.Future[None] | None:
    """For a body delimited by the end of its connection (neither ``Content-Length`` nor
    chunked), the connection's ``closed`` future: aiohttp's client ends such a body cleanly
    however the connection ends, and only this future, set before the body's end, tells a
    reset from a close. None for framed bodies (the gateway's own), whose framing tells."""
    if upstream.content_length is not None:
        return None
    if "chunked" in upstream.headers.get("Transfer-Encoding", "").lower():
        return None
    connection = upstream.connection
    protocol = connection.protocol if connection is not None else None
    closed = protocol.closed if protocol is not None else None
    if closed is not None:
        closed.add_done_callback(_retrieve)
    return closed


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark the future's exception as seen: nobody may be looking when the connection ends."""
    if not future.cancelled():
        future.exception()


# struct linger {on, seconds}: two ints on POSIX, two u_shorts on Windows.
_LINGER_NOW = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)


def _abort(request: web.Request) -> None:
    """Reset the client connection (RST, not FIN): to a client reading until the connection
    closes (HTTP/1.0), a clean close would make the truncated body look complete."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NOW)
    transport.abort()


def _name(exc: BaseException) -> str:
    """What went wrong, in the operating system's words or by class: a foreign exception's
    text may hold URLs or more."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the egress proxy refused the connection (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"the egress proxy could not be reached: {connection_failure(exc)}"
    if isinstance(exc, aiohttp.ClientError):
        return connection_failure(exc)
    return type(exc).__name__
