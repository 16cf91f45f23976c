"""Waiting for the signal to stop: SIGTERM and SIGINT (Ctrl-C) everywhere; on Windows, where
asyncio has no signal handlers, Ctrl-C and Ctrl-Break, through ``signal.signal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["STOP_SIGNALS", "wait_for_signal"]

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGBREAK") if hasattr(signal, name)
)


async def wait_for_signal() -> int:
    """Return on SIGTERM or SIGINT (and Ctrl-Break on Windows): the signal's number."""
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def arrived(signum: int) -> None:
        received.append(signum)
        stop.set()

    with contextlib.ExitStack() as restore:
        for signum in STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, arrived, signum)
                restore.callback(loop.remove_signal_handler, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                # Windows: no loop signal handlers. signal.signal runs the handler in the main
                # thread between bytecodes; hand the event to the loop from there.
                # (Not from another thread: ValueError; the embedding program decides then.)
                with contextlib.suppress(ValueError):
                    old = signal.signal(signum, lambda n, _: loop.call_soon_threadsafe(arrived, n))
                    restore.callback(signal.signal, signum, old)
        await stop.wait()
    return received[0]
