"""Which profile (credential set) a request is for.

In order: a path prefix naming a profile (``/yale/dap/...``, which works for every client,
curl included, and for tools given ``DAP_API_URL=http://127.0.0.1:8080/yale``); else the
profile a tool chose when it logged in (carried in its local token); else ``default``.

At the local login a tool chooses by path prefix, else by the client id it presents: a
profile's name, or one of its ``local_client_ids``; else ``default``.

With named profiles, the first path segment is either a profile or one of the gateway's own
roots (``dap``, ``ids``): anything else is an unknown profile (404), so a mistyped profile
never reaches the gateway with another institution's token.
"""

from __future__ import annotations

from collections.abc import Mapping

from .access import Caller
from .config import Profile

__all__ = ["GATEWAY_ROOTS", "ProfileRouter"]

GATEWAY_ROOTS = frozenset({"dap", "ids"})


class ProfileRouter:
    """``name, target = router.split(raw_target)``; ``router.for_request(name, caller)``."""

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

    def split(self, raw_target: str) -> tuple[str | None, str | None]:
        """``("yale", "/dap/...")`` for ``/yale/dap/...``; ``(None, target)`` without a
        profile prefix; ``(None, None)`` for an unknown profile."""
        end = raw_target.find("/", 1)
        first = raw_target[1:end] if end > 0 else raw_target[1:].partition("?")[0]
        if first in self.names:
            return first, raw_target[end:] if end > 0 else "/"
        if self.strict and first not in GATEWAY_ROOTS:
            return None, None
        return None, raw_target

    def for_login(self, prefixed: str | None, client_id: str) -> str | None:
        return prefixed or self._by_client_id.get(client_id) or self.default

    def for_request(self, prefixed: str | None, caller: Caller) -> str | None:
        return prefixed or caller.profile or self.default
