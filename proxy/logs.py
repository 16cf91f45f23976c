"""Logging: the process-wide setup (text or JSON lines), and the per-request access log.

The access log writes the path without its query string (it can carry data) and never a
header, so neither a local nor a gateway token can reach it. JSON lines carry stable field
names: ``time``, ``level``, ``logger``, ``message``, and for each request ``method``,
``path``, ``status``, ``bytes_in``, ``bytes_out``, ``duration_ms``, ``upstream_ms``,
``request_id``, ``profile``.

The access logger is also where each request is counted for the metrics: aiohttp calls it
once per request with the final status and duration, whatever answered it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, ClassVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .metrics import Metrics

__all__ = ["AccessLogger", "JsonFormatter", "configure_logging", "record_request"]

# Keys a handler may set on a request for its access log line.
REQUEST_ID = "request_id"
BYTES_IN = "bytes_in"
UPSTREAM_SECONDS = "upstream_seconds"
PROFILE = "profile"
BYTES_OUT = "bytes_out"  # body bytes sent so far, for the line of a client that hangs up


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


# The status logged for a request its client abandoned (nginx's "client closed request").
CLIENT_CLOSED = 499


def record_request(
    logger: logging.Logger,
    metrics: Metrics | None,
    request: web.BaseRequest,
    status: int,
    bytes_out: int,
    seconds: float,
) -> None:
    """Count one request in the metrics and write its access log line."""
    bytes_in = request.get(BYTES_IN, 0)
    profile = request.get(PROFILE, "default")
    if metrics is not None:
        metrics.observe_request(request.method, status, seconds, bytes_in, bytes_out, profile)
    path = request.raw_path.partition("?")[0]
    # Probes and scrapes (/-/...) every few seconds would drown the requests that matter.
    level = logging.DEBUG if path.startswith("/-/") else logging.INFO
    if not logger.isEnabledFor(level):
        return
    upstream = request.get(UPSTREAM_SECONDS)
    request_id = request.get(REQUEST_ID, "-")
    logger.log(
        level,
        "%s %s %d in=%d out=%d %.1fms up=%s id=%s%s",
        request.method,
        path,
        status,
        bytes_in,
        bytes_out,
        seconds * 1000,
        f"{upstream * 1000:.1f}ms" if upstream is not None else "-",
        request_id,
        " (abandoned: the client hung up, or shutdown cut it)" if status == CLIENT_CLOSED else "",
        extra={
            "fields": {
                "method": request.method,
                "path": path,
                "status": status,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": round(seconds * 1000, 3),
                "upstream_ms": round(upstream * 1000, 3) if upstream is not None else None,
                "request_id": request_id,
                "profile": profile,
            }
        },
    )


class AccessLogger(AbstractAccessLogger):
    """``GET /dap/query/canvas/table 200 in=0 out=1234 12.3ms up=11.9ms id=...``.

    Use ``AccessLogger.counting_into(metrics)`` as aiohttp's ``access_log_class``.
    """

    metrics: ClassVar[Metrics | None] = None

    @classmethod
    def counting_into(cls, metrics: Metrics) -> type[AccessLogger]:
        return type("CountingAccessLogger", (cls,), {"metrics": metrics})

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Body bytes: counted while relaying, else the local response's length. (aiohttp's
        # body_length counts the headers and chunk framing too.)
        sent = request.get(BYTES_OUT)
        if sent is None:
            sent = response.content_length or 0
        record_request(self.logger, self.metrics, request, response.status, sent, time)

    @property
    def enabled(self) -> bool:
        return True  # always: every request is counted, whether or not it is logged
