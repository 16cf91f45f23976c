"""Which aiohttp the proxy runs on, and the aiohttp internals it relies on, in one list.

``protocol.py`` reaches below aiohttp's public API (aiohttp has no hook for the connection
level): private attributes of ``RequestHandler``, methods it overrides, the server class it
swaps in, exception classes it tells apart. A release that renames one of them would break
the proxy only later, on a malformed request or at the first SIGTERM, so
``check_aiohttp()`` looks for every one of them once, when the runner is made, and raises
``UnsupportedAiohttp`` naming the version, what is missing and the supported range.

``SUPPORTED`` is the range the whole test suite was run green on; ``pyproject.toml``
declares the same one (``tests/test_aiohttp_support.py`` holds them together).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import aiohttp
from aiohttp import helpers, http_exceptions, web, web_protocol, web_runner

__all__ = ["INTERNALS", "SUPPORTED", "Internal", "UnsupportedAiohttp", "check_aiohttp"]

# 3.13.3 and older fail the hostile-request tests (3.12: tracebacks logged for malformed
# requests; 3.13.3: a request with 200 headers is forwarded). CI runs the suite on 3.13.4
# and on the newest 3.14.x (.ci/run); 3.14's replacements for what it deprecates are used
# through proxy/aiohttp_compat.py while 3.13 is supported. 3.15 is untested.
SUPPORTED = ">=3.13.4,<3.15"


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp lacks something the proxy relies on."""


@dataclass(frozen=True)
class Internal:
    """``Internal("RequestHandler", "_close", "why", lambda: RequestHandler)``: an
    attribute ``name`` that ``lookup()`` must have."""

    owner: str  # as the error names it
    name: str
    why: str
    lookup: Callable[[], object]
    # For a method aiohttp calls positionally: the parameter names it must keep.
    parameters: tuple[str, ...] | None = None


def _handler() -> object:
    # RequestHandler declares __slots__ (3.12 on), so its instance attributes show on the class.
    return web_protocol.RequestHandler


async def _never_called(request: web.BaseRequest) -> web.StreamResponse:
    raise NotImplementedError  # pragma: no cover - a probe's handler is never called


def _server() -> object:
    # web.Server has no __slots__: its attributes exist only on an instance. Its
    # constructor only stores what it is given, so a stand-in loop is enough.
    return web.Server(_never_called, loop=cast(asyncio.AbstractEventLoop, object()))


def _on(owner: str, lookup: Callable[[], object], *items: tuple[str, str]) -> list[Internal]:
    return [Internal(owner, name, why, lookup) for name, why in items]


INTERNALS: tuple[Internal, ...] = (
    *_on(
        "web_protocol.RequestHandler",
        _handler,
        ("connection_made", "overridden: the connection limit, the head timer"),
        ("data_received", "overridden: a request body keeps being read while draining"),
        ("shutdown", "overridden: the drain"),
        ("connection_lost", "overridden: a refused connection was never set up"),
        ("_close", "set when shutdown starts (Server.pre_shutdown calls close())"),
        ("_force_close", "set when a connection is cut"),
        ("_request_in_progress", "the drain waits while it is true"),
        ("_request_count", "whether a complete head has arrived (the head timer)"),
        ("_request_handler", "wrapped to answer CONNECT"),
        ("_manager", "the server, for its connection count"),
        ("_messages", "parsed requests waiting: a broken chunk's error is taken from here"),
        ("_current_request", "the request whose body a broken chunk belongs to"),
        ("_loop", "the timers"),
    ),
    Internal(
        "web_protocol.RequestHandler",
        "handle_error",
        "overridden: malformed requests answered in the gateway's shape",
        _handler,
        # aiohttp calls handle_error(request, status, exc, message) positionally.
        parameters=("self", "request", "status", "exc", "message"),
    ),
    *_on(
        "web.Server instance",
        _server,
        ("_kwargs", "the handler's settings, passed on to our handler class"),
        ("_loop", "passed on to our handler class"),
        ("__call__", "overridden: makes our handler class (the server's class is swapped)"),
    ),
    *_on(
        "web_runner.AppRunner",
        lambda: web_runner.AppRunner,
        ("_make_server", "overridden: where the server class is swapped"),
    ),
    *_on(
        "http_exceptions",
        lambda: http_exceptions,
        ("HttpProcessingError", "what aiohttp raises for a malformed request"),
        ("LineTooLong", "tells 414 and 431 apart"),
        ("BadHttpMethod", "a request that is not HTTP"),
        ("TransferEncodingError", "set on a body whose chunked framing broke"),
    ),
    *_on(
        "web_protocol",
        lambda: web_protocol,
        ("_ErrInfo", "how a parse error is queued (a broken chunk mid-body among them)"),
    ),
    *_on(
        "helpers",
        lambda: helpers,
        ("set_exception", "ends a request body with an error"),
    ),
)


_ABSENT = object()


def _missing(internals: Iterable[Internal]) -> list[str]:
    missing = []
    for item in internals:
        try:
            owner = item.lookup()
        except Exception as exc:  # a changed constructor, a removed module member
            missing.append(f"{item.owner} ({type(exc).__name__}: {exc})")
            continue
        found = getattr(owner, item.name, _ABSENT)
        if found is _ABSENT:
            missing.append(f"{item.owner}.{item.name} ({item.why})")
        elif item.parameters is not None and callable(found):
            parameters = tuple(inspect.signature(found).parameters)
            if parameters != item.parameters:
                missing.append(
                    f"{item.owner}.{item.name}{item.parameters[1:]} ({item.why}): "
                    f"it takes {parameters[1:]}"
                )
    return missing


def check_aiohttp(internals: Iterable[Internal] | None = None) -> None:
    """Raise ``UnsupportedAiohttp`` unless every internal (``INTERNALS``) is there."""
    missing = _missing(INTERNALS if internals is None else internals)
    if missing:
        raise UnsupportedAiohttp(
            f"aiohttp {aiohttp.__version__} is not supported by this proxy (supported: "
            f"aiohttp{SUPPORTED}); it lacks what the proxy relies on: " + "; ".join(missing)
        )
