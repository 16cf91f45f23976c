"""What a running simulator knows and what tests can change: faults, counters, records.

Reach it from a test with ``app[SIMULATOR_STATE]`` (or ``server.app[SIMULATOR_STATE]``).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from .identity import TokenIssuer
from .jobs import JobStore
from .ratelimit import RateLimiter
from .settings import DEMO_CLIENT_ID, SimulatorSettings

__all__ = ["SIMULATOR_STATE", "Faults", "RecordedRequest", "SimulatorState"]


@dataclass
class Faults:
    """Failures to inject, changed by tests at run time: ``state.faults.api_statuses = [503]``.

    Lists are consumed one entry per request; the other knobs hold until changed back.
    "API requests" are all requests but login and object downloads: the five DAP
    endpoints, unknown paths, and routes a test adds. API faults act after the bearer
    check and the rate limit, as a failure behind the gateway would.

    - ``token_statuses``: each login pops the first and answers it instead, in the
      gateway's error shape (``Retry-After: retry_after`` on 429 and 503).
    - ``token_delay``: seconds each login waits before answering (for timeouts).
    - ``token_body``: when set, every login answers 200 ``application/json`` with exactly
      these bytes (invalid JSON, missing fields, a token that is not a JWT...).
    - ``credentials_revoked``: logins fail with 401 as for a wrong secret.
    - ``api_statuses``: each API request pops the first and answers it instead.
    - ``api_delay``: seconds each API request waits before being handled.
    - ``api_disconnects``: that many API requests get their connection closed without an
      answer (the official client retries these).
    - ``fail_jobs``: jobs created while set end ``failed`` instead of ``complete``.
    - ``retry_after``: the ``Retry-After`` seconds sent with injected 429 and 503 answers.
    - ``token_generation``: tokens issued under an older generation are refused with 401;
      :meth:`revoke_tokens` moves it on.
    """

    token_statuses: list[int] = field(default_factory=list)
    token_delay: float = 0.0
    token_body: bytes | None = None
    credentials_revoked: bool = False
    api_statuses: list[int] = field(default_factory=list)
    api_delay: float = 0.0
    api_disconnects: int = 0
    fail_jobs: bool = False
    retry_after: int = 1
    token_generation: int = 0

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (401); new logins work."""
        self.token_generation += 1


@dataclass(frozen=True)
class RecordedRequest:
    """A request as it reached the simulator; ``path`` is raw, query string included."""

    method: str
    path: str
    route: str | None  # the route's name ("login", "create_job"...), None if unmatched
    # Hidden from repr: they carry bearer tokens and Basic credentials.
    headers: CIMultiDict[str] = field(repr=False)


@dataclass(eq=False)
class SimulatorState:
    """Counters and records of one simulator, and its knobs: ``state.faults``."""

    settings: SimulatorSettings
    faults: Faults = field(default_factory=Faults)
    token_requests: int = 0  # every request to the login route
    logins: int = 0  # logins that issued a token
    requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=1000))
    tokens: TokenIssuer = field(init=False, repr=False)
    jobs: JobStore = field(init=False, repr=False)
    limiter: RateLimiter = field(init=False, repr=False)
    url_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        self.tokens = TokenIssuer(self.settings.token_lifetime, self.settings.clock)
        self.jobs = JobStore(self.settings)
        self.limiter = RateLimiter(self.settings.rate_window)

    def issue_token(self, client_id: str = DEMO_CLIENT_ID) -> str:
        """A valid bearer token without a login, for tests that are not about logging in."""
        return self.tokens.issue(client_id, self.faults.token_generation)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The recorded requests that matched the route of that name, oldest first."""
        return [r for r in self.requests if r.route == route]


SIMULATOR_STATE = web.AppKey("simulator_state", SimulatorState)
