"""The HTTP connection handler: what happens before a request reaches routing.

Malformed requests are answered in the gateway's JSON error shape with a fixed message and
logged as one line without their bytes (refusals.py says why). The handler also bounds what
a connection may cost: at most ``max_connections`` at once, of which one client address at
most ``per_address`` (fairness.py); ``head_timeout`` seconds to send the first request's
head (later heads wait at most aiohttp's keep-alive timeout); a head or body arriving slower
than ``rate_floor`` is cut (408). It stops as drain.py orders: once ``stopping`` is set,
every answer closes its connection, and ``shutdown`` lets the request in flight finish. The
head limits are aiohttp's public settings, set here (``MAX_*``); CONNECT, ``OPTIONS *``,
other HTTP versions and unplaceable targets are routed to one answer (refusals.py).

For the rest aiohttp offers no public hook, so ``ProxyRunner`` swaps in this handler class
(one ``__class__`` assignment on its server). Every aiohttp internal used here is listed in
``aiohttp_support.py``, checked when a ``ProxyRunner`` is made, and tested.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp import http_exceptions, web, web_protocol
from aiohttp.helpers import set_exception

from ..errors import BROKEN_CHUNK, ClientTooSlow, ProxyError
from ..observe.logs import REQUEST_ID
from ..responses import error_response
from . import aiohttp_support as support
from .drain import Stopping
from .fairness import AddressShares, RateFloor, RateWatch, address_group
from .refusals import UNROUTABLE, answer_unroutable, in_flight_last, last_when_stopping, raw_answer
from .refusals import classify as _classify

__all__ = ["MAX_HEADERS", "MAX_HEADER_FIELD", "MAX_REQUEST_LINE", "ProxyRunner"]

# What a request head may hold: the request line (414 past it), one header line (431), the
# number of headers (431). aiohttp's defaults, stated here so a release cannot move them.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 8190
MAX_HEADERS = 128

log = logging.getLogger("proxy.protocol")

_DRAIN_POLL = 0.05  # seconds between looks at a draining connection
_CUT = 0.01  # what aiohttp's shutdown is left to wait once our drain is over
_LINGER = 1.0  # seconds a cut connection's last bytes are read and dropped (see below)
_HEAD = "a request head"  # what RateWatch is told the proxy waits for, between requests


class _ProxyRequestHandler(web_protocol.RequestHandler):
    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        self._max_connections: int = kwargs.pop("max_connections", 1000)
        self._shares: AddressShares | None = kwargs.pop("shares", None)
        self._rate_floor: RateFloor | None = kwargs.pop("rate_floor", None)
        self._head_timeout: float = kwargs.pop("head_timeout", 30.0)
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._watch: RateWatch | None = None
        self._partial_head = False  # bytes of a head arrived, and no request yet
        self._group: str | None = None  # the address group this connection counts against
        self._refused = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # TCP and Unix both (uvloop's are no subclass)
        manager, shares = self._manager, self._shares
        refusal = None
        if manager is not None and len(manager.connections) >= (most := self._max_connections):
            refusal = f"the proxy is at its connection limit (max_connections: {most}); retry"
        elif shares is not None and (group := address_group(transport.get_extra_info("peername"))):
            if shares.take(group):
                self._group = group
            else:
                refusal = (
                    f"this address ({group}) holds its share of the proxy's connections "
                    f"(max_connections_per_address: {shares.limit}); close one, or retry"
                )
        if refusal is not None:
            self._refused = True
            answer = raw_answer(503, "TooManyConnections", refusal + " shortly")
            self._last_answer(transport, answer)
            log.warning("refused a connection: %s", refusal.rpartition(";")[0])
            return
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_too_slow)
        if self._rate_floor is not None:
            self._watch = RateWatch(self._rate_floor, self._loop.time())
            self._rate_timer = self._loop.call_later(self._rate_floor.window / 2, self._look)

    def data_received(self, data: bytes) -> None:
        if self._watch is not None:
            self._watch.received(len(data))
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
        self._partial_head = not self._request_in_progress and not self._messages
        if self._head_timer is not None and self._request_count:
            self._head_timer.cancel()
            self._head_timer = None

    def pause_reading(self) -> None:
        # The proxy holds the client's bytes back (a body not yet read): not the client's pace.
        if self._watch is not None:
            self._watch.paused()
        super().pause_reading()

    def _waiting_for(self) -> object | None:
        """What the proxy waits for the client to send: a request's body, a head, nothing."""
        if self._request_in_progress:
            request = self._current_request
            return request if request is not None and not request.content.is_eof() else None
        return _HEAD if self._partial_head and not self._messages else None

    def _look(self) -> None:
        """Every half window: is the head or body the proxy waits for too slow?"""
        self._rate_timer = None
        watch = self._watch
        if watch is None or self.transport is None or self._force_close:
            return
        if self._reading_paused:
            watch.paused()
        waiting_for = self._waiting_for()
        slow = watch.check(waiting_for, self._loop.time())
        if slow is None:
            self._rate_timer = self._loop.call_later(watch.floor.window / 2, self._look)
            return
        what = "body" if waiting_for is not _HEAD else "head"
        message = f"the request {what} arrived slower than {watch.floor.describe()}"
        request = self._current_request
        if request is None or waiting_for is _HEAD:
            log.warning("cut a connection from %s: %s: %s", self._peer(), message, slow)
            self._last_answer(self.transport, raw_answer(408, "RequestTimeout", message))
            return
        log.warning(
            "cut a request body from %s: %s: %s (request %s)",
            self._peer(),
            message,
            slow,
            request.get(REQUEST_ID, "-"),
        )
        # Its reader answers 408 (forward.py: ClientTooSlow); the connection then closes.
        set_exception(request.content, ClientTooSlow(message))
        self.close()

    def _last_answer(self, transport: asyncio.Transport, answer: bytes) -> None:
        """Answer a connection no handler has, and close it gently: its end first (FIN),
        then what the client still sends is dropped for a moment before the close. A close
        with the client's bytes unread is a reset, which can make the client's own system
        discard the answer before the client reads it."""
        self._force_close = True  # aiohttp drops what arrives from now on
        if self._waiter is not None:
            self._waiter.cancel()  # the request loop ends (as in aiohttp's force_close)
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = self._loop.call_later(_LINGER, transport.close)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "a local client"

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
        for timer in (self._head_timer, self._rate_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._rate_timer = self._linger = None
        if self._group is not None and self._shares is not None:
            self._shares.give_back(self._group)
            self._group = None
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
        if isinstance(error, ClientTooSlow | http_exceptions.TransferEncodingError):
            return  # met again after the answer (aiohttp reads what is left): logged then
        if isinstance(error, http_exceptions.HttpProcessingError):
            log.info("closed a connection after a malformed request (%s)", type(error).__name__)
            return
        super().log_exception(*args, **kw)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._request_count and self.transport is not None:
            message = (
                f"no complete request head arrived in {self._head_timeout:g} s (timeouts.client)"
            )
            log.warning("cut a connection from %s: %s", self._peer(), message)
            self._last_answer(self.transport, raw_answer(408, "RequestTimeout", message))

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID)
        code, error_type, text = _classify(exc, status)
        if isinstance(exc, ProxyError):  # a body cut as too slow, under a handler not ours
            code, error_type, text = exc.status, exc.type, exc.message
        elif code == 500:
            # Our own failure: keep the traceback (no request bytes in it), answer plainly.
            self.logger.exception("error handling %s %s", request.method, request.path)
        else:
            log.info(
                "refused a malformed request from %s: %d %s (request %s)",
                request.remote,
                code,
                text,
                request_id or "-",
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        response = error_response(code, error_type, text, request_id=request_id)
        response.force_close()
        return response


class _ProxyServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """``ProxyRunner(app, max_connections=1000, per_address=500, rate_floor=RateFloor(...),
    head_timeout=30, stopping=Stopping(), ...)``: an ``AppRunner`` whose connections use the
    handler above, with the head limits above and the route of ``UNROUTABLE`` added to
    ``app``'s (refusals.py). Raises ``UnsupportedAiohttp`` at once if the installed aiohttp
    lacks what this module relies on."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        support.check_aiohttp()
        self.stopping: Stopping = kwargs.pop("stopping", None) or Stopping()
        per_address = kwargs.pop("per_address", None)
        if per_address is not None:
            kwargs["shares"] = AddressShares(per_address)  # one count for all connections
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE)
        kwargs.setdefault("max_field_size", MAX_HEADER_FIELD)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        if not any(resource.canonical == UNROUTABLE for resource in app.router.resources()):
            app.router.add_route("*", UNROUTABLE, answer_unroutable)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProxyServer  # same state, one method different
        server.request_factory = last_when_stopping(server.request_factory, self.stopping)
        self.stopping.on_begin.append(lambda: in_flight_last(server))
        return server
