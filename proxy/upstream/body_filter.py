"""A hook on the way back: a response body taken whole, looked at, and perhaps changed.

Most answers stream through untouched. A few are small JSON documents the proxy has a use
for: the metadata cache keeps complete table lists and schemas (sharing/cache.py). Such a
caller gives ``Forwarder.forward`` a ``BodyFilter``; the forwarder asks it, once the
gateway's status and headers are in, whether it ``wants`` this body; if so it reads the body
whole (up to ``MAX_FILTERED_BODY``, else it streams after all, unfiltered), hands it to
``apply``, and sends what comes back with a ``Content-Length`` of its own.
"""

from __future__ import annotations

from typing import Protocol

from multidict import CIMultiDict

__all__ = ["MAX_FILTERED_BODY", "BodyFilter"]

MAX_FILTERED_BODY = 4 * 1024 * 1024


class BodyFilter(Protocol):
    """``wants(status, headers)``, then ``apply(status, headers, body) -> body``."""

    def wants(self, status: int, headers: CIMultiDict[str]) -> bool:
        """Take this body whole? (``headers`` are those to be relayed.)"""

    def apply(self, status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The body to send; ``headers`` may be changed (``Content-Length`` is set after)."""
