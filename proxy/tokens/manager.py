"""Keeping a gateway access token fresh: ``TokenManager`` (one fetch: upstream/token_client.py).

What callers get in each phase of the lifecycle (refresher.py draws it): with a usable
token held (google-auth's fresh, or stale in REFRESHING) they get it at once, so no request
waits while a valid token exists; without one they wait for the fetch in flight (FETCHING),
or are answered at once with its error (BACKOFF, with a Retry-After; REJECTED). Status
reports read ``state`` itself (its token is never logged); flow.py's 401 rule asks ``replace``.
"""

from __future__ import annotations

import asyncio

from ..errors import CredentialsRejected, TokenEndpointUnavailable, TokenError
from .refresher import SHUTTING_DOWN, Phase, Refresher
from .token import Token

__all__ = ["TokenManager"]


class TokenManager(Refresher):
    """Keeps one credential set's token fresh: ``token = await manager.token()``; ``source``
    fetches one (``TokenClient.fetch``, or a fake in tests)."""

    def __repr__(self) -> str:
        return f"TokenManager(name={self.name!r}, phase={self.state.phase.value})"

    @property
    def ready(self) -> bool:
        """True while a usable token is held, unless the gateway refused it and then our
        credentials too (then nothing this profile sends can succeed)."""
        state = self.state
        token = state.token
        if state.phase is Phase.CLOSED or token is None or not token.usable(self._now()):
            return False
        return not (token is self._refused and isinstance(state.error, CredentialsRejected))

    def expires_in(self) -> float | None:
        """Seconds until the held token expires; ``None`` without one."""
        token = self.state.token
        return None if token is None else token.expires_at - self._now()

    async def token(self) -> Token:
        """A usable token; waits only when none is held. Raises ``TokenError`` subclasses."""
        now = self._now()
        state = self.state
        token = state.token
        if token is not None and token.usable(now):
            if state.phase in (Phase.VALID, Phase.REJECTED) and now >= state.until:
                self._start()  # due (a timer may lag the clock) or may be asked again
            return token
        if state.phase is Phase.CLOSED:
            raise TokenEndpointUnavailable(SHUTTING_DOWN)
        if state.phase in (Phase.BACKOFF, Phase.REJECTED) and now < state.until:
            assert state.error is not None  # noqa: S101 - both phases are entered with one
            if state.phase is Phase.REJECTED:
                raise state.error
            # Answered now with when to come back, rather than queueing every request.
            raise state.error.again(max(1.0, state.until - now))
        return await asyncio.shield(self._start())

    async def replace(self, refused: Token) -> Token | None:
        """The gateway answered 401 to ``refused``: a new token to replay with, or ``None``
        when the 401 should go to the client as it is (during a holdoff, or when no new
        token can be had now). Raises ``CredentialsRejected`` when the token endpoint
        refuses our credentials: that, not the 401, is what the client needs to know.
        The held token stays in use until its replacement is in hand."""
        now = self._now()
        state = self.state
        held = refused is state.token
        if held:
            self._refused = refused
        if state.phase is Phase.REJECTED and now < state.until:
            assert state.error is not None  # noqa: S101
            raise state.error
        if held and now < state.holdoff:  # fetched for a 401 moments ago: relay this one
            self.relayed_401s += 1
            return None
        if not held and state.token is not None and state.token.usable(now):
            return state.token  # another request's 401 already brought a new one
        try:
            return await asyncio.shield(self._start(for_401=held))
        except CredentialsRejected:
            raise
        except TokenError:
            return None  # an outage: the gateway's 401 says more than our 503 would

    def credentials_changed(self) -> None:
        """The source now uses new credentials: fetch with them soon, keeping the held token
        in use meanwhile (and if the new ones are refused)."""
        if self.state.phase is Phase.REJECTED:
            self._enter(Phase.REJECTED, until=self._now())
        self._again = True  # a fetch in flight used the old credentials
        self._start()

    async def start(self) -> None:
        """Begin fetching the first token; ``first_token`` waits for the outcome."""
        self._start()

    async def first_token(self) -> Token:
        """The outcome of the latest attempt (after ``start``): a token or its error. In
        one-shot mode, each call after an outcome is a new token request."""
        attempt = self._attempt
        if attempt is None or (self._one_shot and attempt.done()):
            attempt = self._start()
        return await asyncio.shield(attempt)
