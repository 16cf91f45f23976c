"""Keeping a gateway access token fresh: ``TokenManager`` (one fetch is ``token_client.py``).

A held token is in one of three states, as in google-auth:

- fresh: used as it is;
- stale (inside the refresh margin): still used, while one background refresh runs;
- unusable (none yet, expired, or rejected upstream): callers wait for the refresh in flight.

So no request waits while a valid token exists, and however many requests arrive, only one
token request is in flight at a time. Transient failures (network, timeout, 5xx, 429, a
malformed answer) are retried in the background with capped exponential backoff and jitter;
rejected credentials (400/401/403) stop the loop, since retrying cannot fix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from ..errors import CredentialsRejected, TokenEndpointUnavailable, TokenError
from .token import Clock, SystemClock, Token

__all__ = ["TokenManager"]

log = logging.getLogger("proxy.tokens")

# Seconds during which a token fetched because of a gateway 401 is not replaced again.
REJECTION_HOLDOFF = 30.0


TokenSource = Callable[[], Awaitable[Token]]


class TokenManager:
    """Keeps one credential set's token fresh: ``token = await manager.token()``.

    ``source`` fetches a token (``TokenClient.fetch`` in the product, a fake in tests).

    When the gateway refuses a token with 401 (``replace``), one refresh is made and the
    held token stays in use until its replacement is in hand. A token fetched because of a
    401 is not replaced again for ``rejection_holdoff`` seconds: a gateway that refuses
    every token (an account disabled mid-run, a path the client may not use) then costs a
    couple of token requests a minute, not one per request, and its 401s are relayed.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        refresh_margin: float = 300.0,
        clock: Clock | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        rejected_retry_interval: float = 60.0,
        rejection_holdoff: float = REJECTION_HOLDOFF,
        rng: random.Random | None = None,
        name: str = "default",
        on_refresh: Callable[[str, float], None] | None = None,
        one_shot: bool = False,
    ) -> None:
        self._source = source
        self._margin = refresh_margin
        self._clock = clock or SystemClock()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rejected_retry_interval = rejected_retry_interval
        self._holdoff = rejection_holdoff
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.name = name
        self._label = "" if name == "default" else f" ({name})"  # in log lines
        # Told of every token request's outcome ("success", "rejected", "unavailable")
        # and duration: the metrics hook, kept out of this module.
        self._on_refresh = on_refresh
        # For a command that wants one token and exits (``token``): each ``first_token``
        # is one request, failures are not retried in the background nor logged here (the
        # caller reports them), and a success is not announced with a next refresh.
        self._one_shot = one_shot

        self._token: Token | None = None
        self._attempt: asyncio.Future[Token] | None = None  # outcome of the fetch in flight
        self._refresher: asyncio.Task[None] | None = None  # fetch, back off, fetch again...
        self._timer: asyncio.TimerHandle | None = None  # wakes the refresher before expiry
        self._retry_at: float | None = None  # while backing off: when the next attempt starts
        self._last_error: TokenError | None = None
        self._rejected_at: float | None = None
        self._again = False  # fetch once more when the one in flight ends (new credentials)
        self._due = 0.0  # when the held token's refresh is due
        self._for_401 = False  # the fetch in flight was asked for by a gateway 401
        self._protected_until = 0.0  # a token fetched for a 401 is not replaced before then
        self._refused: Token | None = None  # the latest token the gateway answered 401 to
        self.refreshes: dict[str, int] = {"success": 0, "rejected": 0, "unavailable": 0}
        self.relayed_401s = 0  # 401s relayed as they are, during a holdoff
        # The latest token request: wall-clock time, outcome, and the error if it failed.
        self.last_refresh: tuple[float, str, TokenError | None] | None = None

    def __repr__(self) -> str:
        return f"TokenManager(name={self.name!r}, ready={self.ready})"

    # ------------------------------------------------------------------ for callers

    @property
    def ready(self) -> bool:
        """True while a usable token is held, unless the gateway refused it and then our
        credentials too (then nothing this profile sends can succeed)."""
        token = self._token
        if token is None or not token.usable(self._clock.monotonic()):
            return False
        return not (token is self._refused and isinstance(self._last_error, CredentialsRejected))

    @property
    def current(self) -> Token | None:
        """The token held now, usable or not (for status reports; never log its value)."""
        return self._token

    def expires_in(self) -> float | None:
        """Seconds until the held token expires; ``None`` without one."""
        token = self._token
        return None if token is None else token.expires_at - self._clock.monotonic()

    @property
    def last_error(self) -> TokenError | None:
        return self._last_error

    async def token(self) -> Token:
        """A usable token; waits only when none is held. Raises ``TokenError`` subclasses."""
        now = self._clock.monotonic()
        token = self._token
        if token is not None and now < token.usable_until:
            if now >= self._due and not self._recently_rejected(now):
                self._ensure_refreshing()
            return token
        return await self._wait_for_new_token(now)

    async def replace(self, rejected: Token) -> Token | None:
        """The gateway answered 401 to ``rejected``: a new token to replay with, or ``None``
        when the 401 should go to the client as it is (during a holdoff, or when no new
        token can be had now). Raises ``CredentialsRejected`` when the token endpoint
        refuses our credentials: that, not the 401, is what the client needs to know.
        """
        if rejected is self._token:
            self._refused = rejected
        if self._recently_rejected(self._now()):
            assert self._last_error is not None  # noqa: S101 - set with _rejected_at
            raise self._last_error
        if not self.rejected(rejected):
            return None
        current = self._token
        if current is not None and current is not rejected and current.usable(self._now()):
            return current  # another request's 401 already brought a new one
        try:
            return await asyncio.shield(self._ensure_refreshing())
        except CredentialsRejected:
            raise
        except TokenError:
            return None  # an outage: the gateway's 401 says more than our 503 would

    def rejected(self, token: Token) -> bool:
        """The gateway answered 401 to ``token``: start fetching a new one (it stays in use
        until then). False during a holdoff, when the 401 is to be relayed as it is."""
        now = self._now()
        if token is not self._token:
            return True  # replaced already
        self._refused = token
        if now < self._protected_until:
            self.relayed_401s += 1
            return False
        if self._recently_rejected(now):
            return False  # our credentials are refused: no token to be had for a while
        self._for_401 = True
        self._ensure_refreshing()
        return True

    def credentials_changed(self) -> None:
        """The source now uses new credentials: fetch with them soon, keeping the held token
        in use meanwhile (and if the new ones are refused)."""
        self._rejected_at = None
        self._again = True  # a fetch in flight used the old credentials
        self._ensure_refreshing()

    async def start(self) -> None:
        """Begin fetching the first token; ``first_token`` waits for the outcome."""
        self._ensure_refreshing()

    async def first_token(self) -> Token:
        """The outcome of the first attempt (after ``start``): a token or its error."""
        return await asyncio.shield(self._ensure_refreshing())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    # ------------------------------------------------------------------ the refresher

    def _now(self) -> float:
        return self._clock.monotonic()

    async def _wait_for_new_token(self, now: float) -> Token:
        refreshing = self._refresher is not None and not self._refresher.done()
        attempt_in_flight = self._attempt is not None and not self._attempt.done()
        if refreshing and not attempt_in_flight and self._last_error is not None:
            # Backing off after a failure: answer now rather than queue every request.
            retry_in = max(1.0, (self._retry_at or now) - now)
            raise self._last_error.again(retry_in)
        if not refreshing and self._recently_rejected(now):
            assert self._last_error is not None  # noqa: S101 - set with _rejected_at
            raise self._last_error
        return await asyncio.shield(self._ensure_refreshing())

    def _recently_rejected(self, now: float) -> bool:
        """Rejected credentials are not retried in a loop: one new try per interval, so a
        secret fixed at the gateway's end is still picked up without a restart."""
        return (
            self._rejected_at is not None
            and now - self._rejected_at < self._rejected_retry_interval
        )

    def _ensure_refreshing(self) -> asyncio.Future[Token]:
        """Start the refresher unless it runs; return the outcome of its latest attempt."""
        if self._attempt is None or self._refresher is None or self._refresher.done():
            self._attempt = asyncio.get_running_loop().create_future()
            self._refresher = asyncio.create_task(self._refresh(self._attempt))
            self._refresher.add_done_callback(self._refresher_ended)
        return self._attempt

    def _refresher_ended(self, task: asyncio.Task[None]) -> None:
        """The last line of defence: a refresher that died of a bug must not leave anyone
        waiting on its attempt forever. (Failures of a fetch are handled in ``_refresh``.)"""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error(
            "token refresher%s died (%s); the next request starts another",
            self._label,
            type(exc).__name__,
        )
        log.debug("token refresher failure", exc_info=exc)
        error = TokenEndpointUnavailable(
            f"the proxy failed to refresh its token ({type(exc).__name__})", retry_after=1.0
        )
        self._last_error = error
        attempt = self._attempt
        if attempt is not None and not attempt.done():
            _fail(attempt, error)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** (failures - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter"
        return max(delay, retry_after or 0.0)

    async def _fetch(self) -> Token:
        """One token request; an unexpected error (a bug, a broken source) becomes a
        ``TokenEndpointUnavailable`` naming its class, so it is retried like any outage."""
        try:
            return await self._source()
        except TokenError:
            raise
        except Exception as exc:
            log.debug("token request failure", exc_info=exc)
            raise TokenEndpointUnavailable(
                f"the token request failed unexpectedly ({type(exc).__name__})"
            ) from None

    async def _refresh(self, attempt: asyncio.Future[Token]) -> None:
        failures = 0
        while True:
            self._again = False
            started = self._now()
            try:
                token = await self._fetch()
            except CredentialsRejected as exc:
                self._record("rejected", started, exc)
                self._last_error, self._rejected_at = exc, self._now()
                if not self._one_shot:
                    log.error("token refresh failed%s: %s; not retrying", self._label, exc.text)
                _fail(attempt, exc)
                if not self._again:
                    return
                attempt = self._attempt = asyncio.get_running_loop().create_future()
                continue
            except TokenEndpointUnavailable as exc:
                failures += 1
                self._record("unavailable", started, exc)
                if self._one_shot:
                    self._last_error = exc
                    _fail(attempt, exc)
                    return
                delay = self._backoff(failures, exc.retry_after)
                # Callers answered with this error learn when the next attempt starts.
                error = exc.again(max(1.0, delay))
                self._last_error = error
                self._retry_at = self._now() + delay
                log.warning(
                    "token refresh failed%s: %s; attempt %d, next try in %.1f s%s",
                    self._label,
                    error.text,
                    failures,
                    delay,
                    "" if self.ready else " (no valid token: requests answered 503)",
                )
                _fail(attempt, error)
                await asyncio.sleep(delay)
                self._retry_at = None
                attempt = self._attempt = asyncio.get_running_loop().create_future()
                continue
            took = self._record("success", started, None)
            self._install(token, took)
            attempt.set_result(token)
            if not self._again:
                return
            attempt = self._attempt = asyncio.get_running_loop().create_future()

    def _record(self, outcome: str, started: float, error: TokenError | None) -> float:
        took = self._now() - started
        self.refreshes[outcome] += 1
        self.last_refresh = (self._clock.time(), outcome, error)
        if self._on_refresh is not None:
            self._on_refresh(outcome, took)
        return took

    def _install(self, token: Token, took: float) -> None:
        due = self._due = token.refresh_due(self._margin)
        self._token = token
        self._last_error = self._rejected_at = None
        self._protected_until = token.obtained_at + self._holdoff if self._for_401 else 0.0
        self._for_401 = False
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
        if self._timer is not None:
            self._timer.cancel()
        # Up to a tenth of the margin early, at random: proxies (and profiles) started
        # together do not all ask the token endpoint at the same instant.
        spread = self._rng.uniform(0, (token.expires_at - due) / 10)
        delay = max(0.0, due - spread - self._now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._ensure_refreshing)


def _fail(attempt: asyncio.Future[Token], exc: TokenError) -> None:
    attempt.set_exception(exc)
    # Mark it retrieved: when no request is waiting, asyncio would otherwise log it as lost.
    attempt.exception()
