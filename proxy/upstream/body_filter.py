"""A hook on the way back: a response body taken whole, looked at, and perhaps changed.

Most answers stream through untouched. A few are small JSON documents the proxy has a use
for: the metadata cache keeps complete table lists and schemas (sharing/cache.py), the
object relay rewrites object URLs (sharing/relay_filter.py). Such a caller gives
``Forwarder.forward`` a ``BodyFilter``; the forwarder asks it, once the gateway's status and
headers are in, whether it ``wants`` this body; if so it reads the body whole, in a loop, up
to ``MAX_FILTERED_BODY``, hands it to ``apply``, and sends what comes back with a
``Content-Length`` of its own. A body over the bound streams on unfiltered, unless the filter
is a ``WholeBodyFilter``: then the client gets its ``too_large`` error instead (502), as it
does when ``apply`` raises ``BodyRefused``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from multidict import CIMultiDict

from ..errors import ProxyError

__all__ = ["MAX_FILTERED_BODY", "BodyFilter", "BodyRefused", "WholeBodyFilter"]

MAX_FILTERED_BODY = 4 * 1024 * 1024


class BodyRefused(ProxyError):
    """The gateway's answer cannot be sent as it is, nor changed as it must be (502)."""

    status = 502
    type = "BadGateway"


class BodyFilter(Protocol):
    """``wants(status, headers)``, then ``apply(status, headers, body) -> body``."""

    def wants(self, status: int, headers: CIMultiDict[str]) -> bool:
        """Take this body whole? (``headers`` are those to be relayed.)"""

    def apply(self, status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The body to send; ``headers`` may be changed (``Content-Length`` is set after).
        May raise ``BodyRefused``: its error is answered instead."""


@runtime_checkable
class WholeBodyFilter(BodyFilter, Protocol):
    """A filter whose body must never reach the client unfiltered (the relay's: raw storage
    URLs would pass)."""

    def too_large(self, limit: int) -> ProxyError:
        """What to answer for a body over ``limit`` bytes."""
