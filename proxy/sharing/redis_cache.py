"""The metadata cache every replica shares, in Redis: cache.py's ``SharedAnswers``.

An entry is a hash (the relayed headers as JSON, the body byte for byte, when it was kept by
Redis's clock) that expires with its endpoint's TTL. Still bounded: each (profile, class) has
an index of its entries by expiry, and ``PUT`` (one Lua script) evicts the oldest past
``MAX_ENTRIES``, as the local cache does. Keys name a digest of the path, query and
``Accept-Encoding``, never a caller; answers the local cache would refuse are never sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from .cache import MAX_ENTRIES, Key
from .shared_state import NOW, Script, SharedState

__all__ = ["RedisCache"]

GET = (
    NOW
    + """
local entry = redis.call('HMGET', KEYS[1], 'h', 'b', 't')
if not entry[1] then return false end
return {entry[1], entry[2], tostring(now - tonumber(entry[3]))}
"""
)
PUT = (
    NOW
    + """
local ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('HSET', KEYS[1], 'h', ARGV[3], 'b', ARGV[4], 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl / 1000, KEYS[1])
local over = redis.call('ZCARD', KEYS[2]) - most
if over > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do redis.call('DEL', key) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[2], ttl + 1000)
return 1
"""
)


class RedisCache:
    """``await shared.get(key, endpoint)``: ``(headers, body, age)`` or ``None`` (absent, or
    Redis cannot answer now); ``shared.put(key, endpoint, headers, body, ttl)`` in the
    background."""

    def __init__(self, state: SharedState, namespaces: Mapping[str, str]) -> None:
        self._state = state
        self._namespaces = dict(namespaces)
        self._get, self._put = Script(GET), Script(PUT)

    def _keys(self, key: Key, endpoint: str) -> tuple[str, str]:
        profile, target, encoding = key
        tag = f"dap-proxy:{{{self._namespaces[profile]}:cache:{endpoint}}}"
        digest = hashlib.sha256(f"{target}\n{encoding}".encode()).hexdigest()[:32]
        return f"{tag}:{digest}", f"{tag}:index"

    async def get(
        self, key: Key, endpoint: str
    ) -> tuple[CIMultiDictProxy[str], bytes, float] | None:
        keys = self._keys(key, endpoint)
        found = await self._state.call(lambda redis: self._get(redis, keys, ()))
        if not found:
            return None
        try:
            headers, body, age = found
            seconds = max(0.0, float(age))
            # PUT writes bytes and a finite time: an integer "body" would make bytes(n) (n
            # zero bytes, or a MemoryError), an infinite age an OverflowError in Age.
            if not isinstance(body, bytes) or not math.isfinite(seconds):
                raise TypeError(type(body).__name__, age)
            pairs = [(str(name), str(value)) for name, value in json.loads(headers)]
            return CIMultiDictProxy(CIMultiDict(pairs)), body, seconds
        except (ValueError, TypeError, RecursionError):  # not PUT's: a miss, never a 5xx
            self._state.errors += 1
            return None

    def put(
        self, key: Key, endpoint: str, headers: CIMultiDict[str], body: bytes, ttl: float
    ) -> None:
        keys = self._keys(key, endpoint)
        args = (max(1, int(ttl * 1000)), MAX_ENTRIES, json.dumps(list(headers.items())), body)
        self._state.spawn(lambda redis: self._put(redis, keys, args))
