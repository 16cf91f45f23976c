"""The official ``dap`` CLI, unmodified, pointed at the proxy, the proxy at the simulator.

The tool is given made-up credentials; only the proxy holds the simulator's real ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jwt
import pytest

from proxy.aiohttp_compat import basic_credentials
from proxy.server.keys import LOCAL_TOKENS
from proxy.simulator import DEMO_CLIENT_SECRET, expected_object_bytes
from proxy.simulator.tables import NAMESPACES

from .conftest import Gateway, GatewayFactory, Proxy, ProxyFactory
from .dap_cli import Result, job_directory, ok, run_dap

pytestmark = pytest.mark.e2e

TOOL_ID = "local-tool"
TOOL_SECRET = "not-the-real-secret"


async def dap(proxy: Proxy, command: str, cwd: Path) -> Result:
    return await run_dap(proxy.url, command, cwd=cwd, client_id=TOOL_ID, secret=TOOL_SECRET)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(job_duration=0)  # complete at once: no 5-second polls


async def test_list_schema_snapshot_incremental(
    gateway: Gateway, proxy: Proxy, tmp_path: Path
) -> None:
    result = ok(await dap(proxy, "list --namespace canvas", tmp_path))
    assert result.stdout.split() == list(NAMESPACES["canvas"])

    ok(
        await dap(
            proxy, "schema --namespace canvas --table accounts --output-directory s", tmp_path
        )
    )
    assert list((tmp_path / "s").glob("accounts_schema_version_*.json"))

    ok(
        await dap(
            proxy,
            "snapshot --namespace canvas --table accounts --format jsonl --output-directory snap",
            tmp_path,
        )
    )
    _, directory = job_directory(tmp_path / "snap")
    files = sorted(directory.iterdir())
    assert files, "the snapshot downloaded nothing"
    for part, path in enumerate(files):
        expected = expected_object_bytes(gateway.state.settings, "accounts", "jsonl", part)
        assert path.read_bytes() == expected

    ok(
        await dap(
            proxy,
            "incremental --namespace canvas --table accounts --output-directory inc"
            " --since 2024-01-01T00:00:00Z --until 2024-01-01T00:30:00Z",
            tmp_path,
        )
    )
    _, directory = job_directory(tmp_path / "inc")
    (job,) = [j for j in gateway.state.jobs if j.query.since is not None]
    expected = expected_object_bytes(
        gateway.state.settings, "accounts", "jsonl", since=job.query.since, until=job.query.until
    )
    assert (directory / "part-00000.jsonl.gz").read_bytes() == expected

    # The tool logged in to the proxy four times; the gateway saw only the proxy's login.
    assert gateway.state.token_requests == 1
    api = [r for r in gateway.state.requests if r.route not in ("login", "object", None)]
    assert api
    upstream_token = proxy.tokens.state.token
    assert upstream_token is not None
    for recorded in api:
        assert recorded.headers["Authorization"] == f"Bearer {upstream_token.access_token}"
        assert recorded.headers["User-Agent"].startswith("DataAccessPlatform/")
        assert "traceparent" in recorded.headers


async def test_short_lived_upstream_tokens_refresh_during_the_run(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    # Two-second tokens, and a job the client polls for 5 seconds: several refreshes.
    gateway = await gateway_factory(token_lifetime=2, job_duration=1.0)
    proxy = await proxy_factory(gateway.url)
    result = ok(
        await dap(
            proxy,
            "snapshot --namespace canvas --table users --format csv --output-directory out",
            tmp_path,
        )
    )
    assert "still in status" in result.stderr, "the client should have polled the job"
    assert gateway.state.token_requests >= 4
    assert proxy.tokens.refreshes["success"] == gateway.state.token_requests
    access = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert access and not [line for line in access if " 401 " in line]
    _, directory = job_directory(tmp_path / "out")
    for part, path in enumerate(sorted(directory.iterdir())):
        assert path.read_bytes() == expected_object_bytes(
            gateway.state.settings, "users", "csv", part
        )


async def test_the_client_never_receives_the_secret_or_the_real_token(
    gateway: Gateway, proxy: Proxy, tmp_path: Path
) -> None:
    result = ok(await dap(proxy, "--loglevel debug list --namespace canvas", tmp_path))
    received = result.stdout + result.stderr
    upstream_token = proxy.tokens.state.token
    assert upstream_token is not None
    assert DEMO_CLIENT_SECRET not in received
    assert upstream_token.access_token not in received
    # What a tool logs in with is a local token from the proxy's own key, never the real one.
    async with proxy.http.post(
        proxy.url + "/ids/auth/login",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_credentials(TOOL_ID, TOOL_SECRET)},
    ) as resp:
        login = await resp.read()
    assert upstream_token.access_token.encode() not in login
    assert DEMO_CLIENT_SECRET.encode() not in login
    local = json.loads(login)["access_token"]
    assert proxy.running.runner.app[LOCAL_TOKENS].verify(local) is not None
    assert jwt.decode(local, options={"verify_signature": False})["sub"] == TOOL_ID
    assert gateway.state.token_requests == 1, "the tool's logins never reach the gateway"


async def test_rejected_proxy_credentials_reach_the_client_as_a_clear_error(
    gateway: Gateway, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    gateway.state.faults.credentials_revoked = True
    proxy = await proxy_factory(gateway.url, wait_for_token=False)
    result = await dap(proxy, "list --namespace canvas", tmp_path)
    assert result.returncode != 0
    assert "rejected the proxy's client credentials" in result.stderr


async def test_with_local_clients_required_only_known_tools_get_in(
    gateway: Gateway, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(gateway.url, DAP_PROXY_LOCAL_CLIENTS=f"{TOOL_ID}:{TOOL_SECRET}")
    ok(await dap(proxy, "list --namespace canvas", tmp_path))
    refused = await run_dap(
        proxy.url, "list --namespace canvas", cwd=tmp_path, client_id=TOOL_ID, secret="guess"
    )
    assert refused.returncode != 0
    assert "unknown local client id or secret" in refused.stderr
