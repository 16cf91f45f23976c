"""Facts about Instructure's API gateway that several modules need, stated once.

DEFAULT_UPSTREAM   the gateway's base URL
LOGIN_PATH         its token endpoint, relative to the base URL; the proxy answers the
                   same path itself for tools that log in (see ``routing.is_local_login``)
GATEWAY_ROOTS      the first path segments the gateway serves: with named profiles, any
                   other first segment must be a profile's name
RATE_LIMITS        its documented request limits per minute, per rate-limit class
                   (the classes: ``upstream.shaping.endpoint_class``)
"""

from __future__ import annotations

from yarl import URL

__all__ = ["DEFAULT_UPSTREAM", "GATEWAY_ROOTS", "LOGIN_PATH", "RATE_LIMITS", "token_url_for"]

DEFAULT_UPSTREAM = "https://api-gateway.instructure.com"
LOGIN_PATH = "/ids/auth/login"
GATEWAY_ROOTS = frozenset({"dap", "ids"})
RATE_LIMITS = {
    "create_job": 5,
    "list_tables": 5,
    "get_job": 500,
    "get_schema": 500,
    "object_urls": 200,
}


def token_url_for(upstream: URL) -> URL:
    """The token endpoint of the gateway at ``upstream`` (a path prefix is kept)."""
    return upstream.with_path(upstream.path.rstrip("/") + LOGIN_PATH)
