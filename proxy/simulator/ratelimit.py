"""Per-minute request limits, counted per client and per endpoint, as the gateway does.

A sliding window: each key keeps the times of its accepted requests in the last minute,
so memory is bounded by the limit, and the wait a refusal announces is exact.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

__all__ = ["RATE_LIMITS", "RateLimiter"]

# Requests per minute, by route name, as Instructure documents them for DAP.
RATE_LIMITS: dict[str, int] = {
    "create_job": 5,
    "list_tables": 5,
    "get_job": 500,
    "get_schema": 500,
    "object_urls": 200,
}


class RateLimiter:
    """``limiter.hit(key, limit, now)`` is None when allowed, else the seconds to wait."""

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._hits: dict[Hashable, deque[float]] = {}

    def hit(self, key: Hashable, limit: int, now: float) -> int | None:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        if len(hits) >= limit:
            # Retry-After is whole seconds; round up so a client that obeys it gets in.
            return max(1, math.ceil(hits[0] + self._window - now))
        hits.append(now)
        return None
