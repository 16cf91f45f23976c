"""Stopping in the order a load balancer needs, so that no request fails on the way out:

1. **Not ready.** ``/-/ready`` answers 503 at once, while the proxy still serves; every
   answer from then on says ``Connection: close`` (protocol.py), so no kept-alive connection
   is left idle in a load balancer's pool, to be reused for a request the proxy would never
   read. This lasts ``shutdown_delay`` seconds (0: not at all; never on Ctrl-C; a second
   signal ends it): the time a load balancer or a Kubernetes Service takes to stop sending.
2. **Stop accepting.** The listening socket closes: a new connection is refused, which a
   load balancer retries on another replica (nginx's ``proxy_next_upstream error``).
3. **Drain.** Requests in flight finish within ``timeouts.shutdown`` (protocol.py); then
   what is left is cut, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from .signals import wait_for_signal

__all__ = ["Stopping", "stop"]

log = logging.getLogger("proxy.server")


class Stopping:
    """Whether the process is on its way out; set once, when the stop signal arrives."""

    __slots__ = ("on_begin", "since")

    def __init__(self) -> None:
        self.since: float | None = None  # time.monotonic() of the signal
        # Called once at the signal: the runner marks the requests in flight as their
        # connections' last (protocol.py), as it marks every request after.
        self.on_begin: list[Callable[[], None]] = []

    @property
    def stopping(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            for call in self.on_begin:
                call()


async def stop(runner: web.AppRunner, stopping: Stopping, delay: float, drain: float) -> None:
    """The three steps above; ``delay`` is 0 on Ctrl-C."""
    stopping.begin()
    if delay > 0:
        log.info(
            "stopping: not ready, serving for %g s more (shutdown_delay) so that load "
            "balancers stop sending; a second signal skips the wait",
            delay,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_for_signal(), delay)
    log.info("shutting down: no new connections; up to %g s for requests in flight", drain)
    await runner.cleanup()
