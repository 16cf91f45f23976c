"""URLs that can carry a password (egress proxies, Redis): parsed from what a user wrote,
and shown with the password masked.

Their own module because these are the values that can carry a password in plain sight:
every error and every display of one goes through ``masked_text``/``masked_proxy``/
``masked_redis``.
"""

from __future__ import annotations

from yarl import URL

from .values import ListenAddress, text

__all__ = ["masked_proxy", "masked_redis", "masked_text", "proxy_url", "redis_url"]


def masked_text(given: object) -> str:
    """A proxy URL as given, quoted, its user and password (everything before the last
    ``@``) masked, even when it does not parse: ``'http://***@proxy.example:3128'``."""
    scheme, sep, rest = str(given).strip().rpartition("://")
    if "@" in rest or "@" in scheme:
        rest = "***@" + rest.rpartition("@")[2]
        scheme = scheme.rpartition("@")[2] if "@" in scheme else scheme
    return repr(f"{scheme}{sep}{rest}")


_PROXY_FORM = "expected http://[user:password@]host:port"
# The characters that break a URL's userinfo, and what to do about them.
_ENCODE_HINT = (
    "; a user or password with @ : / ? # or % must be percent-encoded in the URL (@ as %40, "
    ": as %3A, / as %2F, % as %25), or put user:password in egress_proxy_credentials_file "
    "instead, where it needs no encoding"
)


def proxy_url(value: object) -> URL:
    """An egress proxy: ``http://[user:password@]host:port``; ``host:port`` alone means
    http, as in curl. Errors show the value masked (``masked_text``): it can hold the
    proxy's password. A port is required: tools disagree on the default (curl's is 1080)."""
    given = text(value)
    shown = masked_text(given)
    hint = _ENCODE_HINT if "@" in given else ""
    if "://" not in given:
        given = "http://" + given
    try:
        parsed = URL(given)
        parsed.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError(f"{_PROXY_FORM}, got {shown}{hint}") from None
    if parsed.scheme != "http":
        # aiohttp speaks to proxies in plain HTTP; an https target's TLS goes through
        # CONNECT end to end, so the proxy never sees the gateway's traffic either way.
        raise ValueError(
            f"expected an http:// proxy URL (https targets go through CONNECT), got {shown}"
        )
    if not parsed.host:
        raise ValueError(f"{_PROXY_FORM}, got {shown}{hint}")
    if parsed.raw_path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise ValueError(f"{_PROXY_FORM}, without a path or query, got {shown}{hint}")
    if parsed.explicit_port is None:
        # curl would use 1080, others 80 or 3128: a guess would connect to the wrong port.
        raise ValueError(
            f"no port in {shown}: write the egress proxy's port, as in "
            f"http://{parsed.host}:3128 (curl would use 1080, this proxy will not guess)"
        )
    return parsed.with_path("")


def masked_proxy(proxy: URL) -> str:
    """``http://user:***@proxy.example:3128``: a proxy URL as shown, never its password."""
    user = f"{proxy.user}:***@" if proxy.user else ""
    return f"{proxy.scheme}://{user}{ListenAddress(proxy.host or '', proxy.port or 0)}"


def redis_url(value: object) -> URL:
    """Shared state: ``redis://[user:password@]host[:port][/db]``, or ``rediss://`` (TLS).
    Errors never repeat the value: it can hold the password."""
    usage = "expected redis://[user:password@]host:port/db or rediss://..."
    try:
        parsed = URL(text(value))
        parsed.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError(usage) from None
    if parsed.scheme not in ("redis", "rediss") or not parsed.host:
        raise ValueError(usage)
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"{usage}, without a query string")
    database = parsed.path.strip("/") or "0"
    if not database.isdigit():
        raise ValueError(f"{usage}: the path is a database number, such as /0")
    return parsed.with_path("/" + database)


def masked_redis(url: URL) -> str:
    """``redis://user:***@host:6379/0``: a Redis URL as shown, never its password."""
    user = f"{url.user or ''}:***@" if url.password else f"{url.user}@" if url.user else ""
    address = ListenAddress(url.host or "", url.port or 6379)
    return f"{url.scheme}://{user}{address}{url.path}"
