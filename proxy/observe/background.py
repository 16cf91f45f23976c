"""Background work that never dies silently.

A task the proxy runs on its own (the secret-file watcher, a reload, a token refresh) may
meet an error no one foresaw. ``Supervisor.record`` keeps it for ``/-/ready`` and
``/-/status`` and logs it by class (its text may hold anything: the traceback only at debug),
an ERROR once per episode; ``clear`` ends the episode when the task next succeeds.
``Supervisor.run`` restarts a task after a pause (token refreshes back off and retry inside
``TokenManager``, which reports its crashes here too).
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
    it after an unexpected error; ``supervisor.problems`` holds each task's current problem."""

    def __init__(self, restart_after: float = 5.0) -> None:
        self.restart_after = restart_after
        self.problems: dict[str, BackgroundProblem] = {}

    def record(self, task: str, exc: BaseException) -> None:
        name = type(exc).__name__
        known = self.problems.get(task)
        self.problems[task] = BackgroundProblem(task, name, time.time())
        if known is None or known.error != name:
            log.error("%s failed unexpectedly (%s); it carries on", task, name)
        else:
            log.debug("%s failed again (%s)", task, name)
        log.debug("%s failure", task, exc_info=exc)

    def clear(self, task: str) -> None:
        if self.problems.pop(task, None) is not None:
            log.info("%s recovered", task)

    async def run(self, task: str, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
                self.clear(task)
                return
            except Exception as exc:  # not CancelledError, a BaseException
                self.record(task, exc)
            await asyncio.sleep(self.restart_after)
