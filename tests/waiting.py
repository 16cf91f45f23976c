"""Waiting for a state instead of sleeping a guessed while: ``await until(lambda: n == 2)``.

A test that sleeps and then asserts an exact count fails on a slow or busy machine (the
event came late) and passes when it should not (the event came twice, later). Wait until
the state is reached, within a bound that is a hang guard, not a timing assertion; then
assert exactly, so that one event too many still fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["until"]


async def until(condition: Callable[[], bool], what: str = "", seconds: float = 10) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            # What is awaited has no event of its own to wait on; a short poll, in tests only.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {seconds} s: {what or condition}") from None
