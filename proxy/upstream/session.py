"""The HTTP client session every request out goes through (API, tokens, relayed objects).

Its connector verifies TLS with the one context trust.py builds (the OS store plus the
configured bundles). Which egress proxy a request uses is decided per target URL by
egress.py and passed with the request (``proxy=``): the session itself reads no
environment.
"""

from __future__ import annotations

import aiohttp
from aiohttp.abc import AbstractResolver

from ..config import Config
from .trust import ssl_context

__all__ = ["upstream_session"]


def upstream_session(
    config: Config, *, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The one session to the gateway: a keep-alive pool, shared by every request.
    (With ``resolver``: the object relay's own, for storage it reaches directly.)"""
    timeouts = config.timeouts
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.pool_size,
            ttl_dns_cache=300,
            ssl=ssl_context(config.trust),
            resolver=resolver,
        ),
        # A proxy relays cookies; it must not keep them, nor mix them between clients.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Relay the gateway's bytes as they are: Content-Encoding is the client's business.
        auto_decompress=False,
        # Let clients' own headers through as they are: no User-Agent, Content-Type, Accept
        # or Accept-Encoding of aiohttp's invented on the way. (Set once here: per request
        # it cost about 2 % of a small request.)
        skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        ),
        # Environment proxies and ~/.netrc are not read here: load_config reads the proxy
        # variables from the environment it is given, and egress.py decides per target.
        trust_env=False,
    )
