"""The command as a user runs it: exit statuses, messages, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .conftest import Gateway
from .test_errors import closed_port


async def run_proxy(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_invalid_configuration_exits_2_naming_every_problem() -> None:
    process = await run_proxy(
        "--listen",
        "nowhere",
        env={"DAP_CLIENT_SECRET": "hunter2-secret", "DAP_PROXY_TIMEOUTS_READ": "x"},
    )
    status, stderr = await finish(process)
    assert status == 2
    assert "listen: expected HOST:PORT, got 'nowhere' (from flag --listen)" in stderr
    assert "(from environment variable DAP_PROXY_TIMEOUTS_READ)" in stderr
    assert "client_id: not set" in stderr
    assert "hunter2-secret" not in stderr


async def test_rejected_credentials_at_startup_exit_3(gateway: Gateway) -> None:
    process = await run_proxy(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": "wrong-secret-value"},
    )
    status, stderr = await finish(process)
    assert status == 3
    assert "rejected the proxy's client credentials (HTTP 401" in stderr
    assert "wrong-secret-value" not in stderr


async def test_sigterm_lets_requests_in_flight_finish(gateway: Gateway) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    process = await run_proxy(
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        gateway.url,
        env={"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the proxy never became ready")

        async def slow() -> tuple[int, bytes]:
            async with http.get(url + "/test/slow?seconds=1.5") as resp:
                return resp.status, await resp.read()

        in_flight = asyncio.create_task(slow())
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        status, body = await in_flight
    assert (status, body) == (200, b'{"slow": true}')
    exit_status, stderr = await finish(process)
    assert exit_status == 0
    assert "shutting down" in stderr
    assert "GET /test/slow 200" in stderr  # the access log line


async def test_gateway_unreachable_at_startup_keeps_running_not_ready() -> None:
    port = closed_port()
    process = await run_proxy(
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{closed_port()}",
        env={"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "secret"},
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                    assert resp.status == 503
                    body = await resp.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the proxy never listened")
    assert "could not be reached" in body["error"]["message"]
    process.send_signal(signal.SIGINT)
    status, stderr = await finish(process)
    assert status == 0
    assert "serving anyway, not ready, retrying" in stderr
