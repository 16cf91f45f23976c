"""Logging: the process-wide setup, and the one-line-per-request access log.

The access log writes the path without its query string (it can carry data) and never a
header, so neither a local nor a gateway token can reach it.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["AccessLogger", "configure_logging"]


def configure_logging(level: str) -> None:
    """Plain text lines on stderr, one per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """``GET /dap/query/canvas/table 200 in=0 out=1234 12.3ms``, one line per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.raw_path.partition("?")[0]
        self.logger.info(
            "%s %s %d in=%s out=%d %.1fms",
            request.method,
            path,
            response.status,
            request.content_length if request.content_length is not None else "-",
            response.body_length,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
