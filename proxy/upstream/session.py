"""The HTTP client session every request out goes through (API, tokens, relayed objects).

Its connector verifies TLS with the one context trust.py builds (the OS store plus the
configured bundles). Which egress proxy a request uses is decided per target URL by
egress.py and passed with the request (``proxy=``): the session itself reads no
environment.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.connector import Connection
from multidict import CIMultiDict

from ..config import Config
from .headers import NOT_INVENTED_UPSTREAM
from .trust import ssl_context

__all__ = ["AsSent", "upstream_session"]

# Where aiohttp's client looks for the names it must not add (headers.py decides which).
_NOT_INVENTED: CIMultiDict[None] = CIMultiDict((name, None) for name in NOT_INVENTED_UPSTREAM)


class AsSent(aiohttp.ClientRequest):
    """A request with the client's headers as they are: none of aiohttp's invented on the
    way (``User-Agent``, ``Accept``, ``Accept-Encoding``, a body's ``Content-Type``).

    The session's ``skip_auto_headers`` says the same at a price paid on every request
    (a copy of its headers and the skip list built anew); this makes the decision once and
    leaves the list where aiohttp reads it (aiohttp_support.py lists both)."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NOT_INVENTED

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        """Not on a pooled connection that already holds bytes: a gateway that sent more
        than its answer's framing said, after the answer had ended, would have them read as
        this request's answer (and every later answer on it as the one before's: another
        client's). Refused as a connection the gateway broke: aiohttp closes it, and tries
        a GET once more on another."""
        protocol = conn.protocol
        if protocol is not None and protocol.should_close:
            raise aiohttp.ServerDisconnectedError("the gateway sent bytes nobody asked for")
        return await super().send(conn)


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
        # Let clients' own headers through as they are (AsSent).
        request_class=AsSent,
        # timeouts.read is timed by whoever sends, for all its requests at once (silence.py).
        timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect),
        # Environment proxies and ~/.netrc are not read here: load_config reads the proxy
        # variables from the environment it is given, and egress.py decides per target.
        trust_env=False,
    )
