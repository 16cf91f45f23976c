"""What a simulator is started with: its clients, timings and data size. Read-only.

Everything that changes while it runs (faults, counters) lives in :mod:`.state` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET", "SimulatorSettings"]

# Real client ids carry their region before the `#`: the demo one does too, so the `#`
# is exercised by every test that logs in with it.
DEMO_CLIENT_ID = "us-east-1#demo-client"
DEMO_CLIENT_SECRET = "demo-secret"  # noqa: S105 - a published demo credential, not a secret


def _demo_clients() -> Mapping[str, str]:
    return MappingProxyType({DEMO_CLIENT_ID: DEMO_CLIENT_SECRET})


@dataclass(frozen=True)
class SimulatorSettings:
    """How a simulator behaves: ``create_simulator_app(SimulatorSettings(job_duration=0))``.

    ``clock`` is the wall clock (seconds since the epoch) behind token expiry, job progress,
    URL expiry and rate-limit windows; tests pass a fake one to move time without sleeping.
    """

    clients: Mapping[str, str] = field(default_factory=_demo_clients, repr=False)
    token_lifetime: int = 3599
    # Seconds from creating a job to its end: waiting for the first half, running for the
    # second. 0 makes a job complete in the very answer that creates it, so the official
    # client skips its 5-second polling.
    job_duration: float = 1.0
    rate_limits: bool = True
    # Seconds in the rate limits' sliding window: the gateway's minute, or less in tests.
    rate_window: float = 60.0
    seed: int = 0
    rows_per_table: int = 25
    rows_per_object: int = 10
    url_lifetime: int = 900  # pre-signed object URLs, as S3's usual 15 minutes
    job_lifetime: int = 24 * 3600  # a job and its objects, as DAP documents
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        problems = []
        if self.token_lifetime <= 0:
            problems.append("token_lifetime must be positive")
        if self.job_duration < 0:
            problems.append("job_duration must not be negative")
        if self.rows_per_table < 0:
            problems.append("rows_per_table must not be negative")
        if self.rows_per_object <= 0:
            problems.append("rows_per_object must be positive")
        if self.rate_window <= 0:
            problems.append("rate_window must be positive")
        if self.url_lifetime <= 0 or self.job_lifetime <= 0:
            problems.append("url_lifetime and job_lifetime must be positive")
        if problems:
            raise ValueError("; ".join(problems))
