"""The gateway simulator on its own: every answer checked against what the official client parses.

Where the client has a parser for an answer (token properties, jobs, errors, schemas,
TSV records), the test runs it: an extra key or a wrong type fails here, not in the e2e run.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import csv
import gzip
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from dap.api import AccessToken
from dap.dap_error import AuthenticationError, ProcessingError
from dap.dap_types import (
    CompleteIncrementalJob,
    CompleteSnapshotJob,
    FailedJob,
    Job,
    ResourceResult,
    TableJob,
    TableList,
    TokenProperties,
    VersionedSchema,
)
from dap.replicator import canvas
from dap.replicator.sql_op import create_table_dataclass
from dap.replicator.sql_op_init import SqlOpInit
from dap.replicator.sql_op_sync import SqlOpSync
from pysqlsync.data.exchange import TextReader
from strong_typing.serialization import json_to_object

from proxy.aiohttp_compat import basic_credentials
from proxy.simulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SIMULATOR_STATE,
    Faults,
    SimulatorSettings,
    SimulatorState,
    authenticated_client,
    create_simulator_app,
    expected_object_bytes,
)
from proxy.simulator.data import DataQuery, object_count
from proxy.simulator.tables import NAMESPACES, table_schema

TOKEN_KEYS = {"access_token", "expires_in", "scope", "token_type"}
ERROR_KEYS = {"type", "uuid", "message"}
TABLES = ["accounts", "courses", "users", "enrollments", "submissions"]
SINCE = "2024-01-01T00:00:00Z"
SINCE_DT = datetime(2024, 1, 1, tzinfo=UTC)


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    """A simulator behind a test client, with the demo client's token at hand."""

    client: TestClient[web.Request, web.Application]
    state: SimulatorState
    token: str = ""

    async def login(self, client_id: str = DEMO_CLIENT_ID, secret: str = DEMO_CLIENT_SECRET) -> str:
        resp = await self.client.post(
            "/ids/auth/login",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_credentials(client_id, secret)},
        )
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["access_token"]
        return token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def get(self, path: str) -> aiohttp.ClientResponse:
        return await self.client.get(path, headers=self.auth())

    async def post(self, path: str, body: Any) -> aiohttp.ClientResponse:
        return await self.client.post(path, json=body, headers=self.auth())

    async def create_job(self, body: Any, table: str = "accounts") -> dict[str, Any]:
        resp = await self.post(f"/dap/query/canvas/table/{table}/data", body)
        assert resp.status in (200, 202), await resp.text()
        job: dict[str, Any] = await resp.json()
        return job

    async def object_url(self, object_id: str) -> str:
        resp = await self.post("/dap/object/url", [{"id": object_id}])
        assert resp.status == 200, await resp.text()
        url: str = (await resp.json())["urls"][object_id]["url"]
        return url

    async def download(self, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """GET a pre-signed URL as the client does: path and query only, no bearer token."""
        target = url.split("://", 1)[1].partition("/")[2]
        return await self.client.get("/" + target, **kwargs)


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
def make_sim(aiohttp_client: Any) -> SimFactory:
    async def make(app: web.Application | None = None, **settings: Any) -> Sim:
        app = app or create_simulator_app(SimulatorSettings(**settings))
        sim = Sim(await aiohttp_client(app), app[SIMULATOR_STATE])
        sim.token = sim.state.issue_token()
        return sim

    return make


@pytest.fixture
async def sim(make_sim: SimFactory) -> Sim:
    return await make_sim(job_duration=0)


async def gateway_error(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Assert the gateway's error shape, exactly, as the client parses it."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == ERROR_KEYS
    uuid.UUID(body["error"]["uuid"])
    error: dict[str, Any] = body["error"]
    return error


def parse_job(body: dict[str, Any]) -> Any:
    return json_to_object(Job, body)  # type: ignore[arg-type]


# --- login ---------------------------------------------------------------------------------


async def test_login_answers_exactly_the_four_keys_with_a_jwt(sim: Sim) -> None:
    resp = await sim.client.post(
        "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
    )
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3599
    assert (
        body["scope"] == "urn:canvas:dap principal:demo-client partner:demo-client region:us-east-1"
    )

    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == DEMO_CLIENT_ID
    assert claims["exp"] == claims["iat"] + 3599
    assert abs(claims["iat"] - time.time()) < 5
    # The client's own parsers accept it, and would not log in again for ~55 minutes.
    json_to_object(TokenProperties, body)
    assert not AccessToken(body["access_token"]).is_expiring()
    assert (sim.state.token_requests, sim.state.logins) == (1, 1)


async def test_login_token_works_for_the_api(sim: Sim) -> None:
    token = await sim.login()
    resp = await sim.client.get("/dap/query/canvas/table", headers=sim.auth(token))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [(DEMO_CLIENT_ID, "wrong"), ("us-east-1#nobody", DEMO_CLIENT_SECRET), (DEMO_CLIENT_ID, "")],
)
async def test_login_with_bad_credentials_is_401(sim: Sim, client_id: str, secret: str) -> None:
    resp = await sim.client.post(
        "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(client_id, secret)},
    )
    await gateway_error(resp, 401)
    assert (sim.state.token_requests, sim.state.logins) == (1, 0)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer abc",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ],
)
async def test_login_without_valid_basic_is_401(sim: Sim, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await sim.client.post(
        "/ids/auth/login", data={"grant_type": "client_credentials"}, headers=headers
    )
    await gateway_error(resp, 401)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"data": {"grant_type": "password"}},
        {"data": {"scope": "x"}},
        {"json": {"grant_type": "client_credentials"}},  # the right words, the wrong encoding
    ],
)
async def test_login_without_client_credentials_grant_is_400(
    sim: Sim, kwargs: dict[str, Any]
) -> None:
    resp = await sim.client.post(
        "/ids/auth/login",
        headers={"Authorization": basic_credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
        **kwargs,
    )
    await gateway_error(resp, 400)


async def test_client_ids_with_hash_and_secrets_with_colons(make_sim: SimFactory) -> None:
    client_id, secret = "ap-southeast-2#7f0c-1e9a", "se:cr#et"
    sim = await make_sim(clients={client_id: secret})
    # Encoded by hand, the way the official client does it.
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    resp = await sim.client.post(
        "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    body = await resp.json()
    assert resp.status == 200
    assert body["scope"].endswith("principal:7f0c-1e9a partner:7f0c-1e9a region:ap-southeast-2")
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == client_id
    # Only the configured clients exist: the demo one is not among them here.
    resp = await sim.client.post(
        "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
    )
    await gateway_error(resp, 401)


async def test_secrets_and_tokens_stay_out_of_reprs(sim: Sim) -> None:
    token = await sim.login()
    await sim.client.get("/dap/query/canvas/table", headers=sim.auth(token))
    basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
    text = repr(sim.state) + repr(sim.state.settings) + repr(list(sim.state.requests))
    for secret in (DEMO_CLIENT_SECRET, token, basic, sim.state.url_key.hex()):
        assert secret not in text
    assert "token_lifetime=3599" in repr(sim.state.settings)


# --- the bearer check ----------------------------------------------------------------------


async def test_bearer_token_is_required(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, token_lifetime=60)
    other = await make_sim()  # another simulator signs with another key
    expired = sim.state.issue_token()
    clock.advance(60)
    revoked = sim.state.issue_token()
    sim.state.faults.revoke_tokens()
    good = sim.state.issue_token()

    refused: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Basic {base64.b64encode(b'a:b').decode()}"},
        {"Authorization": f"Bearer {other.token}"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Bearer {jwt.encode({'sub': 'x', 'exp': 2e9}, 'k' * 32)}"},
        # Authorization wins over x-instauth even when Authorization is no good.
        {"Authorization": "Bearer nope", "X-InstAuth": good},
    ]
    for headers in refused:
        resp = await sim.client.get("/dap/query/canvas/table", headers=headers)
        error = await gateway_error(resp, 401)
        assert good not in error["message"]
        json_to_object(AuthenticationError, error)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    for headers in ({"Authorization": f"Bearer {good}"}, {"X-InstAuth": good}):
        resp = await sim.client.get("/dap/query/canvas/table", headers=headers)
        assert resp.status == 200


async def test_revoked_tokens_fail_and_a_new_login_works(sim: Sim) -> None:
    old = await sim.login()
    sim.state.faults.revoke_tokens()
    resp = await sim.client.get("/dap/query/canvas/table", headers=sim.auth(old))
    await gateway_error(resp, 401)
    new = await sim.login()  # within the same second
    resp = await sim.client.get("/dap/query/canvas/table", headers=sim.auth(new))
    assert resp.status == 200


async def test_tokens_expire_by_the_injected_clock(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, token_lifetime=100)
    token = await sim.login()
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == clock.now + 100
    clock.advance(99)
    assert (await sim.client.get("/dap/query/canvas/table", headers=sim.auth(token))).status == 200
    clock.advance(1)
    await gateway_error(
        await sim.client.get("/dap/query/canvas/table", headers=sim.auth(token)), 401
    )


async def test_routes_a_test_adds_are_behind_the_bearer_check(make_sim: SimFactory) -> None:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"client": authenticated_client(request)})

    app = create_simulator_app(SimulatorSettings())
    app.router.add_route("*", "/test/whoami", whoami)
    sim = await make_sim(app)

    await gateway_error(await sim.client.get("/test/whoami"), 401)
    await gateway_error(await sim.client.post("/test/whoami", headers=sim.auth("junk")), 401)
    resp = await sim.client.get("/test/whoami", headers=sim.auth())
    assert await resp.json() == {"client": DEMO_CLIENT_ID}
    # API faults reach them too.
    sim.state.faults.api_statuses.append(503)
    await gateway_error(await sim.client.get("/test/whoami", headers=sim.auth()), 503)


async def test_unknown_paths_and_methods_answer_in_the_gateway_shape(sim: Sim) -> None:
    await gateway_error(await sim.client.get("/nowhere"), 401)  # authenticated first
    await gateway_error(await sim.get("/nowhere"), 404)
    resp = await sim.client.delete("/dap/job/x", headers=sim.auth())
    await gateway_error(resp, 405)
    assert "GET" in resp.headers["Allow"]
    await gateway_error(await sim.get("/ids/auth/login"), 405)


# --- the DAP endpoints ---------------------------------------------------------------------


async def test_list_tables(sim: Sim) -> None:
    resp = await sim.get("/dap/query/canvas/table")
    body = await resp.json()
    assert resp.status == 200
    assert body == {"tables": TABLES}
    json_to_object(TableList, body)


@pytest.mark.parametrize(
    "path",
    [
        "/dap/query/nope/table",
        "/dap/query/nope/table/accounts/schema",
        "/dap/query/canvas/table/nope/schema",
    ],
)
async def test_unknown_namespace_or_table_is_404(sim: Sim, path: str) -> None:
    error = await gateway_error(await sim.get(path), 404)
    assert error["type"] == "ObjectNotFound"
    json_to_object(ProcessingError, error)


@pytest.mark.parametrize("table", TABLES)
async def test_schema_is_one_the_client_can_build_tables_from(sim: Sim, table: str) -> None:
    resp = await sim.get(f"/dap/query/canvas/table/{table}/schema")
    body = await resp.json()
    assert resp.status == 200
    assert set(body) == {"schema", "version"}
    assert isinstance(body["version"], int)
    versioned = json_to_object(VersionedSchema, body)
    # What initdb does with it: flatten key and value into a dataclass, map TSV labels.
    entity = create_table_dataclass(table, canvas, copy.deepcopy(versioned.schema))
    labels = SqlOpInit._get_init_tabular_mapping(entity).labels_to_types
    assert "key.id" in labels
    assert {f"value.{c}" for c in body["schema"]["properties"]["value"]["properties"]} <= set(
        labels
    )


async def test_job_goes_waiting_running_complete(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, job_duration=10)
    resp = await sim.post("/dap/query/canvas/table/courses/data", {"format": "jsonl"})
    job = await resp.json()
    assert resp.status == 202
    assert set(job) == {"id", "status", "expires_at"}
    assert job["status"] == "waiting"
    assert isinstance(parse_job(job), TableJob)

    statuses = []
    for step in (4.9, 0.1, 4.9, 0.1):
        clock.advance(step)
        resp = await sim.get(f"/dap/job/{job['id']}")
        statuses.append((resp.status, (await resp.json())["status"]))
    assert statuses == [(202, "waiting"), (202, "running"), (202, "running"), (200, "complete")]

    done = await (await sim.get(f"/dap/job/{job['id']}")).json()
    assert set(done) == {"id", "status", "expires_at", "objects", "schema_version", "at"}
    assert done["schema_version"] == 3
    assert done["objects"] == [{"id": f"{job['id']}/part-{n:05d}.jsonl.gz"} for n in range(3)]
    parsed = parse_job(done)
    assert isinstance(parsed, CompleteSnapshotJob)
    assert parsed.expires_at == datetime.fromtimestamp(clock.now - 10 + 86400, UTC)


async def test_zero_duration_job_is_complete_in_the_creating_answer(sim: Sim) -> None:
    resp = await sim.post("/dap/query/canvas/table/accounts/data", {"format": "csv"})
    assert resp.status == 200
    assert (await resp.json())["status"] == "complete"


async def test_incremental_job_reports_since_and_until(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, job_duration=0)
    job = await sim.create_job({"format": "tsv", "mode": "condensed", "since": SINCE})
    assert set(job) == {"id", "status", "expires_at", "objects", "schema_version", "since", "until"}
    parsed = parse_job(job)
    assert isinstance(parsed, CompleteIncrementalJob)
    assert parsed.since == SINCE_DT
    assert parsed.until == datetime.fromtimestamp(clock.now, UTC)  # defaults to now

    job = await sim.create_job({"format": "jsonl", "since": SINCE, "until": "2024-01-02T00:00:00Z"})
    assert (job["since"], job["until"]) == ("2024-01-01T00:00:00.000Z", "2024-01-02T00:00:00.000Z")
    # +02:00 is read as the instant it names.
    job = await sim.create_job({"format": "jsonl", "since": "2024-01-01T02:00:00+02:00"})
    assert job["since"] == "2024-01-01T00:00:00.000Z"


async def test_failed_job(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, job_duration=2)
    sim.state.faults.fail_jobs = True
    job = await sim.create_job({"format": "jsonl"})
    clock.advance(2)
    resp = await sim.get(f"/dap/job/{job['id']}")
    body = await resp.json()
    assert resp.status == 200
    assert set(body) == {"id", "status", "expires_at", "error"}
    assert body["status"] == "failed"
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(parse_job(body), FailedJob)
    # A failed job has no objects to hand out.
    resp = await sim.post("/dap/object/url", [{"id": f"{job['id']}/part-00000.jsonl.gz"}])
    await gateway_error(resp, 404)


async def test_unknown_and_expired_jobs_are_404(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, job_duration=0, job_lifetime=100)
    error = await gateway_error(await sim.get(f"/dap/job/{uuid.uuid4()}"), 404)
    assert error["type"] == "ObjectNotFound"
    assert error["message"] == "Job does not exist."

    job = await sim.create_job({"format": "jsonl"})
    url = await sim.object_url(job["objects"][0]["id"])
    clock.advance(100)
    await gateway_error(await sim.get(f"/dap/job/{job['id']}"), 404)
    assert (await sim.download(url)).status == 404  # the object went with its job


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"format": "parquet"}',
        b'{"format": "xml"}',
        b'{"format": "jsonl", "extra": 1}',
        b'{"format": "jsonl", "mode": "compact"}',
        b'{"format": "jsonl", "since": "yesterday"}',
        b'{"format": "jsonl", "since": "2024-01-01T00:00:00"}',
        b'{"format": "jsonl", "since": 1704067200}',
        b'{"format": "jsonl", "until": "2024-01-01T00:00:00Z"}',
        b'{"format": "jsonl", "since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}',
        b'{"format": "jsonl", "since": "2999-01-01T00:00:00Z"}',
    ],
)
async def test_bad_query_bodies_are_400(sim: Sim, body: bytes) -> None:
    resp = await sim.client.post(
        "/dap/query/canvas/table/accounts/data",
        data=body,
        headers={**sim.auth(), "Content-Type": "application/json"},
    )
    await gateway_error(resp, 400)
    assert not list(sim.state.jobs)


async def test_object_urls(sim: Sim) -> None:
    job = await sim.create_job({"format": "jsonl"}, table="submissions")
    ids = [o["id"] for o in job["objects"]]
    resp = await sim.post("/dap/object/url", [{"id": i} for i in ids])
    body = await resp.json()
    assert resp.status == 200
    assert list(body) == ["urls"]
    assert list(body["urls"]) == ids
    assert all(set(v) == {"url"} for v in body["urls"].values())
    json_to_object(ResourceResult, body)
    url = body["urls"][ids[1]]["url"]
    assert url.startswith(f"http://{sim.client.host}:{sim.client.port}/objects/{ids[1]}?")
    assert "X-Sim-Signature=" in url and "X-Sim-Expires=" in url


@pytest.mark.parametrize(
    "body",
    [[], {"id": "x"}, [{"id": 1}], [{"id": "x", "extra": 1}], [{"name": "x"}], "x"],
)
async def test_bad_object_url_bodies_are_400(sim: Sim, body: Any) -> None:
    await gateway_error(await sim.post("/dap/object/url", body), 400)


async def test_unknown_objects_are_404(sim: Sim) -> None:
    job = await sim.create_job({"format": "jsonl"})
    for object_id in ("nope", f"{job['id']}/part-00009.jsonl.gz", f"{uuid.uuid4()}/part-00000"):
        await gateway_error(await sim.post("/dap/object/url", [{"id": object_id}]), 404)


# --- object downloads ----------------------------------------------------------------------


async def test_download_needs_no_bearer_and_matches_the_expected_bytes(sim: Sim) -> None:
    job = await sim.create_job({"format": "jsonl"}, table="submissions")
    for part, obj in enumerate(job["objects"]):
        resp = await sim.download(await sim.object_url(obj["id"]), auto_decompress=False)
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert resp.content_type == "application/octet-stream"
        data = await resp.read()
        assert data == expected_object_bytes(sim.state.settings, "submissions", "jsonl", part)
        assert data[:2] == b"\x1f\x8b"
    downloads = sim.state.requests_to("object")
    assert len(downloads) == 3
    assert all("Authorization" not in r.headers for r in downloads)


async def test_download_refuses_an_authorization_header(sim: Sim) -> None:
    job = await sim.create_job({"format": "jsonl"})
    url = await sim.object_url(job["objects"][0]["id"])
    resp = await sim.download(url, headers=sim.auth())
    assert resp.status == 400
    assert resp.content_type == "application/xml"
    assert "<Code>InvalidArgument</Code>" in await resp.text()


async def test_download_refuses_bad_or_expired_signatures(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, job_duration=0, url_lifetime=60)
    job = await sim.create_job({"format": "jsonl"})
    object_id = job["objects"][0]["id"]
    url = await sim.object_url(object_id)
    signature = url.rsplit("=", 1)[1]
    other_id = (await sim.create_job({"format": "csv"}))["objects"][0]["id"]
    forged = [
        url.replace(signature, "0" * len(signature)),
        url.split("?")[0],
        url.replace("X-Sim-Expires=", "X-Sim-Expires=9"),  # a later expiry, same signature
        url.replace(object_id, other_id),  # another object, same signature
    ]
    for bad in forged:
        resp = await sim.download(bad)
        assert resp.status == 403, bad
        assert "<Error>" in await resp.text()
    clock.advance(59)
    assert (await sim.download(url)).status == 200
    clock.advance(1)
    resp = await sim.download(url)
    assert resp.status == 403
    assert "expired" in await resp.text()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
@pytest.mark.parametrize("incremental", [False, True], ids=["snapshot", "incremental"])
async def test_downloads_equal_expected_bytes_in_every_format(
    sim: Sim, fmt: str, incremental: bool
) -> None:
    body: dict[str, str] = {"format": fmt}
    if incremental:
        body |= {"since": SINCE, "until": "2024-01-01T00:30:00Z"}
    job = await sim.create_job(body, table="users")
    for part, obj in enumerate(job["objects"]):
        data = await (await sim.download(await sim.object_url(obj["id"]))).read()
        since, until = (
            (SINCE_DT, datetime(2024, 1, 1, 0, 30, tzinfo=UTC)) if incremental else (None, None)
        )
        expected = expected_object_bytes(
            sim.state.settings, "users", fmt, part, since=since, until=until
        )
        assert data == expected


def rows_of(settings: SimulatorSettings, query: DataQuery) -> list[bytes]:
    """All lines of all parts of a query's result, uncompressed."""
    lines: list[bytes] = []
    for part in range(object_count(settings, query)):
        lines += gzip.decompress(
            expected_object_bytes(
                settings, query.table, query.format, part, since=query.since, until=query.until
            )
        ).splitlines(keepends=True)
    return lines


def test_object_bytes_are_deterministic_per_seed() -> None:
    first, again, other = SimulatorSettings(), SimulatorSettings(), SimulatorSettings(seed=7)
    for table in TABLES:
        assert expected_object_bytes(first, table, "csv") == expected_object_bytes(
            again, table, "csv"
        )
        assert expected_object_bytes(first, table, "csv") != expected_object_bytes(
            other, table, "csv"
        )


def test_objects_split_rows_by_rows_per_object() -> None:
    settings = SimulatorSettings(rows_per_table=25, rows_per_object=10)
    query = DataQuery("canvas", "accounts", "jsonl")
    assert object_count(settings, query) == 3
    assert len(rows_of(settings, query)) == 25
    ids = [json.loads(line)["key"]["id"] for line in rows_of(settings, query)]
    assert ids == list(range(1, 26))
    empty = SimulatorSettings(rows_per_table=0)
    assert object_count(empty, query) == 1
    assert gzip.decompress(expected_object_bytes(empty, "accounts", "csv")).count(b"\n") == 1


def test_jsonl_records_have_key_value_meta() -> None:
    settings = SimulatorSettings()
    snapshot = [json.loads(x) for x in rows_of(settings, DataQuery("canvas", "courses", "jsonl"))]
    assert all(list(r) == ["key", "value", "meta"] and list(r["meta"]) == ["ts"] for r in snapshot)
    query = DataQuery("canvas", "courses", "jsonl", since=SINCE_DT)
    changes = [json.loads(x) for x in rows_of(settings, query)]
    assert {r["meta"]["action"] for r in changes} == {"U", "D"}
    for record in changes:
        assert ("value" in record) == (record["meta"]["action"] == "U")
        ts = datetime.fromisoformat(record["meta"]["ts"])
        assert SINCE_DT <= ts < datetime(2024, 1, 1, 1, tzinfo=UTC)
    assert len({r["key"]["id"] for r in changes}) == len(changes)  # consolidated
    # Nulls are omitted, never written as null.
    assert all(None not in r["value"].values() for r in snapshot)


def test_csv_follows_rfc_4180_with_null_and_empty_string() -> None:
    settings = SimulatorSettings(rows_per_table=60)
    text = b"".join(rows_of(settings, DataQuery("canvas", "submissions", "csv"))).decode()
    records = list(csv.reader(io.StringIO(text, newline="")))
    header = records[0]
    assert header[:2] == ["meta.ts", "key.id"]
    assert all(len(r) == len(header) for r in records[1:])
    bodies = {r[header.index("value.body")] for r in records[1:]}
    assert {"Line one\nline two", 'He said "maybe", then left', "tab\tseparated"} <= bodies
    raw = text.replace("\r\n", "\n")
    assert ',"NULL",' in raw and ',"",' in raw and ",NULL," in raw  # literal vs NULL vs ""


@pytest.mark.parametrize("table", TABLES)
def test_tsv_reads_back_with_the_clients_initdb_and_syncdb_mappings(table: str) -> None:
    settings = SimulatorSettings(rows_per_table=40)
    entity = create_table_dataclass(
        table, canvas, copy.deepcopy(table_schema(NAMESPACES["canvas"][table]))
    )
    snapshot = b"".join(rows_of(settings, DataQuery("canvas", table, "tsv")))
    # rows_of joins parts, each with its header; keep the first header only.
    header = snapshot.split(b"\n", 1)[0] + b"\n"
    body = snapshot.replace(header, b"")
    init = SqlOpInit._get_init_tabular_mapping(entity).labels_to_types
    assert len(TextReader(io.BytesIO(header + body), init).read_records()) == 40

    changes = b"".join(rows_of(settings, DataQuery("canvas", table, "tsv", since=SINCE_DT)))
    sync = SqlOpSync._get_sync_tabular_mapping(entity).labels_to_types
    records = TextReader(io.BytesIO(changes), sync).read_records()
    assert len(records) == 10
    assert {r[1] for r in records} <= {"U", "D"}


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limits_per_minute_per_client(make_sim: SimFactory) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock, clients={"a#1": "x", "b#2": "y"})
    first, second = sim.state.issue_token("a#1"), sim.state.issue_token("b#2")
    for _ in range(5):
        assert (
            await sim.client.get("/dap/query/canvas/table", headers=sim.auth(first))
        ).status == 200
        clock.advance(1)
    resp = await sim.client.get("/dap/query/canvas/table", headers=sim.auth(first))
    error = await gateway_error(resp, 429)
    assert error["type"] == "TooManyRequests"
    assert resp.headers["Retry-After"] == "55"  # the first of the five leaves the window then
    # Another client, and another endpoint, have their own allowance.
    assert (await sim.client.get("/dap/query/canvas/table", headers=sim.auth(second))).status == 200
    resp = await sim.client.get("/dap/query/canvas/table/users/schema", headers=sim.auth(first))
    assert resp.status == 200
    clock.advance(55)
    assert (await sim.client.get("/dap/query/canvas/table", headers=sim.auth(first))).status == 200


async def test_create_job_limit_and_switching_limits_off(make_sim: SimFactory) -> None:
    sim = await make_sim(job_duration=0)
    for _ in range(5):
        await sim.create_job({"format": "jsonl"})
    resp = await sim.post("/dap/query/canvas/table/accounts/data", {"format": "jsonl"})
    await gateway_error(resp, 429)
    assert int(resp.headers["Retry-After"]) in range(1, 61)

    unlimited = await make_sim(job_duration=0, rate_limits=False)
    for _ in range(20):
        await unlimited.create_job({"format": "jsonl"})


# --- fault knobs ---------------------------------------------------------------------------


def test_faults_start_harmless() -> None:
    faults = Faults()
    assert not (faults.token_statuses or faults.api_statuses or faults.token_body)
    assert not (faults.token_delay or faults.api_delay or faults.api_disconnects)
    assert not (faults.credentials_revoked or faults.fail_jobs)


async def test_token_statuses_are_answered_one_per_login(sim: Sim) -> None:
    sim.state.faults.token_statuses.extend([500, 429, 503])
    auth = {"Authorization": basic_credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)}
    form = {"grant_type": "client_credentials"}
    seen = []
    for _ in range(4):
        resp = await sim.client.post("/ids/auth/login", data=form, headers=auth)
        seen.append((resp.status, resp.headers.get("Retry-After")))
    assert seen == [(500, None), (429, "1"), (503, "1"), (200, None)]
    assert (sim.state.token_requests, sim.state.logins) == (4, 1)


async def test_token_delay(sim: Sim) -> None:
    sim.state.faults.token_delay = 0.3
    started = time.monotonic()
    await sim.login()
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"access_token": "x"}'])
async def test_token_body_replaces_the_answer(sim: Sim, body: bytes) -> None:
    sim.state.faults.token_body = body
    resp = await sim.client.post("/ids/auth/login", data={"grant_type": "client_credentials"})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == body
    assert sim.state.logins == 0


async def test_credentials_revoked(sim: Sim) -> None:
    sim.state.faults.credentials_revoked = True
    resp = await sim.client.post(
        "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
    )
    await gateway_error(resp, 401)
    sim.state.faults.credentials_revoked = False
    await sim.login()


async def test_api_statuses_are_answered_one_per_request(sim: Sim) -> None:
    sim.state.faults.api_statuses.extend([503, 429, 401, 403])
    sim.state.faults.retry_after = 2
    seen = []
    for _ in range(4):
        resp = await sim.get("/dap/query/canvas/table")
        error = await gateway_error(resp, resp.status)
        seen.append((resp.status, resp.headers.get("Retry-After"), error["type"]))
    assert seen == [
        (503, "2", "ServiceUnavailable"),
        (429, "2", "TooManyRequests"),
        (401, None, "Unauthorized"),
        (403, None, "AccountDisabled"),
    ]
    assert (await sim.get("/dap/query/canvas/table")).status == 200
    # The login route is not an API route.
    sim.state.faults.api_statuses.append(500)
    await sim.login()
    assert sim.state.faults.api_statuses == [500]


async def test_api_504_has_the_gateway_timeout_shape(sim: Sim) -> None:
    sim.state.faults.api_statuses.append(504)
    resp = await sim.get("/dap/query/canvas/table")
    assert resp.status == 504
    assert set((await resp.json())["error"]) == {"message"}


async def test_api_delay(sim: Sim) -> None:
    sim.state.faults.api_delay = 0.3
    started = time.monotonic()
    assert (await sim.get("/dap/query/canvas/table")).status == 200
    assert time.monotonic() - started >= 0.3


async def test_api_disconnects(sim: Sim) -> None:
    sim.state.faults.api_disconnects = 1
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim.get("/dap/query/canvas/table")
    assert sim.state.faults.api_disconnects == 0
    assert (await sim.get("/dap/query/canvas/table")).status == 200


async def test_faults_do_not_touch_downloads(sim: Sim) -> None:
    job = await sim.create_job({"format": "jsonl"})
    url = await sim.object_url(job["objects"][0]["id"])
    sim.state.faults.api_statuses.append(500)
    sim.state.faults.api_disconnects = 1
    assert (await sim.download(url)).status == 200


# --- records -------------------------------------------------------------------------------


async def test_requests_are_recorded_with_their_headers(sim: Sim) -> None:
    headers = {**sim.auth(), "traceparent": "00-not-valid-00"}
    await sim.client.get("/dap/query/canvas/table?x=%20&y=1", headers=headers)
    await sim.client.get("/nowhere")
    recorded = list(sim.state.requests)
    assert [(r.method, r.path, r.route) for r in recorded] == [
        ("GET", "/dap/query/canvas/table?x=%20&y=1", "list_tables"),
        ("GET", "/nowhere", None),
    ]
    assert recorded[0].headers["TRACEPARENT"] == "00-not-valid-00"
    assert recorded[0].headers.getall("authorization") == [f"Bearer {sim.token}"]
    assert sim.state.requests.maxlen == 1000


async def test_requests_under_concurrency(make_sim: SimFactory) -> None:
    sim = await make_sim(rate_limits=False)
    statuses = await asyncio.gather(*(sim.get("/dap/query/canvas/table") for _ in range(50)))
    assert [r.status for r in statuses] == [200] * 50
    assert len(sim.state.requests_to("list_tables")) == 50


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="token_lifetime"):
        SimulatorSettings(token_lifetime=0)
    with pytest.raises(ValueError, match="rows_per_object"):
        SimulatorSettings(rows_per_object=0)
