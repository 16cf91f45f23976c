"""Answering repeated metadata requests without spending the gateway's budget.

The table list (5 requests a minute per client id) and table schemas change rarely, and
every tool asks for them. Complete ``200`` answers to ``GET`` list-tables and get-schema are
kept a short while (60 s and 300 s by default), per profile (institutions see different
tables), keyed by the path, the query and ``Accept-Encoding``; never answers that set cookies,
say ``private``/``no-store``, or vary on anything but ``Accept-Encoding`` (``Vary: Accept,
X-Who``: the key cannot tell those callers apart), nor bodies over ``MAX_BODY``. A
client's ``Cache-Control: no-cache`` goes upstream and refreshes the entry. Answers from the
cache carry ``Age``. Bodies are relayed byte for byte either way.

With ``shared_state`` the replicas share entries (redis_cache.py, a ``SharedAnswers``): a
miss here asks Redis before the gateway, and every entry kept here is kept there too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["CacheFill", "CachedAnswer", "MetadataCache", "SharedAnswers", "wants_fresh"]

MAX_BODY = 1024 * 1024
MAX_ENTRIES = 512  # per endpoint class: memory stays bounded
_UNCACHEABLE = ("private", "no-store")


@dataclass(frozen=True)
class CachedAnswer:
    """A complete 200 answer: its headers (as relayed) and body, and when it was kept."""

    headers: CIMultiDictProxy[str]
    body: bytes = field(repr=False)
    stored_at: float


Key = tuple[str, str, str]  # profile, path and query, Accept-Encoding


class SharedAnswers(Protocol):
    """Entries every replica shares; ``get`` gives ``(headers, body, age)``, else ``None``."""

    async def get(
        self, key: Key, endpoint: str
    ) -> tuple[CIMultiDictProxy[str], bytes, float] | None: ...

    def put(
        self, key: Key, endpoint: str, headers: CIMultiDict[str], body: bytes, ttl: float
    ) -> None: ...


def wants_fresh(headers: Mapping[str, str]) -> bool:
    """The client asked to bypass caches (``Cache-Control: no-cache`` or ``Pragma``)."""
    control = headers.get("Cache-Control", "").lower()
    pragma = headers.get("Pragma", "").lower()
    return "no-cache" in control or "max-age=0" in control or "no-cache" in pragma


def cacheable(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bool:
    """An answer the gateway did not mark as one client's own, nor as varying with request
    headers other than ``Accept-Encoding`` (which is in the key)."""
    control = headers.get("Cache-Control", "").lower()
    varies = {
        name.strip().lower() for value in headers.getall("Vary", ()) for name in value.split(",")
    }
    return (
        "Set-Cookie" not in headers
        and not any(word in control for word in _UNCACHEABLE)
        and varies <= {"accept-encoding", ""}
    )


class MetadataCache:
    """``answer = cache.get(key, endpoint)``; ``cache.put(key, endpoint, headers, body)``."""

    def __init__(
        self, ttls: Mapping[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._ttls = dict(ttls)
        self.shared: SharedAnswers | None = None  # set when replicas share state
        self._caches: dict[str, TTLCache[Key, CachedAnswer]] = {
            endpoint: TTLCache(maxsize=MAX_ENTRIES, ttl=ttl, timer=clock)
            for endpoint, ttl in ttls.items()
            if ttl > 0
        }
        self.hits: dict[tuple[str, str], int] = {}
        self.misses: dict[tuple[str, str], int] = {}

    def caches(self, endpoint: str | None) -> bool:
        return endpoint is not None and endpoint in self._caches

    @staticmethod
    def key(profile: str, target: str, accept_encoding: str | None) -> Key:
        return profile, target, accept_encoding or ""

    def get(self, key: Key, endpoint: str) -> CachedAnswer | None:
        """This replica's entry, counted as a hit or a miss."""
        return self._count(key, endpoint, self._caches[endpoint].get(key))

    async def find(self, key: Key, endpoint: str) -> CachedAnswer | None:
        """This replica's entry, else the one the replicas share; counted."""
        answer = self._caches[endpoint].get(key)
        if answer is None and self.shared is not None:
            found = await self.shared.get(key, endpoint)
            if found is not None:
                headers, body, age = found
                answer = CachedAnswer(headers, body, self._clock() - age)
        return self._count(key, endpoint, answer)

    def _count(self, key: Key, endpoint: str, answer: CachedAnswer | None) -> CachedAnswer | None:
        counts = self.hits if answer is not None else self.misses
        counts[key[0], endpoint] = counts.get((key[0], endpoint), 0) + 1
        return answer

    def put(self, key: Key, endpoint: str, headers: CIMultiDict[str], body: bytes) -> None:
        if len(body) <= MAX_BODY and cacheable(headers):
            self._caches[endpoint][key] = CachedAnswer(
                CIMultiDictProxy(CIMultiDict(headers)), body, self._clock()
            )
            if self.shared is not None:
                self.shared.put(key, endpoint, headers, body, self._ttls[endpoint])

    def age(self, answer: CachedAnswer) -> int:
        """Whole seconds since the answer was kept, for the ``Age`` header."""
        return int(self._clock() - answer.stored_at)


class CacheFill:
    """The ``BodyFilter`` (body_filter.py) that keeps a complete 200 answer under ``key``."""

    def __init__(self, cache: MetadataCache, key: Key, endpoint: str) -> None:
        self._cache, self._key, self._endpoint = cache, key, endpoint

    def wants(self, status: int, headers: CIMultiDict[str]) -> bool:
        return status == 200 and cacheable(headers)

    def apply(self, status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
        self._cache.put(self._key, self._endpoint, headers, body)
        return body
