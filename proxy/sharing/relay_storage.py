"""What of storage's answer reaches a client of the relay, and what is said instead.

Passed on (headers from ``PASSED_HEADERS`` only, the body byte for byte): ``200``, ``206``
and ``304``, an object, part of one, or "unchanged". Said in the gateway's error shape with
storage's own status, since the client can act on it: ``404`` (no such object), ``403`` (the
signed URL refused: expired early, revoked, a clock far off), ``412`` (a precondition the
client sent failed) and ``416`` (a range past the end; ``Content-Range`` kept, it gives the
size). Anything else, a redirect or a 5xx, and anything the egress proxy said itself (407, or
a page with its ``X-Squid-Error``), is a ``502`` naming the hop that failed and its status.
Never storage's or the egress proxy's own page, nor their ``Server``, ``Via``, ``X-Squid-*``
or any other header outside the list.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "PASSED",
    "PASSED_HEADERS",
    "Failure",
    "egress_refused",
    "passed_headers",
    "verdict",
]

PASSED = frozenset({200, 206, 304})
# What a download needs of storage's headers: type, size, range, validators, caching.
PASSED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept-Ranges",
        "Cache-Control",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Range",
        "Content-Type",
        "Date",
        "ETag",
        "Expires",
        "Last-Modified",
    )
)
_SAID = {
    403: (
        "StorageRefused",
        "object storage refused the signed URL (HTTP 403): it may have expired or been "
        "revoked; ask for the object's URL again (POST /dap/object/url)",
    ),
    404: (
        "ObjectNotFound",
        "object storage has no such object (HTTP 404); ask for the object's URL again "
        "(POST /dap/object/url)",
    ),
    412: ("PreconditionFailed", "a precondition of the request failed at object storage"),
    416: ("RangeNotSatisfiable", "the requested range is not within the object"),
}


@dataclass(frozen=True)
class Failure:
    """Storage's answer, as the relay says it: status, type, message, and the ``up=`` of
    the access line (``storage:503``, ``egress:407``)."""

    status: int
    type: str
    message: str
    hop: str


def passed_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() in PASSED_HEADERS)


def egress_refused(status: int, egress: str, host: str) -> Failure:
    """The egress proxy answered ``status`` itself (to a ``CONNECT``, or with its own page)."""
    return Failure(
        502,
        "BadGateway",
        f"the egress proxy at {egress} refused to fetch from object storage at {host}: "
        f"HTTP {status}" + (": check the credentials configured for it" if status == 407 else ""),
        f"egress:{status}",
    )


def verdict(
    status: int, headers: CIMultiDictProxy[str], host: str, egress: str | None
) -> Failure | None:
    """None to pass storage's answer on; else what to say instead. ``egress``: the egress
    proxy the request went through (``host:port``), if any."""
    if status in PASSED:
        return None
    if egress is not None and (status == 407 or "X-Squid-Error" in headers):
        return egress_refused(status, egress, host)
    if status in _SAID:
        error_type, message = _SAID[status]
        return Failure(status, error_type, message, f"storage:{status}")
    return Failure(
        502,
        "BadGateway",
        f"object storage at {host} answered HTTP {status}"
        + (f" (through the egress proxy at {egress})" if egress else ""),
        f"storage:{status}",
    )
