"""Which aiohttp the proxy runs on, and the aiohttp internals it relies on, in one list.

The proxy reaches below aiohttp's public API where aiohttp has no hook: its server's
connection handler (``protocol.py``), the words of its parser's error messages (the C parser
says which rule a request broke only in its text), its client's connection and when a
response's head is written (``upstream/answer.py``), how its client adds headers
(``upstream/session.py``) and wraps an error raised by a request body
(``upstream/forward.py``). A release that changes one of them would break the proxy only
later, on a malformed request or at the first SIGTERM. So ``check_aiohttp()`` looks for each
name in ``INTERNALS`` when the runner is made, and raises ``UnsupportedAiohttp`` naming the
version, what is missing and the supported range; what a name cannot show (a message's words,
a behaviour) names a test against a real server (``tested_by``) that fails on such a release.
``SUPPORTED`` is the range the whole test suite was run green on, as ``pyproject.toml``
declares (``tests/test_aiohttp_support.py`` holds them together).
"""

from __future__ import annotations

import asyncio
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from aiohttp import http_exceptions, web

__all__ = [
    "INTERNALS",
    "SUPPORTED",
    "TEXT_CHUNKED",
    "TEXT_FRAMING",
    "TEXT_HEADER",
    "TEXT_NO_HOST",
    "TEXT_TOO_MANY_HEADERS",
    "TEXT_VERSION",
    "Internal",
    "UnsupportedAiohttp",
    "check_aiohttp",
]

# 3.13.3 and older fail the hostile-request tests (3.12: tracebacks logged for malformed
# requests; 3.13.3: a request with 200 headers is forwarded). CI runs the suite on 3.13.4
# and on the newest 3.14.x (.ci/run; see proxy/aiohttp_compat.py). 3.15 is untested.
SUPPORTED = ">=3.13.4,<3.15"


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp lacks something the proxy relies on."""


@dataclass(frozen=True)
class Internal:
    """``Internal("web_runner.AppRunner", "_make_server", "why")``: an attribute ``name`` that
    ``lookup()`` must have, by default the aiohttp module or class ``owner`` names."""

    owner: str  # as the error names it
    name: str
    why: str
    lookup: Callable[[], object] | None = None
    parameters: tuple[str, ...] | None = None  # those of a method aiohttp calls positionally
    tested_by: str | None = None  # the test of what a name cannot show (see above)


# The words of aiohttp's parser messages that protocol.py tells malformed requests apart by
# (case-insensitive). Its C parser (llhttp) raises one class, BadHttpMessage, for most.
TEXT_TOO_MANY_HEADERS = "too many headers"  # "Too many headers received"
TEXT_FRAMING = ("content-length", "transfer-encoding")  # "Duplicate Content-Length", ...
TEXT_CHUNKED = "chunk"  # "Invalid character in chunk size", "Chunk size mismatch", ...
TEXT_NO_HOST = "missing 'host'"  # 3.14: "Missing 'Host' header in request."
TEXT_HEADER = "header"  # "Invalid header value char", "Invalid HTTP header", ...
TEXT_VERSION = "invalid http version"  # the C parser: "Invalid HTTP version" (HTTP/1.2)


def _on(
    owner: str, *items: tuple[str, ...], lookup: Callable[[], object] | None = None
) -> list[Internal]:
    """``(name, why)`` or ``(name, why, tested_by)`` items on one owner."""
    return [
        Internal(owner, item[0], item[1], lookup, tested_by=item[2] if item[2:] else None)
        for item in items
    ]


def _text(exception: str, words: str, why: str) -> Internal:
    owner = f"http_exceptions ({words!r} in its text)"
    return Internal(owner, exception, why, lambda: http_exceptions, tested_by=_WORDS)


# Tests that exercise an internal's behaviour (a file's name alone: this test module).
_AS_SENT = "test_forwarding.py::test_no_header_is_invented_on_the_way"
_UNASKED = "test_hostile_round5.py::test_bytes_the_gateway_sends_unasked_answer_no_one"
_BROKEN_CHUNK = "test_hardening.py::" + (
    "test_a_broken_chunk_mid_upload_is_400_at_once_and_aborts_the_upstream_request"
)
_DRAIN = "test_faults.py::test_sigterm_lets_a_streamed_upload_in_flight_finish"
_HEAD_TIMER = "test_hostile.py::test_slow_request_head_is_cut_off"
_LIMIT = "test_hostile.py::test_connection_limit"
_MALFORMED = "test_each_malformed_request_gets_the_gateway_shape"
_LOOP_DIES = "test_connect_to_a_url_neither_hangs_nor_logs_it"
_NO_BYTES_LOGGED = "test_connect_followed_by_tunnel_bytes_logs_none_of_them"
_WORDS = "test_each_parser_message_is_told_apart"
_RESET = "test_faults.py::test_upstream_reset_of_a_read_until_close_body_aborts_the_client"
_RATE = "test_fairness.py::test_a_body_trickled_under_a_large_content_length_is_cut_with_408"
_SHARE = "test_fairness.py::test_one_address_trickling_many_connections_cannot_stop_another"
_STOPPING = "test_rolling_restart.py::" + (
    "test_on_stop_ready_fails_at_once_requests_are_served_with_connection_close_then_refused"
)
_VERSIONS = "test_hostile.py::" + (
    "test_options_star_and_other_http_versions_get_a_gateway_shaped_http_1_1_answer"
)

INTERNALS: tuple[Internal, ...] = (
    # RequestHandler declares __slots__ (3.12 on), so its instance attributes show on the class.
    *_on(
        "web_protocol.RequestHandler",
        ("connection_made", "overridden: the connection limit, the head timer", _LIMIT),
        ("data_received", "overridden: a body keeps being read while draining", _DRAIN),
        ("shutdown", "overridden: the drain", _DRAIN),
        ("connection_lost", "overridden: a refused connection was never set up", _LIMIT),
        ("start", "overridden: a request loop that dies closes its connection", _LOOP_DIES),
        ("log_exception", "overridden: its tracebacks quote the client's bytes", _NO_BYTES_LOGGED),
        ("force_close", "closes a connection whose request loop died", _LOOP_DIES),
        ("_close", "set when shutdown starts (Server.pre_shutdown calls close())", _DRAIN),
        ("_force_close", "set when a connection is cut", _DRAIN),
        ("_request_in_progress", "the drain waits while it is true", _DRAIN),
        ("_request_count", "whether a complete head has arrived (the head timer)", _HEAD_TIMER),
        ("_manager", "the server, for its connection count", _LIMIT),
        ("_messages", "parsed requests waiting: a broken chunk's error is here", _BROKEN_CHUNK),
        ("_current_request", "the request a broken chunk belongs to", _BROKEN_CHUNK),
        ("_loop", "the timers", _HEAD_TIMER),
        ("pause_reading", "overridden: a body the proxy holds back is not slow", _RATE),
        ("_reading_paused", "whether the proxy holds the client's bytes back now", _RATE),
        ("_waiter", "the request loop's wait, ended when a connection is cut", _SHARE),
    ),
    Internal(
        "web_protocol.RequestHandler",
        "handle_error",
        "overridden: malformed requests answered in the gateway's shape",
        # aiohttp calls handle_error(request, status, exc, message) positionally.
        parameters=("self", "request", "status", "exc", "message"),
        tested_by=_MALFORMED,
    ),
    # web.Server has no __slots__: its attributes exist only on an instance. Its constructor
    # only stores what it is given, so stand-ins are enough.
    *_on(
        "web.Server instance",
        ("_kwargs", "the handler's settings, passed on to our handler class", _MALFORMED),
        ("_loop", "passed on to our handler class", _MALFORMED),
        ("__call__", "overridden: makes our handler class (the class is swapped)", _MALFORMED),
        ("connections", "the open connections: the connection limit counts them", _LIMIT),
        ("request_factory", "wrapped: other versions as 1.1, Connection: close", _STOPPING),
        lookup=lambda: web.Server(cast(Any, None), loop=cast(asyncio.AbstractEventLoop, object())),
    ),
    *_on(
        "web_runner.AppRunner",
        ("_make_server", "overridden: where the server class is swapped", _MALFORMED),
    ),
    *_on(
        "web.BaseRequest.__init__ (the attributes it sets)",
        ("_message", "replaced for the requests in flight at the stop signal", _STOPPING),
        lookup=lambda: SimpleNamespace(**dict.fromkeys(web.BaseRequest.__init__.__code__.co_names)),
    ),
    Internal(
        "http_writer.StreamWriter",
        "output_size",
        "whether an answer had started when its handler failed (no second one written)",
        tested_by="test_a_failure_after_the_answer_started_cuts_the_connection",
    ),
    *_on(
        "http_exceptions",
        ("HttpProcessingError", "what aiohttp raises for a malformed request"),
        ("LineTooLong", "a line over max_line_size or max_field_size (414 or 431)"),
        ("BadHttpMethod", "a request that is not HTTP"),
        ("TransferEncodingError", "a body whose chunked framing broke"),
    ),
    Internal(
        "http_exceptions.LineTooLong",
        "args",
        "args[0] quotes the line: the request target starts with '/' (414), else 431",
        lambda: http_exceptions.LineTooLong(b"/", 1),
        tested_by=_WORDS,
    ),
    _text("BadHttpMessage", TEXT_TOO_MANY_HEADERS, "more than max_headers: 431"),
    _text("BadHttpMessage", "/".join(TEXT_FRAMING), "conflicting or invalid framing"),
    _text("BadHttpMessage", TEXT_CHUNKED, "a broken chunked body (the C parser's class)"),
    _text("BadHttpMessage", TEXT_NO_HOST, "HTTP/1.1 without Host (3.14's parser)"),
    _text("BadHttpMessage", TEXT_HEADER, "an invalid header name or value"),
    Internal(
        f"http_exceptions ({TEXT_VERSION!r} in its text)",
        "BadStatusLine",
        "the C parser's refusal of a version other than 1.0 and 1.1: 505",
        lambda: http_exceptions,
        tested_by=_MALFORMED,  # HTTP/1.2: the Python parser takes it, the middleware refuses
    ),
    *_on(
        "web_protocol",
        ("_ErrInfo", "how a parse error is queued (a broken chunk mid-body)", _BROKEN_CHUNK),
        ("ERROR", "the request made for an unparsable one: answered as HTTP/1.1", _VERSIONS),
    ),
    *_on("helpers", ("set_exception", "ends a request body with an error", _BROKEN_CHUNK)),
    *_on(
        "connector.Connection",
        ("protocol", "answer.py: the connection a close-delimited answer arrives on"),
    ),
    Internal(
        "client_proto.ResponseHandler",
        "closed",
        "answer.py: a future that tells a reset from a clean close of such an answer",
        tested_by=_RESET,
    ),
    *_on(
        "client_reqrep.ClientRequest",
        ("update_auto_headers", "overridden: session.py's AsSent invents no header", _AS_SENT),
        ("_skip_auto_headers", "where AsSent leaves the names aiohttp must not add", _AS_SENT),
        ("send", "overridden: AsSent sends on no connection holding unasked bytes", _UNASKED),
    ),
    *_on(
        "client_proto.ResponseHandler",
        ("should_close", "AsSent: a pooled connection that holds unasked bytes", _UNASKED),
    ),
    Internal(
        "web.StreamResponse",
        "_send_headers_immediately",
        "answer.py: an answer that came whole sends its head with its body, in one write",
        tested_by="test_forwarding.py::test_an_answer_that_came_whole_goes_out_in_one_write",
    ),
    Internal(
        "web.StreamResponse",
        "_prepare_headers",
        "answer.py: wrapped, so a relayed answer gets no Content-Type or Server the gateway "
        "did not send (aiohttp adds both while preparing the head)",
        tested_by="test_forwarding.py::test_no_header_is_invented_on_the_way_back",
    ),
    Internal(
        "aiohttp.ClientError",
        "__cause__",
        "forward.py: an error raised by a request body is the client error's __cause__ "
        "(a broken chunk, 400, and a stalled upload, 408, are told apart through it)",
        lambda: aiohttp.ClientError(),
        tested_by=_BROKEN_CHUNK,
    ),
)


def check_aiohttp(internals: Iterable[Internal] | None = None) -> None:
    """Raise ``UnsupportedAiohttp`` unless every internal (``INTERNALS``) is there."""
    missing = []
    for item in INTERNALS if internals is None else internals:
        try:
            owner = item.lookup() if item.lookup else pkgutil.resolve_name(f"aiohttp.{item.owner}")
        except Exception as exc:  # a changed constructor, a removed module member
            missing.append(f"{item.owner} ({type(exc).__name__}: {exc})")
            continue
        if not hasattr(owner, item.name):
            missing.append(f"{item.owner}.{item.name} ({item.why})")
        elif item.parameters is not None and callable(found := getattr(owner, item.name)):
            parameters = tuple(inspect.signature(found).parameters)
            if parameters != item.parameters:
                missing.append(
                    f"{item.owner}.{item.name}{item.parameters[1:]} ({item.why}): "
                    f"it takes {parameters[1:]}"
                )
    if missing:
        raise UnsupportedAiohttp(
            f"aiohttp {aiohttp.__version__} is not supported by this proxy (supported: "
            f"aiohttp{SUPPORTED}); it lacks what the proxy relies on: " + "; ".join(missing)
        )
