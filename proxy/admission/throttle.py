"""Throttling failed local logins, so that access keys and local secrets cannot be guessed
at network speed.

Failures are counted per client id and per source address. The first few are free (a
mistyped secret); after that, each failure shuts that client id and that address out for
a while, doubling up to a cap. While shut out, an attempt is refused (429, ``Retry-After``)
without its credentials being checked, so a guesser learns nothing; a success clears both
counts. One guesser on one connection drops from thousands of guesses a second to one
every ``cap`` seconds. A caller presenting the right credentials waits only if its own
client id or address was being guessed at, and never longer than ``cap``.

Counts live in bounded ``cachetools`` TTL caches: a flood of made-up client ids or
addresses costs fixed memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache

__all__ = ["LoginThrottle"]


class LoginThrottle:
    """``wait = throttle.shut_out(id, address)``; ``throttle.failed(...)``/``succeeded(...)``."""

    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        cap: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free, self._base, self._cap, self._clock = free, base, cap, clock
        # key -> (failures, shut out until); forgotten after a quiet spell of 10 caps.
        self._entries: TTLCache[str, tuple[int, float]] = TTLCache(
            maxsize=maxsize, ttl=cap * 10, timer=clock
        )

    def _keys(self, client_id: str, address: str) -> tuple[str, str]:
        return f"id:{client_id}", f"addr:{address}"

    def shut_out(self, client_id: str, address: str) -> float:
        """Seconds until this client id and address may try again; 0 when they may now."""
        until = max(self._entries.get(key, (0, 0.0))[1] for key in self._keys(client_id, address))
        return max(0.0, until - self._clock())

    def failed(self, client_id: str, address: str) -> float:
        """Count a failure; returns how long the caller is now shut out (0: not yet)."""
        now = self._clock()
        longest = 0.0
        for key in self._keys(client_id, address):
            failures = self._entries.get(key, (0, 0.0))[0] + 1
            over = failures - self._free
            wait = min(self._cap, self._base * 2.0 ** (over - 1)) if over > 0 else 0.0
            self._entries[key] = (failures, now + wait)
            longest = max(longest, wait)
        return longest

    def succeeded(self, client_id: str, address: str) -> None:
        for key in self._keys(client_id, address):
            self._entries.pop(key, None)
