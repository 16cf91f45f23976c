"""One proxy shared by a team: the rate limits kept and repeated metadata answered from memory.

``Sharing.forward`` wraps the forwarder for every request that reaches the gateway:

1. it reads the request's endpoint class once (``shaping.endpoint_class``);
2. a table list or schema (``GET``) may be answered from the metadata cache at once,
   with ``Age`` (``Cache-Control: no-cache`` skips the cache and refreshes it);
3. anything else goes through the forwarder, which waits for a rate-limit slot for its
   class (``shaping.Shaper``), and a complete 200 answer to a cached class is kept.

The access line says what happened (``held=1.2s``, ``cache=hit``); the metrics and
``/-/status`` count it. With ``shared_state``, the budgets and the cache are those every
replica shares (shared_state.py); ``lifespan`` connects to Redis and lets it go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..admission.routing import Route
from ..config import Config
from ..observe.background import Supervisor
from ..observe.logs import BYTES_OUT, CACHE, PROFILE, REQUEST_ID
from ..responses import REQUEST_ID_HEADER
from ..upstream.answer import FilteredAnswer
from ..upstream.body_filter import BodyFilter
from ..upstream.forward import Forwarder
from ..upstream.shaping import Shaper, endpoint_class
from .cache import CachedAnswer, CacheFill, MetadataCache, wants_fresh
from .redis_budgets import RedisBudgets
from .redis_cache import RedisCache
from .relay import ObjectRelay
from .shared_state import SharedState, namespace

__all__ = ["Sharing"]


class Sharing:
    """``Sharing(config)``; ``await sharing.forward(request, route, forwarder, profile)``."""

    def __init__(
        self,
        config: Config,
        relay: ObjectRelay | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        limits = config.rate_limits
        self.shared_state: SharedState | None = None
        budgets, answers = None, None
        if config.shared_state is not None and (limits.enabled or config.cache.enabled):
            self.shared_state = state = SharedState(
                config.shared_state, supervisor or Supervisor(), config.trust
            )
            namespaces = {name: namespace(profile) for name, profile in config.profiles.items()}
            budgets, answers = RedisBudgets(state, namespaces), RedisCache(state, namespaces)
        self.shaper = (
            Shaper(
                limits.limits,
                window=limits.window,
                max_wait=limits.max_wait,
                retry_after_cap=limits.retry_after_cap,
                shared=budgets,
            )
            if limits.enabled
            else None
        )
        self.cache = MetadataCache(config.cache.ttls) if config.cache.enabled else None
        if self.cache is not None:
            self.cache.shared = answers
        self.relay = relay  # object_relay: object-URL answers get the proxy's own URLs

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: Redis connected (or being retried) while the app runs."""
        if self.shared_state is None:
            yield
            return
        await self.shared_state.start()
        try:
            yield
        finally:
            await self.shared_state.close()

    async def forward(
        self, request: web.Request, route: Route, forwarder: Forwarder, profile: str
    ) -> web.StreamResponse:
        if self.shaper is None and self.cache is None and self.relay is None:
            return await forwarder.forward(request, route.target, route.local_prefix)
        endpoint = endpoint_class(request.method, route.path)
        body_filter: BodyFilter | None = None
        if self.relay is not None and endpoint == "object_urls":
            body_filter = self.relay.filter(request, profile)
        cache = self.cache
        if endpoint is not None and cache is not None and cache.caches(endpoint):
            key = cache.key(profile, route.target, request.headers.get("Accept-Encoding"))
            if wants_fresh(request.headers):
                request[CACHE] = "refresh"
            else:
                answer = await cache.find(key, endpoint)
                if answer is not None:
                    request[CACHE] = "hit"
                    request[PROFILE] = profile
                    return self._from_cache(request, answer)
                request[CACHE] = "miss"
            body_filter = CacheFill(cache, key, endpoint)
        return await forwarder.forward(
            request, route.target, route.local_prefix, endpoint=endpoint, body_filter=body_filter
        )

    def _from_cache(self, request: web.Request, answer: CachedAnswer) -> FilteredAnswer:
        assert self.cache is not None  # noqa: S101 - only called with a cache
        headers = answer.headers.copy()
        headers[REQUEST_ID_HEADER] = request[REQUEST_ID]  # this request's, not the first's
        headers["Age"] = str(self.cache.age(answer))
        headers.pop("Content-Length", None)
        request[BYTES_OUT] = len(answer.body)
        return FilteredAnswer(status=200, headers=headers, body=answer.body)
