"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1).

Headers stay in a ``CIMultiDict`` throughout: repeated headers such as ``Set-Cookie`` must
survive, and a ``dict`` would keep only the last. Names are matched whatever their case: a
client may send ``keep-alive`` or ``TRANSFER-ENCODING``. Each direction copies the headers
once (in C) and deletes the dropped names from the copy by case-insensitive lookup, rather
than lower-casing every header name in Python: on every request, that was most of the
cost of both functions.
"""

from __future__ import annotations

import math

from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

__all__ = [
    "HOP_BY_HOP",
    "NOT_INVENTED_DOWNSTREAM",
    "NOT_INVENTED_UPSTREAM",
    "retry_after_seconds",
    "to_client",
    "to_upstream",
]

# Meaningful for one connection only; never forwarded, in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",  # not standard, but still sent by some clients
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Replaced on the way up: the gateway's Host comes from the upstream URL, and whatever
# credentials a client sends (a local token, or the deprecated x-instauth) give way to ours.
# Expect is answered by the proxy (aiohttp's server sends the 100 Continue): forwarded, it
# would make aiohttp's client wait for a 100 that a gateway not speaking it never sends.
_DROPPED_UPSTREAM = HOP_BY_HOP | {"host", "authorization", "x-instauth", "expect"}
# CORS is the proxy's decision (allowed_origins), never the gateway's: a permissive header
# passed through would let any web page read what the proxy fetches.
_DROPPED_DOWNSTREAM = HOP_BY_HOP | {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}


# What aiohttp adds to a message that lacks it, and the proxy must not: on the way up, its
# client's (session.py's AsSent leaves them out); on the way down, its server's (answer.py
# takes them back off). A Content-Type invented on an untyped body would stop the receiver
# from looking at the bytes to tell what they are; a Server would name aiohttp, not the
# gateway. (Date is added on the way down: RFC 9110 section 6.6.1 has a proxy add one.)
NOT_INVENTED_UPSTREAM = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
NOT_INVENTED_DOWNSTREAM = (istr("Content-Type"), istr("Server"))

# The same names, for deleting from a CIMultiDict (case-insensitive lookups).
_UPSTREAM_NAMES = tuple(istr(name) for name in sorted(_DROPPED_UPSTREAM))
_DOWNSTREAM_NAMES = tuple(istr(name) for name in sorted(_DROPPED_DOWNSTREAM))
_CONNECTION = istr("Connection")
_LOCATION = istr("Location")


def _without(headers: CIMultiDictProxy[str], always: tuple[istr, ...]) -> CIMultiDict[str]:
    """A copy of ``headers`` less ``always`` and every header the ``Connection`` header
    names, all their occurrences, in any casing."""
    kept = CIMultiDict(headers)
    named = kept.getall(_CONNECTION, ())  # read before Connection itself goes
    for name in always:
        if name in kept:
            del kept[name]
    for value in named:
        for token in value.split(","):
            token = token.strip()
            if token:
                kept.popall(token, None)
    return kept


def to_upstream(headers: CIMultiDictProxy[str], authorization: str) -> CIMultiDict[str]:
    """The client's headers, less hop-by-hop and credentials, plus our ``authorization``
    (``Token.authorization``: ``Bearer`` and the gateway token)."""
    forwarded = _without(headers, _UPSTREAM_NAMES)
    forwarded["Authorization"] = authorization
    return forwarded


def to_client(
    headers: CIMultiDictProxy[str], upstream_base: URL, request: BaseRequest, local_prefix: str
) -> CIMultiDict[str]:
    """The gateway's headers, less hop-by-hop and CORS, with a gateway ``Location`` made ours."""
    relayed = _without(headers, _DOWNSTREAM_NAMES)
    location = relayed.get(_LOCATION)
    if location is not None:
        proxy_base = f"{request.scheme}://{request.host}{local_prefix}"
        relayed[_LOCATION] = _rewrite_location(location, upstream_base, proxy_base)
    return relayed


def _rewrite_location(location: str, upstream_base: URL, proxy_base: str) -> str:
    """``https://gateway/prefix/x`` becomes ``http://127.0.0.1:8080/x``; others are untouched."""
    base = str(upstream_base).rstrip("/")
    if location == base or location.startswith(base + "/") or location.startswith(base + "?"):
        return proxy_base + location[len(base) :]
    return location


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds; an HTTP date (rare from the gateway: backoff or the
    rate window covers it) or nonsense counts as absent."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
