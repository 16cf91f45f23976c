"""The five DAP Query API endpoints, answering exactly the keys the official client expects.

Bearer checks, rate limits and injected faults happen before these handlers run (see
:mod:`.middleware`); here is only what each endpoint does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .data import FORMATS, DataQuery
from .jobs import Job
from .responses import gateway_error, json_response
from .state import SIMULATOR_STATE
from .storage import signed_object_url
from .tables import NAMESPACES, Table, find_table, table_schema

__all__ = ["create_job", "get_job", "get_schema", "list_tables", "object_urls", "parse_query"]

_MODES = ("expanded", "condensed")


def _not_found(what: str) -> web.Response:
    return gateway_error(404, "ObjectNotFound", f"{what} does not exist.")


def _bad_request(message: str) -> web.Response:
    return gateway_error(400, "ValidationError", message)


def _table(request: web.Request) -> Table | web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["table"]
    if namespace not in NAMESPACES:
        return _not_found("Namespace")
    return find_table(namespace, name) or _not_found("Table")


async def list_tables(request: web.Request) -> web.Response:
    """``GET /dap/query/{namespace}/table``: ``{"tables": [...]}``."""
    tables = NAMESPACES.get(request.match_info["namespace"])
    if tables is None:
        return _not_found("Namespace")
    return json_response({"tables": list(tables)})


async def get_schema(request: web.Request) -> web.Response:
    """``GET .../table/{table}/schema``: ``{"schema": {...}, "version": n}``."""
    table = _table(request)
    if isinstance(table, web.Response):
        return table
    return json_response({"schema": table_schema(table), "version": table.schema_version})


def _timestamp(body: dict[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be an RFC 3339 timestamp string.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{key}' is not an RFC 3339 timestamp.") from None
    if moment.tzinfo is None:
        raise ValueError(f"'{key}' must carry a time zone, such as Z.")
    return moment.astimezone(UTC)


def parse_query(raw: bytes, namespace: str, table: str, now: datetime) -> DataQuery:
    """A validated query from a request body; ValueError says what is wrong with it.

    An incremental query's ``until`` defaults to ``now``, the commit time of the latest
    record, which the job then reports.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValueError("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"format", "mode", "since", "until"})
    if unknown:
        raise ValueError(f"Unknown properties: {', '.join(unknown)}.")
    fmt = body.get("format")
    if fmt == "parquet":
        raise ValueError("Format 'parquet' is not supported by the simulator.")
    if fmt not in FORMATS:
        raise ValueError(f"'format' must be one of: {', '.join(FORMATS)}.")
    mode = body.get("mode")
    if mode is not None and mode not in _MODES:
        raise ValueError(f"'mode' must be one of: {', '.join(_MODES)}.")
    since, until = _timestamp(body, "since"), _timestamp(body, "until")
    if since is None:
        if until is not None:
            raise ValueError("'until' requires 'since'.")
        return DataQuery(namespace, table, fmt, mode)
    until = until or now
    if until <= since:
        raise ValueError("'since' must be earlier than 'until' (or than now).")
    return DataQuery(namespace, table, fmt, mode, since, until)


def _job_response(job: Job, now: float) -> web.Response:
    body = job.describe(now)
    return json_response(body, 200 if body["status"] in ("complete", "failed") else 202)


async def create_job(request: web.Request) -> web.Response:
    """``POST .../table/{table}/data``: start a snapshot or incremental job."""
    state = request.app[SIMULATOR_STATE]
    table = _table(request)
    if isinstance(table, web.Response):
        return table
    now = state.settings.clock()
    try:
        query = parse_query(
            await request.read(),
            request.match_info["namespace"],
            table.name,
            datetime.fromtimestamp(now, UTC),
        )
    except ValueError as exc:
        return _bad_request(str(exc))
    job = state.jobs.create(table, query, fails=state.faults.fail_jobs)
    # Described as at its creation: with a zero duration it is already complete.
    return _job_response(job, job.created_at)


async def get_job(request: web.Request) -> web.Response:
    """``GET /dap/job/{job_id}``: the job's current state."""
    state = request.app[SIMULATOR_STATE]
    job = state.jobs.get(request.match_info["job_id"])
    if job is None:
        return _not_found("Job")
    return _job_response(job, state.settings.clock())


def _object_ids(raw: bytes) -> list[str]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("The request body is not valid JSON.") from None
    if (
        not isinstance(body, list)
        or not body
        or not all(isinstance(o, dict) and set(o) == {"id"} for o in body)
        or not all(isinstance(o["id"], str) for o in body)
    ):
        raise ValueError('The request body must be a non-empty list of {"id": "..."}.')
    return [o["id"] for o in body]


async def object_urls(request: web.Request) -> web.Response:
    """``POST /dap/object/url``: pre-signed download URLs for a job's objects."""
    state = request.app[SIMULATOR_STATE]
    try:
        object_ids = _object_ids(await request.read())
    except ValueError as exc:
        return _bad_request(str(exc))
    if any(state.jobs.find_object(object_id) is None for object_id in object_ids):
        return _not_found("Object")
    expires = int(state.settings.clock()) + state.settings.url_lifetime
    # URLs name the host the request came to, so they work on whatever port we run.
    origin = request.url.origin()
    urls = {
        object_id: {"url": signed_object_url(origin, state.url_key, object_id, expires)}
        for object_id in object_ids
    }
    return json_response({"urls": urls})
