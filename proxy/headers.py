"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1).

Headers stay in a ``CIMultiDict`` throughout: repeated headers such as ``Set-Cookie`` must
survive, and a ``dict`` would keep only the last.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

__all__ = ["HOP_BY_HOP", "to_client", "to_upstream"]

# Meaningful for one connection only; never forwarded, in either direction.
HOP_BY_HOP = frozenset(
    istr(name)
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",  # not standard, but still sent by some clients
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)

# Replaced on the way up: the gateway's Host comes from the upstream URL, and whatever
# credentials a client sends (a local token, or the deprecated x-instauth) give way to ours.
_REPLACED_UPSTREAM = frozenset(istr(name) for name in ("Host", "Authorization", "X-InstAuth"))


def _dropped(headers: CIMultiDictProxy[str], always: frozenset[istr]) -> frozenset[str]:
    if "Connection" not in headers:
        return always
    named = {
        istr(token.strip())
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }
    return always | named if named else always


def to_upstream(headers: CIMultiDictProxy[str], access_token: str) -> CIMultiDict[str]:
    """The client's headers, less hop-by-hop and credentials, plus our bearer token."""
    dropped = _dropped(headers, HOP_BY_HOP | _REPLACED_UPSTREAM)
    forwarded = CIMultiDict((k, v) for k, v in headers.items() if k not in dropped)
    forwarded["Authorization"] = f"Bearer {access_token}"
    return forwarded


def to_client(
    headers: CIMultiDictProxy[str], upstream_base: URL, proxy_base: str
) -> CIMultiDict[str]:
    """The gateway's headers, less hop-by-hop and CORS, with a gateway ``Location`` made ours.

    CORS headers are the proxy's decision (allowed_origins), never the gateway's: a
    permissive one passed through would let any web page read what the proxy fetches.
    """
    dropped = _dropped(headers, HOP_BY_HOP)
    relayed = CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k not in dropped and not k.lower().startswith("access-control-")
    )
    location = relayed.get("Location")
    if location is not None:
        relayed["Location"] = _rewrite_location(location, upstream_base, proxy_base)
    return relayed


def _rewrite_location(location: str, upstream_base: URL, proxy_base: str) -> str:
    """``https://gateway/prefix/x`` becomes ``http://127.0.0.1:8080/x``; others are untouched."""
    base = str(upstream_base).rstrip("/")
    if location == base or location.startswith(base + "/") or location.startswith(base + "?"):
        return proxy_base + location[len(base) :]
    return location
