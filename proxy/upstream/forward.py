"""One request upstream and its answer back, streamed both ways.

The target URL is the configured upstream's scheme, host and port with only the client's raw
path and query appended, byte for byte: no request line, ``Host`` header or path can send a
request (or our token) anywhere else.

The gateway may stay silent for ``timeouts.read`` seconds while the proxy waits for its
answer's head and for each piece of its body (silence.py times every request at once).

Bodies are never held whole, except one small enough to replay (a ``Content-Length`` up to
``replay_body_limit``): it is read first, so that when the gateway refuses a token we still
hold we can refresh it once and send the same request again. Such bodies share one budget,
``replay_memory`` bytes across all requests in flight (``Metrics.replay_bytes_held``): past
it a body streams and is not replayed, so memory stays bounded however many uploads arrive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..errors import (
    ClientTooSlow,
    MalformedBody,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..observe.logs import (
    BYTES_OUT,
    CLIENT_CLOSED,
    HELD_SECONDS,
    PROFILE,
    REQUEST_ID,
    UPSTREAM_SECONDS,
    AccessLog,
    record_request,
)
from ..observe.metrics import Metrics
from ..responses import REQUEST_ID_HEADER, error_response, proxy_error_response
from ..tokens.flow import send_with_token
from ..tokens.manager import TokenManager
from ..tokens.token import Token
from . import headers
from .answer import relay_answer
from .body_filter import BodyFilter
from .client_body import request_body
from .client_gone import ClientGone, client_gone, unless_client_goes
from .egress import host_port
from .failures import describe
from .shaping import OverBudget, Shaper
from .silence import Silence, Wait

__all__ = ["Forwarder"]

log = logging.getLogger("proxy.forward")


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
        read_timeout: float,
        metrics: Metrics,
        access_log: AccessLog,
        profile: str = "default",
        shaper: Shaper | None = None,
        proxy: URL | None = None,  # the egress proxy for ``upstream`` (egress.proxy_for)
        direct_note: str = "",  # egress.direct_note: NO_PROXY made a failure go direct
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._base_path = upstream.raw_path.rstrip("/")
        self._tokens = tokens
        self._replay_body_limit = replay_body_limit
        self._replay_memory = replay_memory
        self._client_timeout = client_timeout
        self._silence = Silence(read_timeout)
        self._metrics = metrics
        self._access_log = access_log
        self._profile = profile
        self._shaper = shaper  # None: rate limits are not shaped
        self._proxy = proxy
        self._direct_note = direct_note

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
        rate-limit class (shaping.py), ``body_filter`` a hook on its answer (body_filter.py)."""
        request[PROFILE] = self._profile
        request_id: str = request[REQUEST_ID]  # given by the guard, which runs first
        try:
            target = self._target(raw_target)
        except ValueError as exc:
            return error_response(400, "BadRequest", str(exc), request_id=request_id)
        self._metrics.in_flight += 1
        started = time.perf_counter()
        held = self._hold(request)
        head_wait = self._silence.wait()  # for the answer's head; the body's is its own
        try:
            try:
                replayable = held is not None  # read whole, or no body at all
                body = await request_body(
                    request, self._client_timeout, head_wait, whole=replayable
                )
                answer = await self._send_within_limits(
                    request, target, body, head_wait, replayable, endpoint
                )
            except ProxyError as exc:
                response = proxy_error_response(exc, request_id)
                if isinstance(exc, MalformedBody):
                    response.force_close()  # what follows on the connection cannot be framed
                return response
            try:
                relayed = headers.to_client(answer.headers, self._upstream, request, local_prefix)
                relayed[REQUEST_ID_HEADER] = request_id
                # The body's own wait: a streamed upload may still be going on, and its
                # turns (client_body.py) belong to the wait for the head, not to this one.
                body_wait = self._silence.wait()
                return await relay_answer(request, answer, relayed, body_filter, body_wait)
            finally:
                answer.release()
        except asyncio.CancelledError:
            # aiohttp writes no access line for a cancelled handler: write ours.
            seconds = time.perf_counter() - started
            sent = request.get(BYTES_OUT, 0)
            record_request(self._access_log, self._metrics, request, CLIENT_CLOSED, sent, seconds)
            raise
        finally:
            self._metrics.in_flight -= 1
            if held:
                self._metrics.replay_bytes_held -= held

    async def _send_within_limits(
        self,
        request: web.Request,
        target: URL,
        body: Any,
        wait: Wait,
        replayable: bool,
        endpoint: str | None,
    ) -> aiohttp.ClientResponse:
        """Send once a rate-limit slot is ours (shaping.py), with a valid token (its 401
        rule is tokens/flow.py's). A gateway 429 pauses the endpoint's budget; the request
        waits for the pause to pass and goes again if its body allows and its wait has time
        left, else the 429 goes to the client as it is."""
        send = functools.partial(self._send, request, target, body=body, wait=wait)
        shaper = self._shaper
        if shaper is None or endpoint is None:
            return await send_with_token(self._tokens, send, replayable=replayable)
        started = time.monotonic()
        while True:
            # The token first: a request answered 503 for want of one must not spend a slot.
            await self._tokens.token()
            left = max(0.0, shaper.max_wait - (time.monotonic() - started))
            try:
                # A client that hangs up while queued is dropped here, unsent (client_gone.py).
                waited = await unless_client_goes(
                    request, shaper.acquire(self._profile, endpoint, left)
                )
                if waited and client_gone(request):  # between the last look and the slot
                    raise ClientGone
            except ClientGone:
                log.info(
                    "client hung up while queued for a rate-limit slot; dropped unsent: "
                    "%s %s (request %s)",
                    request.method,
                    request.path,
                    request[REQUEST_ID],
                )
                raise asyncio.CancelledError from None  # the access line says 499
            except OverBudget as exc:
                raise RateLimited(
                    f"over the gateway's rate limit for {endpoint.replace('_', ' ')} "
                    f"(shared by everyone using this proxy); a slot frees in "
                    f"{exc.retry_after:.0f} s",
                    retry_after=exc.retry_after,
                ) from None
            if waited:
                request[HELD_SECONDS] = request.get(HELD_SECONDS, 0.0) + waited
            answer = await send_with_token(self._tokens, send, replayable=replayable)
            if answer.status != 429:
                return answer
            retry_after = headers.retry_after_seconds(answer.headers.get("Retry-After"))
            pause = shaper.gateway_429(self._profile, endpoint, retry_after)
            left = shaper.max_wait - (time.monotonic() - started)
            if not replayable or pause > left:
                return answer  # the client's own wait would run out: it decides
            answer.release()

    def _hold(self, request: web.Request) -> int | None:
        """Bytes set aside from the replay budget to read this request's body whole, or
        None: it streams (chunked, too large, or the budget is spent). Counted before the
        body is read, so concurrent uploads cannot all fit the same remainder."""
        if not request.body_exists:
            return 0
        length = request.content_length
        if length is None or length > self._replay_body_limit:
            return None
        if self._metrics.replay_bytes_held + length > self._replay_memory:
            return None
        self._metrics.replay_bytes_held += length
        return length

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

    async def _send(
        self, request: web.Request, target: URL, token: Token, body: Any, wait: Wait
    ) -> aiohttp.ClientResponse:
        outgoing = headers.to_upstream(request.headers, token.authorization)
        outgoing[REQUEST_ID_HEADER] = request[REQUEST_ID]  # the client may quote it upstream
        started = time.perf_counter()
        try:
            async with wait:  # until the answer's head (a streamed body's own turns untimed)
                answer = await self._session.request(
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
            if isinstance(exc.__cause__, ClientTooSlow | MalformedBody):  # sending the body
                raise exc.__cause__ from None
            why = describe(exc)
            log.warning("upstream request failed: %s %s: %s", request.method, request.path, why)
            raise UpstreamUnreachable(
                f"the gateway at {host_port(self._upstream)} could not be reached: {why}"
                f"{self._direct_note}"
            ) from None
        took = time.perf_counter() - started
        request[UPSTREAM_SECONDS] = took
        self._metrics.observe_upstream(took, self._profile)
        if answer.status < 200:
            # aiohttp's client skips 100 and 103 itself; a 101 means the gateway switched
            # protocols on a request that never asked to (Upgrade is not forwarded), and
            # relaying it would leave the client waiting for a response that never comes.
            answer.close()
            what = "switch protocols" if answer.status == 101 else "answer with only a 1xx"
            log.warning("upstream answered %d: %s %s", answer.status, request.method, request.path)
            raise UpstreamError(f"the gateway tried to {what}")
        return answer
