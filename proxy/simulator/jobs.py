"""Query jobs: how they progress with time, what they answer, where their objects are.

A job's status is a pure function of the clock: ``waiting`` for the first half of its
duration, ``running`` for the second, then ``complete`` (or ``failed``). Nothing runs in
the background, so a fake clock moves jobs along without sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .data import DataQuery, format_timestamp, object_count, snapshot_at
from .settings import SimulatorSettings
from .tables import Table

__all__ = ["Job", "JobStatus", "JobStore"]

JobStatus = Literal["waiting", "running", "complete", "failed"]


@dataclass(frozen=True)
class Job:
    """One query job; ``objects`` are the ids its result will be downloadable under."""

    id: str
    query: DataQuery
    created_at: float
    duration: float
    expires_at: float
    schema_version: int
    objects: tuple[str, ...]
    at: datetime | None  # a snapshot's table state; None for an incremental query
    fails: bool

    def status(self, now: float) -> JobStatus:
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return "failed" if self.fails else "complete"
        return "waiting" if elapsed < self.duration / 2 else "running"

    def describe(self, now: float) -> dict[str, Any]:
        """The Job object of the API, with exactly the keys its status calls for."""
        status = self.status(now)
        body: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "expires_at": format_timestamp(datetime.fromtimestamp(self.expires_at, UTC)),
        }
        if status == "failed":
            # The error's uuid is fixed per job so repeated polls agree.
            body["error"] = {
                "type": "ProcessingError",
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.id)),
                "message": "The query job failed (simulated).",
            }
        elif status == "complete":
            body["objects"] = [{"id": object_id} for object_id in self.objects]
            body["schema_version"] = self.schema_version
            since, until = self.query.since, self.query.until
            if since is not None and until is not None:
                body["since"] = format_timestamp(since)
                body["until"] = format_timestamp(until)
            elif self.at is not None:
                body["at"] = format_timestamp(self.at)
        return body


class JobStore:
    """The jobs of one simulator, forgotten once expired: ``store.create(query)``."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self._settings = settings
        self._clock = settings.clock
        self._jobs: dict[str, Job] = {}

    def create(self, table: Table, query: DataQuery, *, fails: bool = False) -> Job:
        """Start a job for a validated query of ``table`` (its ``until`` resolved)."""
        self._forget_expired()
        job_id = str(uuid.uuid4())
        parts = object_count(self._settings, query)
        now = self._clock()
        job = Job(
            id=job_id,
            query=query,
            created_at=now,
            duration=self._settings.job_duration,
            expires_at=now + self._settings.job_lifetime,
            schema_version=table.schema_version,
            objects=tuple(f"{job_id}/part-{n:05d}.{query.format}.gz" for n in range(parts)),
            at=None if query.incremental else snapshot_at(self._settings, query.namespace, table),
            fails=fails,
        )
        self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None if it never existed or has expired."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.expires_at > self._clock() else None

    def find_object(self, object_id: str) -> tuple[Job, int] | None:
        """The complete job an object belongs to and its part number, or None."""
        job = self.get(object_id.partition("/")[0])
        if job is None or object_id not in job.objects:
            return None
        if job.status(self._clock()) != "complete":
            return None
        return job, job.objects.index(object_id)

    def __iter__(self) -> Iterator[Job]:
        """The live jobs, oldest first."""
        return iter([job for job in self._jobs.values() if job.expires_at > self._clock()])

    def _forget_expired(self) -> None:
        now = self._clock()
        for job_id in [j.id for j in self._jobs.values() if j.expires_at <= now]:
            del self._jobs[job_id]
