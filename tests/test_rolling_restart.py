"""A rolling restart no client notices (issue 18): nginx in front of two proxy processes and a
gateway simulator process; a client loop sends requests without pause while each replica in
turn gets SIGTERM, exits and is started again. Not one request may fail.

What makes it work: on SIGTERM a replica answers 503 on /-/ready at once and keeps serving
for ``shutdown_delay`` with every answer saying ``Connection: close`` (server/drain.py);
the readiness controller (nginx_lb.Readiness, a kubelet probe and ingress-nginx in one) sees
the 503 within a poll and reloads nginx without that replica; only then does the replica stop
accepting and drain. Plain nginx without the controller can answer one POST in thousands
with a 502 in the instant the listener closes (see nginx_lb.py): no proxy setting fixes
that, a readiness-aware balancer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from proxy.aiohttp_compat import basic_credentials
from proxy.server.serve import start
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .conftest import GatewayFactory, proxy_config
from .nginx_lb import NGINX, POLL, Readiness, lb_argv

BOUND = 10  # seconds for any one process to start or stop
LOCAL_CLIENT, LOCAL_SECRET = "etl", "rolling-restart-local-secret-0123456789"
TABLES = "/dap/query/canvas/table"
JOB = "/dap/query/canvas/table/accounts/data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def spawn(log: Path, *argv: str, **env: str) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, env={**clean, **env}, stdout=out, stderr=out, cwd=Path(__file__).parent.parent
        )


async def until_ready(http: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)


async def stopped(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


@dataclass
class Cluster:
    """The simulator, the replicas (by port) and nginx, each a process."""

    tmp: Path
    env: dict[str, str]
    gateway: str = ""
    lb: str = ""
    replicas: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    others: list[asyncio.subprocess.Process] = field(default_factory=list)
    readiness: Readiness | None = None
    controller: asyncio.Task[None] | None = None

    def routed(self) -> tuple[int, ...]:
        """The replicas nginx routes to now, as the controller last set them."""
        assert self.readiness is not None and self.controller is not None
        if self.controller.done():
            self.controller.result()  # its failure, if it failed
            raise AssertionError("the readiness controller stopped")
        return self.readiness.routed[-1]

    async def routed_to_all(self) -> None:
        """Until the controller routes to every replica again (the restarted one is back)."""
        async with asyncio.timeout(BOUND):
            while True:  # polled, as the controller itself polls
                if set(self.routed()) == set(self.replicas):
                    return
                await asyncio.sleep(POLL / 2)

    async def replica(self, http: aiohttp.ClientSession, port: int) -> None:
        self.replicas[port] = await spawn(
            self.tmp / f"replica-{port}.log",
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            self.gateway,
            **self.env,
        )
        await until_ready(http, f"http://127.0.0.1:{port}")

    async def restart(self, http: aiohttp.ClientSession, port: int) -> None:
        process = self.replicas[port]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            assert await process.wait() == 0, (self.tmp / f"replica-{port}.log").read_text()
        await self.replica(http, port)


@contextlib.asynccontextmanager
async def cluster(tmp: Path, **env: str) -> AsyncIterator[tuple[Cluster, aiohttp.ClientSession]]:
    if NGINX is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx (.ci/run installs it)")
    env = {
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        # Covers a readiness poll (0.1 s) and nginx's reload many times over, on a busy CI.
        "DAP_PROXY_SHUTDOWN_DELAY": "1.5",
        "DAP_PROXY_TIMEOUTS_SHUTDOWN": "5",
        "DAP_PROXY_RATE_LIMITS_ENABLED": "false",  # the loop is faster than the budgets
        "DAP_PROXY_CACHE_ENABLED": "false",  # every request goes to the gateway
        **env,
    }
    made = Cluster(tmp, env)
    try:
        async with aiohttp.ClientSession() as http:
            port = free_port()
            made.gateway = f"http://127.0.0.1:{port}"
            argv = ("-m", "proxy", "simulate", "--port", str(port), "--no-rate-limits")
            made.others.append(await spawn(tmp / "simulator.log", sys.executable, *argv))
            ports = [free_port(), free_port()]
            for replica in ports:
                await made.replica(http, replica)
            lb_port = free_port()
            nginx = await spawn(tmp / "nginx.log", *lb_argv(tmp, lb_port, ports))
            made.others.append(nginx)
            made.lb = f"http://127.0.0.1:{lb_port}"
            await until_ready(http, made.lb)
            made.readiness = Readiness(tmp, lb_port, ports, nginx.pid)
            made.controller = asyncio.create_task(made.readiness.run())
            yield made, http
            made.routed()  # the controller ran to the end
    finally:
        if made.controller is not None:
            made.controller.cancel()
            await asyncio.gather(made.controller, return_exceptions=True)
        for process in [*made.replicas.values(), *made.others]:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)  # as Ctrl-C: no shutdown_delay to wait
        for process in [*made.replicas.values(), *made.others]:
            try:
                async with asyncio.timeout(BOUND):
                    await process.wait()
            except TimeoutError:
                await stopped(process)


@dataclass
class Traffic:
    sent: int = 0
    failures: list[str] = field(default_factory=list)


async def client_loop(
    fresh: aiohttp.ClientSession, url: str, headers: dict[str, str], traffic: Traffic
) -> None:
    """Requests one after another: list the tables, and every fifth a job creation (a POST,
    which nginx never sends twice once sent). Each on a new connection to nginx (``fresh``):
    the controller's reload makes nginx's old worker close all its idle client connections
    at once, and a request written into one at that instant is lost on the client's side of
    nginx, a race of the emulation (ingress-nginx changes endpoints without a reload), not
    of the proxy. nginx's connections to the replicas are kept alive all the same."""
    while True:
        method, path = ("POST", JOB) if traffic.sent % 5 == 4 else ("GET", TABLES)
        body = {"format": "jsonl"} if method == "POST" else None
        try:
            async with fresh.request(method, url + path, json=body, headers=headers) as resp:
                answer = await resp.read()
                if resp.status >= 300:  # 200, and 202 for a job
                    traffic.failures.append(f"{method}: {resp.status} {answer[:200]!r}")
        except aiohttp.ClientError as exc:
            traffic.failures.append(f"{method}: {exc!r}")
        traffic.sent += 1


def failed(traffic: Traffic, tmp: Path) -> str:
    """The failures, with what nginx logged about its upstreams (CI keeps no tmp dir)."""
    log = (tmp / "error.log").read_text(encoding="utf-8", errors="replace").splitlines()
    errors = "\n".join([line for line in log if "[error]" in line or "[warn]" in line][-30:])
    return f"{len(traffic.failures)} of {traffic.sent} failed: {traffic.failures[:5]}\n{errors}"


async def rolling_restart(
    made: Cluster, http: aiohttp.ClientSession, headers: dict[str, str]
) -> Traffic:
    traffic = Traffic()
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    loops = [asyncio.create_task(client_loop(fresh, made.lb, headers, traffic)) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        for port in list(made.replicas):
            before = traffic.sent
            await made.restart(http, port)
            # The stop was routed around, not merely survived: the controller took the
            # replica out of nginx's list before it stopped listening.
            assert made.readiness is not None
            assert any(port not in routed for routed in made.readiness.routed), made.readiness
            # The next replica goes only when this one is routed to again (Kubernetes waits
            # for readiness the same way), and has served a little.
            await made.routed_to_all()
            await asyncio.sleep(0.3)
            assert traffic.sent > before, "the client loop stalled"
            if traffic.failures:
                break  # seen: no need to restart the rest
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await fresh.close()
    return traffic


@pytest.mark.system
async def test_a_rolling_restart_behind_nginx_fails_no_request(tmp_path: Path) -> None:
    started = time.monotonic()
    async with cluster(tmp_path) as (made, http):
        traffic = await rolling_restart(made, http, {})
    assert traffic.sent > 50, traffic
    assert traffic.failures == [], failed(traffic, tmp_path)
    assert time.monotonic() - started < 30


@pytest.mark.system
async def test_a_rolling_restart_keeps_a_local_token_valid(tmp_path: Path) -> None:
    """Access keys on: the client logs in once, through nginx, and keeps its local token
    across both replicas' restarts (the replicas share the credentials, so the key)."""
    async with cluster(tmp_path, DAP_PROXY_LOCAL_CLIENTS=f"{LOCAL_CLIENT}:{LOCAL_SECRET}") as (
        made,
        http,
    ):
        login = {"Authorization": basic_credentials(LOCAL_CLIENT, LOCAL_SECRET)}
        form = {"grant_type": "client_credentials"}
        async with http.post(made.lb + "/ids/auth/login", data=form, headers=login) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
        traffic = await rolling_restart(made, http, {"Authorization": f"Bearer {token}"})
    assert traffic.sent > 50, traffic
    assert traffic.failures == [], failed(traffic, tmp_path)


async def test_on_stop_ready_fails_at_once_requests_are_served_with_connection_close_then_refused(
    gateway_factory: GatewayFactory,
) -> None:
    """The three steps of server/drain.py, in-process: during ``shutdown_delay`` /-/ready
    is 503 while requests are served, each answer closing its connection; after it, new
    connections are refused."""
    gateway = await gateway_factory()
    running = await start(proxy_config(gateway.url))
    await running.first_token()
    url = running.url
    async with aiohttp.ClientSession() as http:
        async with http.get(url + TABLES) as resp:
            assert resp.status == 200
            assert resp.headers.get("Connection", "").lower() != "close"
        # In flight at the signal, answered after it: its connection's last too.
        in_flight = asyncio.create_task(http.get(url + "/test/slow?seconds=0.4"))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(running.stop(delay=1.0))
        await asyncio.sleep(0.1)
        async with await in_flight as resp:
            assert resp.status == 200
            assert resp.headers["Connection"].lower() == "close"
        async with http.get(url + "/-/ready") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "ShuttingDown"
        for _ in range(3):  # on the kept-alive connection, and on new ones
            async with http.get(url + TABLES) as resp:
                assert resp.status == 200
                assert resp.headers["Connection"].lower() == "close"
        await asyncio.sleep(1.2)  # the delay is over: no new connections
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url + TABLES):
                pass
        await stopping
