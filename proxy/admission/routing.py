"""Where a request goes: which profile (credential set), which target, and whether it is
the local login. Every other module asks here; nothing else decides these.

A request's target is split into path and query first: only the path is read.

- **The local login** is ``POST [/<profile>]/ids/auth/login``, exactly (``is_local_login``).
  Admission lets it check its own credentials, and the dispatcher answers it locally. Any
  other method on that path, or any other path, is an ordinary request.
- **The profile**, in order: a path prefix naming a profile (``/yale/dap/...``, which works
  for every client, curl included, and for tools given ``DAP_API_URL=.../yale``); else the
  profile a tool chose when it logged in (carried in its local token); else ``default``.
  At the local login a tool chooses by path prefix, else by the client id it presents: a
  profile's name, or one of its ``local_client_ids``; else ``default``.

With named profiles, the first path segment is either a profile or one of the gateway's own
roots (``dap``, ``ids``): anything else is an unknown profile (404), so a mistyped profile
never reaches the gateway with another institution's token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..config import Profile
from ..gateway import GATEWAY_ROOTS, LOGIN_PATH
from .access import Caller

__all__ = ["ProfileRouter", "Route", "is_local_login", "unknown_profile"]

_SHOWN_NAME = 64  # characters of a mistyped profile name repeated in a 404


def unknown_profile(given: str, names: Iterable[str] | None) -> str:
    """The 404's words for a profile that is not configured: the name given (cut short,
    printable only) and the ones there are (``None``: not told, to a caller not known)."""
    shown = "".join(c if c.isprintable() else "?" for c in given[:_SHOWN_NAME])
    message = f"no profile {shown!r} (the first path segment names one, or a gateway path "
    if names is None:
        return message + "such as /dap/...)"
    known = sorted(names)
    choices = f"the profiles are {', '.join(known)}" if known else "no profile is configured"
    return message + f"such as /dap/...): {choices}"


def is_local_login(method: str, path: str) -> bool:
    """The one definition of the local login: ``POST`` to the login path, nothing else.

    ``path`` is the path as it would be forwarded: without a profile prefix or query.
    """
    return method == "POST" and path == LOGIN_PATH


class Route(NamedTuple):
    """A request's target, read once: the profile its path prefix names (``prefixed``), the
    path and query as they would be forwarded, and whether it is the local login.
    ``known`` is False for an unknown profile: such a request is answered 404.

    A named tuple, read-only as a frozen dataclass is, and made in a quarter of the time
    (one per request)."""

    prefixed: str | None
    path: str
    query: str  # with its "?", or ""
    login: bool
    known: bool = True

    @property
    def target(self) -> str:
        """Path and query, as forwarded (byte for byte what the client sent)."""
        return self.path + self.query

    @property
    def local_prefix(self) -> str:
        """The prefix a client used, for Locations the proxy gives back."""
        return f"/{self.prefixed}" if self.prefixed else ""


class ProfileRouter:
    """``route = router.route(method, raw_target)``; ``router.for_request(route, caller)``."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self.names = frozenset(profiles)
        self.default = "default" if "default" in profiles else None
        # Only with named profiles does a first segment have to be a profile or a root.
        self.strict = bool(self.names - {"default"})
        self._by_client_id = {
            client_id: name
            for name, profile in profiles.items()
            for client_id in (name, *profile.local_client_ids)
        }

    def route(self, method: str, raw_target: str) -> Route:
        """``/yale/dap/x?a=/b`` -> profile ``yale``, path ``/dap/x``, query ``?a=/b``."""
        path, sep, query = raw_target.partition("?")
        query = sep + query
        first = path[1:].partition("/")[0]
        if first in self.names:
            rest = path[1 + len(first) :] or "/"
            return Route(first, rest, query, is_local_login(method, rest))
        known = not self.strict or first in GATEWAY_ROOTS
        return Route(None, path, query, known and is_local_login(method, path), known)

    def unknown(self, route: Route) -> str:
        """Why ``route`` (not ``known``) is answered 404, naming the profile given."""
        return unknown_profile(route.path[1:].partition("/")[0], self.names)

    def for_login(self, prefixed: str | None, client_id: str) -> str | None:
        return prefixed or self._by_client_id.get(client_id) or self.default

    def for_request(self, route: Route, caller: Caller) -> str | None:
        return route.prefixed or caller.profile or self.default
