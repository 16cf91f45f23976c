"""The rate budgets every replica shares, in Redis: shaping.py's ``SharedBudgets``.

Each (profile, endpoint class) is a sorted set of slots, scored by when each request goes
(Redis's own clock, the same for every replica). ``RESERVE`` is one Lua script, so atomic:
it drops the slots that left the window, and gives the caller the first moment at which
fewer than ``limit`` slots fall within one window, waiting out a pause; the slot is written
at once (a reservation: first come, first served across replicas) unless it is later than
the wait allowed. A client that hangs up while it waits gives its slot back (``release``).
A gateway 429 sets the class's pause for every replica (``PAUSE``). Keys share a hash tag,
``{namespace:class}``, so the script's keys sit together on a Redis Cluster too.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping

from ..upstream.shared_budgets import Reservation
from .shared_state import NOW, Script, SharedState

__all__ = ["RedisBudgets"]

RESERVE = (
    NOW
    + """
local limit, window, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local slot = math.max(now, tonumber(redis.call('GET', KEYS[2]) or '0'))
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local edge = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  slot = math.max(slot, tonumber(edge[2]) + window)
end
local wait = slot - now
if wait > max_wait then return {0, tostring(wait)} end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((wait + window) * 1000) + 1000)
return {1, tostring(wait)}
"""
)
PAUSE = (
    NOW
    + """
local seconds = tonumber(ARGV[1])
if now + seconds > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], tostring(now + seconds), 'PX', math.ceil(seconds * 1000) + 1000)
end
return 1
"""
)


class RedisBudgets:
    """``await budgets.reserve("default", "create_job", 5, 61.2, 60)``: a ``Reservation``,
    or ``None`` when Redis cannot answer now."""

    def __init__(self, state: SharedState, namespaces: Mapping[str, str]) -> None:
        self._state = state
        self._namespaces = dict(namespaces)  # profile name: its key namespace
        self._tickets = itertools.count()
        self._replica = os.urandom(6).hex()  # tickets from two replicas never collide
        self._reserve = Script(RESERVE)
        self._pause = Script(PAUSE)

    def _keys(self, profile: str, endpoint: str) -> tuple[str, str]:
        tag = f"dap-proxy:{{{self._namespaces[profile]}:{endpoint}}}"
        return f"{tag}:slots", f"{tag}:pause"

    async def reserve(
        self, profile: str, endpoint: str, limit: int, window: float, max_wait: float
    ) -> Reservation | None:
        ticket = f"{self._replica}-{next(self._tickets)}"
        args = (limit, repr(window), repr(max_wait), ticket)
        keys = self._keys(profile, endpoint)
        answer = await self._state.call(lambda redis: self._reserve(redis, keys, args))
        if answer is None:
            return None
        try:
            granted, wait = answer
            seconds = max(0.0, float(wait))
            # RESERVE grants a slot only within max_wait: a longer (or infinite) wait is an
            # answer a Redis impostor made up, and would hold the request forever.
            if granted not in (0, 1) or not math.isfinite(seconds):
                raise ValueError(granted, wait)
            if granted == 1 and seconds > max_wait:
                raise ValueError(granted, wait)
            return Reservation(granted == 1, seconds, ticket)
        except (ValueError, TypeError):  # not what RESERVE answers: this replica's own budget
            self._state.errors += 1
            return None

    def release(self, profile: str, endpoint: str, ticket: str) -> None:
        slots, _ = self._keys(profile, endpoint)
        self._state.spawn(lambda redis: redis.zrem(slots, ticket))

    def pause(self, profile: str, endpoint: str, seconds: float) -> None:
        keys = self._keys(profile, endpoint)[1:]
        self._state.spawn(lambda redis: self._pause(redis, keys, (repr(seconds),)))
