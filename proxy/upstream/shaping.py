"""Staying within the gateway's rate limits, for every tool behind one proxy.

The gateway limits each client id per endpoint class and per minute (create job 5, list
tables 5, get job 500, get schema 500, object URLs 200), and every tool behind the proxy
spends the same budget, so the proxy keeps the count: a ``Budget`` per (profile, endpoint
class), a sliding window (no burst of 10 across a minute boundary) and a first-come queue.

A request over budget waits, up to ``max_wait``, for a slot; if none can free in time it is
refused at once, unsent, with a 429 in the gateway's shape and an exact ``Retry-After``. A
client that hangs up leaves the queue. A gateway 429 anyway (another user of the client id,
a lowered limit) pauses the budget for its ``Retry-After`` (a window without one), up to
``retry_after_cap`` (a ``Retry-After: 864000`` would pause the class for ten days; a capped
one is logged). Our window is 2 % longer than the gateway's: a request let in one window after
another is never early.

Several replicas keep one budget when given ``shared`` (a ``SharedBudgets``: Redis, in
sharing/shared_state.py): each slot is reserved there, atomically, in arrival order; the
request sleeps until its slot (a client that hangs up gives it back). When the shared store
cannot answer in time, the request falls back to this replica's own ``Budget``, which also
counts every request this replica sent, so it starts from what it knows.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .shared_budgets import SharedBudgets

__all__ = ["Budget", "OverBudget", "Shaper", "ShapingStats", "endpoint_class"]

log = logging.getLogger("proxy.shaping")

_SAFETY = 1.02  # our window, relative to the gateway's
_CLASSES = (  # method, whole path, class; a segment in braces is any one segment
    ("GET", "/dap/query/{ns}/table", "list_tables"),
    ("GET", "/dap/query/{ns}/table/{t}/schema", "get_schema"),
    ("POST", "/dap/query/{ns}/table/{t}/data", "create_job"),
    ("GET", "/dap/job/{id}", "get_job"),
    ("POST", "/dap/object/url", "object_urls"),
)
_PATTERNS = [
    (method, re.compile(re.sub(r"\{\w+\}", "[^/]*", path)), name) for method, path, name in _CLASSES
]


def endpoint_class(method: str, path: str) -> str | None:
    """The gateway's rate-limit class of a request (``path`` as forwarded), else ``None``."""
    return next((name for m, p, name in _PATTERNS if m == method and p.fullmatch(path)), None)


class OverBudget(Exception):
    """No slot frees within the wait allowed; ``retry_after`` says when one will."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"over the rate limit; a slot frees in {retry_after:.1f} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    deadline: float


class Budget:
    """One profile's budget for one endpoint class: ``waited = await budget.acquire(30)``."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window * _SAFETY
        self._clock = clock
        self._admitted: deque[float] = deque()  # when each request in the window went
        self._waiters: deque[_Waiter] = deque()
        self._paused_until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def remaining(self) -> int:
        """Requests that could go at once now."""
        now = self._clock()
        self._expire(now)
        if now < self._paused_until:
            return 0
        return max(0, self.limit - len(self._admitted) - len(self._waiters))

    def _expire(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - self.window:
            self._admitted.popleft()

    def _slots(self, count: int, now: float) -> Iterator[float]:
        """When the next ``count`` requests could go, in queue order."""
        self._expire(now)
        start = max(now, self._paused_until)
        history = list(self._admitted)
        for _ in range(count):
            slot = start
            if len(history) >= self.limit:
                slot = max(start, history[-self.limit] + self.window)
            history.append(slot)
            yield slot

    async def acquire(self, max_wait: float) -> float:
        """Wait for a slot (at most ``max_wait`` s); the seconds waited. Raises
        ``OverBudget`` at once when no slot can free in time."""
        now = self._clock()
        *_, slot = self._slots(len(self._waiters) + 1, now)
        if slot <= now and not self._waiters:
            self._admitted.append(now)
            return 0.0
        if slot - now > max_wait:
            raise OverBudget(slot - now)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), now + max_wait)
        self._waiters.append(waiter)
        self._schedule(now)
        try:
            await waiter.future
        except asyncio.CancelledError:
            # A client that hung up leaves the queue at once, and those behind move up.
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._reschedule()
            raise
        return self._clock() - now

    def note(self) -> None:
        """A request went by the shared budget: counted here too, for when it goes away."""
        self._admitted.append(self._clock())

    def pause(self, seconds: float) -> None:
        """The gateway answered 429: nothing more goes before ``seconds`` have passed."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake()  # which sets the next timer

    def _schedule(self, now: float) -> None:
        if self._timer is not None or not self._waiters:
            return
        slot = next(self._slots(1, now))
        self._timer = asyncio.get_running_loop().call_later(max(0.0, slot - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._clock()
        waiters = self._waiters
        # Let in, first come first served, as many as the window allows now.
        while waiters and next(self._slots(1, now)) <= now:
            waiter = waiters.popleft()
            if not waiter.future.done():
                self._admitted.append(now)
                waiter.future.set_result(None)
        # Those who can no longer get a slot before their deadline (a pause moved the
        # slots later) are told now, with when one will free, rather than at the deadline.
        for waiter, slot in zip(waiters, self._slots(len(waiters), now), strict=True):
            if slot > waiter.deadline and not waiter.future.done():
                waiter.future.set_exception(OverBudget(slot - now))
        self._waiters = deque(waiter for waiter in waiters if not waiter.future.done())
        self._schedule(now)


@dataclass
class ShapingStats:
    """What shaping did, per (profile, class), for the metrics."""

    waited_seconds: float = 0.0
    held: int = 0  # requests that waited for a slot
    local_429: int = 0
    gateway_429: int = 0


class Shaper:
    """The budgets of every profile: ``waited = await shaper.acquire("default", "create_job")``."""

    def __init__(
        self,
        limits: Mapping[str, int],
        *,
        window: float = 60.0,
        max_wait: float = 60.0,
        retry_after_cap: float = 900.0,
        clock: Callable[[], float] | None = None,
        shared: SharedBudgets | None = None,
    ) -> None:
        self.limits = dict(limits)
        self.window = window
        self.max_wait = max_wait
        self.retry_after_cap = retry_after_cap
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._budgets: dict[tuple[str, str], Budget] = {}
        self.stats: dict[tuple[str, str], ShapingStats] = {}
        self.shared = shared
        self._sleeping: dict[tuple[str, str], int] = {}  # waiting for a shared slot

    def budget(self, profile: str, endpoint: str) -> Budget:
        key = (profile, endpoint)
        if key not in self._budgets:
            self._budgets[key] = Budget(self.limits[endpoint], self.window, self._clock)
            self.stats[key] = ShapingStats()
        return self._budgets[key]

    async def acquire(self, profile: str, endpoint: str, max_wait: float | None = None) -> float:
        """Seconds waited for a slot; raises ``OverBudget`` (counted as a local 429)."""
        budget = self.budget(profile, endpoint)
        stats = self.stats[profile, endpoint]
        wait_allowed = self.max_wait if max_wait is None else max_wait
        try:
            waited = await self._shared(budget, profile, endpoint, wait_allowed)
            if waited is None:  # no shared budget, or it cannot answer now: our own
                waited = await budget.acquire(wait_allowed)
        except OverBudget:
            stats.local_429 += 1
            raise
        if waited > 0:
            stats.held += 1
            stats.waited_seconds += waited
        return waited

    async def _shared(
        self, budget: Budget, profile: str, endpoint: str, max_wait: float
    ) -> float | None:
        """Seconds waited for a slot of the budget every replica shares; ``None``: none."""
        if self.shared is None:
            return None
        answer = await self.shared.reserve(profile, endpoint, budget.limit, budget.window, max_wait)
        if answer is None:
            return None
        if not answer.granted:
            raise OverBudget(answer.wait)
        if answer.wait > 0:
            key = (profile, endpoint)
            self._sleeping[key] = self._sleeping.get(key, 0) + 1
            try:
                await asyncio.sleep(answer.wait)
            except asyncio.CancelledError:
                self.shared.release(profile, endpoint, answer.ticket)  # the slot goes back
                raise
            finally:
                self._sleeping[key] -= 1
        budget.note()
        return answer.wait

    def gateway_429(self, profile: str, endpoint: str, retry_after: float | None) -> float:
        """Pause the class for the gateway's ``Retry-After`` (capped), else a window; the
        seconds paused."""
        self.stats[profile, endpoint].gateway_429 += 1
        pause = retry_after or self.window
        if pause > self.retry_after_cap:
            log.warning(
                "the gateway asked to wait %.0f s (Retry-After) for %s (profile %s); pausing "
                "%.0f s, the cap (retry_after_cap)",
                pause,
                endpoint.replace("_", " "),
                profile,
                self.retry_after_cap,
            )
            pause = self.retry_after_cap
        self.budget(profile, endpoint).pause(pause)
        if self.shared is not None:
            self.shared.pause(profile, endpoint, pause)
        return pause

    def queued(self) -> dict[tuple[str, str], int]:
        sleeping = self._sleeping
        return {key: budget.queued + sleeping.get(key, 0) for key, budget in self._budgets.items()}

    def remaining(self, profile: str) -> dict[str, int]:
        """Each class's requests that could go at once now, for ``/-/status``."""
        return {endpoint: self.budget(profile, endpoint).remaining() for endpoint in self.limits}
