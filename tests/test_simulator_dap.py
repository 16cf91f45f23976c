"""The official ``dap`` CLI, run as a subprocess against the simulator on a loopback port.

If the simulator's answers drift from what the client parses (one extra key is fatal to
it), these fail. The CLI runs with ``asyncio.create_subprocess_exec`` so the in-process
server keeps serving while we wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.simulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SIMULATOR_STATE,
    SimulatorSettings,
    SimulatorState,
    create_simulator_app,
    expected_object_bytes,
)
from proxy.simulator.tables import NAMESPACES, table_schema

from .dap_cli import Result, job_directory, ok, run_dap

pytestmark = pytest.mark.e2e


@dataclass
class Gateway:
    url: str
    state: SimulatorState

    async def dap(self, command: str, *, cwd: Path, secret: str = DEMO_CLIENT_SECRET) -> Result:
        """Run ``dap --non-interactive COMMAND`` against this simulator."""
        return await run_dap(self.url, command, cwd=cwd, client_id=DEMO_CLIENT_ID, secret=secret)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def make_gateway(aiohttp_server: Any) -> GatewayFactory:
    async def make(**settings: Any) -> Gateway:
        settings.setdefault("job_duration", 0)  # complete at once: no 5-second polls
        app: web.Application = create_simulator_app(SimulatorSettings(**settings))
        server = await aiohttp_server(app, host="127.0.0.1")
        return Gateway(str(server.make_url("")).rstrip("/"), app[SIMULATOR_STATE])

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


async def test_list(gateway: Gateway, tmp_path: Path) -> None:
    result = ok(await gateway.dap("list --namespace canvas", cwd=tmp_path))
    assert result.stdout.split() == list(NAMESPACES["canvas"])
    assert gateway.state.logins == 1


async def test_schema(gateway: Gateway, tmp_path: Path) -> None:
    ok(
        await gateway.dap(
            "schema --namespace canvas --table courses --output-directory out",
            cwd=tmp_path,
        )
    )
    saved = json.loads((tmp_path / "out" / "courses_schema_version_3.json").read_text())
    assert saved == {"schema": table_schema(NAMESPACES["canvas"]["courses"]), "version": 3}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
async def test_snapshot_files_equal_what_the_simulator_generated(
    gateway: Gateway, tmp_path: Path, fmt: str
) -> None:
    ok(
        await gateway.dap(
            f"snapshot --namespace canvas --table submissions --format {fmt}"
            " --output-directory out",
            cwd=tmp_path,
        )
    )
    job_id, directory = job_directory(tmp_path / "out")
    (job,) = gateway.state.jobs
    assert job.id == job_id
    # Saved as downloaded: still gzip, named after the last segment of the URL path.
    files = sorted(p.name for p in directory.iterdir())
    assert files == [f"part-{n:05d}.{fmt}.gz" for n in range(3)]
    for part, name in enumerate(files):
        expected = expected_object_bytes(gateway.state.settings, "submissions", fmt, part)
        assert (directory / name).read_bytes() == expected

    # The pre-signed downloads went out with no bearer token; the API calls with one.
    downloads = gateway.state.requests_to("object")
    assert len(downloads) == 3
    assert all("Authorization" not in r.headers for r in downloads)
    api = [r for r in gateway.state.requests if r.route not in ("login", "object")]
    assert api and all(r.headers["Authorization"].startswith("Bearer ") for r in api)
    assert all(r.headers["User-Agent"].startswith("DataAccessPlatform/") for r in api)


async def test_incremental_files_equal_what_the_simulator_generated(
    gateway: Gateway, tmp_path: Path
) -> None:
    ok(
        await gateway.dap(
            "incremental --namespace canvas --table users --output-directory out"
            " --since 2024-01-01T00:00:00Z --until 2024-01-01T00:20:00Z",
            cwd=tmp_path,
        )
    )
    job_id, directory = job_directory(tmp_path / "out")
    (job,) = gateway.state.jobs
    assert job.id == job_id
    assert job.query.since == datetime(2024, 1, 1, tzinfo=UTC)
    assert job.query.until == datetime(2024, 1, 1, 0, 20, tzinfo=UTC)
    assert [p.name for p in directory.iterdir()] == ["part-00000.jsonl.gz"]
    expected = expected_object_bytes(
        gateway.state.settings, "users", "jsonl", since=job.query.since, until=job.query.until
    )
    assert (directory / "part-00000.jsonl.gz").read_bytes() == expected


async def test_a_job_in_progress_is_polled_until_complete(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    # The client waits 5 seconds between polls: one poll finds the job complete.
    gateway = await make_gateway(job_duration=1.0)
    result = ok(
        await gateway.dap(
            "snapshot --namespace canvas --table accounts --output-directory out",
            cwd=tmp_path,
        )
    )
    assert "still in status: waiting" in result.stderr
    assert len(gateway.state.requests_to("get_job")) >= 2
    _, directory = job_directory(tmp_path / "out")
    assert len(list(directory.iterdir())) == 3


async def test_injected_429_and_503_are_retried_by_the_client(
    gateway: Gateway, tmp_path: Path
) -> None:
    gateway.state.faults.api_statuses.extend([429, 503])
    gateway.state.faults.retry_after = 1
    result = ok(await gateway.dap("list --namespace canvas", cwd=tmp_path))
    assert result.stdout.split() == list(NAMESPACES["canvas"])
    assert len(gateway.state.requests_to("list_tables")) == 3


async def test_failed_job_fails_the_command(gateway: Gateway, tmp_path: Path) -> None:
    gateway.state.faults.fail_jobs = True
    result = await gateway.dap(
        "snapshot --namespace canvas --table accounts --output-directory out",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "failed" in result.stderr
    assert not list((tmp_path / "out").glob("job_*/*"))


async def test_wrong_secret_fails_the_command(gateway: Gateway, tmp_path: Path) -> None:
    result = await gateway.dap("list --namespace canvas", cwd=tmp_path, secret="wrong")
    assert result.returncode != 0
    assert (gateway.state.token_requests, gateway.state.logins) == (1, 0)
    assert not gateway.state.requests_to("list_tables")
