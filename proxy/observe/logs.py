"""Logging: the process-wide setup (text or JSON lines), and the per-request access log.

The access log writes the path without its query string (it can carry data) and never a
header, so neither a local nor a gateway token can reach it. JSON lines carry stable field
names: ``time``, ``level``, ``logger``, ``message``, and for each request ``method``,
``path``, ``status``, ``bytes_in``, ``bytes_out``, ``duration_ms``, ``upstream_ms``,
``request_id``, ``profile``, ``held_seconds`` (waited for a rate-limit slot) and ``cache``
(``hit`` or ``miss`` for cached endpoints).

The access logger is also where each request is counted for the metrics: aiohttp calls it
once per request with the final status and duration, whatever answered it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, ClassVar, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..aiohttp_compat import RequestKey
from ..paths import OWN, RELAY, masked_path
from .metrics import Metrics

__all__ = [
    "AccessLog",
    "AccessLogger",
    "BufferedAccessLog",
    "JsonFormatter",
    "configure_logging",
    "record_request",
]

# Keys a handler may set on a request for its access log line.
REQUEST_ID = RequestKey("request_id", str)
BYTES_IN = RequestKey("bytes_in", int)
UPSTREAM_SECONDS = RequestKey("upstream_seconds", float)
PROFILE = RequestKey("profile", str)
BYTES_OUT = RequestKey("bytes_out", int)  # body bytes sent so far, for a client that hangs up
HELD_SECONDS = RequestKey("held_seconds", float)  # waited for a rate-limit slot (shaping.py)
CACHE = RequestKey("cache", str)  # "hit", "miss" or "refresh", for the metadata cache's answers
# Which hop failed and how, shown as ``up=`` (``egress:407``, ``storage:503``): sharing/relay.py
UPSTREAM_FAILED = RequestKey("upstream_failed", str)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; a record's ``fields`` (a dict) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Lines on stderr, one per event: plain text, or JSON for log pipelines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO"}  # the access lines' levels

# The status logged for a request its client abandoned (nginx's "client closed request").
CLIENT_CLOSED = 499


class AccessLog:
    """Where access lines go: through the logging module (what tests capture; the default)."""

    # Whether ``write`` uses the fields: lines through the logging module may meet the JSON
    # formatter; the buffered text log reads the message alone, so none are built for it.
    structured = True

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("proxy.access")

    def enabled(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def write(self, level: int, message: str, fields: dict[str, Any] | None) -> None:
        self.logger.log(level, "%s", message, extra={"fields": fields or {}})

    def flush(self) -> None:
        """Write out anything held back."""


class BufferedAccessLog(AccessLog):
    """Access lines formatted here and written to ``stream`` in batches (every 0.2 s or
    64 KiB): the logging module's record, handler and one write per line cost about a
    sixth of a small request. The lines look exactly as ``configure_logging`` makes them.
    A crash can lose the last 0.2 s of access lines; other log lines are unbuffered.
    """

    FLUSH_SECONDS = 0.2
    FLUSH_BYTES = 64 * 1024

    def __init__(self, stream: TextIO, level: str, log_format: str) -> None:
        super().__init__()
        self._stream = stream
        self._level: int = logging.getLevelNamesMapping()[level.upper()]
        self._json = log_format == "json"
        self.structured = self._json
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def enabled(self, level: int) -> bool:
        return level >= self._level

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # one strftime a second, not one a request
            self._second = second
            pattern = "%Y-%m-%dT%H:%M:%S" if self._json else "%Y-%m-%d %H:%M:%S"
            convert = time.gmtime if self._json else time.localtime
            self._stamp = time.strftime(pattern, convert(second))
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self._json else f"{self._stamp},{millis:03d}"

    def write(self, level: int, message: str, fields: dict[str, Any] | None) -> None:
        stamp = self._time(time.time())
        name = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
        if self._json:
            record = {"time": stamp, "level": name.lower(), "logger": self.logger.name}
            record["message"] = message
            if fields:
                record.update(fields)
            line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        else:
            line = f"{stamp} {name} {self.logger.name}: {message}\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self._stream.write("".join(self._lines))
            self._stream.flush()
            self._lines.clear()
            self._size = 0


def record_request(
    access_log: AccessLog,
    metrics: Metrics | None,
    request: web.BaseRequest,
    status: int,
    bytes_out: int,
    seconds: float,
) -> None:
    """Count one request in the metrics and write its access log line."""
    # The keys set, once: request.get() of a key not set (most requests set no held time,
    # cache outcome or body size) raises and catches a KeyError inside, at three times the
    # cost of this whole look-up.
    keys = set(request)
    bytes_in = request[BYTES_IN] if BYTES_IN in keys else None
    if bytes_in is None:  # not counted while forwarding: a local answer (login, errors)
        bytes_in = (request.content_length or 0) if request.body_exists else 0
    profile = request[PROFILE] if PROFILE in keys else "default"
    method = request.method
    if metrics is not None:
        metrics.observe_request(method, status, seconds, bytes_in, bytes_out, profile)
    path = request.raw_path.partition("?")[0]
    level = logging.INFO
    if path.startswith(OWN):
        if path.startswith(RELAY):
            # An object download through the relay is real work: logged as a request, but
            # its id, a short-lived credential for the object, is not.
            path = masked_path(path)
        else:  # probes and scrapes every few seconds would drown the requests that matter
            level = logging.DEBUG
    if not access_log.enabled(level):
        return
    upstream = request[UPSTREAM_SECONDS] if UPSTREAM_SECONDS in keys else None
    request_id = request[REQUEST_ID] if REQUEST_ID in keys else "-"
    up = f"{upstream * 1000:.1f}ms" if upstream is not None else "-"
    if UPSTREAM_FAILED in keys:
        up = request[UPSTREAM_FAILED]
    named = "" if profile == "default" else f" profile={profile}"
    held = request[HELD_SECONDS] if HELD_SECONDS in keys else None
    cache = request[CACHE] if CACHE in keys else None
    if held is not None:
        named += f" held={held:.1f}s"
    if cache is not None:
        named += f" cache={cache}"
    if status == CLIENT_CLOSED:
        named += " (abandoned: the client hung up, or shutdown cut it)"
    message = (
        f"{method} {path} {status} in={bytes_in} out={bytes_out} "
        f"{seconds * 1000:.1f}ms up={up} id={request_id}{named}"
    )
    if not access_log.structured:
        access_log.write(level, message, None)
        return
    access_log.write(
        level,
        message,
        {
            "method": method,
            "path": path,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": round(upstream * 1000, 3) if upstream is not None else None,
            "request_id": request_id,
            "profile": profile,
            "held_seconds": round(held, 3) if held is not None else None,
            "cache": cache,
        },
    )


class AccessLogger(AbstractAccessLogger):
    """``GET /dap/query/canvas/table 200 in=0 out=1234 12.3ms up=11.9ms id=...``.

    Use ``AccessLogger.bound(metrics, access_log)`` as aiohttp's ``access_log_class``.
    """

    metrics: ClassVar[Metrics | None] = None
    access_log: ClassVar[AccessLog] = AccessLog()

    @classmethod
    def bound(cls, metrics: Metrics, access_log: AccessLog) -> type[AccessLogger]:
        """The class to give aiohttp (it makes one per connection): counting into
        ``metrics``, writing to ``access_log``."""
        return type("BoundAccessLogger", (cls,), {"metrics": metrics, "access_log": access_log})

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Body bytes: counted while relaying, else the local response's length. (aiohttp's
        # body_length counts the headers and chunk framing too.)
        sent = request.get(BYTES_OUT)
        if sent is None:
            sent = response.content_length or 0
        record_request(self.access_log, self.metrics, request, response.status, sent, time)

    @property
    def enabled(self) -> bool:
        return True  # always: every request is counted, whether or not it is logged
