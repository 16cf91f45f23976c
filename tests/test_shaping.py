"""Rate shaping and the metadata cache as units: a fake clock moved by hand, real asyncio
timers only where waiting is the point (windows of a fraction of a second)."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from proxy.sharing.cache import MetadataCache, cacheable, wants_fresh
from proxy.upstream.shaping import Budget, OverBudget, Shaper, endpoint_class

from .waiting import until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/dap/query/canvas/table", "list_tables"),
        ("GET", "/dap/query/canvas/table/accounts/schema", "get_schema"),
        ("POST", "/dap/query/canvas/table/accounts/data", "create_job"),
        ("GET", "/dap/job/abc-123", "get_job"),
        ("POST", "/dap/object/url", "object_urls"),
        ("POST", "/dap/query/canvas/table", None),
        ("GET", "/dap/query/canvas/table/accounts/data", None),
        ("GET", "/dap/query/canvas/table/", None),
        ("GET", "/ids/auth/login", None),
        ("GET", "/dap/job", None),
        ("GET", "/dap/", None),
    ],
)
def test_endpoint_classes(method: str, path: str, expected: str | None) -> None:
    assert endpoint_class(method, path) == expected


async def test_a_budget_lets_its_limit_through_then_refuses_with_the_exact_wait() -> None:
    clock = Clock()
    budget = Budget(limit=3, window=60.0, clock=clock)
    for _ in range(3):
        assert await budget.acquire(max_wait=0) == 0.0
        clock.now += 1
    with pytest.raises(OverBudget) as refused:
        await budget.acquire(max_wait=0)
    # The first went at 100; the window (with its 2 % margin) ends at 161.2; now is 103.
    assert refused.value.retry_after == pytest.approx(61.2 - 3)
    assert budget.remaining() == 0


async def test_the_window_slides_no_burst_across_a_boundary() -> None:
    clock = Clock()
    budget = Budget(limit=2, window=10.0, clock=clock)
    await budget.acquire(0)
    clock.now += 9
    await budget.acquire(0)
    clock.now += 2  # the first has left the window, the second has not
    await budget.acquire(0)
    with pytest.raises(OverBudget):
        await budget.acquire(0)


async def test_waiters_go_first_come_first_served_when_slots_free() -> None:
    budget = Budget(limit=1, window=0.2, clock=asyncio.get_running_loop().time)
    order: list[int] = []

    async def take(number: int) -> None:
        await budget.acquire(max_wait=5)
        order.append(number)

    await budget.acquire(0)
    await asyncio.gather(*(take(n) for n in range(3)))
    assert order == [0, 1, 2]


async def test_a_client_that_hangs_up_leaves_the_queue_at_once() -> None:
    budget = Budget(limit=1, window=30.0, clock=asyncio.get_running_loop().time)
    await budget.acquire(0)
    waiting = asyncio.create_task(budget.acquire(max_wait=60))
    await until(lambda: budget.queued > 0, "the acquire queued")
    assert budget.queued == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.queued == 0


async def test_a_pause_tells_waiters_who_can_no_longer_make_it() -> None:
    budget = Budget(limit=1, window=0.2, clock=asyncio.get_running_loop().time)
    await budget.acquire(0)
    waiting = asyncio.create_task(budget.acquire(max_wait=1))
    await asyncio.sleep(0.01)
    budget.pause(30)  # the gateway said 429, Retry-After: 30
    with pytest.raises(OverBudget) as refused:
        await waiting
    assert refused.value.retry_after == pytest.approx(30, abs=0.1)


async def test_the_shaper_counts_what_it_did() -> None:
    clock = Clock()
    shaper = Shaper({"create_job": 1}, window=60, max_wait=0, clock=clock)
    await shaper.acquire("default", "create_job")
    with pytest.raises(OverBudget):
        await shaper.acquire("default", "create_job")
    await shaper.acquire("other", "create_job")  # profiles have budgets of their own
    shaper.gateway_429("other", "create_job", None)
    stats = shaper.stats
    assert stats["default", "create_job"].local_429 == 1
    assert stats["other", "create_job"].gateway_429 == 1
    assert shaper.remaining("other") == {"create_job": 0}


def test_the_cache_keeps_complete_answers_per_key_and_counts() -> None:
    clock = Clock()
    cache = MetadataCache({"list_tables": 60.0, "get_schema": 0}, clock=clock)
    assert cache.caches("list_tables") and not cache.caches("get_schema")
    key = cache.key("default", "/dap/query/canvas/table", "gzip")
    assert cache.get(key, "list_tables") is None
    cache.put(key, "list_tables", CIMultiDict({"Content-Type": "application/json"}), b"{}")
    clock.now += 10
    answer = cache.get(key, "list_tables")
    assert answer is not None and answer.body == b"{}" and cache.age(answer) == 10
    assert cache.get(cache.key("other", "/dap/query/canvas/table", "gzip"), "list_tables") is None
    assert cache.get(cache.key("default", "/dap/query/canvas/table", ""), "list_tables") is None
    clock.now += 60
    assert cache.get(key, "list_tables") is None  # expired
    assert cache.hits == {("default", "list_tables"): 1}
    assert cache.misses[("default", "list_tables")] == 3


def test_what_the_cache_refuses_and_when_a_client_asks_for_fresh() -> None:
    assert not cacheable(CIMultiDict({"Set-Cookie": "a=b"}))
    assert not cacheable(CIMultiDict({"Cache-Control": "private, max-age=10"}))
    assert cacheable(CIMultiDict({"Cache-Control": "max-age=60"}))
    assert wants_fresh(CIMultiDict({"Cache-Control": "no-cache"}))
    assert wants_fresh(CIMultiDict({"Pragma": "no-cache"}))
    assert not wants_fresh(CIMultiDict())


def test_answers_varying_on_more_than_the_encoding_are_not_cacheable() -> None:
    assert cacheable(CIMultiDict({"Vary": "Accept-Encoding"}))
    assert cacheable(CIMultiDict({"Vary": "accept-encoding, Accept-Encoding"}))
    assert not cacheable(CIMultiDict({"Vary": "Accept, X-Who"}))
    assert not cacheable(CIMultiDict([("Vary", "Accept-Encoding"), ("Vary", "Cookie")]))
    assert not cacheable(CIMultiDict({"Vary": "*"}))
