"""How long the gateway may stay silent (``timeouts.read``), timed for every request at once.

A request waits on the gateway for its answer's head (once the body is sent) and then for
each piece of the body; each wait may last ``timeouts.read`` seconds. aiohttp's own
``sock_read`` arms and cancels three loop timers per request for this, for waits that almost
never run out. Here one timer ticks for all of them (every second, or every quarter of the
limit if that is shorter), and a wait found past its deadline ends with ``TimeoutError`` as
``asyncio.timeout`` ends one: its task cancelled, the cancellation turned into the error
(``asyncio.timeout`` itself would cost a small request more than the rest of this). A wait
ends between ``seconds`` and ``seconds`` plus one tick after it began.

    wait = silence.wait()
    async with wait:              # raises TimeoutError once the gateway was silent too long
        ...
        wait.paused()             # now someone else's turn (the client's): not timed
        ...
        wait.heard()              # bytes arrived: the wait starts anew

Waits are counted: one per request in flight at most, which ``max_connections`` bounds.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any

__all__ = ["Silence", "Wait"]

_NEVER = math.inf


class Silence:
    """``Silence(seconds)``: the clock of every ``Wait`` it makes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # Never under 10 ms: a limit of a few microseconds must not spin the loop.
        self._tick = max(0.01, min(1.0, seconds / 4))
        self._waits: set[Wait] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wait(self) -> Wait:
        """A wait on the gateway, timed while inside ``async with`` (it may be entered
        again, as a request sent twice is)."""
        return Wait(self)

    def __len__(self) -> int:
        return len(self._waits)

    def _begin(self, wait: Wait) -> float:
        """Count ``wait`` in; its deadline."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._waits.add(wait)
        if self._timer is None:
            self._timer = loop.call_later(self._tick, self._check)
        return loop.time() + self.seconds

    def _deadline(self) -> float:
        assert self._loop is not None  # noqa: S101 - set when the first wait began
        return self._loop.time() + self.seconds

    def _check(self) -> None:
        self._timer = None
        assert self._loop is not None  # noqa: S101 - set by the wait that armed this timer
        now = self._loop.time()
        for wait in [wait for wait in self._waits if wait.deadline <= now]:
            wait.expire()
        if self._waits:
            self._timer = self._loop.call_later(self._tick, self._check)


class Wait:
    """One request's wait on the gateway (``Silence.wait``)."""

    __slots__ = ("_cancelling", "_expired", "_silence", "_task", "deadline")

    def __init__(self, silence: Silence) -> None:
        self._silence = silence
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False
        self.deadline = _NEVER

    async def __aenter__(self) -> Wait:
        self.deadline = self._silence._begin(self)
        task = asyncio.current_task(self._silence._loop)
        assert task is not None  # noqa: S101 - awaited, so inside a task
        self._task, self._cancelling, self._expired = task, task.cancelling(), False
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._silence._waits.discard(self)
        self.deadline = _NEVER
        task, self._task = self._task, None
        # As asyncio.timeout: the error only when the cancellation was ours alone (the
        # client hanging up at the same moment stays a cancellation).
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and kind is asyncio.CancelledError
        ):
            raise TimeoutError(f"silent for {self._silence.seconds:g} s") from error

    def heard(self) -> None:
        """The gateway made progress (or it is its turn again): the wait starts anew."""
        if self._task is not None:  # inside its ``async with``
            self.deadline = self._silence._deadline()

    def paused(self) -> None:
        """Waiting on someone else now (the client): the gateway's silence is not timed."""
        self.deadline = _NEVER

    def expire(self) -> None:
        """Past its deadline: end the wait with ``TimeoutError`` (once)."""
        self.deadline = _NEVER
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()
