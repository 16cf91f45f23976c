"""silence.py: the gateway's silence timed for every request by one ticking timer.

The proxy-level behaviour (a 504 when the gateway never answers, a cut client when it stalls
mid-body) is tested against real servers in test_faults.py; these pin the clock itself.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.upstream.silence import Silence

LIMIT = 0.2  # seconds; the tick is a quarter of it


async def test_a_wait_past_its_limit_ends_with_timeout_error_never_early() -> None:
    silence = Silence(LIMIT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with silence.wait():
            await asyncio.sleep(5)  # the gateway never answers (a failure ends here)
    took = loop.time() - started
    assert LIMIT <= took < LIMIT + 2, took  # never early; late by a tick (a busy machine: more)
    assert len(silence) == 0


async def test_a_wait_that_hears_in_time_never_ends() -> None:
    silence = Silence(LIMIT)
    async with silence.wait() as wait:
        for _ in range(8):  # 0.4 s in all, twice the limit, never silent for 0.2 s
            await asyncio.sleep(LIMIT / 4)
            wait.heard()
    assert len(silence) == 0


async def test_a_paused_wait_is_not_timed_until_it_is_the_gateways_turn_again() -> None:
    silence = Silence(LIMIT)
    async with silence.wait() as wait:
        wait.paused()  # the client's turn: as long as it takes
        await asyncio.sleep(3 * LIMIT)
        wait.heard()
    with pytest.raises(TimeoutError):
        async with silence.wait() as wait:
            wait.paused()
            await asyncio.sleep(LIMIT / 2)
            wait.heard()  # the gateway's turn again: timed from here
            await asyncio.sleep(5)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    silence = Silence(LIMIT)

    async def waiting() -> None:
        async with silence.wait():
            await asyncio.sleep(5)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(LIMIT / 2)
    task.cancel()  # the client hung up before the gateway's time ran out
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(silence) == 0


async def test_a_wait_can_be_entered_again_and_each_entry_is_timed_anew() -> None:
    silence = Silence(LIMIT)
    wait = silence.wait()
    for _ in range(3):  # a request sent twice (a 401 replayed) uses its wait twice
        async with wait:
            await asyncio.sleep(LIMIT * 0.6)
    with pytest.raises(TimeoutError):
        async with wait:
            await asyncio.sleep(5)


async def test_thousands_of_waits_are_released_and_the_clock_stops_when_none_is_left() -> None:
    silence = Silence(LIMIT)
    release = asyncio.Event()
    quick: list[int] = []

    async def hold() -> None:
        async with silence.wait() as wait:
            wait.paused()  # held without being timed out, as a slow client's request is
            await release.wait()

    async def answered() -> None:
        async with silence.wait():
            await asyncio.sleep(0)
        quick.append(1)

    held = [asyncio.create_task(hold()) for _ in range(5000)]
    await asyncio.sleep(0)
    assert len(silence) == 5000
    # One more wait among them is timed as usual, and cost nothing to the others.
    await answered()
    assert quick == [1]
    with pytest.raises(TimeoutError):
        async with silence.wait():
            await asyncio.sleep(5)
    release.set()
    await asyncio.gather(*held)
    assert len(silence) == 0
    await asyncio.sleep(LIMIT / 2)  # the next tick finds nothing and does not re-arm
    assert silence._timer is None


async def test_a_tiny_limit_does_not_spin_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    silence = Silence(1e-9)  # accepted by the config (positive), and absurd
    checks: list[float] = []
    check = silence._check
    monkeypatch.setattr(silence, "_check", lambda: (checks.append(0.0), check())[1])
    async with silence.wait() as wait:
        wait.paused()  # held, so the clock keeps ticking for it
        await asyncio.sleep(0.2)
    assert len(checks) <= 25, len(checks)  # every 10 ms at most, not every loop turn
