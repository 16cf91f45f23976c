"""Background work that never dies silently.

A task the proxy runs on its own (the secret-file watcher, a reload) may meet an error no
one foresaw. ``Supervisor.run`` catches it, logs it once by class (its text may hold
anything, so only at debug level with the traceback), records it where ``/-/ready`` and
``/-/status`` show it, and starts the task again after a pause. Token refreshes do the same
inside ``TokenManager``, which also fails the requests waiting on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["BackgroundProblem", "Supervisor"]

log = logging.getLogger("proxy.background")


@dataclass(frozen=True)
class BackgroundProblem:
    """What went wrong in a background task: its name, the error's class, when (wall clock)."""

    task: str
    error: str
    at: float


class Supervisor:
    """``await supervisor.run("watcher", watch)``: runs ``watch`` until cancelled, restarting
    it after an unexpected error; ``supervisor.problems`` holds the latest of each task."""

    def __init__(self, restart_after: float = 5.0) -> None:
        self.restart_after = restart_after
        self.problems: dict[str, BackgroundProblem] = {}

    def record(self, task: str, exc: BaseException) -> None:
        """Log ``exc`` once by class and keep it for the status endpoints."""
        name = type(exc).__name__
        self.problems[task] = BackgroundProblem(task, name, time.time())
        log.error("%s failed unexpectedly (%s); it carries on", task, name)
        log.debug("%s failure", task, exc_info=exc)

    def clear(self, task: str) -> None:
        self.problems.pop(task, None)

    async def run(self, task: str, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.record(task, exc)
            await asyncio.sleep(self.restart_after)
