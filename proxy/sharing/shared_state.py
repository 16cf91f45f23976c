"""The Redis every replica shares (``shared_state``), and what happens when it goes away.

Replicas share two things through it: the rate budgets (redis_budgets.py) and the metadata
cache (redis_cache.py). Never a secret: not the client secret, not the gateway token (each
replica fetches its own: sharing it would put a credential into Redis for no gain, since a
token fetch is rare and not rate-limited the way the API is), not an access key; keys are
named by a digest of the profile's upstream and client id.

Every call goes through ``SharedState.call``, bounded by ``timeout`` (100 ms by default): a
slow or absent Redis costs a request at most that, once. The first failure marks the state
down (one warning per episode, and none for another within a minute; ``/-/status`` shows
a problem, ``proxy_shared_state_up`` is 0); while down, callers do not try Redis at all and
carry on with this replica's own budgets and cache. A supervised task pings Redis (every
2 s while up; while down, after 0.25 s, doubling to 2 s) and marks it up again when it
answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..config import Profile
from ..config.records import SharedStateConfig, TrustConfig
from ..observe.background import Supervisor

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["NOW", "TASK", "Script", "SharedState", "namespace"]

log = logging.getLogger("proxy.shared_state")

TASK = "shared_state"  # its name in /-/status problems and the supervisor
PING_SECONDS = 2.0  # while up: how often Redis is asked whether it is still there
FIRST_RETRY = 0.25  # while down: the first wait before trying again, doubled each time
LAST_RETRY = 2.0
QUIET_SECONDS = 60.0  # a new episode this soon after the last one is logged at debug only
MAX_BACKGROUND = 256  # writes in flight that no request waits for (give-backs, cache fills)
_CONNECTIONS = 100

T = TypeVar("T")

# Lua: ``now``, in seconds, by Redis's clock: the same for every replica, whatever theirs say.
NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"


def namespace(profile: Profile) -> str:
    """The part of every Redis key that names a profile: a digest of its upstream and client
    id (the gateway's budgets are per client id), the same on every replica, no secret."""
    client_id = profile.credentials.client_id if profile.credentials else ""
    return hashlib.sha256(f"{profile.url}\n{client_id}".encode()).hexdigest()[:16]


class Script:
    """A Lua script, sent by its digest (``EVALSHA``), whole the first time a server lacks it
    (a restarted Redis): ``await script(redis, keys, args)``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, redis: Redis, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> Any:
        from redis.exceptions import NoScriptError  # loaded by then: start() imported redis

        # Untyped here: redis-py's annotations of these changed between releases (5.x: every
        # argument a str, the result maybe not awaitable), and the proxy supports both.
        client: Any = redis
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)


class SharedState:
    """``await state.call(lambda redis: redis.ping())``: the answer, or ``None`` when Redis
    is down or does not answer within the timeout. ``start`` and ``close`` bracket its life."""

    def __init__(
        self, config: SharedStateConfig, supervisor: Supervisor, trust: TrustConfig | None = None
    ) -> None:
        self.config = config
        self.trust = trust or TrustConfig()  # for rediss://: the CAs besides OpenSSL's own
        self.shown = config.shown  # the URL, password masked
        self.up = False
        self.since = time.time()  # when the current state (up or down) began
        self.problem: str | None = "not connected yet"
        self.errors = 0  # calls that failed or timed out
        self._supervisor = supervisor
        self._redis: Redis | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._warned_at = -QUIET_SECONDS  # monotonic: when an episode was last logged
        self._episode = 0.0  # monotonic: when the current (or last) episode began

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("SharedState.start() was not called")
        return self._redis

    async def start(self) -> None:
        # Imported here, not with the module: a proxy without shared_state never loads the
        # Redis client (about 90 ms of startup and several MiB).
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        url, timeout = self.config.url, self.config.timeout
        # As a dict: redis-py 5.x annotates some of these narrower than it accepts (timeout
        # an int, NoBackoff untyped); 6 and later as used here.
        options: dict[str, Any] = {
            "host": url.host or "",
            "port": url.port or 6379,
            "db": int(url.path.strip("/") or 0),
            "username": url.user or None,
            "password": self.config.password or url.password or None,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(cast(Any, NoBackoff)(), 0),  # the caller falls back at once instead
            "max_connections": _CONNECTIONS,
            "timeout": timeout,  # waiting for a free connection counts against it too
        }
        if url.scheme == "rediss":
            options.update(_tls(self.trust))
        pool = BlockingConnectionPool(**options)
        self._redis = Redis.from_pool(pool)
        if await self.check():
            log.info("shared state: %s; rate budgets and the metadata cache shared", self.shown)
        self._watcher = asyncio.create_task(self._supervisor.run(TASK, self._watch))

    async def close(self) -> None:
        tasks = [self._watcher, *self._background] if self._watcher else [*self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    async def call(self, what: Callable[[Redis], Awaitable[T]]) -> T | None:
        if not self.up or self._redis is None:
            return None
        try:
            async with asyncio.timeout(self.config.timeout):
                return await what(self._redis)
        except _failures() as exc:
            self._failed(exc)
            return None

    def spawn(self, what: Callable[[Redis], Awaitable[object]]) -> None:
        """``call`` in the background, for writes no request waits for; dropped (counted as
        an error) past ``MAX_BACKGROUND`` in flight, so a stuck Redis holds no more memory."""
        if not self.up:
            return
        if len(self._background) >= MAX_BACKGROUND:
            self.errors += 1
            return
        task: asyncio.Task[object] = asyncio.create_task(self.call(what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def check(self) -> bool:
        """Ask Redis whether it is there (a PING within the timeout); up or down accordingly."""
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.redis.ping()
        except _failures() as exc:
            self._failed(exc)
            return False
        if not self.up:
            if self.problem != "not connected yet":
                level = logging.INFO if self._warned_at == self._episode else logging.DEBUG
                log.log(level, "shared state: %s reachable again; shared again", self.shown)
            self.up, self.since, self.problem = True, time.time(), None
        return True

    def _loud(self) -> bool:
        """Log this transition above debug? Not when the last episode was under a minute ago:
        a Redis that answers PING but refuses the rest (out of memory) would flap."""
        return time.monotonic() - self._warned_at >= QUIET_SECONDS

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.up and self.problem != "not connected yet":
            return  # the same episode: logged once already
        self.up, self.since, self.problem = False, time.time(), self._describe(exc)
        loud = self._loud()
        self._episode = time.monotonic()
        log.log(
            logging.WARNING if loud else logging.DEBUG,
            "shared state: %s unreachable (%s); each replica keeps its own rate budgets and "
            "cache until it is back (shared_state)",
            self.shown,
            self.problem,
        )
        if loud:
            self._warned_at = self._episode

    def _describe(self, exc: BaseException) -> str:
        """The error's class and text, never the password (as a precaution: Redis's own
        messages do not repeat it)."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in (self.config.password, self.config.url.password):
            if secret:
                text = text.replace(secret, "***")
        return text[:200]

    async def _watch(self) -> None:
        delay = FIRST_RETRY
        while True:
            await asyncio.sleep(PING_SECONDS if self.up else delay)
            delay = FIRST_RETRY if await self.check() else min(delay * 2, LAST_RETRY)


def _tls(trust: TrustConfig) -> dict[str, Any]:
    """A ``rediss://`` connection: Redis's certificate verified, its host name included
    (redis-py before 6 checked no name by default), against OpenSSL's default store and the
    configured bundles (``ca_file``: a private CA's Redis). ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` reach OpenSSL's defaults by themselves."""
    from redis.asyncio.connection import SSLConnection

    pems = []
    for path in (trust.ca_file, trust.cert_file):
        if path:
            try:
                pems.append(Path(path).read_text(encoding="utf-8"))
            except (OSError, UnicodeError) as exc:  # gone since load_config read it
                # Not a failed start: without it, the handshake fails and says so (/-/status).
                log.warning("shared state: cannot read %s (%s); not trusted for Redis", path, exc)
    pem = "\n".join(pems)
    return {
        "connection_class": SSLConnection,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_data": pem or None,
    }


def _failures() -> tuple[type[BaseException], ...]:
    """What a failed call to Redis raises (evaluated only when a call raised): anything. The
    client raises more than ``RedisError`` on answers it did not expect (``AttributeError``
    for a ``HELLO`` answered with a string), and a server that is not quite Redis must cost a
    request no more than an absent one: never a 5xx, never a failed start."""
    return (Exception,)
