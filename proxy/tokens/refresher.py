"""The token lifecycle's states and its one worker: ``Refresher`` (``TokenManager``'s base).

The lifecycle is one ``State`` at a time, a frozen record replaced on every transition:

    NEW ─▶ FETCHING ─ok─▶ VALID ─due (margin, jitter)─▶ REFRESHING ─ok─▶ VALID
              │                                            │
              ├── outage, bad answer or crash ─▶ BACKOFF ◀─┤  sleep, then fetch again
              └── credentials refused (400/401/403) ─▶ REJECTED: no fetch before ``until``
    any ── close() ──▶ CLOSED

One worker task runs the fetches, so however many requests arrive, one token request is in
flight at a time. A crash (the source raising something unforeseen, or a bug in taking the
token in) backs off like an outage and is reported once through the ``Supervisor``, which
clears it on the next success.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import CredentialsRejected, TokenEndpointUnavailable, TokenError
from ..observe.background import Supervisor
from .token import Clock, Token

__all__ = ["SHUTTING_DOWN", "Phase", "Refresher", "State", "TokenSource"]

log = logging.getLogger("proxy.tokens")

SHUTTING_DOWN = "the proxy is shutting down"
# A token fetched for a gateway 401 is not replaced for this long (seconds): a gateway that
# refuses every token then costs a couple of token requests a minute, not one per request.
HOLDOFF = 30.0

TokenSource = Callable[[], Awaitable[Token]]


class Phase(enum.Enum):
    NEW = "new"  # nothing asked for yet
    FETCHING = "fetching"  # a token request in flight, no usable token: callers wait for it
    VALID = "valid"  # a usable token; its refresh starts at ``until``
    REFRESHING = "refreshing"  # a token request in flight while the held token is used
    BACKOFF = "backoff"  # the latest request failed or crashed; the next starts at ``until``
    REJECTED = "rejected"  # credentials refused: not asked again before ``until``
    CLOSED = "closed"


@dataclass(frozen=True)
class State:
    """Where the lifecycle is: the phase, the held token, the latest failure (until a success)."""

    phase: Phase
    token: Token | None = None
    error: TokenError | None = None
    until: float = 0.0  # VALID: refresh due; BACKOFF: next attempt; REJECTED: next try
    failures: int = 0  # consecutive failures, the backoff's exponent
    holdoff: float = 0.0  # a token fetched for a gateway 401 is not replaced before then


class Refresher:
    """The lifecycle's state and the worker that moves it on (``TokenManager`` adds callers)."""

    def __init__(
        self,
        source: TokenSource,
        *,
        refresh_margin: float = 300.0,
        clock: Clock | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        rejected_retry_interval: float = 60.0,
        rng: random.Random | None = None,
        name: str = "default",
        on_refresh: Callable[[str, float], None] | None = None,
        one_shot: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._source = source
        self._margin = refresh_margin
        self._clock: Clock = clock or time
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._rejected_retry_interval = rejected_retry_interval
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.name = name
        self._label = "" if name == "default" else f" ({name})"  # in log lines
        self.task = f"token refresh{self._label}"  # its name among the supervisor's problems
        self._on_refresh = on_refresh  # the metrics hook: each token request's outcome, time
        # For a command that wants one token and exits (``token``): each ``first_token`` is
        # one request, failures are neither retried nor logged here (the caller does both).
        self._one_shot = one_shot
        self._supervisor = supervisor or Supervisor()

        self.state = State(Phase.NEW)  # read-only outside: each transition replaces it
        self._attempt: asyncio.Future[Token] | None = None  # the fetch in flight's outcome
        self._worker: asyncio.Task[None] | None = None  # fetch, back off, fetch again...
        self._timer: asyncio.TimerHandle | None = None  # wakes the worker when VALID ends
        self._again = False  # fetch once more after the one in flight (new credentials)
        self._for_401 = False  # the fetch in flight was asked for by a gateway 401
        self._refused: Token | None = None  # the latest token the gateway answered 401 to
        self.refreshes: dict[str, int] = {"success": 0, "rejected": 0, "unavailable": 0}
        self.relayed_401s = 0  # 401s relayed as they are, during a holdoff
        # The latest token request: wall-clock time, outcome, and the error if it failed.
        self.last_refresh: tuple[float, str, TokenError | None] | None = None

    async def close(self) -> None:
        """Stop for good. Never raises: shutdown goes on to close everything else."""
        self._enter(Phase.CLOSED)
        if self._timer is not None:
            self._timer.cancel()
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait({worker})  # its own outcome is not ours to raise
        self._finish(TokenEndpointUnavailable(SHUTTING_DOWN))

    def _now(self) -> float:
        return self._clock.monotonic()

    def _enter(self, phase: Phase, **changes: Any) -> None:
        self.state = replace(self.state, phase=phase, **changes)

    def _start(self, *, for_401: bool = False) -> asyncio.Future[Token]:
        """Start the worker unless it runs; the outcome of its current attempt."""
        self._for_401 |= for_401
        if self._attempt is not None and self._worker is not None and not self._worker.done():
            return self._attempt
        self._attempt = attempt = asyncio.get_running_loop().create_future()
        if self.state.phase is Phase.CLOSED:
            self._finish(TokenEndpointUnavailable(SHUTTING_DOWN))
            return attempt
        self._enter_fetch()
        self._worker = asyncio.create_task(self._work())
        self._worker.add_done_callback(self._worker_ended)
        return attempt

    def _enter_fetch(self) -> None:
        """─▶ FETCHING, or REFRESHING while a usable token is held."""
        token = self.state.token
        held = token is not None and token.usable(self._now())
        self._enter(Phase.REFRESHING if held else Phase.FETCHING)

    async def _work(self) -> None:
        """Fetch; after a failure sleep and fetch again, after new credentials fetch again."""
        while True:
            self._again = False
            self._enter_fetch()
            started = self._now()
            delay: float | None = None
            try:
                self._enter_valid(await self._source(), started)
            except CredentialsRejected as exc:
                self._enter_rejected(exc, started)
            except TokenError as exc:
                delay = self._enter_backoff(exc, started)
            except Exception as exc:  # a bug, here or in the source: backs off like an outage
                delay = self._enter_backoff(_crash(exc), started, crash=exc)
            if delay is not None:
                await asyncio.sleep(delay)
            elif not self._again:
                return
            self._attempt = asyncio.get_running_loop().create_future()

    def _enter_valid(self, token: Token, started: float) -> None:
        """─▶ VALID, with the timer set for the next refresh."""
        now = self._now()
        due = token.refresh_due(self._margin)
        if not token.usable(now) or due <= now:
            raise TokenEndpointUnavailable(
                f"the token endpoint sent a token that expires in "
                f"{token.expires_at - now:.0f} s: too soon to use"
            )
        # Up to a tenth of the margin early, at random: proxies (and profiles) started
        # together do not all ask the token endpoint at the same instant.
        spread = self._rng.uniform(0, (token.expires_at - due) / 10)
        took = now - started
        self._record("success", took)  # first: a hook that raises fails the attempt
        holdoff = token.obtained_at + HOLDOFF if self._for_401 else 0.0
        self.state = State(Phase.VALID, token, None, due, holdoff=holdoff)
        self._for_401 = False
        delay = max(0.0, due - spread - now)
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)
        if self._one_shot:
            log.info("token fetched%s: expires in %.0f s", self._label, token.lifetime)
        else:
            log.info(
                "token refreshed%s: expires in %.0f s, next refresh in %.0f s (took %.3f s)",
                self._label,
                token.lifetime,
                due - token.obtained_at,
                took,
            )
        self._supervisor.clear(self.task)
        self._finish(token)

    def _enter_rejected(self, exc: CredentialsRejected, started: float) -> None:
        """─▶ REJECTED: the credentials are not tried again before ``until``."""
        now = self._now()
        self._record("rejected", now - started, exc)
        self._enter(Phase.REJECTED, error=exc, until=now + self._rejected_retry_interval)
        if not self._one_shot:
            log.error("token refresh failed%s: %s; not retrying", self._label, exc.text)
        self._finish(exc)

    def _enter_backoff(
        self, exc: TokenError, started: float, crash: Exception | None = None
    ) -> float | None:
        """─▶ BACKOFF: the seconds to wait before the next attempt (``None`` in one-shot)."""
        now = self._now()
        self._record("unavailable", now - started, exc)
        if crash is not None:
            self._supervisor.record(self.task, crash)
        if self._one_shot:
            self._enter(Phase.BACKOFF, error=exc, until=now)
            self._finish(exc)
            return None
        failures = self.state.failures + 1
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** (failures - 1))
        jittered = ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter"
        delay = max(jittered, exc.retry_after or 0.0)
        held = self.state.token
        error = exc.again(max(1.0, delay))  # callers learn when the next attempt starts
        self._enter(Phase.BACKOFF, error=error, until=now + delay, failures=failures)
        log.warning(
            "token refresh failed%s: %s; attempt %d, next try in %.1f s%s",
            self._label,
            error.text,
            failures,
            delay,
            "" if held and held.usable(now) else " (no valid token: requests answered 503)",
        )
        self._finish(error)
        return delay

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """The last line of defence: a worker that died of a bug (or of a cancellation that
        was not close()'s) backs off like any failure and leaves no one waiting."""
        if self.state.phase is Phase.CLOSED:
            return
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            return
        self._supervisor.record(self.task, exc)
        error = _crash(exc).again(self._backoff_cap)
        self._enter(Phase.BACKOFF, error=error, until=self._now() + self._backoff_cap)
        self._finish(error)

    def _record(self, outcome: str, took: float, error: TokenError | None = None) -> None:
        """A token request ended: drop the refresh timer left from VALID (the outcome sets
        what follows), count the outcome and tell the hook. A hook that raises fails a
        success (a crash: reported); after a failure it is only logged."""
        if self._timer is not None:
            self._timer.cancel()
        if self._on_refresh is not None:
            try:
                self._on_refresh(outcome, took)
            except Exception as exc:
                if error is None:
                    raise
                log.debug("token refresh hook failure", exc_info=exc)  # the crash is reported
        self.refreshes[outcome] += 1
        self.last_refresh = (self._clock.time(), outcome, error)

    def _finish(self, outcome: Token | TokenError) -> None:
        """The attempt in flight ends with ``outcome``, unless it has ended already."""
        attempt = self._attempt
        if attempt is None or attempt.done():
            return
        if isinstance(outcome, Token):
            attempt.set_result(outcome)
        else:
            attempt.set_exception(outcome)
            # Retrieved: when no request is waiting, asyncio would otherwise log it as lost.
            attempt.exception()


def _crash(exc: BaseException) -> TokenEndpointUnavailable:
    """An unforeseen error, named by class only (its text may hold anything)."""
    return TokenEndpointUnavailable(f"the proxy failed to refresh its token ({type(exc).__name__})")
