"""The proxy's exceptions, and how each one reaches a client.

    ProxyError                      every error the proxy itself answers with
    ├── ConfigError                 invalid configuration (exit status 2; never sent to a client)
    ├── ClientTooSlow               the client went silent while sending its body (408)
    ├── MalformedBody               the client's body broke its chunked framing mid-way (400)
    ├── RateLimited                 over the gateway's rate limit, no slot in time (429)
    ├── TokenError                  getting a gateway token failed
    │   ├── CredentialsRejected     the token endpoint refused our client id or secret (401)
    │   └── TokenEndpointUnavailable  network, timeout, 5xx, 429 or a malformed answer (503)
    └── UpstreamError               forwarding a request failed
        ├── UpstreamUnreachable     connect refused, DNS, reset before a response (502)
        └── UpstreamTimeout         no answer within the configured timeout (504)

Every error carries a ``status``, a gateway-style ``type`` and a ``message`` written for the
person reading it. Messages never contain a secret or a token: they are built from fixed text
and the names of things, never from a foreign exception's ``str()``. A token error may also
carry the token endpoint's own words as ``detail``, cleaned by ``redact.redact`` first; it is
shown to callers the proxy knows (``text`` is message and detail together), never to
unauthenticated ones.
"""

from __future__ import annotations

__all__ = [
    "BROKEN_CHUNK",
    "ClientTooSlow",
    "ConfigError",
    "CredentialsRejected",
    "MalformedBody",
    "ProxyError",
    "RateLimited",
    "TokenEndpointUnavailable",
    "TokenError",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class ProxyError(Exception):
    """Base of every error the proxy answers with; ``status`` and ``type`` shape the response."""

    status: int = 500
    type: str = "ProxyError"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds to wait before trying again (Retry-After)

    @property
    def text(self) -> str:
        """What a client is told."""
        return self.message


class ConfigError(ProxyError):
    """Invalid configuration: ``problems`` lists every one found, each naming key and source."""

    type = "ConfigError"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class ClientTooSlow(ProxyError):
    """The client stopped sending its request body for longer than ``timeouts.client``."""

    status = 408
    type = "RequestTimeout"


# What a client is told of a broken chunk in its body, whichever layer finds it.
BROKEN_CHUNK = "invalid chunked encoding"


class MalformedBody(ProxyError):
    """The client's body broke its own framing mid-way (an invalid chunk): ``BROKEN_CHUNK``."""

    status = 400
    type = "BadRequest"


class RateLimited(ProxyError):
    """Over its endpoint's rate limit, no slot free in time (shaping.py); see ``retry_after``."""

    status = 429
    type = "TooManyRequests"


class TokenError(ProxyError):
    """Getting an access token from the gateway failed."""

    type = "TokenError"

    def __init__(self, message: str, *, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.detail = detail  # the token endpoint's own words, already redacted

    @property
    def text(self) -> str:
        """The message, with the token endpoint's words when it gave any."""
        return f"{self.message}: {self.detail}" if self.detail else self.message

    def again(self, retry_after: float | None) -> TokenError:
        """The same error, telling callers when the next attempt starts."""
        return type(self)(self.message, detail=self.detail, retry_after=retry_after)


class CredentialsRejected(TokenError):
    """The token endpoint refused the proxy's client credentials; retrying will not help."""

    status = 401
    type = "CredentialsRejected"


class TokenEndpointUnavailable(TokenError):
    """The token endpoint could not be reached or answered wrongly; it may recover."""

    status = 503
    type = "TokenEndpointUnavailable"


class UpstreamError(ProxyError):
    """Forwarding a request to the gateway failed."""

    status = 502
    type = "UpstreamError"


class UpstreamUnreachable(UpstreamError):
    """The gateway could not be reached, or dropped the connection before answering."""

    type = "UpstreamUnreachable"


class UpstreamTimeout(UpstreamError):
    """The gateway did not answer within the configured timeout."""

    status = 504
    type = "UpstreamTimeout"
